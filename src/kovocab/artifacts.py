"""Stage outputs: atomic writes, sha256 digests and the manifest beside every output.

Every stage writes to its own folder: the outputs, `config.yaml` (the resolved
config) and `manifest.json` (what was read, what was written with sha256, and the
stage's statistics). Files are written to a temporary name and renamed, so a
killed run never leaves a half-written file under a final name.

Output-folder ownership: each stage names the files it writes (`Owned`); a folder holding
anything else is refused, and only owned files are ever removed. Each stage holds an
exclusive lock on its folder while it runs (`output_lock`, `claim_output`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import yaml

from kovocab.config import to_dict
from kovocab.errors import OutputError

log = logging.getLogger(__name__)

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


# --- output-folder ownership ---------------------------------------------------------------
# A stage may replace what it wrote itself and nothing else: a user's notes, the stage's
# own input or another tool's weights in the output folder make it refuse, never delete.

LOCK = ".kovocab.lock"
# atomic_open's temporaries (.NAME.XXXXXXXX.tmp) and link_or_copy's (.NAME.link)
_TEMP = re.compile(r"\.(?P<name>.+?)(?:\.[A-Za-z0-9_]{8}\.tmp|\.link)")


@dataclass(frozen=True)
class Owned:
    """The names a stage writes in its output folder: only these are ever removed or replaced.

    `files` and the keys of `dirs` are regular expressions matched against a whole name;
    a folder maps to the spec of its contents, or to None when all of it is kovocab's
    (DeepSpeed checkpoints). `config.yaml`, `manifest.json`, the files listed by a manifest
    of `stage` in the folder and kovocab's temporaries of these names are owned too. Dot
    files are neither owned nor foreign: kovocab leaves them alone and manifests skip them.
    """

    stage: str
    files: tuple[str, ...] = ()
    dirs: Mapping[str, Owned | None] = field(default_factory=dict)

    def with_names(self, *names: str) -> Owned:
        """This spec plus exact file names (those a run computes from its inputs)."""
        return replace(self, files=(*self.files, *(re.escape(n) for n in names)))

    def owns_file(self, name: str, listed: frozenset[str] = frozenset()) -> bool:
        return (name in (CONFIG, MANIFEST) or name in listed
                or any(re.fullmatch(pattern, name) for pattern in self.files))

    def dir_spec(self, name: str) -> tuple[bool, Owned | None]:
        """(owned?, spec of its contents) for a subfolder `name`."""
        for pattern, spec in self.dirs.items():
            if re.fullmatch(pattern, name):
                return True, spec
        return False, None


def exact(*names: str) -> tuple[str, ...]:
    """Patterns for exact file names, for `Owned.files`."""
    return tuple(re.escape(n) for n in names)


def _listed(folder: Path, stage: str) -> frozenset[str]:
    """Top-level files a manifest of `stage` in `folder` lists (kovocab wrote them)."""
    manifest = read_manifest(folder)
    if not manifest or manifest.get("stage") != stage or not isinstance(manifest.get("files"), dict):
        return frozenset()
    return frozenset(n for n in manifest["files"] if isinstance(n, str) and "/" not in n)


def _survey(folder: Path, owned: Owned, prefix: str = "") -> tuple[list[Path], list[Path], list[str]]:
    """(owned files and wholly-owned folders, owned folders with a spec, foreign names) in `folder`."""
    listed = _listed(folder, owned.stage)
    mine: list[Path] = []
    specced: list[Path] = []
    foreign: list[str] = []
    for p in sorted(folder.iterdir()):
        name = p.name
        if name.startswith("."):
            temp = _TEMP.fullmatch(name)
            if temp and not p.is_dir() and owned.owns_file(temp["name"], listed):
                mine.append(p)
            continue
        if p.is_dir():
            is_ours, spec = owned.dir_spec(name)
            if not is_ours:
                foreign.append(f"{prefix}{name}/")
            elif spec is None or p.is_symlink():  # removing a link never touches its target
                mine.append(p)
            else:
                sub_mine, sub_specced, sub_foreign = _survey(p, spec, f"{prefix}{name}/")
                mine += sub_mine
                specced += [*sub_specced, p]
                foreign += sub_foreign
        elif owned.owns_file(name, listed):
            mine.append(p)
        else:
            foreign.append(prefix + name)
    return mine, specced, foreign


def check_output(out: str | Path, owned: Owned, where: str) -> list[Path]:
    """Refuse `out` if it holds anything `owned` does not name; return what it owns there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{where}: {out} is a file; give a folder")
    if not out.is_dir():
        return []
    mine, _, foreign = _survey(out, owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"{where}: {out} holds files kovocab did not write ({shown}); kovocab writes only into "
            "a new or empty folder or its own earlier output there, and never removes other files. "
            "Move them away or choose another folder"
        )
    return mine


def remove_outputs(out: str | Path, owned: Owned, where: str, keep: frozenset[str] = frozenset()) -> None:
    """Remove the files `owned` names in `out` (refusing first if anything else is there).

    The manifest goes first, so a folder removed half-way never looks finished. `keep`:
    names relative to `out` to leave in place.
    """
    out = Path(out)
    # One survey, taken while the manifest still lists what the stage wrote: once it is gone,
    # those files would no longer count as the stage's own.
    mine = check_output(out, owned, where)
    if not out.is_dir():
        return
    _, specced, _ = _survey(out, owned)
    if MANIFEST not in keep:
        (out / MANIFEST).unlink(missing_ok=True)
    for p in mine:
        if str(p.relative_to(out)) in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    for d in specced:  # deepest first; a folder still holding dot files or kept names stays
        try:
            d.rmdir()
        except OSError:
            pass


# --- locks ---------------------------------------------------------------------------------
# flock(2) on OUT/.kovocab.lock, which names the holder ("PID HOST"). The kernel drops a
# flock when its process dies, so a lock left by a killed run is free; the file it left is
# taken over with a log line. Limitation: on NFS, flock is a lock on the server only when
# the client maps it to NFS locks (Linux does unless mounted `local_lock=flock|all` or
# `nolock`); otherwise runs on two machines do not see each other's lock. The holder's
# host is checked too: a lock file naming another machine is never taken over, so a run
# killed there leaves a file to delete by hand (the message says which).

_HELD: dict[str, tuple[int, int]] = {}  # realpath -> (pid, depth): nested locks in one process


@contextmanager
def output_lock(out: str | Path, where: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock on folder `out` (created if missing) for the block.

    Re-entrant within a process, so a stage inside `kovocab run` or another stage may lock a
    folder its caller holds. Another process gets OutputError: "OUT is in use by pid N on HOST".
    """
    out = Path(out)
    label = f"{where}: " if where else ""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{label}{out} is a file; give a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{label}cannot create the output folder {out} ({exc.strerror}); "
                          "choose a folder you can write to") from exc
    key = os.path.realpath(out)
    held = _HELD.get(key)
    if held is not None and held[0] == os.getpid():
        _HELD[key] = (held[0], held[1] + 1)
        try:
            yield out
        finally:
            _HELD[key] = (held[0], _HELD[key][1] - 1)
        return
    fd = _acquire(out, label)
    _HELD[key] = (os.getpid(), 1)
    try:
        yield out
    finally:
        del _HELD[key]
        try:
            os.unlink(out / LOCK)  # before the unlock: the next run makes a fresh file
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            try:
                out.rmdir()  # made only for the lock and left empty (the stage failed early)
            except OSError:
                pass


def _acquire(out: Path, label: str) -> int:
    import fcntl

    path = out / LOCK
    host = socket.gethostname()
    for _ in range(200):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{label}cannot write to {out} ({exc.strerror}); "
                              "choose a folder you can write to") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{label}cannot lock {path} ({exc.strerror})") from exc
            if holder is None:  # the holder has not written its name yet
                time.sleep(0.02)
                continue
            raise OutputError(f"{out} is in use by pid {holder[0]} on {holder[1]}; wait for that run "
                              "to finish or choose another folder") from None
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (and unlinked) it between our open and flock
            os.close(fd)
            continue
        holder = _holder(fd)
        if holder is not None:
            pid, where = holder
            # On this host flock is exact: the holder is gone (even if its pid was reused since).
            if where != host:
                os.close(fd)
                raise OutputError(
                    f"{out} is in use by pid {pid} on {where} (its lock file {path} is not held "
                    "here, but kovocab cannot tell that the run has ended); if no kovocab runs there, "
                    f"delete {path}"
                )
            log.warning("%s: taking over the lock of pid %d on %s, which is no longer running",
                        out, pid, where)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {host}\n".encode(), 0)
        return fd
    raise OutputError(f"{label}could not lock {path}: it keeps changing; is another run starting?")


def _holder(fd: int) -> tuple[int, str] | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").split()
        return int(text[0]), text[1]
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def claim_output(out: str | Path, owned: Owned, where: str) -> Iterator[Path]:
    """Lock `out` for this run and refuse it when it holds files the stage did not write."""
    with output_lock(out, where) as folder:
        check_output(folder, owned, where)
        yield folder


_Stage = TypeVar("_Stage", bound=Callable[..., Any])


def claims_output(owned: Owned, where: str, param: str = "out_dir") -> Callable[[_Stage], _Stage]:
    """Decorator: the stage runs inside `claim_output` of its output folder, which is the
    argument `param` or, for `stage(cfg)`, the config's field of that name."""
    import functools
    import inspect

    def decorate(fn: _Stage) -> _Stage:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            out = bound[param] if param in bound else getattr(next(iter(bound.values())), param)
            with claim_output(out, owned, where):
                return fn(*args, **kwargs)

        return cast(_Stage, run)

    return decorate
