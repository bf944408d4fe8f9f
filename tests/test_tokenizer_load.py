"""One encode interface over the real tokenizers in ../shared/data, detected by content.

Expected values come from the libraries themselves (sentencepiece, tiktoken) or from
the data README, never from kovocab. Broken files are made in tmp_path.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

import pytest
import sentencepiece as spm
from conftest import DATA, GOLDEN_KO, LLAMA2_MODEL
from hypothesis import given, settings
from hypothesis import strategies as st

from kovocab.errors import TokenizerError
from kovocab.tokenizer.load import LLAMA3_PAT_STR, Encoder, load_tokenizer, render_bytes

TOK = DATA / "tokenizers"
LLAMA3 = TOK / "llama3" / "tokenizer.model"
GOLDEN = [  # (path, kind, tokens for GOLDEN_KO) from shared/data/README.md
    (LLAMA2_MODEL, "sentencepiece", 30),
    (LLAMA3, "tiktoken", 11),
    (TOK / "mistral_v1" / "tokenizer.model.v1", "sentencepiece", 26),
    (TOK / "chinese_llama2_expanded", "sentencepiece", 30),
    (TOK / "chinese_llama2_expanded" / "tokenizer.model", "sentencepiece", 30),
    (TOK / "llama2_hf_json" / "tokenizer.json", "tokenizers", 30),
    (TOK / "llama2_hf_json", "tokenizers", 30),
]
LLAMA2_GOLDEN_IDS = [29871, 31734, 238, 136, 152, 30944, 31578, 31527, 29892, 29871, 31346, 238, 141,
                     155, 31354, 29871, 238, 133, 163, 31781, 30903, 29871, 239, 165, 142, 238, 135, 167,
                     31527, 29889]
SAMPLES = [GOLDEN_KO, "The quick brown fox jumps over the lazy dog.", "  spaces\tand\nnewlines  ",
           "emoji 🙂 and 漢字, ㄱㄴㄷ 그리고 ‘따옴표’", "x = f(y);  // 코드 주석"]


@pytest.mark.parametrize(("path", "kind", "count"), GOLDEN, ids=lambda v: str(v).split("/data/")[-1])
def test_golden_sentence_counts(path: Path, kind: str, count: int) -> None:
    enc = load_tokenizer(path)
    assert enc.kind == kind
    ids = enc.encode(GOLDEN_KO)
    assert len(ids) == count
    assert enc.decode(ids) == GOLDEN_KO


def test_llama2_ids_and_pieces_match_sentencepiece_and_the_model_card() -> None:
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    for path in (LLAMA2_MODEL, TOK / "llama2_hf_json" / "tokenizer.json"):
        enc = load_tokenizer(path)
        assert enc.encode(GOLDEN_KO) == LLAMA2_GOLDEN_IDS
        for text in SAMPLES[:2]:
            assert enc.encode(text) == sp.encode(text)
    enc = load_tokenizer(LLAMA2_MODEL)
    assert " ".join(enc.pieces(LLAMA2_GOLDEN_IDS)).startswith("▁ 안 <0xEB> <0x85> <0x95> 하 세 요 ,")
    assert enc.byte_ids == frozenset(i for i in range(sp.get_piece_size()) if sp.is_byte(i))
    assert enc.unk_id == sp.unk_id() == 0


def test_llama3_matches_tiktoken_built_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken would otherwise copy the file to /tmp
    ranks = load_tiktoken_bpe(str(LLAMA3))
    ref = tiktoken.Encoding("ref", pat_str=LLAMA3_PAT_STR, mergeable_ranks=ranks, special_tokens={})
    enc = load_tokenizer(LLAMA3)
    assert enc.vocab_size == 128_256  # 128,000 ranks + 256 special ids
    for text in SAMPLES:
        assert enc.encode(text) == ref.encode_ordinary(text)
    pieces = enc.pieces(enc.encode(GOLDEN_KO))
    assert pieces == ["안", "녕하세요", ",", "␠오늘", "은", "␠날", "씨", "가", "␠좋", "네요", "."]
    partial = {r for tok, r in ranks.items() if _not_utf8(tok)}
    assert enc.byte_ids == partial and partial


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("path", [p for p, _, _ in GOLDEN[:4]] + [GOLDEN[5][0]])
def test_starts_point_into_the_text_in_order(path: Path) -> None:
    enc = load_tokenizer(path)
    for text in SAMPLES:
        ids, starts = enc.encode_with_starts(text)
        assert ids == enc.encode(text)
        assert starts == sorted(starts)
        assert all(0 <= s <= len(text) for s in starts)


def test_format_is_detected_by_content_not_name(tmp_path: Path) -> None:
    (tmp_path / "ranks.json").symlink_to(LLAMA3)  # tiktoken ranks under a JSON name
    (tmp_path / "vocab.txt").symlink_to(LLAMA2_MODEL)  # a SentencePiece proto under a text name
    assert load_tokenizer(tmp_path / "ranks.json").kind == "tiktoken"
    assert load_tokenizer(tmp_path / "vocab.txt").kind == "sentencepiece"


def test_render_bytes_marks_spaces_and_partial_characters() -> None:
    assert render_bytes(" 오늘".encode()) == "␠오늘"
    assert render_bytes("가".encode() + b"\xeb\x85") == "가<0xEB><0x85>"


def _broken(tmp_path: Path) -> dict[str, Path]:
    cases = {}
    cases["garbage"] = tmp_path / "garbage.model"
    cases["garbage"].write_bytes(bytes(range(256)) * 40)
    cases["truncated"] = tmp_path / "truncated.model"
    cases["truncated"].write_bytes(LLAMA2_MODEL.read_bytes()[:200_000])
    cases["empty"] = tmp_path / "empty.model"
    cases["empty"].write_bytes(b"")
    cases["nothing usable"] = tmp_path / "folder"
    cases["nothing usable"].mkdir()
    (cases["nothing usable"] / "README.md").write_text("weights elsewhere\n")
    cases["missing"] = tmp_path / "no" / "such" / "tokenizer.model"
    cases["config only"] = tmp_path / "tokenizer_config.json"
    cases["config only"].write_text('{"tokenizer_class": "LlamaTokenizer"}')
    cases["bad json"] = tmp_path / "tokenizer.json"
    cases["bad json"].write_text('{"model": {"type": "BPE", "vocab": ')
    good = base64.b64encode(b"ab").decode()
    cases["bad rank line"] = tmp_path / "ranks.tiktoken"
    cases["bad rank line"].write_text(f"{good} 0\n{good} 1\n{good} 2\n!!!notbase64 3\n")
    return cases


@pytest.mark.parametrize(
    ("case", "message"),
    [("garbage", "cannot parse it as a .model"), ("truncated", "truncated or corrupt"),
     ("empty", "empty file"), ("nothing usable", "holds no tokenizer.json"), ("missing", "not found"),
     ("config only", "not a Hugging Face tokenizer.json"), ("bad json", "does not parse"),
     ("bad rank line", "ranks.tiktoken:4: not a tiktoken rank line")],
)
def test_broken_tokenizers_raise_clear_errors(tmp_path: Path, case: str, message: str) -> None:
    path = _broken(tmp_path)[case]
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(path)
    text = str(err.value)
    assert message in text
    assert str(path) in text


def test_vocab_json_folder_loads_through_transformers(tmp_path: Path) -> None:
    # An old-style GPT-2 folder (vocab.json + merges.txt, no tokenizer.json), trained here.
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SAMPLES * 20, vocab_size=300, min_frequency=1, show_progress=False)
    bpe.save_model(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    enc = load_tokenizer(tmp_path)
    assert enc.kind == "tokenizers"
    ids = enc.encode(GOLDEN_KO)
    assert enc.decode(ids) == GOLDEN_KO
    assert "␠" in "".join(enc.pieces(ids))  # byte-level Ġ shown as a space marker
    assert enc.byte_ids  # 256 byte tokens, most of them partial UTF-8


@functools.cache
def _loaded() -> dict[Path, Encoder]:
    return {p: load_tokenizer(p) for p in (LLAMA2_MODEL, LLAMA3, TOK / "llama2_hf_json")}


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_starts_and_round_trip_on_any_text(text: str) -> None:
    for path, enc in _loaded().items():
        ids, starts = enc.encode_with_starts(text)
        assert ids == enc.encode(text), path
        assert starts == sorted(starts) and all(0 <= s <= len(text) for s in starts), path
    llama3 = _loaded()[LLAMA3]  # byte-level BPE spells any text exactly
    assert llama3.decode(llama3.encode(text)) == text
