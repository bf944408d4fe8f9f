"""Resumable checkpoints: DeepSpeed's own ZeRO-3 format plus, per rank, the data position and RNGs.

`checkpoints/step-NNNNNNNN/` holds what `engine.save_checkpoint` writes (partitioned fp32
masters, Adam moments, LR scheduler) and `kovocab_rank{R}.pt` (PackedBlocks state, RNG
states, stage and step). `checkpoints/latest` names the newest complete one; it is
written last, after every rank has finished, so a killed save is never resumed from.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

from kovocab.artifacts import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

LATEST = "latest"
_TAG = re.compile(r"^step-(\d{8})$")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def latest_tag(root: Path) -> str | None:
    """The newest complete checkpoint under `root`, or None."""
    path = root / LATEST
    if not path.is_file():
        return None
    tag = path.read_text(encoding="utf-8").strip()
    return tag if _TAG.match(tag) and (root / tag).is_dir() else None


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine: Any, root: Path, step: int, rank: int, is_main: bool, state: dict[str, Any],
                    keep: int) -> str:
    """Save DeepSpeed's checkpoint and this rank's kovocab state; rank 0 then marks it latest."""
    import torch
    import torch.distributed as dist

    tag = tag_for(step)
    # save_latest=False: DeepSpeed would point `latest` at the tag before kovocab's files exist.
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    with atomic_open(root / tag / f"kovocab_rank{rank}.pt", "wb") as f:
        torch.save({**state, "rng": rng_state()}, f)
    dist.barrier()
    if is_main:
        atomic_write_text(root / LATEST, tag + "\n")
        _prune(root, keep)
    dist.barrier()
    return tag


def load_rank_state(root: Path, tag: str, rank: int) -> dict[str, Any]:
    """This rank's kovocab state of checkpoint `tag` (the RNG states are restored by the caller)."""
    import torch

    path = root / tag / f"kovocab_rank{rank}.pt"
    if not path.is_file():
        from kovocab.errors import InputError

        raise InputError(f"{root / tag}: no {path.name}; the checkpoint was made with another number of "
                         "processes (resume with the same world size) or is incomplete")
    state: dict[str, Any] = torch.load(path, weights_only=False)
    return state


def _prune(root: Path, keep: int) -> None:
    tags = sorted(p.name for p in root.iterdir() if p.is_dir() and _TAG.match(p.name))
    for old in tags[:-keep]:
        shutil.rmtree(root / old, ignore_errors=True)
        log.info("removed old checkpoint %s", root / old)
