"""Stage `shard`, engine `local`: the pipeline as independent tasks in three stages, run on a
process pool (`--engine local --workers N`) or as cluster array jobs (`--stage S --task I`).

read  (one task per input part): decode, clean, hash; writes the texts split by target shard,
      the MinHash signatures, and sorted runs of digests and of band hashes (the band index).
dedup (one task per digest range, one per band x hash range): exact duplicates (all but the
      first copy); candidate pairs of a band's buckets verified by estimated Jaccard.
write (one task per shard): union-find over the verified pairs (once, cached), then that
      shard's documents in global order less the duplicates. The driver then writes
      quarantine.jsonl and the manifest. Memory per task is bounded by RUN_DOCS and
      RANGE_ENTRIES, not by the corpus. Reference: datatrove's MinHash dedup (4 stages).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import resource
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kovocab.artifacts import (
    atomic_open,
    claim_output,
    read_manifest,
    remove_outputs,
    write_config,
    write_json,
    write_manifest,
)
from kovocab.corpus.index import Earlier, load_earlier, write_index
from kovocab.corpus.inputs import InputFile, probe, with_sha256
from kovocab.corpus.merge import QUARANTINE, _manifest_body, doc_ids, targets
from kovocab.corpus.near import WINDOW, band_hashes, bucket_pairs, component_labels, spanning_forest, verified
from kovocab.corpus.options import OUTPUTS, SECTION, ShardConfig
from kovocab.corpus.shards import (
    ShardWriter,
    bool_array,
    int_array,
    merged_batches,
    merged_quarantine,
    numbers,
    shard_name,
    string_array,
)
from kovocab.corpus.tasks import WORK, Task, cleaned_batches, make_tasks, plan_tasks
from kovocab.errors import InputError

log = logging.getLogger(__name__)

STAGES = ("read", "dedup", "write")
READ_DONE = ".read.json"
RUN_DOCS = 1 << 17  # a read task sorts and writes its digest and band runs every this many documents
RANGE_ENTRIES = 1 << 18  # entries per dedup task (per band for near): sets the number of hash ranges
RECORD_BITS, FILE_BITS, SOURCE_BITS = 36, 19, 8


# --- document ids: one uint64 in global order (eval sources first, source, file, record) -------


def base_id(cfg: ShardConfig, source: int, index: int) -> int:
    is_train = int(cfg.sources[source].use != "eval")
    return (is_train << 63) | (source << (RECORD_BITS + FILE_BITS)) | (index << RECORD_BITS)


def check_limits(cfg: ShardConfig, inputs: list[InputFile]) -> None:
    if len(cfg.sources) > 1 << SOURCE_BITS or any(i.index >= 1 << FILE_BITS for i in inputs):
        raise InputError(f"--engine local numbers documents with {SOURCE_BITS} bits for the source and "
                         f"{FILE_BITS} for the file: use at most {1 << SOURCE_BITS} sources of at most "
                         f"{1 << FILE_BITS} files each, or --engine serial")


@dataclass(frozen=True)
class Part:
    """A finished read task, as its marker describes it."""

    key: str
    source: int
    index: int
    part: int
    parts: int
    kept: int
    runs: int

    def path(self, work: Path, suffix: str) -> Path:
        return work / f"{self.key}{suffix}"


# --- read --------------------------------------------------------------------------------------


def text_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("record", pa.uint64()), ("text", pa.large_string())])


def read_task(task: Task, cfg: ShardConfig, work: Path, run_docs: int = RUN_DOCS) -> dict[str, Any]:
    """Clean and hash one input part; write its per-shard texts, signatures and sorted runs."""
    import pyarrow as pa

    counts: Counter[str] = Counter()
    src = cfg.sources[task.inp.source]
    base = np.uint64(base_id(cfg, task.inp.source, task.inp.index))
    bands, rows = cfg.near_rule.bands, cfg.near_rule.rows
    sch = text_schema()
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []  # (ids, digests, band hashes)
    runs = kept = 0

    def flush() -> None:
        nonlocal runs
        if not pending:
            return
        ids = np.concatenate([p[0] for p in pending])
        if cfg.exact_dedupe:
            d = np.concatenate([p[1] for p in pending])
            order = np.lexsort((ids, d[:, 1], d[:, 0]))
            _save(task.path(work, f".x{runs:04d}.npy"), np.column_stack([d[order], ids[order]]))
        if cfg.near_dedupe:
            h = np.concatenate([p[2] for p in pending if p[2] is not None])
            table = np.empty((bands, len(ids), 2), dtype=np.uint64)
            for b in range(bands):
                order = np.lexsort((ids, h[:, b]))
                table[b, :, 0], table[b, :, 1] = h[order, b], ids[order]
            _save(task.path(work, f".b{runs:04d}.npy"), table)
        pending.clear()
        runs += 1

    with ExitStack() as stack:
        q = stack.enter_context(atomic_open(task.path(work, ".quarantine.jsonl")))
        names = [task.path(work, f".t{k:05d}.arrow") for k in range(cfg.shards + 1)]
        files = [stack.enter_context(atomic_open(name)) for name in names]
        writers = [pa.ipc.new_stream(f, sch) for f in files]
        sig_f = stack.enter_context(atomic_open(task.path(work, ".sig"))) if cfg.near_dedupe else None
        rec_f = stack.enter_context(atomic_open(task.path(work, ".rec"))) if cfg.near_dedupe else None
        for c in cleaned_batches(task, cfg, q, counts):
            if int(c.records[-1]) >= 1 << RECORD_BITS:
                raise InputError(f"{task.inp.path}: more than 2**{RECORD_BITS} records; split the file "
                                 "or use --engine serial")
            d = np.frombuffer(c.digests, dtype="<u8").reshape(-1, 2)
            target = targets(d[:, 0], src.use == "eval", cfg)
            records, texts = int_array(c.records), string_array(c.texts)
            for t in np.unique(target).tolist():
                sel = bool_array(target == t)
                writers[t].write_batch(pa.record_batch([records.filter(sel), texts.filter(sel)], schema=sch))
            hashes = None
            if c.minhash is not None and sig_f is not None and rec_f is not None:
                sig_f.write(c.minhash.tobytes())
                rec_f.write(c.records.astype("<u8").tobytes())
                hashes = band_hashes(c.minhash, bands, rows)
            pending.append((c.records | base, d.copy(), hashes))
            kept += len(c.records)
            if sum(len(p[0]) for p in pending) >= run_docs:
                flush()
        flush()
        for w in writers:
            w.close()
    summary = {"key": task.key, "source": task.inp.source, "index": task.inp.index, "part": task.part,
               "parts": task.parts, "records": counts.pop(" records", 0), "kept": counts.pop(" kept", 0),
               "runs": runs, "dropped": dict(sorted(counts.items()))}
    write_json(task.path(work, READ_DONE), summary)
    return summary


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as f:
        np.save(f, array, allow_pickle=False)


def finished_parts(work: Path, config_fp: str, keys: set[str] | None = None) -> list[Part]:
    """Every finished read task of this config under `work` (of `keys` if given), in input order."""
    parts = []
    for marker in work.glob(f"*-{config_fp[:12]}-p*of*{READ_DONE}"):
        s = json.loads(marker.read_text(encoding="utf-8"))
        if keys is not None and s["key"] not in keys:
            continue
        parts.append(Part(s["key"], s["source"], s["index"], s["part"], s["parts"], s["kept"], s["runs"]))
    return sorted(parts, key=lambda p: (p.source, p.index, p.part))


def check_complete(parts: list[Part], inputs: list[InputFile], work: Path) -> None:
    """Every non-empty input read exactly once (one split, one version of the file)."""
    by_input: dict[tuple[int, int], list[Part]] = {}
    for p in parts:
        by_input.setdefault((p.source, p.index), []).append(p)
    missing = [str(i.path) for i in inputs if not i.empty and (i.source, i.index) not in by_input]
    bad = [k for k, ps in by_input.items() if sorted(p.part for p in ps) != list(range(ps[0].parts))]
    if missing or bad:
        raise InputError(f"--engine local: stage read is not complete in {work} ({len(missing)} input(s) not "
                         f"read, e.g. {', '.join(missing[:3]) or '-'}; {len(bad)} with missing or mixed "
                         "parts): run every `--stage read` task first (or `kovocab shard` without --stage)")


# --- dedup -------------------------------------------------------------------------------------


def dedup_plan(cfg: ShardConfig, parts: list[Part]) -> list[tuple[str, int, int, int]]:
    """(kind, band, range, ranges): one task per digest range and one per band x hash range
    (the ranges cover this batch and every earlier corpus of dedupe_against)."""
    total = sum(p.kept for p in parts) + sum(e.documents for e in load_earlier(cfg))
    ranges = max(1, math.ceil(total / RANGE_ENTRIES))
    plan = [("exact", 0, r, ranges) for r in range(ranges)] if cfg.exact_dedupe else []
    if cfg.near_dedupe:
        bands = cfg.near_rule.bands
        plan += [("near", b, r, ranges) for b in range(bands) for r in range(ranges)]
    return plan


def dedup_path(work: Path, config_fp: str, item: tuple[str, int, int, int]) -> Path:
    kind, band, r, ranges = item
    return work / f"{config_fp[:12]}-{kind}-b{band:03d}-r{r:05d}of{ranges:05d}.npy"


def _bounds(r: int, ranges: int) -> tuple[int, int | None]:
    return (r << 64) // ranges, None if r == ranges - 1 else ((r + 1) << 64) // ranges


def _slice(table: np.ndarray, lo: int, hi: int | None) -> np.ndarray:
    col = table[:, 0]
    start = int(np.searchsorted(col, np.uint64(lo)))
    end = len(col) if hi is None else int(np.searchsorted(col, np.uint64(hi)))
    return np.array(table[start:end])


def dedup_task(item: tuple[str, int, int, int], cfg: ShardConfig, parts: list[Part], work: Path,
               config_fp: str) -> dict[str, Any]:
    """Exact: ids of all but the first copy in one digest range. Near: the verified pairs of one
    band in one hash range, as a spanning forest. Reads only that range of every sorted run
    (memory-mapped). With dedupe_against, also the ids of this batch that duplicate an
    earlier corpus (in a second file, written first)."""
    kind, band, r, ranges = item
    lo, hi = _bounds(r, ranges)
    table = _range_table(kind, band, lo, hi, [(work, p) for p in parts])
    sigs = Signatures.of_batch(cfg, parts, work) if kind == "near" else None
    earlier = []
    for e in load_earlier(cfg, check_files=False):  # the driver checked them
        old = _range_table(kind, band, lo, hi, [(e.folder, p) for p in e.parts])
        if kind == "exact":
            earlier.append(_in_earlier_exact(table, old))
        elif sigs is not None:
            earlier.append(_in_earlier_near(table, old, sigs, Signatures.of_index(cfg, e), cfg))
    if kind == "exact":
        same = (table[1:, 0] == table[:-1, 0]) & (table[1:, 1] == table[:-1, 1])
        result = np.sort(table[1:, 2][same])
        candidates = len(result)
    else:
        assert sigs is not None
        a, b = bucket_pairs(table, sigs.lookup)
        candidates = len(a)
        if len(a):
            ok = verified(a, b, cfg.near_rule, sigs.lookup)
            a, b = a[ok], b[ok]
        result = spanning_forest(a, b)  # its components, with at most one edge per document
    path = dedup_path(work, config_fp, item)
    if cfg.dedupe_against:
        found = np.unique(np.concatenate(earlier)) if earlier else np.zeros(0, dtype=np.uint64)
        _save(earlier_path(path), found.astype(np.uint64))
    _save(path, result)
    return {"candidates": candidates, "found": len(result)}


def earlier_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".npy", "-earlier.npy"))


def _range_table(kind: str, band: int, lo: int, hi: int | None, parts: list[tuple[Path, Any]]) -> np.ndarray:
    """One hash range of every sorted run of `parts` ((folder, part) pairs), sorted: exact
    (digest hi, digest lo, id) rows, near (band hash, id) rows."""
    chunks = []
    for folder, p in parts:
        for run in range(p.runs):
            if kind == "exact":
                chunks.append(_slice(np.load(p.path(folder, f".x{run:04d}.npy"), mmap_mode="r"), lo, hi))
            else:
                runs = np.load(p.path(folder, f".b{run:04d}.npy"), mmap_mode="r")
                chunks.append(_slice(runs[band], lo, hi))
    width = 3 if kind == "exact" else 2
    table = np.concatenate(chunks) if chunks else np.zeros((0, width), dtype=np.uint64)
    order = np.lexsort((table[:, 2], table[:, 1], table[:, 0])) if kind == "exact" else \
        np.lexsort((table[:, 1], table[:, 0]))
    return table[order]


def _in_earlier_exact(table: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Ids of `table` (this batch) whose digest is also in `old` (an earlier corpus)."""
    if not len(table) or not len(old):
        return np.zeros(0, dtype=np.uint64)
    rows = np.concatenate([old[:, :2], table[:, :2]])
    is_new = np.concatenate([np.zeros(len(old), dtype=bool), np.ones(len(table), dtype=bool)])
    order = np.lexsort((is_new, rows[:, 1], rows[:, 0]))  # in each digest, earlier rows first
    rows, is_new = rows[order], is_new[order]
    start = np.ones(len(rows), dtype=bool)
    start[1:] = (rows[1:, 0] != rows[:-1, 0]) | (rows[1:, 1] != rows[:-1, 1])
    first = np.maximum.accumulate(np.where(start, np.arange(len(rows)), 0))
    hit = is_new & ~is_new[first]
    ids = np.concatenate([old[:, 2], table[:, 2]])[order]
    return np.asarray(ids[hit], dtype=np.uint64)


def _in_earlier_near(table: np.ndarray, old: np.ndarray, sigs: Signatures, old_sigs: Signatures,
                     cfg: ShardConfig) -> np.ndarray:
    """Ids of `table` (this batch, one band's hash range) sharing a bucket with a document of
    `old` (an earlier corpus; up to WINDOW of them per bucket) and verified against it."""
    if not len(table) or not len(old):
        return np.zeros(0, dtype=np.uint64)
    left = np.searchsorted(old[:, 0], table[:, 0], side="left")
    count = np.minimum(np.searchsorted(old[:, 0], table[:, 0], side="right") - left, WINDOW)
    has = count > 0
    if not has.any():
        return np.zeros(0, dtype=np.uint64)
    count, left, new_ids = count[has], left[has], table[has, 1]
    offsets = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    a = np.repeat(new_ids, count)
    b = old[np.repeat(left, count) + offsets, 1]
    ok = verified(a, b, cfg.near_rule, sigs.lookup, old_sigs.lookup)
    return np.unique(a[ok])


class Signatures:
    """MinHash signatures by document id, read row by row from the read tasks' `.sig` files
    with pread (a memory map's touched pages would count against the task however many it
    reads); the record numbers that locate a row are memory-mapped, one part at a time."""

    def __init__(self, perms: int, parts: dict[tuple[int, int], tuple[Path, Any]]) -> None:
        self.perms = perms
        self.parts = parts  # (id prefix, part) -> (folder, part with key, parts)

    @classmethod
    def of_batch(cls, cfg: ShardConfig, parts: list[Part], work: Path) -> Signatures:
        return cls(cfg.minhash_perms,
                   {(base_id(cfg, p.source, p.index) >> RECORD_BITS, p.part): (work, p) for p in parts})

    @classmethod
    def of_index(cls, cfg: ShardConfig, earlier: Earlier) -> Signatures:
        return cls(cfg.minhash_perms, {(p.prefix, p.part): (earlier.folder, p) for p in earlier.parts})

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.perms), dtype=np.uint32)
        width = 4 * self.perms
        inputs, records = ids >> np.uint64(RECORD_BITS), ids & np.uint64((1 << RECORD_BITS) - 1)
        for key in np.unique(inputs).tolist():
            sel = np.flatnonzero(inputs == key)
            first = self.parts.get((key, 0))
            if first is None:
                raise RuntimeError(f"kovocab bug: no read task for document id input {key}")
            part_of = records[sel] % np.uint64(first[1].parts)
            for part in np.unique(part_of).tolist():
                where = sel[part_of == part]
                folder, p = self.parts[(key, part)]
                # A memory map: a lookup touches only the pages its binary searches visit.
                rec = np.memmap(p.path(folder, ".rec"), dtype="<u8", mode="r")  # 8 bytes per document
                rows = np.searchsorted(rec, records[where])
                del rec
                with open(p.path(folder, ".sig"), "rb") as f:
                    fd = f.fileno()
                    buf = b"".join(os.pread(fd, width, int(r) * width) for r in rows.tolist())
                out[where] = np.frombuffer(buf, dtype=np.uint32).reshape(-1, self.perms)
        return out


# --- write -------------------------------------------------------------------------------------


KINDS = ("exact", "near", "exact_earlier", "near_earlier")


def duplicates(cfg: ShardConfig, parts: list[Part], work: Path, config_fp: str) -> dict[str, np.ndarray]:
    """Sorted ids by kind: exact (all but the first copy), near (union-find over every verified
    pair: all but the first of each group), and with dedupe_against exact_earlier / near_earlier
    (a copy of, or in a group with, a document of an earlier corpus: every such member goes).
    Computed once and cached in `work` (array tasks racing here write the same bytes)."""
    paths = {k: work / f"{config_fp[:12]}-{k}.npy" for k in KINDS}
    if all(p.is_file() for p in paths.values()):
        return {k: np.load(p) for k, p in paths.items()}
    plan = dedup_plan(cfg, parts)
    files = [dedup_path(work, config_fp, i) for i in plan]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise InputError(f"--engine local: stage dedup is not complete in {work} ({len(missing)} task(s) "
                         f"left, e.g. {missing[0]}): run every `--stage dedup` task first")
    empty = np.zeros(0, dtype=np.uint64)

    def union(kind: str, earlier: bool = False) -> list[np.ndarray]:
        return [np.load(earlier_path(p) if earlier else p) for i, p in zip(plan, files, strict=True)
                if i[0] == kind]

    def ids(arrays: list[np.ndarray]) -> np.ndarray:
        return np.unique(np.concatenate(arrays)).astype(np.uint64) if arrays else empty

    exact_earlier = ids(union("exact", True)) if cfg.dedupe_against else empty
    exact = np.setdiff1d(ids(union("exact")), exact_earlier)
    near = empty
    near_earlier = np.setdiff1d(ids(union("near", True)), exact_earlier) if cfg.dedupe_against else empty
    forest = _union_find([p for i, p in zip(plan, files, strict=True) if i[0] == "near"])
    if len(forest):
        nodes, label = component_labels(forest[:, 0], forest[:, 1])
        roots = np.isin(nodes, np.union1d(exact_earlier, near_earlier))
        with_earlier = np.isin(label, label[roots])  # in a group with a document of an earlier corpus
        near_earlier = np.union1d(near_earlier, nodes[with_earlier])
        near = nodes[(label != np.arange(len(nodes))) & ~with_earlier]
    taken = np.union1d(exact, exact_earlier)
    result = {"exact": exact, "near": np.setdiff1d(near, taken), "exact_earlier": exact_earlier,
              "near_earlier": np.setdiff1d(near_earlier, taken)}
    for k in KINDS[::-1]:  # "exact" last: its file says the rest are there
        _save(paths[k], result[k].astype(np.uint64))
    return result


def _union_find(paths: list[Path], batch: int = 1 << 22) -> np.ndarray:
    """One spanning forest of every near task's forest, read file by file and folded whenever
    the edges read since the last fold pass `batch` and the forest's size: it holds about one
    16-byte edge per near-duplicate document plus one batch (and a fold's temporaries),
    however many bands found each pair."""
    forest = np.zeros((0, 2), dtype=np.uint64)
    pending: list[np.ndarray] = []
    count = 0
    for path in paths:
        edges = np.load(path)
        pending.append(edges)
        count += len(edges)
        if count > max(batch, len(forest)):
            both = np.concatenate([forest, *pending])
            forest, pending, count = spanning_forest(both[:, 0], both[:, 1]), [], 0
    if pending:
        both = np.concatenate([forest, *pending])
        forest = spanning_forest(both[:, 0], both[:, 1])
    return forest


def write_marker(work: Path, config_fp: str, name: str) -> Path:
    return work / f"{config_fp[:12]}-shard-{name}.json"


def write_task(k: int, cfg: ShardConfig, parts: list[Part], work: Path, out: Path,
               config_fp: str) -> dict[str, Any]:
    """Shard k (cfg.shards: the eval shard): its documents of every input, in global order."""
    dropped = np.unique(np.concatenate(list(duplicates(cfg, parts, work, config_fp).values())))
    name = shard_name("train", k, cfg.shards) if k < cfg.shards else shard_name("eval", 0, 1)
    kept: dict[str, int] = {}
    by_input: dict[tuple[int, int], list[Part]] = {}
    for p in parts:
        by_input.setdefault((p.source, p.index), []).append(p)
    order = sorted(by_input, key=lambda si: (cfg.sources[si[0]].use != "eval", si))
    with ExitStack() as stack:
        writer = ShardWriter(out, name, cfg.gzip_level, stack)
        for source, index in order:
            src = cfg.sources[source]
            base = np.uint64(base_id(cfg, source, index))
            paths = [p.path(work, f".t{k:05d}.arrow") for p in sorted(by_input[(source, index)], key=_part)]
            if not all(path.is_file() for path in paths):
                raise InputError(f"--engine local: {name} must be written again, but its texts in {work} are "
                                 "gone (removed once it was first written): delete that folder and run again")
            n = 0
            for batch in merged_batches(paths):
                ids = numbers(batch.column("record"), np.uint64) | base
                pos = np.minimum(np.searchsorted(dropped, ids), max(len(dropped) - 1, 0))
                keep = ~(dropped[pos] == ids) if len(dropped) else np.ones(len(ids), dtype=bool)
                if not keep.any():
                    continue
                sel = bool_array(keep)
                writer.add(doc_ids(f"{src.name}:{index}:", batch.column("record").filter(sel)), src.name,
                           batch.column("text").filter(sel))
                n += int(keep.sum())
            kept[f"{source}:{index}"] = n
    result = {"name": name, "docs": writer.docs, "chars": writer.total_chars, "kept": kept}
    write_json(write_marker(work, config_fp, name), result)
    for source, index in order:  # only this shard's task reads them, and it is done
        for p in by_input[(source, index)]:
            p.path(work, f".t{k:05d}.arrow").unlink(missing_ok=True)
    return result


def _part(p: Part) -> int:
    return p.part


# --- driving the stages ------------------------------------------------------------------------


def _reset_peak() -> None:
    try:  # Linux: "5" resets VmHWM, so each task measures its own peak (ru_maxrss cannot be reset)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _call(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> dict[str, Any]:
    _reset_peak()
    start = _status_mb("VmRSS") or 0.0
    t0 = time.process_time()
    result = fn(*args)
    peak = _peak_rss_mb()
    return {**result, "_cpu_s": time.process_time() - t0, "_peak_rss_mb": peak, "_growth_mb": peak - start}


def _init_worker() -> None:
    logging.basicConfig(level=logging.WARNING)
    import pyarrow.ipc  # noqa: F401  what every task imports, done when the worker starts

    import kovocab.corpus.tasks  # noqa: F401


def _ready() -> None:
    """Nothing: submitted once per worker so the pool starts them all at once."""


def make_pool(workers: int) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")  # no fork: pyarrow and Kiwi run threads
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)


def run_stage(name: str, pool: ProcessPoolExecutor, fn: Callable[..., dict[str, Any]],
              calls: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Run one stage's tasks on the pool; returns its tasks, wall and CPU time, and the peak
    memory of a worker during one of its tasks."""
    t0 = time.monotonic()
    results = list(pool.map(_call, [fn] * len(calls), calls)) if calls else []
    stats = {"tasks": len(calls), "wall_s": round(time.monotonic() - t0, 3),
             "cpu_s": round(sum(r["_cpu_s"] for r in results), 3),
             "peak_rss_mb_per_worker": round(max((r["_peak_rss_mb"] for r in results), default=0.0), 1),
             # what one task added to its worker's resident memory (the rest: imports, earlier tasks)
             "task_growth_mb": round(max((r["_growth_mb"] for r in results), default=0.0), 1)}
    log.info("stage %s: %d task(s) in %.1f s, peak %.0f MB per worker", name, len(calls), stats["wall_s"],
             stats["peak_rss_mb_per_worker"])
    return stats


def stage_calls(stage: str, cfg: ShardConfig, work: Path, out: Path, config_fp: str, inputs: list[InputFile],
                keys: set[str] | None = None, share: slice | None = None
                ) -> tuple[Callable[..., dict[str, Any]], list[tuple[Any, ...]]]:
    """The not-yet-done tasks of a stage after `read` (they need every read task finished),
    of `share` of the stage's whole plan (an array task's every N-th)."""
    parts = finished_parts(work, config_fp, keys)
    check_complete(parts, inputs, work)
    share = slice(None) if share is None else share
    if stage == "dedup":
        items = [i for i in dedup_plan(cfg, parts)[share] if not dedup_path(work, config_fp, i).is_file()]
        return dedup_task, [(i, cfg, parts, work, config_fp) for i in items]
    names = [shard_name("train", k, cfg.shards) for k in range(cfg.shards)] + [shard_name("eval", 0, 1)]
    todo = [k for k in range(len(names))[share] if not _shard_done(work, out, config_fp, names[k])]
    return write_task, [(k, cfg, parts, work, out, config_fp) for k in todo]


def _shard_done(work: Path, out: Path, config_fp: str, name: str) -> bool:
    return write_marker(work, config_fp, name).is_file() and all(
        (out / f"{name}.{ext}").is_file() for ext in ("jsonl.gz", "parquet"))


def read_parts(inputs: list[InputFile], cfg: ShardConfig, workers: int) -> int:
    """Parts per input for the local engine: parts_per_file, else split only when there are
    fewer inputs than workers (every part reads its whole file)."""
    if cfg.parts_per_file:
        return cfg.parts_per_file
    return 1 if len([i for i in inputs if not i.empty]) >= workers else workers


def shard(cfg: ShardConfig, workers: int = 1) -> Any:
    """Run stage `shard` on the engine it needs: local when keep_index or dedupe_against is set
    (they use its index files), else serial (kovocab.corpus.pipeline.shard_corpus). Both keep
    the same documents and write the same bytes. `kovocab run` calls this."""
    if cfg.keep_index or cfg.dedupe_against:
        return shard_local(cfg, workers)
    from kovocab.corpus.pipeline import shard_corpus

    return shard_corpus(cfg, workers)


def shard_local(cfg: ShardConfig, workers: int = 1) -> Any:
    """Run stage `shard` with the local engine (every stage, then the manifest); a ShardResult."""
    with claim_output(cfg.out, OUTPUTS, "shard.out"):
        return _shard_local(cfg, workers)


def _shard_local(cfg: ShardConfig, workers: int) -> Any:
    from kovocab.corpus import pipeline as pl

    pl._check_workers(workers)
    out = Path(cfg.out)
    pool = make_pool(workers)
    for _ in range(workers):  # start the workers (and their imports) while the driver hashes the inputs
        pool.submit(_ready)
    try:
        skipped: list[dict[str, str]] = []
        inputs = probe(cfg, skipped=skipped)
        pl._log_skipped(skipped)
        pl._check_not_all_empty(inputs)
        check_limits(cfg, inputs)
        fp, cfp = pl.fingerprint(cfg, inputs), pl.config_fingerprint(cfg)
        manifest = pl._finished(out, fp)
        if manifest is not None:
            log.info("%s is already complete for this config and these inputs: nothing to do", out)
            pool.shutdown(wait=False, cancel_futures=True)
            return pl._result(out, manifest, 0, True)
        pl._prepare_out(out)
        work = out / WORK
        parts_n = read_parts(inputs, cfg, workers)
        tasks = plan_tasks(inputs, cfg, cfp, work, workers, done_suffix=READ_DONE, parts=parts_n)
        todo = [t for t in tasks if not t.path(work, READ_DONE).is_file()]
        todo.sort(key=lambda t: (-t.inp.size, t.key))  # biggest first
        calls = [(t, cfg, work, RUN_DOCS) for t in todo]
        stages: dict[str, Any] = {"read": run_stage("read", pool, read_task, calls)}
        pl.check_yield(cfg, tasks, work, READ_DONE)
        keys = {t.key for t in tasks}
        stages["dedup"] = run_stage("dedup", pool, *stage_calls("dedup", cfg, work, out, cfp, inputs, keys))
        t0 = time.monotonic()
        parts = finished_parts(work, cfp, keys)
        duplicates(cfg, parts, work, cfp)
        stages["union_find"] = {"tasks": 1, "wall_s": round(time.monotonic() - t0, 3), "in_driver": True}
        # Shards written by an earlier (killed) run of this config stay; every other output goes.
        names = [shard_name("train", k, cfg.shards) for k in range(cfg.shards)] + [shard_name("eval", 0, 1)]
        done = frozenset(f"{n}.{ext}" for n in names if _shard_done(work, out, cfp, n)
                         for ext in ("jsonl.gz", "parquet"))
        remove_outputs(out, OUTPUTS, "shard.out", keep=done)
        write_config(out, SECTION, cfg)
        stages["write"] = run_stage("write", pool, *stage_calls("write", cfg, work, out, cfp, inputs, keys))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=False)  # the workers exit while the driver finishes
    stages["driver_peak_rss_mb"] = round(_peak_rss_mb(), 1)
    body = finish(cfg, inputs, parts, work, out, cfp)
    if cfg.keep_index:
        prefixes = [base_id(cfg, p.source, p.index) >> RECORD_BITS for p in parts]
        write_index(cfg, parts, prefixes, work, out, fp)
    shutil.rmtree(work, ignore_errors=True)
    stats = body.pop("stats")
    stats["skipped_files"] = len(skipped)
    stats["skipped_by_reason"] = dict(sorted(Counter(e["reason"] for e in skipped).items()))
    body["skipped_files"] = skipped[: pl.MAX_SKIPPED_LISTED]
    write_manifest(out, SECTION, stats, fingerprint=fp, config_fingerprint=cfp, **body)
    manifest = read_manifest(out)
    assert manifest is not None  # just written
    log.info("kept %d of %d documents (%d dropped, %d duplicates)", stats["kept"], stats["docs_in"],
             stats["dropped"], stats["duplicates"])
    return dataclasses.replace(pl._result(out, manifest, len(todo), False), stages=stages)


def finish(cfg: ShardConfig, inputs: list[InputFile], parts: list[Part], work: Path, out: Path,
           config_fp: str) -> dict[str, Any]:
    """quarantine.jsonl and the manifest body, from the markers: every document accounted for."""
    dups = duplicates(cfg, parts, work, config_fp)
    summaries = {p.key: json.loads(p.path(work, READ_DONE).read_text(encoding="utf-8")) for p in parts}
    names = [shard_name("train", k, cfg.shards) for k in range(cfg.shards)] + [shard_name("eval", 0, 1)]
    shards = [json.loads(write_marker(work, config_fp, n).read_text(encoding="utf-8")) for n in names]
    kept: Counter[str] = Counter()
    for s in shards:
        kept.update(s["kept"])

    def per_input(ids: np.ndarray) -> Counter[int]:
        keys, counts = np.unique(ids >> np.uint64(RECORD_BITS), return_counts=True)
        return Counter(dict(zip(keys.tolist(), counts.tolist(), strict=True)))

    counts = {k: per_input(v) for k, v in dups.items()}
    order = sorted(inputs, key=lambda i: (cfg.sources[i.source].use != "eval", i.source, i.index))
    entries = []
    with atomic_open(out / QUARANTINE) as q:
        for inp in order:
            mine = [p for p in parts if (p.source, p.index) == (inp.source, inp.index)]
            for line in merged_quarantine([p.path(work, ".quarantine.jsonl") for p in mine]):
                q.write(line)
            key = base_id(cfg, inp.source, inp.index) >> RECORD_BITS
            found = {k: counts[k][key] for k in KINDS if counts[k][key]}
            dropped: Counter[str] = Counter()
            for p in mine:
                dropped.update(summaries[p.key]["dropped"])
            entry = {"source": cfg.sources[inp.source].name, "source_index": inp.source,
                     "file_index": inp.index,
                     "path": str(inp.path), "sha256": inp.sha256, "bytes": inp.size,
                     "compression": inp.compression, "format": inp.format, "encoding": inp.encoding,
                     "empty": inp.empty, "kept": kept[f"{inp.source}:{inp.index}"],
                     "duplicates": dict(sorted(found.items())),
                     "records": sum(summaries[p.key]["records"] for p in mine),
                     "dropped": dict(sorted(dropped.items()))}
            if entry["records"] != entry["kept"] + sum(dropped.values()) + sum(found.values()):
                raise RuntimeError(f"kovocab bug: records of {inp.path} do not add up: {entry}")
            entries.append(entry)
    shard_table = {s["name"]: {"docs": s["docs"], "chars": s["chars"]} for s in shards}
    entries.sort(key=lambda e: (e["source_index"], e["file_index"]))
    return _manifest_body(cfg, entries, shard_table, names[:-1], names[-1])


def shard_stage(cfg: ShardConfig, stage: str, task: int, num_tasks: int) -> int:
    """One cluster array task of one stage: every num_tasks-th task of `stage` not yet done.

    Array tasks of a stage run at the same time by design, so they take no lock (each writes
    only its own files); the final `kovocab shard --engine local` without --stage holds it."""
    from kovocab.corpus import pipeline as pl

    if stage not in STAGES:
        raise InputError(f"--stage {stage!r}: choose one of {', '.join(STAGES)}")
    if not 0 <= task < num_tasks:
        raise InputError(f"--task {task} is not in 0..{num_tasks - 1} (--num-tasks {num_tasks})")
    out = Path(cfg.out)
    inputs = probe(cfg, hashes=False)
    check_limits(cfg, inputs)
    cfp = pl.config_fingerprint(cfg)
    if pl.complete_for(out, cfp, inputs):
        log.info("%s is already complete: nothing to do", out)
        return 0
    pl._prepare_out(out)
    work = out / WORK
    if stage == "read":
        parts = cfg.parts_per_file or 1
        plan = [(i, k) for i in inputs if not i.empty for k in range(parts)][task::num_tasks]
        hashed = {(i.source, i.index): with_sha256(i) for i, _ in plan}
        mine = [make_tasks(hashed[(i.source, i.index)], parts, cfp)[k] for i, k in plan]
        todo = [t for t in mine if not t.path(work, READ_DONE).is_file()]
        for t in todo:
            read_task(t, cfg, work)
        return len(todo)
    fn, calls = stage_calls(stage, cfg, work, out, cfp, inputs, share=slice(task, None, num_tasks))
    for call in calls:
        fn(*call)
    return len(calls)
