"""expand_vocab's size sweep (one Korean model cut at several sizes) and the report fixes it needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA, GOLDEN_KO, LLAMA2_MODEL, news_lines

SIZES = (256, 512, 1024)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, korean_shards: Path) -> object:
    from kovocab.tokenizer.expand import expand_vocab

    out = tmp_path_factory.mktemp("sweep")
    return expand_vocab(base=LLAMA2_MODEL, corpus=korean_shards, out_dir=out, target_vocab_size=32768,
                        sweep=list(SIZES))


def _held_out(korean_shards: Path) -> list[str]:
    from kovocab.tokenizer.expand import _held_out_texts

    return _held_out_texts((korean_shards,), None)


def test_sweep_gives_one_valid_tokenizer_per_size(swept: object) -> None:
    import sentencepiece as spm

    from kovocab.tokenizer.export import load_proto

    rows = swept.sweep  # type: ignore[attr-defined]
    assert [r["new_pieces"] for r in rows] == list(SIZES)
    base = load_proto(LLAMA2_MODEL).pieces
    english = [line for line in news_lines("en")[:300] if line.strip()]
    base_ids = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL)).encode(english)
    for row in rows:
        folder = Path(row["tokenizer"])
        assert row["vocab_size"] == 32000 + row["new_pieces"]
        proto = load_proto(folder / "tokenizer.model")
        assert len(proto.pieces) == row["vocab_size"]
        assert all((a.piece, a.score, a.type) == (b.piece, b.score, b.type)
                   for a, b in zip(base, proto.pieces, strict=False))  # ids 0..31999 untouched
        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        assert sp.encode(english) == base_ids  # English identical at every size
        assert sp.decode(sp.encode(GOLDEN_KO)) == GOLDEN_KO
    sweep_json = json.loads((Path(rows[0]["tokenizer"]).parent / "sweep.json").read_text())
    assert [r["new_pieces"] for r in sweep_json["rows"]] == list(SIZES)


def test_sweep_cuts_are_prefixes_and_tokens_fall_with_size(swept: object) -> None:
    from kovocab.tokenizer.export import load_proto

    rows = swept.sweep  # type: ignore[attr-defined]
    largest = [p.piece for p in load_proto(Path(rows[-1]["tokenizer"]) / "tokenizer.model").pieces[32000:]]
    for row in rows:
        cut = [p.piece for p in load_proto(Path(row["tokenizer"]) / "tokenizer.model").pieces[32000:]]
        assert cut == largest[: len(cut)]
        assert row["pieces_prefix_of_largest"] is True
    per_sentence = [r["korean_tokens_per_sentence"] for r in rows]
    assert per_sentence == sorted(per_sentence, reverse=True) and per_sentence[0] > per_sentence[-1]
    assert all(r["korean_tokens_per_sentence"] < r["base_tokens_per_sentence"] for r in rows)
    chars = [r["korean_chars_per_token"] for r in rows]
    assert chars == sorted(chars)


def test_cut_equals_a_direct_expansion(swept: object, korean_shards: Path, tmp_path: Path) -> None:
    """The K-piece cut gives the ids of expand_vocab run for K alone (its own, smaller Korean
    model): sentencepiece's BPE merges come in the same order whatever the vocabulary size,
    so the smaller model's pieces are the larger one's first pieces (bench/README.md: 100%
    of held-out sentences identical at all five default sizes)."""
    import sentencepiece as spm

    from kovocab.tokenizer.expand import expand_vocab

    row = swept.sweep[1]  # type: ignore[attr-defined]
    direct = expand_vocab(base=LLAMA2_MODEL, corpus=korean_shards, out_dir=tmp_path / "direct",
                          target_vocab_size=row["vocab_size"], report=False)
    assert direct.training.vocab_size < swept.training.vocab_size  # type: ignore[attr-defined]
    texts = _held_out(korean_shards)
    assert texts
    cut = spm.SentencePieceProcessor(model_file=str(Path(row["tokenizer"]) / "tokenizer.model"))
    one = spm.SentencePieceProcessor(model_file=str(direct.merge.tokenizer_model))
    assert cut.encode(texts) == one.encode(texts)


def test_report_draws_the_sweep_curve(swept: object) -> None:
    report_dir = swept.report_dir  # type: ignore[attr-defined]
    figures = json.loads((report_dir / "report.json").read_text())
    assert [r["new_pieces"] for r in figures["sweep"]] == list(SIZES)
    html = (report_dir / "report.html").read_text()
    assert "Size sweep" in html
    assert "<title>Korean tokens per sentence by number of new pieces</title>" in html
    assert html.count("<circle") == len(SIZES) + 1  # and the base at 0 new pieces
    md = (report_dir / "report.md").read_text()
    assert "## Size sweep" in md and "| 1,024 | 33,024 |" in md


def test_sweep_key_and_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kovocab.cli import main
    from kovocab.config import load_section
    from kovocab.errors import ConfigError
    from kovocab.tokenizer.expand import ExpandVocabConfig

    cfg = load_section(ExpandVocabConfig, {"expand_vocab": {"base": "b", "corpus": ["c"], "out_dir": "o",
                                                            "sweep": [4096, 8192]}}, "expand_vocab")
    assert cfg.sweep == (4096, 8192)
    with pytest.raises(ConfigError, match="sweep"):
        load_section(ExpandVocabConfig, {"expand_vocab": {"base": "b", "corpus": ["c"], "out_dir": "o",
                                                          "sweep": [0]}}, "expand_vocab")
    assert main(["expand-vocab", "--sweep", "4096,lots", "c", "--base", "b", "--out", str(tmp_path)]) == 2
    assert "expected comma-separated whole numbers, got '4096,lots'" in capsys.readouterr().err


def test_report_without_english_lines_says_so_and_reads_xz_references(tmp_path: Path) -> None:
    from kovocab.report.html import render_summary
    from kovocab.report.measure import ReportConfig, TextSpec, TokenizerSpec, run_report

    korean = tmp_path / "ko.txt"
    korean.write_text(GOLDEN_KO + "\n오늘은 비가 옵니다.\n", encoding="utf-8")
    cfg = ReportConfig(
        tokenizers=(TokenizerSpec("llama2", LLAMA2_MODEL),),
        texts=(TextSpec("ko", korean),),
        out_dir=tmp_path / "rep",
        reference_tokenizers=(TokenizerSpec("qwen3", DATA / "tokenizers" / "qwen3" / "tokenizer.json.xz"),
                              TokenizerSpec("gone", tmp_path / "missing.model")),
    )
    res = run_report(cfg)
    assert res.figures["order"]["tokenizers"] == ["llama2", "qwen3"]  # the missing one skipped
    qwen = res.figures["examples"][0]["tokenizers"]["qwen3"]
    assert qwen["count"] == 13  # shared/data README: Qwen3 spends 13 tokens on the golden sentence
    html = res.report_html.read_text()
    assert "no English lines" in html and "<td>no</td>" not in html
    assert "no English lines" in res.report_md.read_text()
    assert "qwen3 no English lines" in render_summary(res.figures)


def test_report_extra_texts_add_an_english_set(tmp_path: Path) -> None:
    from kovocab.report.measure import ReportConfig, TextSpec, TokenizerSpec, run_report

    english = tmp_path / "en.txt"
    english.write_text("\n".join(news_lines("en")[:50]) + "\n", encoding="utf-8")
    korean = tmp_path / "ko.txt"
    korean.write_text("\n".join(news_lines("ko")[:50]) + "\n", encoding="utf-8")
    cfg = ReportConfig(
        tokenizers=(TokenizerSpec("llama2", LLAMA2_MODEL),
                    TokenizerSpec("mistral", DATA / "tokenizers" / "mistral_v1" / "tokenizer.model.v1")),
        texts=(TextSpec("ko", korean),), extra_texts=(TextSpec("en", english),), out_dir=tmp_path / "rep",
    )
    res = run_report(cfg)
    assert res.figures["order"]["texts"] == ["ko", "en"]
    assert res.figures["english_vs_base"]["llama2"]["identical"] is True
    assert res.figures["english_vs_base"]["mistral"]["lines"] >= 45
