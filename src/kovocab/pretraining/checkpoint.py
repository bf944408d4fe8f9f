"""Resumable checkpoints: DeepSpeed's own ZeRO-3 format plus, per rank, the data position and RNGs.

`checkpoints/step-NNNNNNNN/` holds what `engine.save_checkpoint` writes (partitioned fp32
masters, Adam moments, LR scheduler) and `kovocab_rank{R}.pt` (PackedBlocks state, RNG
states, stage and step). `checkpoints/latest` names the newest complete one; it is
written last, after every rank has finished, so a killed save is never resumed from.
The rank file holds only dicts, lists, numbers, strings and tensors, so it is read with
`torch.load(weights_only=True)`: a crafted file cannot run code (DeepSpeed's own files
are another matter; see pretrain/README.md, "Resume").
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
# What DeepSpeed 0.19's ZeRO checkpoints pickle beyond tensors and plain containers (its
# optimizer state holds the ZeRO stage enum and the loss scaler object). DeepSpeed loads
# its files with torch.load(weights_only=False), so kovocab scans them first.
DEEPSPEED_GLOBALS = frozenset({
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
})
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
    """Every RNG a step draws from, as plain lists, ints and tensors (loadable with weights_only=True)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_rank_state(path: Path, state: dict[str, Any]) -> None:
    """Write one rank's kovocab state (position, stage, step) with the current RNG states."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save({**state, "rng": rng_state()}, f)


def save_checkpoint(engine: Any, root: Path, step: int, rank: int, is_main: bool, state: dict[str, Any],
                    keep: int) -> str:
    """Save DeepSpeed's checkpoint and this rank's kovocab state; rank 0 then marks it latest."""
    import torch.distributed as dist

    tag = tag_for(step)
    # save_latest=False: DeepSpeed would point `latest` at the tag before kovocab's files exist.
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    write_rank_state(root / tag / f"kovocab_rank{rank}.pt", state)
    dist.barrier()
    if is_main:
        atomic_write_text(root / LATEST, tag + "\n")
        _prune(root, keep)
    dist.barrier()
    return tag


def load_rank_state(root: Path, tag: str, rank: int) -> dict[str, Any]:
    """This rank's kovocab state of checkpoint `tag` (the RNG states are restored by the caller).

    Read with `weights_only=True`: a file that needs anything beyond tensors and plain
    containers to unpickle (code, numpy objects, classes) is refused, never executed.
    """
    import pickle

    import torch

    from kovocab.errors import InputError

    path = root / tag / f"kovocab_rank{rank}.pt"
    if not path.is_file():
        raise InputError(f"{root / tag}: no {path.name}; the checkpoint was made with another number of "
                         "processes (resume with the same world size) or is incomplete")
    check_pickles(root / tag)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path}: refused to load this rank state: it is not a plain kovocab checkpoint file "
            f"(torch.load with weights_only=True says: {first}). It was damaged, written by another "
            "program or kovocab version, or crafted; kovocab never unpickles code from it. Delete "
            f"{root / tag} (resume then starts from an older checkpoint, or fresh without --resume)"
        ) from exc
    missing = [k for k in ("data", "step", "stage", "rng") if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"{path}: not a kovocab rank state (missing {', '.join(missing)}); delete "
                         f"{root / tag} and resume from an older checkpoint, or start fresh without --resume")
    return state


def check_pickles(folder: Path) -> None:
    """Refuse a checkpoint folder whose .pt files would unpickle more than data.

    Every file is scanned without being loaded (torch's weights_only opcode scan): a
    kovocab rank file may name no Python object at all, a DeepSpeed file only those in
    DEEPSPEED_GLOBALS. Run on every rank before DeepSpeed's own, unrestricted load.
    """
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from kovocab.errors import InputError

    for path in sorted(folder.glob("*.pt")):
        allowed = frozenset() if path.name.startswith("kovocab_rank") else DEEPSPEED_GLOBALS
        try:
            extra = sorted(set(get_unsafe_globals_in_checkpoint(path)) - allowed)
            problem = f"it names Python objects a checkpoint never holds ({', '.join(extra)})" * bool(extra)
        except Exception as exc:  # UnpicklingError, ValueError (not a torch.save zip), EOFError
            problem = f"it cannot be checked as a torch.save file ({type(exc).__name__}: {exc})"
        if problem:
            raise InputError(
                f"{path}: refused to load this checkpoint file: {problem}. Unpickling it could run code, so "
                "kovocab loads nothing from it: it was damaged, written by another program or version, or "
                f"crafted. Delete {folder} (resume then starts from an older checkpoint, or fresh without "
                "--resume)"
            )


def _prune(root: Path, keep: int) -> None:
    tags = sorted(p.name for p in root.iterdir() if p.is_dir() and _TAG.match(p.name))
    for old in tags[:-keep]:
        shutil.rmtree(root / old, ignore_errors=True)
        log.info("removed old checkpoint %s", root / old)
