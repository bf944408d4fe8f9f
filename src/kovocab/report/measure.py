"""Tokenization-efficiency report: tokenizers × text sets -> report.json, report.md, report.html.

Inputs: tokenizers (anything `tokenizer.load` reads) and text sets (see
`report.texts`). Figures per tokenizer × set × script bucket (korean, english, mixed);
fertility and the multi-token word share follow Rust et al. 2021, "How Good is Your
Tokenizer?" (arXiv:2012.15613). Outputs also carry config.yaml and manifest.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kovocab.artifacts import (
    Owned,
    atomic_write_text,
    claims_output,
    exact,
    sha256_file,
    write_config,
    write_json,
    write_manifest,
)
from kovocab.config import build, opt
from kovocab.errors import ConfigError, InputError, KovocabError
from kovocab.tokenizer.load import Encoder, load_tokenizer

if TYPE_CHECKING:  # numpy and the text readers load with the stage, not with `kovocab --help`
    from kovocab.report.texts import TextSet

log = logging.getLogger(__name__)

OUTPUTS = Owned("report", files=exact("report.json", "report.md", "report.html"))  # what it writes in out_dir

DEFAULT_EXAMPLES = (
    "안녕하세요, 오늘은 날씨가 좋네요.",  # the Llama-2-Ko model card's sentence
    "The quick brown fox jumps over the lazy dog.",
    "pip install kovocab 후 `kovocab report --help`로 옵션을 확인하세요.",
)
HIST_BINS = 30
THROUGHPUT_SECONDS = 0.1  # per tokenizer and text set


@dataclass(frozen=True)
class TokenizerSpec:
    name: str = opt(doc="name shown in the report")
    path: Path = opt(doc="SentencePiece .model, tokenizer.json, tokenizer folder or tiktoken rank file")


@dataclass(frozen=True)
class TextSpec:
    name: str = opt(doc="name shown in the report")
    path: Path = opt(doc="text file (.gz/.xz ok), .jsonl/.json/.tsv file, or kovocab shard folder")
    field: str | None = opt(None, "JSONL/JSON field or TSV column (name or 0-based index)")


@dataclass(frozen=True)
class ReportConfig:
    """Which tokenizers to compare on which texts (recipe section `report:`)."""

    tokenizers: tuple[TokenizerSpec, ...] = opt(doc="list of {name, path}")
    texts: tuple[TextSpec, ...] = opt(doc="list of {name, path, field}; path may end in :FIELD")
    out_dir: Path = opt(doc="output folder (report.json, report.md, report.html)")
    base: str | None = opt(None, "tokenizer the others are compared with (default: the first)")
    examples: tuple[str, ...] = opt((), "sentences shown piece by piece (default: Korean, English, mixed)")
    max_lines: int | None = opt(10000, "first N non-empty lines per text set (null: all)")
    text_field: str = opt("text", "JSONL/JSON field or TSV column when a text set names none")
    shard_split: Literal["train", "eval"] = opt("eval", "split read from kovocab shard folders")
    reference_tokenizers: tuple[TokenizerSpec, ...] = opt(
        (), "more {name, path} tokenizers, each skipped with a warning when its file is missing "
        "(reference tokenizers not every machine has)"
    )
    extra_texts: tuple[TextSpec, ...] = opt(
        (), "more {name, path, field} text sets (in `kovocab run`, `texts` is wired to the held-out split)"
    )
    sweep_file: Path | None = opt(None, "sweep.json from expand_vocab's sweep: a curve of the sizes")

    def check(self) -> list[str]:
        problems = []
        names = [t.name for t in (*self.tokenizers, *self.reference_tokenizers)]
        sets = [t.name for t in (*self.texts, *self.extra_texts)]
        for what, seq in (("tokenizers", names), ("texts", sets)):
            if not seq:
                problems.append(f"{what}: give at least one NAME=PATH")
            dup = sorted({n for n in seq if seq.count(n) > 1})
            if dup:
                problems.append(f"{what}: names must be unique, repeated: {', '.join(dup)}")
        if self.base is not None and self.base not in names:
            problems.append(f"base: {self.base!r} is not a tokenizer name (names: {', '.join(names)})")
        if self.max_lines is not None and self.max_lines < 1:
            problems.append(f"max_lines: must be at least 1 (or null for all), got {self.max_lines}")
        return problems

    @property
    def base_name(self) -> str:
        return self.base or self.tokenizers[0].name


@dataclass(frozen=True)
class ReportResult:
    """Where the report went, and every figure in it (the content of report.json)."""

    out_dir: Path
    figures: dict[str, Any]
    report_json: Path
    report_md: Path
    report_html: Path
    manifest: Path


def efficiency_report(
    tokenizers: Mapping[str, str | Path],
    texts: Mapping[str, str | Path],
    out_dir: str | Path,
    base: str | None = None,
    examples: Sequence[str] | None = None,
    max_lines: int | None = 10000,
    text_field: str = "text",
    shard_split: Literal["train", "eval"] = "eval",
    sweep: Sequence[Mapping[str, Any]] = (),
) -> ReportResult:
    """Compare `tokenizers` ({name: path}) on `texts` ({name: path or path:field}) into `out_dir`.

    `sweep`: the rows of an expand_vocab sweep (`ExpandResult.sweep`), drawn as a curve.
    """
    raw = {
        "tokenizers": [{"name": n, "path": str(p)} for n, p in tokenizers.items()],
        "texts": [{"name": n, "path": str(p)} for n, p in texts.items()],
        "out_dir": str(out_dir),
        "base": base,
        "examples": list(examples or ()),
        "max_lines": max_lines,
        "text_field": text_field,
        "shard_split": shard_split,
    }
    problems: list[str] = []
    cfg = build(ReportConfig, raw, "report", problems)
    if problems or cfg is None:
        raise ConfigError(problems)
    return run_report(cfg, sweep)


def summary_lines(cfg: ReportConfig, res: ReportResult) -> list[str]:
    """What `kovocab report` prints: the headline figures and where the report went."""
    from kovocab.report.html import render_summary

    return [render_summary(res.figures), f"report: {res.report_md}\n        {res.report_html}\n"
                                         f"        {res.report_json}"]


@claims_output(OUTPUTS, "report.out_dir")
def run_report(cfg: ReportConfig, sweep: Sequence[Mapping[str, Any]] = ()) -> ReportResult:
    """Measure every tokenizer on every text set and write the report files."""
    from kovocab.report.html import render_html, render_markdown

    encoders, sets = _load_inputs(cfg)
    figures = measure(encoders, sets, cfg.base_name, cfg.examples or DEFAULT_EXAMPLES)
    rows = [dict(r) for r in sweep] or _read_sweep(cfg.sweep_file)
    if rows:
        figures["sweep"] = rows
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("report.json", "report.md", "report.html")}
    write_json(paths["report.json"], figures)
    atomic_write_text(paths["report.md"], render_markdown(figures))
    atomic_write_text(paths["report.html"], render_html(figures))
    write_config(out, "report", cfg)
    inputs = {
        "tokenizers": {n: {"file": str(e.path), "sha256": sha256_file(e.path)} for n, e in encoders.items()},
        "texts": {s.name: {"path": str(s.path), "lines": len(s.lines),
                           "sha256": sha256_file(s.path) if s.path.is_file() else None} for s in sets},
    }
    headline = {
        t: {s: r["all"]["chars_per_token"] for s, r in per_set.items()}
        for t, per_set in figures["results"].items()
    }
    manifest = write_manifest(out, "report", {"chars_per_token": headline}, inputs=inputs)
    log.info("report written to %s", out)
    return ReportResult(
        out, figures, paths["report.json"], paths["report.md"], paths["report.html"], manifest
    )


def _read_sweep(path: Path | None) -> list[dict[str, Any]]:
    import json

    if path is None:
        return []
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"report.sweep_file: cannot read the sweep rows from {path} ({exc}); give the sweep.json "
            "that expand_vocab writes with a sweep, or drop the key"
        ) from exc
    return [dict(r) for r in rows]


def _load_inputs(cfg: ReportConfig) -> tuple[dict[str, Encoder], list[TextSet]]:
    """Load every tokenizer and text set, reporting all unreadable inputs at once."""
    from kovocab.report.texts import read_text_set

    problems: list[str] = []
    encoders: dict[str, Encoder] = {}
    present = [r for r in cfg.reference_tokenizers if Path(r.path).exists()]
    for r in cfg.reference_tokenizers:
        if r not in present:
            log.warning("reference tokenizer '%s' skipped: %s not found", r.name, r.path)
    for spec in (*cfg.tokenizers, *present):
        try:
            encoders[spec.name] = load_tokenizer(spec.path)
        except KovocabError as exc:
            problems.append(f"tokenizer '{spec.name}': {exc}")
    sets = []
    for t in (*cfg.texts, *cfg.extra_texts):
        try:
            sets.append(
                read_text_set(t.name, t.path, t.field, cfg.text_field, cfg.shard_split, cfg.max_lines)
            )
        except KovocabError as exc:
            problems.append(str(exc))
    if problems:
        if len(problems) == 1:
            raise InputError(problems[0])
        raise InputError("\n  - ".join([f"{len(problems)} unreadable inputs:", *problems]))
    return encoders, sets


def measure(
    encoders: Mapping[str, Encoder], sets: Sequence[TextSet], base: str, examples: Sequence[str]
) -> dict[str, Any]:
    """All figures: per tokenizer × set × bucket metrics, English-vs-base identity, examples."""
    import numpy as np

    from kovocab.report.texts import BUCKETS

    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in encoders}
    english: dict[str, dict[str, Any]] = {name: {"lines": 0, "identical_lines": 0} for name in encoders}
    texts: dict[str, Any] = {}
    for ts in sets:
        log.info("measuring %d tokenizers on '%s' (%d lines)", len(encoders), ts.name, len(ts.lines))
        per_line = {name: _per_line(enc, ts) for name, enc in encoders.items()}
        base_line = per_line[base]
        width = _hist_width(np.concatenate([pl["tokens"] for pl in per_line.values()]))
        edges = np.arange(HIST_BINS + 1) * width
        masks = {"all": np.ones(len(ts.lines), bool), **{b: ts.buckets == b for b in BUCKETS}}
        texts[ts.name] = {"path": str(ts.path), "lines": len(ts.lines), "hist_bin_width": width,
                          "buckets": {b: int(masks[b].sum()) for b in BUCKETS}}
        for name, pl in per_line.items():
            rows = {b: _summary(pl, ts, m, base_line) for b, m in masks.items() if m.any()}
            rows["all"]["encode_mb_per_s"] = _throughput(encoders[name], ts)
            # The last bin also holds the tail beyond it, so long lines stay counted.
            hist = np.histogram(np.minimum(pl["tokens"], edges[-1] - 1), bins=edges)[0]
            rows["all"]["tokens_per_sentence_hist"] = hist.tolist()
            results[name][ts.name] = rows
            english[name]["lines"] += len(base_line["english_ids"])
            english[name]["identical_lines"] += sum(
                a == b for a, b in zip(pl["english_ids"], base_line["english_ids"], strict=True)
            )
    for e in english.values():
        e["identical"] = e["lines"] > 0 and e["identical_lines"] == e["lines"]
    return {
        "base": base,
        # report.json sorts keys; the order the user gave is kept here for the renderers.
        "order": {"tokenizers": list(encoders), "texts": [ts.name for ts in sets]},
        "tokenizers": {n: e.describe() for n, e in encoders.items()},
        "texts": texts,
        "results": results,
        "english_vs_base": english,
        "examples": [_example(s, encoders, base) for s in examples],
        "metrics": METRIC_DOCS,
    }


def _per_line(enc: Encoder, ts: TextSet) -> dict[str, Any]:
    """Per-line counts for one tokenizer: tokens, multi-token words, byte/unk tokens, round trip."""
    import numpy as np

    from kovocab.report.texts import multi_token_words

    n = len(ts.lines)
    tokens, multi, byte_tok, unk, exact = (np.zeros(n, np.int64) for _ in range(5))
    english_ids = []
    byte_ids, unk_id = enc.byte_ids, enc.unk_id
    for i, line in enumerate(ts.lines):
        ids, starts = enc.encode_with_starts(line)
        tokens[i] = len(ids)
        byte_tok[i] = sum(1 for t in ids if t in byte_ids)
        unk[i] = ids.count(unk_id) if unk_id is not None else 0
        exact[i] = enc.decode(ids) == line
        multi[i] = multi_token_words(starts, ts.word_spans[i])
        if ts.buckets[i] == "english":
            english_ids.append(ids)
    return {"tokens": tokens, "multi": multi, "byte": byte_tok, "unk": unk, "exact": exact,
            "english_ids": english_ids}


def _summary(pl: dict[str, Any], ts: TextSet, mask: Any, base: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    tok = pl["tokens"][mask]
    n_tok = int(tok.sum())
    n_words, n_chars, n_bytes = (int(ts.stats[k][mask].sum()) for k in ("words", "chars", "bytes"))
    base_tok = int(base["tokens"][mask].sum())
    return {
        "lines": int(mask.sum()), "words": n_words, "chars": n_chars, "bytes": n_bytes, "tokens": n_tok,
        "tokens_per_sentence_mean": float(tok.mean()),
        "tokens_per_sentence_median": float(np.median(tok)),
        "tokens_per_sentence_p95": float(np.percentile(tok, 95)),
        "chars_per_token": n_chars / max(n_tok, 1),
        "bytes_per_token": n_bytes / max(n_tok, 1),
        "fertility": n_tok / max(n_words, 1),
        "multi_token_word_share": int(pl["multi"][mask].sum()) / max(n_words, 1),
        "byte_fallback_share": int(pl["byte"][mask].sum()) / max(n_tok, 1),
        "unk_share": int(pl["unk"][mask].sum()) / max(n_tok, 1),
        "roundtrip_rate": float(pl["exact"][mask].mean()),
        "tokens_vs_base": n_tok / max(base_tok, 1),
    }


def _hist_width(tokens: Any) -> int:
    """Integer bin width so HIST_BINS bins cover the 99th percentile of every tokenizer."""
    import numpy as np

    top = float(np.percentile(tokens, 99)) if len(tokens) else 1.0
    return max(1, int(np.ceil((top + 1) / HIST_BINS)))


def _throughput(enc: Encoder, ts: TextSet) -> float:
    """Encode speed in MB (10^6 bytes of UTF-8) per second: one thread, one call per line.

    The fastest of repeated passes (at least THROUGHPUT_SECONDS in all): other work on
    the machine only ever slows a pass down, so the fastest is the least disturbed.
    """
    enc.encode(ts.lines[0])  # warm-up: regex compilation, lazy caches
    best, spent, passes = float("inf"), 0.0, 0
    while passes < 1 or (spent < THROUGHPUT_SECONDS and passes < 50):
        start = time.perf_counter()
        for line in ts.lines:
            enc.encode(line)
        elapsed = time.perf_counter() - start
        best, spent, passes = min(best, elapsed), spent + elapsed, passes + 1
    return int(ts.stats["bytes"].sum()) / 1e6 / max(best, 1e-9)


def _example(text: str, encoders: Mapping[str, Encoder], base: str) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for name, enc in encoders.items():
        ids = enc.encode(text)
        rows[name] = {"count": len(ids), "ids": ids, "pieces": enc.pieces(ids)}
    base_count = rows[base]["count"]
    for row in rows.values():
        row["change_vs_base"] = row["count"] - base_count
    return {"text": text, "tokenizers": rows}


METRIC_DOCS = {
    "tokens_per_sentence_*": "tokens per line (mean, median, 95th percentile), no BOS/EOS",
    "chars_per_token": "Unicode characters per token (higher is better)",
    "bytes_per_token": "UTF-8 bytes per token",
    "fertility": "tokens per whitespace-separated word (eojeol for Korean)",
    "multi_token_word_share": "share of words that take more than one token",
    "byte_fallback_share": "share of tokens whose bytes are not whole UTF-8 characters: byte-fallback "
    "pieces <0xNN> (SentencePiece, tokenizers), and byte-level BPE tokens holding part of a character "
    "(Llama-3, Qwen); bench/tokenizer_bench.py counts the same",
    "unk_share": "share of tokens that are the unknown token",
    "roundtrip_rate": "share of lines with decode(encode(line)) == line",
    "tokens_vs_base": "tokens / tokens of the base tokenizer on the same lines",
    "encode_mb_per_s": "encode speed on this machine: one thread, one call per line, fastest of "
    "repeated passes, MB = 10^6 bytes",
    "english_vs_base": "lines without Hangul whose ids equal the base tokenizer's ids",
}


def config_from_flags(values: Sequence[str], kind: str) -> tuple[dict[str, str], ...]:
    """`NAME=PATH` strings (NAME defaults to the file or folder name) as config mappings."""
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or "/" in name:  # no NAME=, or an '=' inside a folder name
            p = Path(value)
            name, path = (p.parent.name if p.name.startswith("tokenizer") else p.name.split(".")[0]), value
        if not name or not path:
            raise ConfigError(f"--{kind} {value!r}: expected NAME=PATH")
        out.append({"name": name, "path": str(Path(path).absolute())})
    return tuple(out)


