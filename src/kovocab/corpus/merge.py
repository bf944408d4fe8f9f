"""Stage `shard`, phase 2: finished tasks -> deduplicated, assigned, written shards.

Inputs: every input's task files (.work/). Outputs: the shards, quarantine.jsonl and
the manifest body. Global order: eval sources first (so a train copy of an eval text is
the one dropped), then source, file, record number; the first copy is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from kovocab.artifacts import atomic_open
from kovocab.config import to_dict
from kovocab.corpus.dedup import DIGEST_BYTES, first_occurrences
from kovocab.corpus.inputs import InputFile
from kovocab.corpus.near import near_duplicates
from kovocab.corpus.normalizer import options as normalise_options
from kovocab.corpus.options import ShardConfig
from kovocab.corpus.shards import (
    ShardWriter,
    bool_array,
    fixed_width,
    merged_batches,
    merged_quarantine,
    repeated,
    shard_name,
)
from kovocab.corpus.tasks import WORK, Task

QUARANTINE = "quarantine.jsonl"


def merge_tasks(
    cfg: ShardConfig, inputs: list[InputFile], tasks: list[Task], out: Path, progress: bool
) -> dict[str, Any]:
    """Write the shards and quarantine.jsonl; return the manifest's statistics and tables."""
    from tqdm import tqdm

    work = out / WORK
    by_input: dict[tuple[int, int], list[Task]] = {}
    for t in tasks:
        by_input.setdefault((t.inp.source, t.inp.index), []).append(t)
    summaries = {t.key: json.loads(t.path(work, ".done.json").read_text()) for t in tasks}
    order = sorted(inputs, key=lambda i: (cfg.sources[i.source].use != "eval", i.source, i.index))
    for parts in by_input.values():
        parts.sort(key=lambda t: t.part)
    paths = {key: [t.path(work, ".arrow") for t in parts] for key, parts in by_input.items()}
    inputs_paths = [paths.get((i.source, i.index), []) for i in order]
    firsts, nears = _duplicates(cfg, inputs_paths)
    train = [shard_name("train", k, cfg.shards) for k in range(cfg.shards)]
    names = [*train, shard_name("eval", 0, 1)]
    entries: list[dict[str, Any]] = []
    total = sum(s["records"] for s in summaries.values())
    with (
        ExitStack() as stack,
        tqdm(total=total, desc="dedupe+write", unit=" rec", unit_scale=True, disable=not progress) as bar,
    ):
        writers = [ShardWriter(out, name, cfg.gzip_level, stack) for name in names]
        with atomic_open(out / QUARANTINE) as q:
            for n, inp in enumerate(order):
                parts = by_input.get((inp.source, inp.index), [])
                for line in merged_quarantine([t.path(work, ".quarantine.jsonl") for t in parts]):
                    q.write(line)
                entry = _merge_input(cfg, inp, inputs_paths[n], firsts[n], nears[n], writers)
                entry["records"] = sum(summaries[t.key]["records"] for t in parts)
                entry["dropped"] = dict(sorted(_sum(summaries[t.key]["dropped"] for t in parts).items()))
                if entry["records"] != entry["kept"] + sum(entry["dropped"].values()) + sum(
                    entry["duplicates"].values()
                ):
                    raise RuntimeError(f"kovocab bug: records of {inp.path} do not add up: {entry}")
                entries.append(entry)
                bar.update(entry["records"])
    # After the stack has closed (flushed) every writer.
    shard_table = {w.name: {"docs": w.docs, "chars": w.total_chars} for w in writers}
    entries.sort(key=lambda e: (e["source_index"], e["file_index"]))
    return _manifest_body(cfg, entries, shard_table, train, names[-1])


def _sum(counters: Iterable[dict[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for c in counters:
        total.update(c)
    return total


def _duplicates(cfg: ShardConfig, inputs: list[list[Path]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per input (in global order), per record: is it the first copy of its text in the corpus,
    and is it a near-duplicate (near.near_duplicates over every document, in memory)?"""
    digest_chunks: list[np.ndarray] = []
    sig_chunks: list[np.ndarray] = []
    counts: list[int] = []
    columns = ["record", "digest"] + (["minhash"] if cfg.near_dedupe else [])
    for paths in inputs:
        n = 0
        for batch in merged_batches(paths, columns=columns) if paths else ():
            d = np.frombuffer(fixed_width(batch.column("digest"), DIGEST_BYTES), dtype="<u8")
            digest_chunks.append(d.reshape(-1, 2).copy())
            if cfg.near_dedupe:
                sig = fixed_width(batch.column("minhash"), 4 * cfg.minhash_perms)
                sig_chunks.append(np.frombuffer(sig, dtype=np.uint32).reshape(-1, cfg.minhash_perms).copy())
            n += batch.num_rows
        counts.append(n)
    total = sum(counts)
    cuts = np.cumsum(counts)[:-1]
    if cfg.exact_dedupe:
        digests = np.concatenate(digest_chunks) if digest_chunks else np.zeros((0, 2), dtype=np.uint64)
        first = first_occurrences(digests)
    else:
        first = np.ones(total, dtype=bool)
    near = np.zeros(total, dtype=bool)
    if cfg.near_dedupe and total:
        sigs = np.concatenate(sig_chunks)
        del sig_chunks
        ids = near_duplicates(sigs, np.arange(total, dtype=np.uint64), cfg.near_threshold, cfg.near_recall)
        near[ids.astype(np.int64)] = True
    return np.split(first, cuts), np.split(near, cuts)


def _merge_input(
    cfg: ShardConfig,
    inp: InputFile,
    paths: list[Path],
    first: np.ndarray,
    near: np.ndarray,
    writers: list[ShardWriter],
) -> dict[str, Any]:
    src = cfg.sources[inp.source]
    prefix = f"{src.name}:{inp.index}:"
    dups: Counter[str] = Counter()
    kept = 0
    offset = 0
    for batch in merged_batches(paths) if paths else ():
        n = batch.num_rows
        keep = first[offset : offset + n].copy()
        dups["exact"] += n - int(keep.sum())
        near_here = keep & near[offset : offset + n]  # an exact copy counts as exact only
        dups["near"] += int(near_here.sum())
        keep &= ~near_here
        offset += n
        idx = np.flatnonzero(keep)
        if not len(idx):
            continue
        kept += len(idx)
        u = np.frombuffer(fixed_width(batch.column("digest"), DIGEST_BYTES), dtype="<u8")[0::2][idx]
        target = targets(u, src.use == "eval", cfg)
        texts = batch.column("text").filter(bool_array(keep))
        ids = doc_ids(prefix, batch.column("record").filter(bool_array(keep)))
        for t in np.unique(target).tolist():
            sel = bool_array(target == t)
            writers[t].add(ids.filter(sel), src.name, texts.filter(sel))
    dups = Counter({k: v for k, v in dups.items() if v})
    return {
        "source": src.name,
        "source_index": inp.source,
        "file_index": inp.index,
        "path": str(inp.path),
        "sha256": inp.sha256,
        "bytes": inp.size,
        "compression": inp.compression,
        "format": inp.format,
        "encoding": inp.encoding,
        "empty": inp.empty,
        "kept": kept,
        "duplicates": dict(sorted(dups.items())),
    }


def targets(u: np.ndarray, is_eval: bool, cfg: ShardConfig) -> np.ndarray:
    """Shard index (cfg.shards: the eval shard) of documents whose digests start with `u` (uint64).

    The first 8 digest bytes pick the split and the shard: the same text always lands in
    the same place, whatever else is in the corpus."""
    n_train = cfg.shards
    if is_eval:
        return np.full(len(u), n_train, dtype=np.int64)
    result: np.ndarray = np.where(
        u % np.uint64(1000) < cfg.eval_permille, n_train, (u // np.uint64(1000)) % np.uint64(n_train)
    ).astype(np.int64)
    return result


def doc_ids(prefix: str, records: Any) -> Any:
    """Arrow strings `{source}:{file}:{record}` for an Arrow array of record numbers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(records)
    text = pc.cast(records, pa.large_string())
    return pc.binary_join_element_wise(repeated(prefix, n), text, repeated("", n))


def _manifest_body(
    cfg: ShardConfig,
    entries: list[dict[str, Any]],
    shard_table: dict[str, dict[str, int]],
    train: list[str],
    eval_name: str,
) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for s in cfg.sources:
        sources[s.name] = {
            "use": s.use,
            "license": s.license,
            "files": 0,
            "docs_in": 0,
            "kept": 0,
            "dropped": Counter(),
            "duplicates": Counter(),
        }
    for e in entries:
        agg = sources[e["source"]]
        agg["files"] += 1
        agg["docs_in"] += e["records"]
        agg["kept"] += e["kept"]
        agg["dropped"].update(e["dropped"])
        agg["duplicates"].update(e["duplicates"])
    dropped = _sum(e["dropped"] for e in entries)
    dups = _sum(e["duplicates"] for e in entries)
    for agg in sources.values():
        agg["dropped"] = dict(sorted(agg["dropped"].items()))
        agg["duplicates"] = dict(sorted(agg["duplicates"].items()))
    stats = {
        "docs_in": sum(e["records"] for e in entries),
        "kept": sum(e["kept"] for e in entries),
        "dropped": sum(dropped.values()),
        "duplicates": sum(dups.values()),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "duplicates_by_kind": dict(sorted(dups.items())),
        "train_docs": sum(shard_table[n]["docs"] for n in train),
        "eval_docs": shard_table[eval_name]["docs"],
        "kept_chars": sum(v["chars"] for v in shard_table.values()),
        "input_bytes": sum(e["bytes"] for e in entries),
        "quarantined": sum(v for k, v in dropped.items() if k in QUARANTINE_REASONS),
        "sources": sources,
    }
    return {
        "stats": stats,
        "inputs": entries,
        "splits": {"train": [f"{n}.jsonl.gz" for n in train], "eval": [f"{eval_name}.jsonl.gz"]},
        "parquet": {"train": [f"{n}.parquet" for n in train], "eval": [f"{eval_name}.parquet"]},
        "shards": shard_table,
        "quarantine": QUARANTINE,
        "options": {
            "normalise": normalise_options(cfg.nfc, cfg.remove_invisible),
            "filters": {
                k: getattr(cfg, k)
                for k in (
                    "min_chars",
                    "max_chars",
                    "min_hangul_ratio",
                    "max_repeat_ratio",
                    "repeat_min_times",
                    "max_dup_line_ratio",
                )
            },
            "dedupe": {
                "exact": cfg.exact_dedupe,
                "near": cfg.near_dedupe,
                "near_threshold": cfg.near_threshold,
                "minhash_perms": cfg.minhash_perms,
                "shingle_chars": cfg.shingle_chars,
                "near_recall": cfg.near_recall,
                "near_bands_x_rows": [cfg.near_rule.bands, cfg.near_rule.rows],
                "near_min_equal": cfg.near_rule.min_equal,
                "near_dropped_by_similarity": cfg.near_rule.describe()["s_curve"],
                "near_rule": "pairs sharing a band, verified by at least near_min_equal of minhash_perms "
                "equal values; in each connected component of verified pairs the first document is kept",
                "order": "eval sources first, then source, file, record; first seen is kept",
            },
            "split_sentences": cfg.split_sentences,
            "assignment": "eval if use: eval or blake2b(text)[:8] % 1000 < eval_permille; "
            "else train shard (blake2b(text)[:8] // 1000) % shards",
        },
        "config": to_dict(cfg),
    }


QUARANTINE_REASONS = {
    "invalid-encoding",
    "nul-byte",
    "record-too-large",
    "bad-json",
    "missing-field",
    "not-text",
    "bad-row",
}
