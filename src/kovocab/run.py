"""`kovocab run RECIPE.yaml`: every stage of a recipe, in order, into one run folder.

shard → import_gguf → expand_vocab → init_model → resize_embeddings → pretrain → chat_vector → report → eval
(import_gguf, init_model and chat_vector only when the recipe has their section).
Each stage is the same function its subcommand calls, built from the recipe section of
the same name; the runner only fills the paths that connect one stage to the next
(a key the recipe sets always wins) and skips a stage whose outputs are complete for
the same resolved config and the same upstream outputs (recorded in `run.json`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kovocab.artifacts import Owned, output_lock, read_manifest, remove_outputs, write_json
from kovocab.config import load_section, opt, resolve_path, resolve_paths, to_dict
from kovocab.errors import ConfigError
from kovocab.stages import STAGE_TABLE, Stage

log = logging.getLogger(__name__)

SECTION = "run"
STAGES = tuple(s.name for s in STAGE_TABLE)  # shard, expand_vocab, init_model, resize_embeddings, ...
RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunConfig:
    """The run folder and which stages run (recipe section `run:`)."""

    out_dir: Path = opt(doc="run folder; each stage writes to a subfolder unless its section names one")
    stages: tuple[str, ...] = opt(STAGES, "stages to run, in pipeline order; a stage left out must not be "
                                          "needed, or its section must point at existing outputs")
    nproc_per_node: int = opt(2, "pretraining processes on this machine (gloo on CPU, NCCL on GPUs)")
    force: bool = opt(False, "run every stage even when its outputs are complete")

    def check(self) -> list[str]:
        problems = [f"stages: unknown stage {s!r} (stages: {', '.join(STAGES)})" for s in self.stages
                    if s not in STAGES]
        if self.nproc_per_node < 1:
            problems.append("nproc_per_node: must be 1 or more")
        return problems


@dataclass(frozen=True)
class StageOutcome:
    """One stage of a run: where it wrote, and whether it ran or was already complete."""

    name: str
    out_dir: Path
    skipped: bool
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """The run folder, `run.json`, and each stage's outcome in order."""

    out_dir: Path
    run_json: Path
    stages: tuple[StageOutcome, ...]

    def stage(self, name: str) -> StageOutcome:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def plan_recipe(
    recipe: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), out_dir: str | Path | None = None,
    stages: Sequence[str] | None = None, force: bool | None = None,
) -> list[tuple[str, Any]]:
    """Every stage the recipe would run, with its resolved config; nothing is run or written.

    This is how recipes for machines we do not have (Llama-2-7B on GPU nodes) are checked.
    """
    _, _, plan = _plan(recipe, overrides, out_dir, stages, force)
    return [(stage.name, cfg) for stage, cfg in plan]


def run_recipe(
    recipe: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), out_dir: str | Path | None = None,
    stages: Sequence[str] | None = None, force: bool | None = None,
) -> RunResult:
    """Run the recipe's stages in order; return each stage's outcome.

    `recipe` is a YAML path (its relative paths are taken from its folder) or an
    already-read recipe dict; `overrides` are `section.key=value` strings. Every stage
    config is built (and so checked) before the first stage runs.
    """
    cfg, run_dir, plan = _plan(recipe, overrides, out_dir, stages, force)
    # One run per folder. Each stage locks its own folder too; a stage writing into the
    # run folder itself re-enters this lock (locks are re-entrant within a process).
    with output_lock(run_dir, f"{SECTION}.out_dir"):
        return _run_plan(cfg, run_dir, plan)


def _run_plan(cfg: RunConfig, run_dir: Path, plan: list[tuple[Stage, Any]]) -> RunResult:
    state = _read_state(run_dir)
    upstream = ""
    done: list[StageOutcome] = []
    for stage, stage_cfg in plan:
        fingerprint = _fingerprint(stage_cfg, upstream)
        out = stage.out_dir(stage_cfg)
        prior = state["stages"].get(stage.name, {})
        skip = (not cfg.force and prior.get("fingerprint") == fingerprint
                and stage.done_file(stage_cfg).is_file())
        t0 = time.perf_counter()
        if skip:
            log.info("run: %s is complete in %s, skipped", stage.name, out)
            summary = prior.get("summary", {})
        else:
            # Outputs of another config (or --force) are replaced; a stage stopped half-way with
            # the same config continues (shard resumes its tasks, pretrain its checkpoints).
            fresh = cfg.force or prior.get("fingerprint") != fingerprint
            if fresh and out.exists() and out != run_dir and out.is_relative_to(run_dir):
                # Only what the stage wrote there: a folder holding anything else is refused.
                log.warning("run: %s: removing its outputs in %s (another config)", stage.name, out)
                owned = stage.owned(stage_cfg) if stage.owned is not None else Owned(stage.name)
                key = "out_dir" if hasattr(stage_cfg, "out_dir") else "out"  # shard's is `out`
                remove_outputs(out, owned, f"{stage.name}.{key}")
            log.info("run: %s -> %s", stage.name, out)
            # Recorded before the stage runs, so a killed stage is continued, not wiped, next time.
            state["stages"][stage.name] = {"fingerprint": fingerprint, "out_dir": str(out),
                                           "status": "started"}
            write_json(run_dir / RUN_JSON, state)
            summary = _jsonable(stage.summary(stage.run(stage_cfg, cfg.nproc_per_node, not fresh)))
        seconds = time.perf_counter() - t0
        state["stages"][stage.name] = {
            "fingerprint": fingerprint, "out_dir": str(out), "status": "complete", "summary": summary,
            "seconds": prior.get("seconds") if skip else round(seconds, 3),
        }
        write_json(run_dir / RUN_JSON, state)
        done.append(StageOutcome(stage.name, out, skip, seconds, summary))
        upstream = fingerprint
    return RunResult(out_dir=run_dir, run_json=run_dir / RUN_JSON, stages=tuple(done))


def _plan(
    recipe: str | Path | Mapping[str, Any], overrides: Sequence[str], out_dir: str | Path | None,
    stages: Sequence[str] | None, force: bool | None,
) -> tuple[RunConfig, Path, list[tuple[Stage, Any]]]:
    from kovocab.config import apply_overrides, read_recipe

    data = read_recipe(recipe) if not isinstance(recipe, Mapping) else dict(recipe)
    data = apply_overrides(data, overrides)
    flags: dict[str, Any] = {}
    if out_dir is not None:
        flags["out_dir"] = Path(out_dir).absolute()
    if stages is not None:
        flags["stages"] = tuple(stages)
    if force is not None:
        flags["force"] = force
    run_section = data.get(SECTION) or {}
    if not isinstance(run_section, Mapping):
        raise ConfigError(f"{SECTION}: expected a mapping of keys (out_dir, stages, ...), "
                          f"got {type(run_section).__name__}")
    cfg = resolve_paths(load_section(RunConfig, {SECTION: {**run_section, **flags}}, SECTION),
                        data.get("_recipe_dir"))
    wanted = _check_sections(data, cfg)
    run_dir = Path(cfg.out_dir)
    # Outputs follow from configs alone, so every stage is built before anything runs.
    outputs: dict[str, Any] = {}
    plan: list[tuple[Stage, Any]] = []
    problems: list[str] = []
    for stage in STAGE_TABLE:
        if stage.name not in wanted or stage.wire is None:
            continue
        try:
            section = _section(data, stage, stage.wire(run_dir, outputs))
            stage_cfg = stage.config(data, section)
        except ConfigError as exc:
            problems.extend(exc.problems)
            # Later stages are still checked, wired to a stand-in for this stage's outputs.
            outputs[stage.name] = _Unbuilt(stage.name)
            continue
        outputs[stage.name] = _jsonable(stage.outputs(stage_cfg))
        plan.append((stage, stage_cfg))
    if problems:
        raise ConfigError(problems)
    return cfg, run_dir, plan


class _Unbuilt(dict[str, Any]):
    """The outputs of a stage whose config has problems: any key gives a placeholder path."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def __bool__(self) -> bool:
        return True

    def get(self, key: str, default: Any = None) -> Any:
        return f"<{self.stage} output>"


def _section(data: Mapping[str, Any], stage: Stage, wired: dict[str, Any]) -> dict[str, Any]:
    """A stage's section: the recipe's keys over the wiring, or, with `from: FILE`, that file's
    section with the connecting paths re-pointed into this run and the keys beside `from:` on top."""
    from kovocab.config import read_recipe

    raw = data.get(stage.name) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{stage.name}: expected a mapping of keys (or from: FILE), "
                          f"got {type(raw).__name__}")
    if "from" not in raw:
        return {**wired, **raw}
    local = {k: v for k, v in raw.items() if k != "from"}
    source = recipe_path(data, str(raw["from"]))
    included = read_recipe(source)
    part = included.get(stage.name)
    if not isinstance(part, Mapping):
        raise ConfigError(f"{stage.name}.from: {source} has no '{stage.name}:' section")
    here = stage.absolute(local, data.get("_recipe_dir"))
    return {**stage.absolute(part, included.get("_recipe_dir")), **wired, **here}


def _check_sections(data: Mapping[str, Any], cfg: RunConfig) -> tuple[str, ...]:
    """Refuse unknown sections (typos) and return the stages that will run."""
    import difflib

    known = {SECTION, *STAGES}
    problems = []
    for key in data:
        if key.startswith("_") or key in known:
            continue
        if key in ("tokenizer_training", "vocab_merge"):
            hint = "; kovocab run trains and merges in its expand_vocab: section (method, korean_vocab_size)"
        else:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(f"{key}: not a section of a run recipe{hint} (sections: {', '.join(sorted(known))})")
    if problems:
        raise ConfigError(problems)
    # Without an init_model or import_gguf section the model is a real checkpoint folder:
    # resize_embeddings.model_dir; without a chat_vector section the run ends with the pretrained model.
    optional = {s.name for s in STAGE_TABLE if s.optional}
    return tuple(s for s in cfg.stages if s not in optional or s in data)


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(state, dict) and isinstance(state.get("stages"), dict):
                return state
        except ValueError:
            log.warning("%s is not valid JSON: every stage runs again", path)
    return {"stages": {}}


def _fingerprint(cfg: Any, upstream: str) -> str:
    """A stage's identity: its resolved config and, through `upstream`, every earlier stage's."""
    text = json.dumps({"config": to_dict(cfg), "upstream": upstream}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(to_dict(obj), default=str))


def recipe_path(data: Mapping[str, Any], value: str | Path) -> Path:
    return resolve_path(value, data.get("_recipe_dir"))


__all__ = ["RunConfig", "RunResult", "StageOutcome", "run_recipe", "read_manifest"]
