"""The efficiency report on real tokenizers and real Korean/English text.

Expected figures are recomputed here straight from sentencepiece, tiktoken and numpy,
never from kovocab's own code. Everything is written under tmp_path.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sentencepiece as spm
import yaml
from conftest import DATA, GOLDEN_KO, LLAMA2_MODEL, news_file

import kovocab
from kovocab.cli import main
from kovocab.config import load_section
from kovocab.report.measure import ReportConfig, efficiency_report

TOK = DATA / "tokenizers"
TOKENIZERS = {
    "llama2": LLAMA2_MODEL,
    "llama2_json": TOK / "llama2_hf_json" / "tokenizer.json",
    "llama3": TOK / "llama3" / "tokenizer.model",
    "mistral": TOK / "mistral_v1" / "tokenizer.model.v1",
    "chinese_llama2": TOK / "chinese_llama2_expanded",
}
GOLDEN_COUNTS = {"llama2": 30, "llama2_json": 30, "llama3": 11, "mistral": 26, "chinese_llama2": 30}
BODY_ONLY = b'{"body": "a"}\n'
N = 200  # lines per text set: enough for every bucket, small enough for 2 cores


@pytest.fixture(scope="module")
def news(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("news")
    return {lang: news_file(lang, out) for lang in ("ko", "en")}


@pytest.fixture(scope="module")
def report(news: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    texts = {
        "news_ko": news["ko"], "news_en": news["en"],
        "nsmc": f"{DATA / 'nsmc' / 'nsmc_raw_reviews.tsv.xz'}:review",
        "klue_nli": f"{DATA / 'klue' / 'klue-nli-v1.1_dev.json'}:premise",
        "kobest_boolq": f"{DATA / 'kobest' / 'BoolQ' / 'dev.tsv'}:Text",
    }
    with pytest.MonkeyPatch.context() as mp:
        # one timed pass: tests check values, not speed
        mp.setattr("kovocab.report.measure.THROUGHPUT_SECONDS", 0.0)
        return kovocab.efficiency_report(
            tokenizers=TOKENIZERS, texts=texts, out_dir=tmp_path_factory.mktemp("report") / "out",
            base="llama2", max_lines=N,
        )


def test_golden_example_counts_and_ids(report: Any) -> None:
    ex = report.figures["examples"][0]
    assert ex["text"] == GOLDEN_KO
    assert {t: r["count"] for t, r in ex["tokenizers"].items()} == GOLDEN_COUNTS
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    assert ex["tokenizers"]["llama2_json"]["ids"] == ex["tokenizers"]["llama2"]["ids"] == sp.encode(GOLDEN_KO)
    assert ex["tokenizers"]["llama3"]["change_vs_base"] == 11 - 30
    assert " ".join(ex["tokenizers"]["llama2"]["pieces"]) == " ".join(sp.encode(GOLDEN_KO, out_type=str))


def test_llama2_metrics_agree_with_direct_sentencepiece_counts(report: Any, news: dict[str, Path]) -> None:
    lines = [x.strip() for x in news["ko"].read_text(encoding="utf-8").splitlines() if x.strip()][:N]
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    ids = sp.encode(lines)
    counts = np.array([len(x) for x in ids])
    words = [w for line in lines for w in line.split()]
    chars = sum(len(x) for x in lines)
    m = report.figures["results"]["llama2"]["news_ko"]["all"]
    assert m["lines"] == len(lines) and m["tokens"] == counts.sum()
    assert m["tokens_per_sentence_mean"] == pytest.approx(counts.mean())
    assert m["tokens_per_sentence_median"] == pytest.approx(np.median(counts))
    assert m["tokens_per_sentence_p95"] == pytest.approx(np.percentile(counts, 95))
    assert m["chars_per_token"] == pytest.approx(chars / counts.sum())
    assert m["bytes_per_token"] == pytest.approx(sum(len(x.encode()) for x in lines) / counts.sum())
    assert m["fertility"] == pytest.approx(counts.sum() / len(words))
    # Llama-2 encodes each whitespace-separated word on its own (split_by_whitespace),
    # so a word's tokens in context are the tokens of the word alone.
    multi = sum(len(sp.encode(w)) > 1 for w in words)
    assert m["multi_token_word_share"] == pytest.approx(multi / len(words))
    byte = sum(sp.is_byte(i) for x in ids for i in x)
    assert m["byte_fallback_share"] == pytest.approx(byte / counts.sum())
    assert m["unk_share"] == sum(i == sp.unk_id() for x in ids for i in x) / counts.sum()
    assert m["roundtrip_rate"] == np.mean([sp.decode(x) == line for x, line in zip(ids, lines, strict=True)])
    assert m["tokens_vs_base"] == 1.0 and m["encode_mb_per_s"] > 0
    assert sum(m["tokens_per_sentence_hist"]) == len(lines)


def test_llama3_counts_agree_with_tiktoken(
    report: Any, news: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from kovocab.tokenizer.load import LLAMA3_PAT_STR

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    enc = tiktoken.Encoding("ref", pat_str=LLAMA3_PAT_STR,
                            mergeable_ranks=load_tiktoken_bpe(str(TOKENIZERS["llama3"])), special_tokens={})
    lines = [x.strip() for x in news["en"].read_text(encoding="utf-8").splitlines() if x.strip()][:N]
    n_tok = sum(len(enc.encode_ordinary(x)) for x in lines)
    m = report.figures["results"]["llama3"]["news_en"]["all"]
    assert m["tokens"] == n_tok
    base = report.figures["results"]["llama2"]["news_en"]["all"]["tokens"]
    assert m["tokens_vs_base"] == pytest.approx(n_tok / base)


def test_script_buckets_and_english_identity(report: Any) -> None:
    fig = report.figures
    assert fig["texts"]["news_en"]["buckets"]["korean"] == 0
    assert fig["texts"]["news_en"]["buckets"]["english"] >= N - 2
    assert fig["texts"]["news_ko"]["buckets"]["english"] == 0
    assert fig["texts"]["news_ko"]["buckets"]["korean"] >= N * 0.9
    assert fig["texts"]["klue_nli"]["lines"] == N and fig["texts"]["kobest_boolq"]["lines"] == N
    english = fig["english_vs_base"]
    assert english["llama2_json"]["identical"] and english["chinese_llama2"]["identical"]
    assert not english["llama3"]["identical"] and not english["mistral"]["identical"]
    assert english["llama2"]["lines"] == english["llama2"]["identical_lines"] >= N - 2
    # Korean: Llama-3 and Mistral need fewer tokens than Llama-2; Chinese-LLaMA-2 adds no Hangul.
    ko = {t: fig["results"][t]["news_ko"]["korean"]["chars_per_token"] for t in TOKENIZERS}
    assert ko["llama3"] > ko["mistral"] > ko["llama2"] == ko["llama2_json"]
    assert ko["chinese_llama2"] == pytest.approx(ko["llama2"], rel=0.01)


def test_bucket_rules() -> None:
    from kovocab.report.texts import script_bucket

    assert script_bucket(GOLDEN_KO) == "korean"
    assert script_bucket("미 식품의약국(FDA)은 25일 밝혔다.") == "korean"
    assert script_bucket("The quick brown fox jumps over the lazy dog.") == "english"
    assert script_bucket("Bush nudges Israel toward peace 부시 대통령, 평화를 종용") == "mixed"
    assert script_bucket("def f(x): return {x: y[0]}") == "mixed"
    assert script_bucket("2008.10 12:30") == "mixed"


def test_output_files(report: Any) -> None:
    out = report.out_dir
    written = json.loads(report.report_json.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(report.figures))
    md = report.report_md.read_text(encoding="utf-8")
    assert "`▁ 안 <0xEB> <0x85> <0x95> 하 세 요 , ▁ 오" in md and "| llama3 | 11 | -19 |" in md
    html = report.report_html.read_text(encoding="utf-8")
    assert "<svg" in html and "<polyline" in html and "<rect" in html
    for remote in ("http://", "https://", "//cdn", "<script", "src=", "@import", "url("):
        assert remote not in html
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "report"
    assert {"report.json", "report.md", "report.html", "config.yaml"} <= set(manifest["files"])
    assert manifest["inputs"]["tokenizers"]["llama2"]["sha256"].startswith("9e556afd")
    cfg = load_section(ReportConfig, yaml.safe_load((out / "config.yaml").read_text()), "report")
    assert [t.name for t in cfg.tokenizers] == list(TOKENIZERS)
    assert cfg.base == "llama2" and cfg.max_lines == N


def test_text_formats_and_first_n_lines(tmp_path: Path) -> None:
    from kovocab.report.texts import read_text_set

    gz = tmp_path / "plain.txt.gz"
    gz.write_bytes(gzip.compress("첫 줄\n\n  둘째 줄  \n셋째 줄\n".encode()))
    assert read_text_set("gz", gz, None).lines == ["첫 줄", "둘째 줄", "셋째 줄"]
    assert read_text_set("gz", gz, None, max_lines=2).lines == ["첫 줄", "둘째 줄"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"id": 1, "body": "가 나\\n다"}\n{"id": 2, "body": "라"}\n', encoding="utf-8")
    assert read_text_set("j", f"{jsonl}:body", None).lines == ["가 나", "다", "라"]
    shard = tmp_path / "shards"
    shard.mkdir()
    (shard / "manifest.json").write_text('{"stage": "shard"}')
    for split, text in (("train", "학습 문장"), ("eval", "평가 문장")):
        rec = json.dumps({"id": "x", "source": "s", "text": text}, ensure_ascii=False)
        (shard / f"{split}-00000-of-00001.jsonl.gz").write_bytes(gzip.compress((rec + "\n").encode()))
    assert read_text_set("s", shard, None).lines == ["평가 문장"]
    assert read_text_set("s", shard, None, split="train").lines == ["학습 문장"]
    nsmc = read_text_set("n", DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz", "review", max_lines=3)
    assert nsmc.lines[0] == "전체관람가는 아닌것 같아요"


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_report_and_prints_table(tmp_path: Path, news: dict[str, Path], capsys: Any) -> None:
    code, out, _ = _cli(["--tokenizer", f"llama2={LLAMA2_MODEL}",
                         "--tokenizer", f"llama3={TOKENIZERS['llama3']}", "--text", f"ko={news['ko']}",
                         "--out", str(tmp_path / "r"), "--base", "llama2",
                         "--example", "오늘은 날씨가 좋네요.", "--max-lines", "20"], capsys)
    assert code == 0
    assert "ko " in out and "llama3" in out and str(tmp_path / "r" / "report.html") in out
    fig = json.loads((tmp_path / "r" / "report.json").read_text())
    assert fig["texts"]["ko"]["lines"] == 20 and fig["examples"][0]["text"] == "오늘은 날씨가 좋네요."


def test_recipe_paths_are_relative_to_the_recipe(tmp_path: Path, news: dict[str, Path], capsys: Any) -> None:
    (tmp_path / "en.txt").symlink_to(news["en"])
    recipe = tmp_path / "report.yaml"
    recipe.write_text(yaml.safe_dump({"report": {
        "tokenizers": [{"name": "llama2", "path": str(LLAMA2_MODEL)}],
        "texts": [{"name": "en", "path": "en.txt"}], "out_dir": "out", "max_lines": 5,
    }}))
    code, _, err = _cli(["--recipe", str(recipe)], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.model", "not found"),
        (lambda d: _write(d / "garbage.model", bytes(range(256)) * 8), "cannot parse it as a .model"),
        (lambda d: _write(d / "cut.model", LLAMA2_MODEL.read_bytes()[:100_000]), "truncated or corrupt"),
        (lambda d: _write(d / "empty.model", b""), "empty file"),
        (lambda d: _mkdir(d / "nothing"), "holds no tokenizer.json"),
    ],
)
def test_cli_errors_for_broken_tokenizers(tmp_path: Path, news: dict[str, Path], capsys: Any, make: Any,
                                          message: str) -> None:
    bad = make(tmp_path)
    code, _, err = _cli(["--tokenizer", f"bad={bad}", "--text", f"ko={news['ko']}",
                         "--out", str(tmp_path / "r")], capsys)
    assert code == 1
    assert err.startswith("kovocab: error: tokenizer 'bad': ") and message in err and str(bad) in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (lambda d: _write(d / "empty.txt", b""), "no non-empty lines"),
        (lambda d: _write(d / "blank.txt", b"  \n\n\t\n"), "no non-empty lines"),
        (lambda d: d / "missing.txt", "not found"),
        (lambda d: f"{_write(d / 'x.jsonl', BODY_ONLY)}:text", "no field 'text' (fields: body)"),
        (lambda d: f"{DATA / 'kobest' / 'BoolQ' / 'dev.tsv'}:Txt", "no column 'Txt'"),
        (lambda d: _mkdir(d / "folder"), "not a kovocab shard folder"),
        (lambda d: _write(d / "latin1.txt", "café\n".encode("latin-1")), "not UTF-8"),
    ],
)
def test_cli_errors_for_unusable_text_sets(tmp_path: Path, capsys: Any, text: Any, message: str) -> None:
    code, _, err = _cli(["--tokenizer", f"llama2={LLAMA2_MODEL}", "--text", f"t={text(tmp_path)}",
                         "--out", str(tmp_path / "r")], capsys)
    assert code == 1
    assert err.startswith("kovocab: error: text set 't'") and message in err


def test_config_problems_are_reported_at_once(tmp_path: Path, capsys: Any) -> None:
    code, _, err = _cli(["--tokenizer", f"a={LLAMA2_MODEL}", "--tokenizer", f"a={LLAMA2_MODEL}",
                         "--text", f"t={LLAMA2_MODEL}", "--base", "zzz", "--max-lines", "0",
                         "--out", str(tmp_path)], capsys)
    assert code == 1
    assert "names must be unique" in err and "'zzz' is not a tokenizer name" in err and "max_lines" in err
    with pytest.raises(kovocab.errors.ConfigError, match="texts: give at least one"):
        efficiency_report({"a": LLAMA2_MODEL}, {}, tmp_path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
