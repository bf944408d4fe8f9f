"""Stage `shard`, phase 1: one task = records k, k+K, k+2K, ... of one input file.

Inputs: an InputFile and the ShardConfig. Outputs in OUT/.work/: surviving records as an
Arrow IPC stream, quarantined ones as JSONL, and a `.done.json` marker with counts, each
written atomically, so a killed task simply runs again. Reference: Arrow IPC format.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import IO, Any

import numpy as np

from kovocab.artifacts import atomic_open, write_json
from kovocab.corpus.charclass import codepoints, table
from kovocab.corpus.decoding import CODECS, Batch, Problem
from kovocab.corpus.dedup import DIGEST_BYTES, MinHasher, digests
from kovocab.corpus.filters import decide, features
from kovocab.corpus.inputs import InputFile
from kovocab.corpus.normalizer import needs_work, normalise_text
from kovocab.corpus.options import ShardConfig
from kovocab.corpus.reader import read_batches
from kovocab.corpus.shards import int_array, string_array

WORK = ".work"
AUTO_SPLIT_BYTES = 4 << 20

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Task:
    inp: InputFile
    part: int
    parts: int
    key: str  # file-name stem under .work/

    def path(self, work: Path, suffix: str) -> Path:
        return work / f"{self.key}{suffix}"


def task_prefix(inp: InputFile, fingerprint: str) -> str:
    # The input's sha256 and the config fingerprint are in the name, so a task file
    # from another config or another version of the file is never reused.
    return f"s{inp.source:03d}-f{inp.index:05d}-{inp.sha256[:16]}-{fingerprint[:12]}"


def make_tasks(inp: InputFile, parts: int, config_fp: str) -> list[Task]:
    prefix = task_prefix(inp, config_fp)
    return [Task(inp, k, parts, f"{prefix}-p{k:04d}of{parts:04d}") for k in range(parts)]


def plan_tasks(
    inputs: list[InputFile], cfg: ShardConfig, config_fp: str, work: Path, workers: int,
    done_suffix: str = ".done.json", parts: int | None = None,
) -> list[Task]:
    """The tasks of every non-empty input, reusing the split of earlier (partial) runs; `parts`
    overrides the automatic split."""
    tasks: list[Task] = []
    pattern = re.compile(r"-p(\d+)of(\d+)" + re.escape(done_suffix) + "$")
    for inp in inputs:
        if inp.empty:
            continue
        done: Counter[int] = Counter()
        for marker in work.glob(f"{task_prefix(inp, config_fp)}-p*of*{done_suffix}"):
            if m := pattern.search(marker.name):
                done[int(m.group(2))] += 1
        if done:
            # Results do not depend on the split, so finish the one already begun.
            n = max(done, key=lambda k: (done[k] / k, -k))
        elif parts:
            n = parts
        elif cfg.parts_per_file:
            n = cfg.parts_per_file
        else:
            n = workers if workers > 1 and inp.size >= AUTO_SPLIT_BYTES else 1
        tasks.extend(make_tasks(inp, n, config_fp))
    return tasks


def is_done(task: Task, work: Path) -> bool:
    return task.path(work, ".done.json").is_file() and task.path(work, ".arrow").is_file()


def schema(cfg: ShardConfig) -> Any:
    import pyarrow as pa

    fields = [("record", pa.uint64()), ("text", pa.large_string()), ("digest", pa.binary(DIGEST_BYTES))]
    if cfg.near_dedupe:
        fields.append(("minhash", pa.binary(4 * cfg.minhash_perms)))
    return pa.schema(fields)


def run_task(task: Task, cfg: ShardConfig, work: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Read, decode, normalise, filter and hash one task's records; write its files under `work`."""
    import pyarrow as pa

    counts: Counter[str] = Counter()
    sch = schema(cfg)
    with atomic_open(task.path(work, ".arrow")) as f, atomic_open(task.path(work, ".quarantine.jsonl")) as q:
        writer = pa.ipc.new_stream(f, sch)
        for c in cleaned_batches(task, cfg, q, counts, progress):
            columns = [int_array(c.records), string_array(c.texts), _fixed(c.digests, DIGEST_BYTES)]
            if c.minhash is not None:
                columns.append(_fixed(c.minhash.tobytes(), 4 * cfg.minhash_perms))
            writer.write_batch(pa.record_batch(columns, schema=sch))
        writer.close()
    summary = {"key": task.key, "records": counts.pop(_RECORDS, 0), "kept": counts.pop(_KEPT, 0),
               "dropped": dict(sorted(counts.items()))}
    write_json(task.path(work, ".done.json"), summary)
    return summary


_RECORDS, _KEPT = " records", " kept"  # counted beside the drop reasons (which have no spaces)


@dataclass(frozen=True)
class Cleaned:
    """One batch of a task's surviving documents, in record order."""

    records: np.ndarray  # uint64 record numbers in the input
    texts: list[bytes]  # UTF-8, sentence-split when asked (after hashing)
    digests: bytes  # DIGEST_BYTES per document, of the text before splitting
    minhash: np.ndarray | None  # uint32 (n, perms) when near-dedupe is on


def cleaned_batches(
    task: Task, cfg: ShardConfig, q: IO[Any], counts: Counter[str], progress: Progress | None = None
) -> Iterator[Cleaned]:
    """Phase 1 of both engines: read, decode, normalise, filter and hash one task's records.

    Problem records go to quarantine (`q`); `counts` gets the drop reasons, plus the records
    read (key " records") and kept (" kept")."""
    src = cfg.sources[task.inp.source]
    hasher = MinHasher(cfg.minhash_perms, cfg.shingle_chars) if cfg.near_dedupe else None
    splitter = None
    if cfg.split_sentences:
        from kovocab.corpus.sentences import SentenceSplitter

        splitter = SentenceSplitter()
    for batch in read_batches(task.inp, src, cfg.max_record_bytes):
        texts, recs = _select(batch, task, counts, q, src.name)
        counts[_RECORDS] += len(_part_range(batch, task))
        if progress is not None:
            progress(len(batch.texts))
        if not texts:
            continue
        texts, reasons = clean(texts, cfg)
        if any(reasons):
            counts.update(filter(None, reasons))
            keep = [r is None for r in reasons]
            texts, recs = list(compress(texts, keep)), list(compress(recs, keep))
        if not texts:
            continue
        counts[_KEPT] += len(texts)
        encoded = [t.encode("utf-8") for t in texts]
        digest = digests(encoded)
        sigs = hasher.signatures(texts) if hasher is not None else None
        if splitter is not None:
            # After hashing: dedupe never depends on the splitter.
            encoded = [t.encode("utf-8") for t in splitter.split(texts)]
        yield Cleaned(np.asarray(recs, dtype=np.uint64), encoded, digest, sigs)


def clean(texts: list[str], cfg: ShardConfig) -> tuple[list[str], list[str | None]]:
    """Normalise a batch and decide each text's fate, with one pass of class lookups.

    The code points and class bits of the raw batch serve both the normaliser's
    "needs work?" test and the filter's counts; only the few texts the normaliser
    changes are measured again.
    """
    a, starts, lengths = codepoints(texts)
    flags = table(cfg.remove_invisible)[a]
    feats = features(a, flags, starts, lengths, cfg.repeat_min_times)
    dirty = np.flatnonzero(needs_work(flags, starts, texts, cfg.nfc))
    if len(dirty):
        texts = list(texts)
        fixed = [normalise_text(texts[i], cfg.nfc, cfg.remove_invisible) for i in dirty.tolist()]
        for i, text in zip(dirty.tolist(), fixed, strict=True):
            texts[i] = text
        a2, starts2, lengths2 = codepoints(fixed)
        sub = features(a2, table(cfg.remove_invisible)[a2], starts2, lengths2, cfg.repeat_min_times)
        for key, values in feats.items():
            values[dirty] = sub[key]
    return texts, decide(texts, feats, cfg)


def _fixed(data: bytes, width: int) -> Any:
    import pyarrow as pa

    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(data) // width, [None, pa.py_buffer(data)]
    )


def _part_range(batch: Batch, task: Task) -> range:
    first = (task.part - batch.start) % task.parts
    return range(first, len(batch.texts), task.parts)


def _select(
    batch: Batch, task: Task, counts: Counter[str], q: IO[Any], source: str
) -> tuple[list[str], list[int]]:
    """This task's records of a batch; its problem records go to quarantine."""
    idx = _part_range(batch, task)
    texts = batch.texts if task.parts == 1 else batch.texts[idx.start :: task.parts]
    recs = range(batch.start + idx.start, batch.start + len(batch.texts), task.parts)
    if not batch.problems:
        return texts, list(recs)  # type: ignore[return-value]
    good_texts, good_recs = [], []
    for j, text in enumerate(texts):
        if text is None:
            i = idx.start + j * task.parts
            problem = batch.problems[i]
            counts[problem.reason] += 1
            q.write(quarantine_line(source, task.inp, recs[j], batch.lines.get(i), problem))
        else:
            good_texts.append(text)
            good_recs.append(recs[j])
    return good_texts, good_recs


def quarantine_line(source: str, inp: InputFile, record: int, line: int | None, p: Problem) -> bytes:
    entry = {
        "source": source,
        "path": str(inp.path),
        "record": record,
        "line": line,
        "reason": p.reason,
        "detail": p.detail,
        "bytes": p.size,
        "truncated": len(p.raw) < p.size,
        "raw_base64": base64.b64encode(p.raw).decode("ascii"),
        "raw_escaped": p.raw.decode(CODECS[inp.encoding], errors="backslashreplace"),
    }
    return (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
