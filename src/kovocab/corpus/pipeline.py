"""Stage `shard`: the whole pipeline, resumable, parallel, a no-op when already done.

Inputs: a ShardConfig. Outputs in cfg.out: shards, quarantine.jsonl, config.yaml and
manifest.json, written last (with the same fingerprint it means "finished"). Phase 1
runs independent tasks on a process pool or a cluster array; phase 2 merges serially.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kovocab.artifacts import (
    MANIFEST,
    check_output,
    claim_output,
    read_manifest,
    remove_outputs,
    write_config,
    write_manifest,
)
from kovocab.config import to_dict
from kovocab.corpus.decoding import CP949_HINT, SNIFF_BYTES
from kovocab.corpus.inputs import InputFile, probe, with_sha256
from kovocab.corpus.merge import QUARANTINE_REASONS, merge_tasks
from kovocab.corpus.options import OUTPUTS, SECTION, ShardConfig
from kovocab.corpus.tasks import WORK, Task, is_done, make_tasks, plan_tasks, run_task
from kovocab.errors import ConfigError, InputError

log = logging.getLogger(__name__)

MAX_SKIPPED_LISTED = 1000  # skipped files listed in the manifest (all are counted)


@dataclass(frozen=True)
class ShardResult:
    """Where the shards went and what was counted (docs_in = kept + dropped + duplicates)."""

    out: Path
    manifest: Path
    splits: dict[str, list[Path]] = field(default_factory=dict)  # JSONL.gz shards per split
    parquet: dict[str, list[Path]] = field(default_factory=dict)
    quarantine: Path | None = None
    docs_in: int = 0
    kept: int = 0
    dropped: int = 0
    duplicates: int = 0
    tasks_run: int = 0
    already_done: bool = False
    stages: dict[str, Any] = field(default_factory=dict)  # engine local: tasks, time, memory per stage


def config_fingerprint(cfg: ShardConfig) -> str:
    """What phase 1 depends on besides its input: the config (less `out` and how the work
    is split) and the version."""
    from kovocab import __version__

    body = {
        "version": __version__,
        "config": to_dict(dataclasses.replace(cfg, out=Path("."), parts_per_file=0)),
    }
    body["config"].pop("allow_low_yield")  # decides only whether to finish, not what phase 1 writes
    if cfg.dedupe_against:  # what an earlier index holds is fixed by the run that wrote it
        from kovocab.corpus.index import load_earlier

        body["earlier"] = [e.fingerprint for e in load_earlier(cfg)]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def fingerprint(cfg: ShardConfig, inputs: list[InputFile]) -> str:
    """What the outputs depend on: the config fingerprint and the contents of every input."""
    body = [config_fingerprint(cfg), [[i.source, i.index, str(i.path), i.sha256] for i in inputs]]
    return hashlib.sha256(json.dumps(body).encode("utf-8")).hexdigest()


def complete_for(out: Path, cfp: str, inputs: list[InputFile]) -> bool:
    """Does `out` hold a finished run of this config over these input files (path and size;
    nothing is hashed, so array tasks can ask cheaply)?"""
    manifest = read_manifest(out)
    return bool(manifest and manifest.get("config_fingerprint") == cfp
                and [(e["path"], e["bytes"]) for e in manifest.get("inputs", [])]
                == [(str(i.path), i.size) for i in inputs])


def _check_not_all_empty(inputs: list[InputFile]) -> None:
    empty = [str(i.path) for i in inputs if i.empty]
    if empty and len(empty) == len(inputs):
        raise InputError(f"every input is empty ({', '.join(empty[:5])}): nothing to shard; check the paths")
    for path in empty:
        log.warning("%s is empty: it adds no documents", path)


def _finished(out: Path, fp: str) -> dict[str, Any] | None:
    manifest = read_manifest(out)
    if not manifest or manifest.get("stage") != SECTION or manifest.get("fingerprint") != fp:
        return None
    for name, entry in manifest.get("files", {}).items():
        path = out / name
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return None
    return manifest


def _prepare_out(out: Path) -> None:
    """Make `out` ready for phase 1; refuse a folder holding files `shard` does not write."""
    check_output(out, OUTPUTS, "shard.out")
    (out / WORK).mkdir(parents=True, exist_ok=True)


def _clean_previous(out: Path) -> None:
    # Only the exact names shard writes (and .work stays: phase 2 reads it).
    remove_outputs(out, OUTPUTS, "shard.out")


def _result(out: Path, manifest: dict[str, Any], tasks_run: int, already: bool) -> ShardResult:
    stats = manifest["stats"]
    return ShardResult(
        out=out,
        manifest=out / MANIFEST,
        splits={k: [out / n for n in v] for k, v in manifest["splits"].items()},
        parquet={k: [out / n for n in v] for k, v in manifest["parquet"].items()},
        quarantine=out / "quarantine.jsonl",
        docs_in=stats["docs_in"],
        kept=stats["kept"],
        dropped=stats["dropped"],
        duplicates=stats["duplicates"],
        tasks_run=tasks_run,
        already_done=already,
    )


def _log_skipped(skipped: list[dict[str, str]]) -> None:
    """Say which files of the input folders are not read (hidden, or no known format)."""
    if not skipped:
        return
    by_reason = Counter(e["reason"] for e in skipped)
    shown = ", ".join(Path(e["path"]).name for e in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    log.warning(
        "skipped %d file(s) in the input folders (%s): %s; they are listed in manifest.json "
        "(skipped_files); name a file with an unknown extension directly, with format:, to read it",
        len(skipped), ", ".join(f"{n} {r}" for r, n in sorted(by_reason.items())), shown)


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (processes for phase 1), got {workers}")


def check_yield(cfg: ShardConfig, tasks: list[Task], work: Path, done_suffix: str = ".done.json") -> None:
    """After phase 1, before any output is replaced: warn about CP949 text found past the
    sniffed sample, and stop when nothing is kept or most records are quarantined."""
    summaries = [json.loads(t.path(work, done_suffix).read_text(encoding="utf-8")) for t in tasks]
    for t in tasks:
        if cfg.sources[t.inp.source].encoding == "auto" and t.inp.encoding == "utf-8":
            n = _count_cp949_lines(t.path(work, ".quarantine.jsonl"))
            if n:
                log.warning(
                    "%s: %d line(s) past the first %d KiB are not UTF-8 but decode as CP949 (quarantined as "
                    "invalid-encoding); the encoding was detected from the start of the file only: set "
                    "encoding: cp949 for this source (--encoding cp949) or convert the file to UTF-8",
                    t.inp.path, n, SNIFF_BYTES // 1024)
    records = sum(s["records"] for s in summaries)
    kept = sum(s["kept"] for s in summaries)
    quarantined = sum(n for s in summaries for k, n in s["dropped"].items() if k in QUARANTINE_REASONS)
    reasons: Counter[str] = Counter()
    for s in summaries:
        reasons.update({k: n for k, n in s["dropped"].items() if k in QUARANTINE_REASONS})
    problems = []
    if records and kept == 0:
        problems.append(f"no document of {records} was kept")
    if records and 2 * quarantined > records:
        problems.append(f"{quarantined} of {records} records were quarantined")
    if not problems:
        return
    problem = " and ".join(problems)
    top = ", ".join(f"{k}: {n}" for k, n in reasons.most_common(3)) or "none quarantined"
    drops: Counter[str] = Counter()
    for s in summaries:
        drops.update(s["dropped"])
    why = ", ".join(f"{k}: {n}" for k, n in drops.most_common(4))
    # Point at the quarantine files only when they hold something: text decoded with the wrong
    # codec can be valid mojibake that the Hangul filter drops instead.
    where = (f"see the first entries of .work/*.quarantine.jsonl under {cfg.out}" if quarantined
             else "check the source's encoding, format and field against a few lines of the file")
    message = (
        f"shard: {problem} (dropped by reason: {why}; quarantined: {top}); this is usually a wrong "
        f"encoding, format or field ({where}). Fix the source, or accept it with --set "
        "shard.allow_low_yield=true (allow_low_yield: true in the recipe)"
    )
    if not cfg.allow_low_yield:
        raise InputError(message)
    log.warning("%s; allowed by allow_low_yield", message.split("; this is usually")[0])


def _count_cp949_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if CP949_HINT in line)


def summary_lines(res: ShardResult) -> list[str]:
    """What `kovocab shard` prints: what was kept and where each kind of output went."""
    lines = [f"shards {'already complete, nothing changed' if res.already_done else 'written'}: {res.out}",
             f"  documents: {res.docs_in} read, {res.kept} kept, {res.dropped} dropped, "
             f"{res.duplicates} duplicates"]
    for split in ("train", "eval"):
        paths = res.splits[split]
        lines.append(f"  {split}: {res.out / (split + '-*-of-' + paths[0].name.split('-of-')[1])} "
                     f"({len(paths)} shard(s), and .parquet)")
    return [*lines, f"  quarantine: {res.quarantine}", f"  manifest: {res.manifest}"]


def shard_corpus(cfg: ShardConfig, workers: int = 1, progress: bool | None = None) -> ShardResult:
    """Run stage `shard` (both phases) and return where its outputs are.

    This is engine `serial`: phase 1 on `workers` processes, then one process dedupes and
    writes (its memory grows with the corpus). kovocab.corpus.engine.shard_local runs every
    step as bounded tasks instead; both keep the same documents and write the same bytes.
    Holds the lock on `cfg.out` while it runs; a folder holding files that `shard` does not
    write (anything but its shards, quarantine.jsonl, config.yaml, manifest.json) is refused.
    keep_index and dedupe_against need the local engine (shard_local): with either set this
    refuses; kovocab.corpus.engine.shard picks the engine.
    """
    if cfg.keep_index or cfg.dedupe_against:
        raise ConfigError("keep_index / dedupe_against need the local engine's index files: call "
                          "kovocab.corpus.shard_local(cfg, workers) (or kovocab.corpus.engine.shard), or "
                          "`kovocab shard`, which picks it for them")
    with claim_output(cfg.out, OUTPUTS, "shard.out"):
        return _shard_corpus(cfg, workers, progress)


def _shard_corpus(cfg: ShardConfig, workers: int, progress: bool | None) -> ShardResult:
    _check_workers(workers)
    out = Path(cfg.out)
    skipped: list[dict[str, str]] = []
    inputs = probe(cfg, skipped=skipped)
    _log_skipped(skipped)
    _check_not_all_empty(inputs)
    fp = fingerprint(cfg, inputs)
    manifest = _finished(out, fp)
    if manifest is not None:
        log.info("%s is already complete for this config and these inputs: nothing to do", out)
        return _result(out, manifest, 0, True)
    _prepare_out(out)
    work = out / WORK
    tasks = plan_tasks(inputs, cfg, config_fingerprint(cfg), work, workers)
    ran = run_tasks([t for t in tasks if not is_done(t, work)], cfg, work, workers, progress)
    check_yield(cfg, tasks, work)
    _clean_previous(out)
    write_config(out, SECTION, cfg)
    body = merge_tasks(cfg, inputs, tasks, out, progress=_show(progress))
    # .work goes before the manifest is written, so the manifest lists only outputs;
    # a kill in between just means phase 1 runs again.
    shutil.rmtree(work, ignore_errors=True)
    stats = body.pop("stats")
    stats["skipped_files"] = len(skipped)
    stats["skipped_by_reason"] = dict(sorted(Counter(e["reason"] for e in skipped).items()))
    body["skipped_files"] = skipped[:MAX_SKIPPED_LISTED]
    write_manifest(out, SECTION, stats, fingerprint=fp, config_fingerprint=config_fingerprint(cfg), **body)
    manifest = read_manifest(out)
    assert manifest is not None  # just written
    log.info(
        "kept %d of %d documents (%d dropped, %d duplicates)",
        stats["kept"],
        stats["docs_in"],
        stats["dropped"],
        stats["duplicates"],
    )
    return _result(out, manifest, ran, False)


def shard_tasks(
    cfg: ShardConfig, task: int, num_tasks: int, workers: int = 1, progress: bool | None = None
) -> int:
    """Phase 1 only, for task `task` of `num_tasks` (a cluster array job); returns tasks run.

    Every array task plans the same list of phase-1 tasks and takes every
    num_tasks-th; a final `kovocab shard` without --task then merges. Array tasks run at
    the same time by design, so they take no lock (each writes only its own task files
    under .work/); the final merge holds it.
    """
    _check_workers(workers)
    if not 0 <= task < num_tasks:
        raise InputError(f"--task {task} is not in 0..{num_tasks - 1} (--num-tasks {num_tasks})")
    if cfg.keep_index or cfg.dedupe_against:
        raise InputError("keep_index / dedupe_against run on the local engine: use --engine local --stage "
                         "read|dedup|write --task I --num-tasks N for array jobs")
    out = Path(cfg.out)
    # No input is hashed here except the ones this task reads: with many array tasks
    # and a large corpus, hashing everything everywhere would cost more than the work.
    inputs = probe(cfg, hashes=False)
    cfp = config_fingerprint(cfg)
    if complete_for(out, cfp, inputs):
        log.info("%s is already complete: nothing to do", out)
        return 0
    _prepare_out(out)
    work = out / WORK
    parts = cfg.parts_per_file or 1
    plan = [(i, k) for i in inputs if not i.empty for k in range(parts)][task::num_tasks]
    hashed = {(i.source, i.index): with_sha256(i) for i, _ in plan}
    mine = [make_tasks(hashed[(i.source, i.index)], parts, cfp)[k] for i, k in plan]
    return run_tasks([t for t in mine if not is_done(t, work)], cfg, work, workers, progress)


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


_COUNTER: Any = None


def _init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter
    logging.basicConfig(level=logging.WARNING)


def _count(n: int) -> None:
    with _COUNTER.get_lock():
        _COUNTER.value += n


def _run_in_worker(task: Task, cfg: ShardConfig, work: Path) -> dict[str, Any]:
    return run_task(task, cfg, work, _count if _COUNTER is not None else None)


def run_tasks(tasks: list[Task], cfg: ShardConfig, work: Path, workers: int, progress: bool | None) -> int:
    """Phase 1: run tasks in this process (workers=1) or on a pool of `workers` processes."""
    if not tasks:
        return 0
    from tqdm import tqdm

    # Biggest first, so one large input does not start last on an idle pool.
    tasks = sorted(tasks, key=lambda t: (-t.inp.size, t.key))
    log.info("phase 1: %d tasks on %d worker(s)", len(tasks), workers)
    bar = tqdm(desc="read+clean", unit=" rec", disable=not _show(progress), unit_scale=True)
    t0 = time.monotonic()
    try:
        if workers <= 1:
            for t in tasks:
                run_task(t, cfg, work, bar.update)
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork: pyarrow and Kiwi run threads
            counter = ctx.Value("q", 0)
            with ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)
            ) as pool:
                pending = {pool.submit(_run_in_worker, t, cfg, work) for t in tasks}
                while pending:
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()  # re-raises a task's error (InputError included)
                    bar.update(counter.value - bar.n)
    finally:
        bar.close()
    log.info("phase 1 done in %.1f s", time.monotonic() - t0)
    return len(tasks)
