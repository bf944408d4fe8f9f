"""Start a pretraining job: build the token stores once, then train in this process or in N local ranks.

Under a launcher (torchrun, `deepspeed`, srun: RANK in the environment) `launch_pretrain`
trains in this process. Without one and with nproc_per_node > 1 it re-runs
`kovocab pretrain` through `torch.distributed.run --standalone` on this node, passing the
resolved config as a file. Multi-node commands: pretrain/README.md.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from kovocab.artifacts import atomic_write_text, claim_output
from kovocab.config import apply_overrides, read_recipe, to_dict
from kovocab.errors import ConfigError, KovocabError
from kovocab.pretraining.config import (
    SECTION,
    PretrainConfig,
    check_paths,
    deepspeed_config,
    load_pretrain_config,
    outputs,
)
from kovocab.pretraining.loop import LAUNCHED, PretrainResult, prepare_data, pretrain
from kovocab.pretraining.lora import check_lora_environment

log = logging.getLogger(__name__)

def load_recipe(path: str | Path, overrides: tuple[str, ...] = ()) -> PretrainConfig:
    """The `pretrain:` section of a recipe file, with `section.key=value` overrides applied."""
    return load_pretrain_config(apply_overrides(read_recipe(path), overrides, sections=(SECTION,)))


def under_launcher() -> bool:
    """True inside a rank started by torchrun, the deepspeed launcher or srun-with-env."""
    return "RANK" in os.environ or "LOCAL_RANK" in os.environ


def launch_pretrain(recipe: PretrainConfig | str | Path, nproc_per_node: int = 1, *, resume: bool = False,
                    overrides: tuple[str, ...] = ()) -> PretrainResult:
    """Train `recipe` (a config or a recipe file) on this node with `nproc_per_node` processes."""
    cfg = recipe if isinstance(recipe, PretrainConfig) else load_recipe(recipe, overrides)
    if nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node: must be 1 or more, got {nproc_per_node}")
    if under_launcher():
        _die_with_parent()
        return pretrain(cfg, resume=resume)
    check_paths(cfg)
    check_lora_environment(cfg)
    check_deepspeed_json(cfg, nproc_per_node)
    # This process holds the lock on out_dir for the whole job; the ranks it starts do not.
    with claim_output(cfg.out_dir, outputs(cfg), f"{SECTION}.out_dir"):
        return _launch_here(cfg, nproc_per_node, resume)


def summary_lines(cfg: PretrainConfig, res: PretrainResult) -> list[str]:
    """What `kovocab pretrain` prints (on rank 0 of the launching process only)."""
    loss = "n/a" if res.final_loss is None else f"{res.final_loss:.4f}"
    return [f"pretrained {res.steps} steps (final loss {loss}): {res.export_dir}",
            f"  metrics: {res.metrics}\n  checkpoints: {res.checkpoints}"]


def check_deepspeed_json(cfg: PretrainConfig, nproc_per_node: int) -> None:
    """The DeepSpeed JSON against the recipe for `nproc_per_node` ranks on this machine, here.

    Each rank checks it again when it starts; checked only there, a conflict came back
    once per rank under torchrun's ChildFailedError traceback, after the token stores
    had been built.
    """
    import torch

    deepspeed_config(cfg, world_size=nproc_per_node, on_gpu=torch.cuda.is_available())


def _launch_here(cfg: PretrainConfig, nproc_per_node: int, resume: bool) -> PretrainResult:
    if nproc_per_node == 1:
        return pretrain(cfg, resume=resume)
    prepare_data(cfg)  # once, here, before the ranks start
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    spec = cfg.out_dir / "launch.yaml"
    atomic_write_text(spec, yaml.safe_dump({SECTION: to_dict(cfg)}, allow_unicode=True, sort_keys=False))
    (cfg.out_dir / "error.json").unlink(missing_ok=True)
    (cfg.out_dir / "result.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc_per_node}", "-m", "kovocab", "pretrain", "--config", str(spec),
           *(["--resume"] if resume else [])]
    env = {**os.environ, LAUNCHED: "1"}
    # torchrun sets 1 thread per rank only when unset; share the cores instead of oversubscribing.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    log.info("launching %d ranks: %s", nproc_per_node, " ".join(cmd))
    rc = subprocess.run(cmd, env=env, check=False).returncode
    return _collect(cfg.out_dir, rc)


def _collect(out_dir: Path, rc: int) -> PretrainResult:
    import json

    error, result = out_dir / "error.json", out_dir / "result.json"
    if error.is_file():
        raise KovocabError(json.loads(error.read_text(encoding="utf-8"))["error"])
    if rc != 0 or not result.is_file():
        raise KovocabError(f"{SECTION}: the training processes failed (exit code {rc}); their output is "
                           "above. Fix the cause and continue with --resume")
    return PretrainResult.from_dict(json.loads(result.read_text(encoding="utf-8")))


def _die_with_parent() -> None:
    # torchrun starts every rank in its own session, so killing the launcher's process
    # group would leave ranks training as orphans; ask Linux to SIGKILL us with the parent.
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
