"""Stage outputs: atomic writes, sha256 digests and the manifest beside every output.

Every stage writes to its own folder: the outputs, `config.yaml` (the resolved
config) and `manifest.json` (what was read, what was written with sha256, and the
stage's statistics). Files are written to a temporary name and renamed, so a
killed run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from kovocab.config import to_dict

MANIFEST = "manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
CONFIG = "config.yaml"


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; outputs on shared filesystems should read like any file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any) -> None:
    """Deterministic JSON (sorted keys, UTF-8, trailing newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def write_config(out_dir: str | Path, section: str, cfg: Any) -> Path:
    """Write the resolved config of a stage as `config.yaml` in its output folder."""
    path = Path(out_dir) / CONFIG
    text = yaml.safe_dump({section: to_dict(cfg)}, allow_unicode=True, sort_keys=False)
    atomic_write_text(path, text)
    return path


def file_entries(root: str | Path, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{relative name: {bytes, sha256}} for the given files (default: every file under root)."""
    root = Path(root)
    if names is None:
        names = sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
        )
    return {n: {"bytes": (root / n).stat().st_size, "sha256": sha256_file(root / n)} for n in names}


def write_manifest(out_dir: str | Path, stage: str, stats: Mapping[str, Any], **extra: Any) -> Path:
    """Write `manifest.json`: the stage, its statistics, and sha256 of every output file."""
    out_dir = Path(out_dir)
    from kovocab import __version__

    body = {"stage": stage, "kovocab_version": __version__, "stats": dict(stats), **extra}
    body["files"] = file_entries(out_dir)
    path = out_dir / MANIFEST
    write_json(path, body)
    return path


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a finished stage folder, or None when there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
