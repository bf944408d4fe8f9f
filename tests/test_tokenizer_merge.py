"""Korean BPE training and the merge into the real Llama-2 vocabulary.

A Korean model is trained here on real novels and the constitution (~1.8 MB), merged
into ../shared/data's Llama-2 tokenizer.model, and checked with sentencepiece,
tokenizers and transformers side by side.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import sentencepiece as spm
from conftest import DATA, GOLDEN_KO, LLAMA2_MODEL, ROOT, news_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from kovocab.cli import main
from kovocab.errors import InputError, KovocabError, TokenizerError
from kovocab.tokenizer.export import load_proto
from kovocab.tokenizer.merge import (
    MergeVocabConfig,
    append_pieces,
    merge_vocab,
    select_pieces,
    unreachable_pieces,
)
from kovocab.tokenizer.train import (
    DELIMITER,
    TokenizerTrainingConfig,
    mark_morphemes,
    train_tokenizer,
)

TARGET = 38016  # 32000 + 6016 new pieces: enough for a 1.8 MB corpus, a multiple of 64
NOVELS = sorted((DATA / "koconovel" / "text").glob("*.jsonl"))
CONSTITUTION = DATA / "konlpy_corpus" / "kolaw" / "constitution.txt"


def _train(out: Path, method: str = "bpe", vocab_size: int = 8000, corpus=None) -> Path:  # type: ignore[no-untyped-def]
    cfg = TokenizerTrainingConfig(
        corpus=tuple(corpus or [*NOVELS, CONSTITUTION]),
        out_dir=out,
        method=method,  # type: ignore[arg-type]
        vocab_size=vocab_size,
    )
    return train_tokenizer(cfg).model_path


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("merge")
    korean = _train(root / "korean")
    merge_vocab(
        MergeVocabConfig(base=LLAMA2_MODEL, korean_model=korean, out_dir=root / "tok",
                         target_vocab_size=TARGET)
    )
    return root / "tok"


@pytest.fixture(scope="module")
def loaders(merged: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    fast = Tokenizer.from_file(str(merged / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(merged))
    return sp, fast, auto


@pytest.fixture(scope="module")
def base_sp() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))


def _english_corpus() -> list[str]:
    """The English news side plus English prose already on this machine."""
    lines = news_lines("en")
    for p in sorted(Path("/usr/share/common-licenses").glob("*"))[:12]:
        if p.is_file():
            lines += p.read_text(encoding="utf-8", errors="ignore").splitlines()
    import json as json_mod
    import textwrap

    lines += textwrap.dedent(json_mod.__doc__ or "").splitlines()
    lines += textwrap.dedent(tarfile.__doc__ or "").splitlines()
    return lines


def test_base_pieces_keep_ids_strings_scores_types(merged: Path) -> None:
    base = load_proto(LLAMA2_MODEL)
    new = load_proto(merged / "tokenizer.model")
    assert len(new.pieces) == TARGET
    for a, b in zip(base.pieces, new.pieces[: len(base.pieces)], strict=True):
        assert (a.piece, a.score, a.type) == (b.piece, b.score, b.type)
    assert new.trainer_spec == base.trainer_spec
    assert new.normalizer_spec == base.normalizer_spec
    # Appended pieces score below every real base merge, in a strict order.
    added = [p.score for p in new.pieces[len(base.pieces):]]
    assert added == sorted(added, reverse=True) and len(set(added)) == len(added)
    assert max(added) < -31740


def test_english_encodes_exactly_as_llama2(loaders, base_sp) -> None:  # type: ignore[no-untyped-def]
    sp, fast, auto = loaders
    lines = _english_corpus()
    assert len(lines) > 3000
    want = base_sp.encode(lines)
    assert sp.encode(lines) == want
    assert [e.ids for e in fast.encode_batch(lines, add_special_tokens=False)] == want
    assert auto(lines, add_special_tokens=False)["input_ids"] == want


def test_three_loaders_agree_on_korean_and_round_trip(loaders) -> None:  # type: ignore[no-untyped-def]
    sp, fast, auto = loaders
    lines = news_lines("ko") + [
        "", " ", "  두 칸 앞", "끝에 공백 ", "줄\n바꿈\n\n두 번", "탭\t문자", "😀 이모지 🇰🇷 섞인 text",
        "ㅋㅋㅋㅋㅋㅋ ㅠㅠ", "한국어와 English가 mixed된 문장 123,456원", "def f(x):\n    return x  # 주석",
    ]
    want = sp.encode(lines)
    assert [e.ids for e in fast.encode_batch(lines, add_special_tokens=False)] == want
    assert auto(lines, add_special_tokens=False)["input_ids"] == want
    for line, ids in zip(lines, want, strict=True):
        assert sp.decode(ids) == line
        assert fast.decode(ids) == line
        assert auto.decode(ids) == line


def test_literal_lower_one_eighth_block_decodes_as_a_space_as_in_llama2(  # type: ignore[no-untyped-def]
    loaders, base_sp
) -> None:
    """The one exception to decode(encode(x)) == x: U+2581 is SentencePiece's space mark."""
    sp, fast, auto = loaders
    lines = ["a\u2581b", "\u2581", "x \u2581\u2581 y", "\u2581시작", "한국어\u2581문장 끝\u2581",
             *[line.replace(" ", "\u2581", 1) for line in news_lines("ko")[:50]]]
    for line in lines:
        ids = sp.encode(line)
        want = line.replace("\u2581", " ")
        assert want != line
        assert sp.decode(ids) == fast.decode(ids) == auto.decode(ids) == want
        assert fast.encode(line, add_special_tokens=False).ids == ids
        assert base_sp.decode(base_sp.encode(line)) == want  # Llama-2 itself does the same
    # ... and the README says so where it states the round trip.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    bullet = readme[readme.index("**One tokenizer, three readers.**"):]
    assert 'decode(encode(x)) == x.replace("▁", " ")' in bullet[: bullet.index("\n- ")]


def test_golden_sentence_uses_far_fewer_tokens(loaders, base_sp) -> None:  # type: ignore[no-untyped-def]
    sp, _, auto = loaders
    assert len(base_sp.encode(GOLDEN_KO)) == 30
    ids = sp.encode(GOLDEN_KO)
    # Trained on 1.8 MB of novels only; the default 46k recipe reaches 8 (bench/).
    assert len(ids) <= 12
    assert sp.decode(ids) == GOLDEN_KO
    assert auto(GOLDEN_KO)["input_ids"][0] == 1  # BOS, as Llama-2


def test_auto_tokenizer_is_the_real_thing(merged: Path, loaders) -> None:  # type: ignore[no-untyped-def]
    _, _, auto = loaders
    # transformers 5 builds an *empty* Llama tokenizer from a bare vocab_file; ours is full.
    assert len(auto) == TARGET
    assert (auto.bos_token, auto.eos_token, auto.unk_token) == ("<s>", "</s>", "<unk>")
    assert auto.convert_tokens_to_ids("▁the") == 278


def test_every_new_piece_is_reachable(merged: Path) -> None:
    proto = load_proto(merged / "tokenizer.model")
    new = [p.piece for p in proto.pieces[32000:]]
    assert unreachable_pieces(proto, new) == []


def test_unreachable_piece_is_detected_and_replaced() -> None:
    base = load_proto(LLAMA2_MODEL)
    # "뷁뷁뷁뷁" has no split into two pieces of the vocabulary: BPE can never build it.
    candidates = ["뷁", "뷁뷁뷁뷁", "대한", "민국", "대한민국"]
    assert unreachable_pieces(append_pieces(base, candidates), candidates) == ["뷁뷁뷁뷁"]
    chosen, replaced = select_pieces(base, candidates, 4)
    assert chosen == ["뷁", "대한", "민국", "대한민국"]
    assert replaced == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.one_of(
            st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # syllables
            st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),  # jamo
            st.characters(min_codepoint=0x3131, max_codepoint=0x318E),  # compatibility jamo
            st.sampled_from(list("가나다라 .,!?\n\t  abcXYZ019😀")),
        ),
        max_size=40,
    )
)
def test_property_loaders_agree_and_round_trip(loaders, text: str) -> None:  # type: ignore[no-untyped-def]
    sp, fast, _ = loaders
    ids = sp.encode(text)
    assert fast.encode(text, add_special_tokens=False).ids == ids
    assert sp.decode(ids) == text
    assert fast.decode(ids) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"], max_codepoint=0x10FF), max_size=60))
def test_property_text_without_hangul_is_unchanged(loaders, base_sp, text: str) -> None:  # type: ignore[no-untyped-def]
    sp, _, _ = loaders
    assert sp.encode(text) == base_sp.encode(text)


def test_training_and_merge_are_deterministic(merged: Path, tmp_path: Path) -> None:
    korean = _train(tmp_path / "korean")
    merge_vocab(MergeVocabConfig(base=LLAMA2_MODEL, korean_model=korean,
                                 out_dir=tmp_path / "tok", target_vocab_size=TARGET))
    for name in ("tokenizer.model", "tokenizer.json", "new_pieces.tsv"):
        assert (tmp_path / "tok" / name).read_bytes() == (merged / name).read_bytes(), name


def test_morpheme_marks_keep_the_text_and_cut_inside_words() -> None:
    sentences = ["디렉터스컷으로봐서 거의 3시간짜리인데", "했다", "학교에 갔습니다."]
    marked = mark_morphemes(sentences, num_workers=1)
    assert [m.replace(DELIMITER, "") for m in marked] == sentences
    assert "컷" + DELIMITER + "으로" in marked[0]
    assert all(DELIMITER + " " not in m and " " + DELIMITER not in m for m in marked)
    assert "학교" + DELIMITER + "에" in marked[2]


def test_morpheme_aware_pieces_merge_and_stay_valid(tmp_path: Path) -> None:
    korean = _train(tmp_path / "k", method="morpheme-bpe", vocab_size=3000, corpus=NOVELS[:6])
    pieces = [p.piece for p in load_proto(korean).pieces]
    assert not any(DELIMITER in p for p in pieces)
    res = merge_vocab(MergeVocabConfig(base=LLAMA2_MODEL, korean_model=korean,
                                       out_dir=tmp_path / "tok", target_vocab_size=34048))
    sp = spm.SentencePieceProcessor(model_file=str(res.tokenizer_model))
    assert sp.decode(sp.encode(GOLDEN_KO)) == GOLDEN_KO
    assert len(sp.encode(GOLDEN_KO)) < 30


def test_merge_errors_are_clear(tmp_path: Path, merged: Path) -> None:
    korean = merged.parent / "korean" / "korean_bpe.model"
    bad = tmp_path / "garbage.model"
    bad.write_bytes(b"\x00not a model at all\xff" * 10)
    cases = [
        (MergeVocabConfig(base=tmp_path / "missing", korean_model=korean, out_dir=tmp_path / "o"),
         "path not found"),
        (MergeVocabConfig(base=bad, korean_model=korean, out_dir=tmp_path / "o"),
         "not a SentencePiece model"),
        (MergeVocabConfig(base=tmp_path, korean_model=korean, out_dir=tmp_path / "o"),
         "holds no tokenizer.model"),
        (MergeVocabConfig(base=LLAMA2_MODEL, korean_model=korean, out_dir=tmp_path / "o",
                          target_vocab_size=1000), "smaller than the base"),
        (MergeVocabConfig(base=LLAMA2_MODEL, korean_model=korean, out_dir=tmp_path / "o",
                          target_vocab_size=64000), "larger vocab_size"),
        (MergeVocabConfig(base=LLAMA2_MODEL, korean_model=korean, out_dir=tmp_path / "o",
                          target_vocab_size=32000), "equals the base vocabulary size, so no Korean piece"),
    ]
    for cfg, message in cases:
        with pytest.raises(TokenizerError, match=message):
            merge_vocab(cfg)


def test_training_errors_are_clear(tmp_path: Path) -> None:
    cp949 = tmp_path / "legacy.txt"
    cp949.write_bytes("안녕하세요\n".encode("cp949"))
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"body": "안녕"}\n', encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for corpus, message in [
        ([cp949], "not UTF-8"),
        ([jsonl], "no field 'text'"),
        ([empty], "no text found"),
        ([tmp_path / "nope.txt"], "path not found"),
        ([tmp_path], "without manifest.json"),
    ]:
        with pytest.raises(KovocabError, match=message):
            _train(tmp_path / "out", corpus=corpus)


def test_jsonl_records_without_text_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 12.4: null, lists and dicts became the sentences "None" and "['...']".
    import json

    from kovocab.corpus.texts import iter_corpus_texts

    records = [json.loads(line) for f in NOVELS[:4] for line in f.read_text(encoding="utf-8").splitlines()]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    bad = [{"text": None}, {"text": ["목록 안의 문장"]}, {"text": {"본문": "사전"}}, {"text": 42},
           {"text": "널\u0000문자"}]
    dirty = tmp_path / "dirty.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for i, r in enumerate(bad):
        lines.insert(1 + 3 * i, json.dumps(r, ensure_ascii=False))
    dirty.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert list(iter_corpus_texts([dirty])) == [r["text"] for r in records]

    def train(corpus: Path, out: str):  # type: ignore[no-untyped-def]
        cfg = TokenizerTrainingConfig(corpus=(corpus,), out_dir=tmp_path / out, vocab_size=2000)
        return train_tokenizer(cfg)

    ref = train(clean, "a")
    with caplog.at_level("WARNING"):
        res = train(dirty, "b")
    assert (res.sentences, res.sentences_seen) == (ref.sentences, ref.sentences_seen)
    assert res.model_path.read_bytes() == ref.model_path.read_bytes()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stats"]["skipped_records"] == {"not-text": 4, "nul-byte": 1}
    assert f"{dirty}: skipped 5 record(s) whose 'text' is not usable text (4 not-text, 1 nul-byte; " \
           "first at line 2)" in caplog.text


def test_jsonl_lines_that_are_no_records_are_refused_at_their_line(tmp_path: Path) -> None:
    # Issue 12.4: a bare JSON string crashed with TypeError; JSON errors named the next line.
    from kovocab.corpus.texts import iter_corpus_texts

    path = tmp_path / "x.jsonl"
    for second, message in [('"안녕하세요"', r"x.jsonl:2: a JSON string, not an object with a 'text' field"),
                            ("[1, 2]", r"x.jsonl:2: a JSON list, not an object"),
                            ("7", r"x.jsonl:2: a JSON number, not an object"),
                            ('{"text": "깨진', r"x.jsonl:2: invalid JSON \(")]:
        path.write_text('{"text": "첫 줄"}\n' + second + '\n{"text": "셋째"}\n', encoding="utf-8")
        with pytest.raises(InputError, match=message):
            list(iter_corpus_texts([path]))


def test_cli_train_then_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-tokenizer", *map(str, NOVELS[:10]), "--out", str(tmp_path / "k"),
                 "--vocab-size", "3000", "-q"]) == 0
    assert main(["merge-vocab", "--base", str(LLAMA2_MODEL.parent), "--korean-model",
                 str(tmp_path / "k" / "korean_bpe.model"), "--out", str(tmp_path / "t"),
                 "--target-vocab-size", "33024", "-q"]) == 0
    out = capsys.readouterr().out
    assert "32000 + 1024 = 33024 pieces" in out
    assert (tmp_path / "t" / "manifest.json").is_file()
    assert main(["merge-vocab", "--set", "vocab_merge.target_vocb_size=5"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'target_vocab_size'" in err and "kovocab: error:" in err


def test_expand_vocab_api_trains_merges_and_reports(tmp_path: Path) -> None:
    from kovocab import expand_vocab

    held_out = tmp_path / "news.ko"
    held_out.write_text("\n".join(news_lines("ko")[:300]) + "\n", encoding="utf-8")
    res = expand_vocab(base=LLAMA2_MODEL.parent, corpus=NOVELS[:10], out_dir=tmp_path / "x",
                       target_vocab_size=33024, korean_vocab_size=3000, eval_texts=held_out)
    assert res.merge.vocab_size == 33024
    s = res.stats
    assert s["golden_tokens_before"] == 30 and s["golden_tokens_after"] < 30
    assert s["held_out_sentences"] == 300
    assert s["korean_tokens_per_sentence_after"] < s["korean_tokens_per_sentence_before"]
    assert res.report_dir is not None
    import json

    figures = json.loads((res.report_dir / "report.json").read_text(encoding="utf-8"))
    assert set(figures["results"]) == {"base", "expanded"}


def test_expand_vocab_to_the_base_size_is_refused_before_training(tmp_path: Path) -> None:
    from kovocab import expand_vocab

    with pytest.raises(TokenizerError, match=r"expand_vocab\.target_vocab_size: 32000 equals the base "
                                             r"vocabulary size.*set it above 32000"):
        expand_vocab(base=LLAMA2_MODEL, corpus=NOVELS[:2], out_dir=tmp_path / "x", target_vocab_size=32000)
    assert not (tmp_path / "x" / "korean_bpe").exists()  # refused before the Korean model is trained


def test_mistral_eeve_recipe_grows_32000_to_40960_and_keeps_english(
    tmp_path: Path, korean_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tokenizers/mistral_eeve_40960.yaml on the test corpus (the recipe's mix is built by a
    shard recipe CI does not run): EEVE's size, Mistral v1's pieces untouched, English as before."""
    from transformers import AutoTokenizer

    recipe = ROOT / "tokenizers" / "mistral_eeve_40960.yaml"
    base_file = DATA / "tokenizers" / "mistral_v1" / "tokenizer.model.v1"
    assert main(["expand-vocab", "--recipe", str(recipe), "--set", f"expand_vocab.corpus=[{korean_shards}]",
                 "--set", "expand_vocab.source_weights=null", "--out", str(tmp_path / "eeve"),
                 "--korean-vocab-size", "12000", "--no-report"]) == 0
    assert "tokenizer (40960 pieces)" in capsys.readouterr().out
    folder = tmp_path / "eeve" / "tokenizer"
    base, new = load_proto(base_file), load_proto(folder / "tokenizer.model")
    assert len(base.pieces) == 32000 and len(new.pieces) == 40960
    kept = [(p.piece, p.score, p.type) for p in new.pieces[:32000]]
    assert kept == [(p.piece, p.score, p.type) for p in base.pieces]
    base_sp = spm.SentencePieceProcessor(model_file=str(base_file))
    fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(folder))
    lines = _english_corpus()[:1500]
    want = base_sp.encode(lines)
    assert [e.ids for e in fast.encode_batch(lines, add_special_tokens=False)] == want
    assert auto(lines, add_special_tokens=False)["input_ids"] == want
    assert len(fast.encode(GOLDEN_KO, add_special_tokens=False).ids) < len(base_sp.encode(GOLDEN_KO)) / 1.5
