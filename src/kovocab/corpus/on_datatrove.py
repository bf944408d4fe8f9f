"""Stage `shard`, engine `datatrove`: the local engine's task stages (kovocab.corpus.engine)
driven by Hugging Face datatrove's executors (Local, SLURM, Ray): one executor per stage,
chained with `depends=`: read -> dedup -> write -> finish (quarantine.jsonl + manifest).

Rank r of an executor with `tasks` ranks runs `engine.shard_stage(cfg, stage, r, tasks)`:
every tasks-th task of the stage, batched as in `--engine local` (no Document per row), so
the bytes are the local engine's. Reference: datatrove executor/base.py (`_run_for_rank`).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kovocab.errors import ConfigError, InputError, MissingDependencyError

try:
    from datatrove.executor.base import PipelineExecutor
    from datatrove.pipeline.base import PipelineStep
except ImportError as exc:  # the module is imported only by `--engine datatrove` and its users
    raise MissingDependencyError("datatrove", "datatrove", "kovocab shard --engine datatrove") from exc

from kovocab.artifacts import claim_output, read_manifest
from kovocab.corpus.engine import STAGES, check_limits, finished_parts, shard_local, shard_stage, stage_calls
from kovocab.corpus.inputs import probe
from kovocab.corpus.options import OUTPUTS, ShardConfig
from kovocab.corpus.tasks import WORK

EXECUTORS = {"local": "LocalPipelineExecutor", "slurm": "SlurmPipelineExecutor", "ray": "RayPipelineExecutor"}
FINISH = "finish"


class ShardStage(PipelineStep):
    """One stage of `kovocab shard` as a datatrove block: rank r runs every world_size-th task
    of the stage not yet done (its files in `out/.work` say which), then passes `data` on."""

    name = "kovocab shard"
    type = "kovocab"

    def __init__(self, cfg: ShardConfig, stage: str) -> None:
        if stage not in STAGES:
            raise ConfigError(f"stage {stage!r}: choose one of {', '.join(STAGES)}")
        self.name = f"kovocab shard: {stage}"  # before the base class names its stats after it
        super().__init__()
        self.cfg, self.stage = cfg, stage

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        with self.track_time(unit="rank"):
            ran = shard_stage(self.cfg, self.stage, rank, world_size)
        self.stat_update("tasks", value=ran, unit="rank")
        if data:
            yield from data


class ShardFinish(PipelineStep):
    """The driver's last step (one rank): with every stage done, quarantine.jsonl and the
    manifest, then `out/.work` goes. Refuses to redo a stage that datatrove marked done."""

    name = "kovocab shard: finish"
    type = "kovocab"

    def __init__(self, cfg: ShardConfig, logs: Path) -> None:
        super().__init__()
        self.cfg, self.logs = cfg, logs

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        check_stages_done(self.cfg, self.logs)
        with self.track_time(unit="rank"):
            shard_local(self.cfg, workers=1)  # every stage done: it only finishes
        if data:
            yield from data


def check_stages_done(cfg: ShardConfig, logs: Path) -> None:
    """Every task of every stage finished in `out/.work`, or the folder already complete."""
    from kovocab.corpus import pipeline as pl

    out, cfp = Path(cfg.out), pl.config_fingerprint(cfg)
    inputs, work = probe(cfg, hashes=False), out / WORK
    if pl.complete_for(out, cfp, inputs):
        return
    for stage in ("read", "dedup", "write"):
        try:  # the dedup stage's plan needs every read task done: it raises otherwise
            left = len(stage_calls("dedup" if stage == "read" else stage, cfg, work, out, cfp, inputs)[1])
        except InputError:
            left = -1
        if (stage == "read" and left < 0) or (stage != "read" and left):
            raise InputError(f"--engine datatrove: stage {stage} is not complete in {work} although "
                             f"datatrove marked its ranks done in {logs / stage}/completions: those "
                             f"marks are stale (files in {out} were removed); remove {logs} and run again")


def logging_folder(cfg: ShardConfig, tasks: int, logging_dir: str | Path | None = None) -> Path:
    """datatrove's logs, stats and completion files for this config and number of ranks:
    `<out>.datatrove/<config fingerprint>-<tasks>` by default (beside `out`, which may hold
    only what `shard` writes). A rank's completion file is valid only for the same ranks."""
    from kovocab.corpus import pipeline as pl

    base = Path(logging_dir) if logging_dir is not None else Path(f"{Path(cfg.out)}.datatrove")
    return base / f"{pl.config_fingerprint(cfg)[:12]}-{tasks}"


def forget_stale_completions(cfg: ShardConfig, logs: Path) -> None:
    """datatrove skips a rank whose completion file exists; ours trust `out/.work`. When `out`
    holds no read task of this config and no finished run of it over these files (a new or
    removed folder, changed inputs), earlier completion files describe other files: remove them."""
    from kovocab.corpus import pipeline as pl

    out, cfp = Path(cfg.out), pl.config_fingerprint(cfg)
    if pl.complete_for(out, cfp, probe(cfg, hashes=False)):
        return
    if (out / WORK).is_dir() and finished_parts(out / WORK, cfp):
        return
    for stage in (*STAGES, FINISH):
        shutil.rmtree(logs / stage / "completions", ignore_errors=True)


def shard_executors(cfg: ShardConfig, executor: str = "local", tasks: int = 1, workers: int = -1,
                    logging_dir: str | Path | None = None, **kwargs: Any) -> list[PipelineExecutor]:
    """datatrove executors for `kovocab shard` of `cfg`: [read, dedup, write, finish], each
    `depends=` on the one before; `executors[-1].run()` runs them all (SLURM: submits four
    array jobs chained with afterok). read, dedup and write run `tasks` ranks on at most
    `workers` at a time (-1: all); finish runs one rank. `kwargs` go to every executor
    (SLURM: partition, time, cpus_per_task, mem_per_cpu_gb, venv_path, ...; `job_name` is
    a prefix). Build them right before running: stale completion files are removed here."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if tasks < 1:
        raise ConfigError(f"--tasks: must be at least 1 (ranks per stage), got {tasks}")
    import datatrove.executor

    cls = getattr(datatrove.executor, EXECUTORS[executor])
    logs = logging_folder(cfg, tasks, logging_dir)
    forget_stale_completions(cfg, logs)
    prefix = kwargs.pop("job_name", "kovocab-shard")
    if executor == "local":
        # datatrove's default is forkserver; spawn as in --engine local: the same imports per
        # worker, workers that are the driver's own children (their CPU time is counted), and
        # no fork of a process where pyarrow or Kiwi already run threads.
        kwargs.setdefault("start_method", "spawn")
    chain: list[PipelineExecutor] = []
    for stage in (*STAGES, FINISH):
        step = ShardFinish(cfg, logs) if stage == FINISH else ShardStage(cfg, stage)
        named = {"job_name": f"{prefix}-{stage}"} if executor == "slurm" else {}
        chain.append(cls(pipeline=[step], tasks=1 if stage == FINISH else tasks,
                         workers=1 if stage == FINISH else workers, logging_dir=str(logs / stage),
                         depends=chain[-1] if chain else None, **named, **kwargs))
    return chain


def shard_datatrove(cfg: ShardConfig, workers: int = 1, tasks: int | None = None,
                    logging_dir: str | Path | None = None) -> Any:
    """`kovocab shard --engine datatrove`: the stages on datatrove's LocalPipelineExecutor,
    `tasks` ranks (default: workers) on `workers` processes; a ShardResult with each stage's
    ranks and wall time. Holds the lock on `cfg.out` (the ranks run in its pool workers)."""
    from kovocab.corpus import pipeline as pl

    pl._check_workers(workers)
    inputs = probe(cfg, hashes=False)  # input mistakes reported here once, not by every rank
    pl._check_not_all_empty(inputs)
    check_limits(cfg, inputs)
    out = Path(cfg.out)
    with claim_output(out, OUTPUTS, "shard.out"):
        before = read_manifest(out)
        chain = shard_executors(cfg, "local", tasks=tasks or workers, workers=workers,
                                logging_dir=logging_dir)
        stages: dict[str, Any] = {}
        for name, ex in zip((*STAGES, FINISH), chain, strict=True):
            t0 = time.monotonic()
            stats = ex.run()  # None when datatrove found every rank complete
            stages[name] = {"ranks": ex.world_size, "tasks": _tasks(stats),
                            "wall_s": round(time.monotonic() - t0, 3)}
        manifest = read_manifest(out)
        if manifest is None:
            raise RuntimeError(f"kovocab bug: datatrove ran every stage but {out} has no manifest")
    result = pl._result(out, manifest, stages["read"]["tasks"], before == manifest)
    return dataclasses.replace(result, stages=stages)


def _tasks(stats: Any) -> int:
    """Our tasks run, summed over the ranks (the `tasks` stat of the stage's block)."""
    if stats is None:
        return 0
    return int(sum(s.stats["tasks"].total for s in stats.stats if "tasks" in s.stats))
