"""Safetensors checkpoints tensor by tensor: find, read and rewrite single tensors.

Inputs: a Hugging Face checkpoint folder (`model.safetensors`, or shards listed in
`model.safetensors.index.json`). A shard holding a changed tensor is rewritten as a
stream under the same name, tensor order and metadata; its other tensors are copied
as raw bytes, so memory stays near the size of the changed tensors whatever the
shard size. Format: https://github.com/huggingface/safetensors#format
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from io import BufferedReader
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from kovocab.artifacts import atomic_open
from kovocab.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# The names of a Hugging Face model folder as kovocab writes one (init-model, resize, the
# pretrain export): patterns for artifacts.Owned. Other weights (pytorch_model.bin, *.pt)
# are never kovocab's, so a folder holding them is refused, not cleaned.
MODEL_FILES = (
    r"model\.safetensors", r"model\.safetensors\.index\.json", r"model-\d{5}-of-\d{5}\.safetensors",
    r"config\.json", r"generation_config\.json", r"tokenizer\.model", r"tokenizer\.json",
    r"tokenizer_config\.json", r"special_tokens_map\.json", r"added_tokens\.json",
)
_MAX_HEADER_BYTES = 100 << 20  # the reference implementation refuses larger headers too
_COPY_CHUNK_BYTES = 64 << 20
_ITEM_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in a shard header; offsets are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ShardHeader:
    path: Path
    data_start: int
    tensors: tuple[TensorEntry, ...]  # in file order
    metadata: dict[str, str]

    def entry(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


@dataclass(frozen=True)
class Checkpoint:
    """A safetensors checkpoint folder: which shard holds which tensor."""

    folder: Path
    weight_map: dict[str, str]  # tensor name -> shard file name
    index: dict[str, Any] | None  # the parsed index file, None for a single file

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def header(self, name: str) -> ShardHeader:
        return read_header(self.folder / self.weight_map[name])


def read_header(path: str | Path) -> ShardHeader:
    """Parse a shard's header (8-byte little-endian length, then JSON) without reading tensors."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER_BYTES:
                raise ValueError(f"header of {n} bytes")
            raw = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as exc:
        raise InputError(f"{p}: not a readable safetensors file ({exc})") from exc
    try:
        metadata = raw.pop("__metadata__", None) or {}
        tensors = sorted(
            (TensorEntry(k, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in raw.items()),
            key=lambda t: t.begin,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{p}: not a readable safetensors file (bad header entry: {exc!r})") from exc
    return ShardHeader(p, 8 + n, tuple(tensors), dict(metadata))


def check_checkpoint(folder: str | Path, what: str) -> Checkpoint:
    """`open_checkpoint`, and every shard's size checked against its header.

    A truncated download or an interrupted copy is refused here, naming the file, before
    a stage starts its long work (safetensors itself notices only when the shard is
    opened). `what` names the config key in the message.
    """
    ckpt = open_checkpoint(folder)
    problems = _shard_problems(ckpt, what)
    if problems:
        raise InputError(problems[0] if len(problems) == 1 else "\n  ".join(
            [f"{len(problems)} checkpoint files are damaged:", *problems]))
    return ckpt


def safetensors_problems(folder: str | Path, what: str) -> list[str]:
    """`check_checkpoint`'s findings as a list, [] for a folder without safetensors weights
    (a PyTorch .bin checkpoint, which transformers can still load)."""
    d = Path(folder)
    if not ((d / INDEX).is_file() or (d / SINGLE).is_file()):
        return []
    try:
        return _shard_problems(open_checkpoint(d), what)
    except InputError as exc:
        return [f"{what}: {exc}"]


def _shard_problems(ckpt: Checkpoint, what: str) -> list[str]:
    problems = []
    for shard in ckpt.shards:
        path = ckpt.folder / shard
        try:
            header = read_header(path)
        except InputError as exc:
            problems.append(f"{what}: {exc}")
            continue
        size = path.stat().st_size
        need = header.data_start + max((t.end for t in header.tensors), default=0)
        bad = [t.name for t in header.tensors if t.dtype in _ITEM_BYTES
               and t.nbytes != _ITEM_BYTES[t.dtype] * math.prod(t.shape)]
        if size != need:
            state = "truncated" if size < need else "longer than its header says"
            problems.append(f"{what}: {path} is {state}: its header describes {need:,} bytes, the file "
                            f"has {size:,}; download or copy it again")
        elif bad:
            problems.append(f"{what}: {path} is corrupt: the sizes of {', '.join(bad[:3])} disagree with "
                            "their shapes; download or copy it again")
    return problems


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """Locate the safetensors weights of a model folder (index first, then a single file)."""
    d = Path(folder)
    if (d / INDEX).is_file():
        try:
            index = json.loads((d / INDEX).read_text(encoding="utf-8"))
            weight_map = dict(index["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{d / INDEX}: not a safetensors index ({exc})") from exc
        missing = sorted({s for s in weight_map.values() if not (d / s).is_file()})
        if missing:
            raise InputError(f"{d / INDEX} names shards that are missing: {', '.join(missing)}")
        return Checkpoint(d, weight_map, index)
    if (d / SINGLE).is_file():
        return Checkpoint(d, {t.name: SINGLE for t in read_header(d / SINGLE).tensors}, None)
    if any(d.glob("pytorch_model*.bin")):
        raise InputError(
            f"{d}: has PyTorch .bin weights but no safetensors; resave it once with "
            "`AutoModelForCausalLM.from_pretrained(d).save_pretrained(d)` (safetensors is the default), "
            "or resize a loaded model with kovocab.model.resize.resize_model_embeddings"
        )
    raise InputError(f"{d}: no {SINGLE} or {INDEX}; give a model folder with safetensors weights")


def read_tensor(path: str | Path, name: str) -> torch.Tensor:
    """One tensor from a shard; safe_open reads only that tensor's bytes."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def read_rows(
    f: BufferedReader, header: ShardHeader, entry: TensorEntry, start: int, stop: int
) -> torch.Tensor:
    """Rows `start:stop` of `entry` (a 0-d tensor is one row) read from the open shard `f`.

    A plain read into a fresh buffer, not a memory map: the pages stay in the OS cache,
    not in this process's memory, so streaming a whole checkpoint costs one chunk of RAM.
    """
    import torch

    rows = entry.shape[0] if entry.shape else 1
    row_bytes = entry.nbytes // rows if rows else 0
    buf = bytearray(row_bytes * (stop - start))
    f.seek(header.data_start + entry.begin + start * row_bytes)
    if buf and f.readinto(buf) != len(buf):
        raise InputError(f"{header.path}: truncated inside {entry.name}; download or copy it again")
    dtype = torch_dtype(entry.dtype)
    flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
    return flat.reshape(stop - start, *entry.shape[1:])


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (F32, BF16, ...)."""
    import torch

    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
             "U8": torch.uint8, "BOOL": torch.bool}
    if name not in names:
        raise InputError(f"safetensors dtype {name} is not supported here")
    return names[name]


def write_shard(
    dst: str | Path,
    tensors: Sequence[TensorEntry],
    fill: Callable[[TensorEntry, IO[bytes]], None],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a shard as a stream: header from `tensors`, then `fill(entry, file)` for each in order.

    Offsets in `tensors` are recomputed, so only names, dtypes and shapes matter;
    `fill` must write exactly the entry's bytes. Returns the size of the data section.
    """
    entries, offset = [], 0
    for t in tensors:
        n = _ITEM_BYTES[t.dtype]
        for dim in t.shape:
            n *= dim
        entries.append(replace(t, begin=offset, end=offset + n))
        offset += n
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    header.update({t.name: {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.begin, t.end]}
                   for t in entries})
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the reference writer aligns the data section to 8 bytes
    with atomic_open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for t in entries:
            before = _position(f)
            fill(t, f)
            written = _position(f) - before
            if written != t.nbytes:
                raise RuntimeError(f"{dst}: wrote {written} bytes for {t.name}, expected {t.nbytes}")
    return offset


def rewrite_shard(src: ShardHeader, dst: str | Path, replacements: Mapping[str, torch.Tensor]) -> int:
    """Copy shard `src` to `dst` with some tensors replaced (same dtype, any shape).

    Returns how many bytes the data section grew. Unchanged tensors are copied byte
    for byte from `src`, so they stay bit-identical.
    """
    entries = []
    for t in src.tensors:
        new = replacements.get(t.name)
        if new is not None:
            if _torch_dtype_name(new) != t.dtype:
                raise ValueError(f"{t.name}: replacement is {_torch_dtype_name(new)}, shard has {t.dtype}")
            t = replace(t, shape=tuple(new.shape))
        entries.append(t)
    unknown = set(replacements) - {t.name for t in src.tensors}
    if unknown:
        raise KeyError(f"{src.path} has no tensor {sorted(unknown)}")
    with open(src.path, "rb") as source:

        def fill(t: TensorEntry, out: IO[bytes]) -> None:
            if t.name in replacements:
                write_tensor(replacements[t.name], out)
            else:
                old = src.entry(t.name)
                copy_range(source, src.data_start + old.begin, old.nbytes, out)

        size = write_shard(dst, entries, fill, src.metadata or {"format": "pt"})
    return size - sum(t.nbytes for t in src.tensors)


def write_tensor(t: torch.Tensor, out: IO[bytes]) -> None:
    """A tensor's raw little-endian bytes (numpy has no bfloat16, so view them as uint8)."""
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    out.write(flat.view(torch.uint8).numpy().data)


def copy_range(src: IO[bytes], start: int, nbytes: int, out: IO[bytes]) -> None:
    """Copy `nbytes` from `src` at `start` to the current end of `out`, in bounded chunks."""
    out.flush()
    src_fd, out_fd = src.fileno(), out.fileno()
    done = 0
    try:  # in-kernel copy (Linux): no user-space buffer, may share extents on CoW filesystems
        while done < nbytes:
            n = os.copy_file_range(src_fd, out_fd, min(nbytes - done, 1 << 30), start + done)
            if n == 0:
                break
            done += n
    except (AttributeError, OSError):
        pass
    src.seek(start + done)
    while done < nbytes:
        chunk = src.read(min(nbytes - done, _COPY_CHUNK_BYTES))
        if not chunk:
            raise InputError(f"{getattr(src, 'name', 'shard')}: truncated (expected {nbytes} bytes)")
        out.write(chunk)
        done += len(chunk)


def link_or_copy(src: Path, dst: Path, mode: Literal["hardlink", "copy"]) -> str:
    """Put `src` at `dst` as a hardlink when allowed and possible, else as a copy; return which."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink":
        tmp = dst.with_name(f".{dst.name}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)  # replaces the name only; an old inode is never written to
            return "hardlink"
        except OSError as exc:  # another filesystem, or links not permitted
            tmp.unlink(missing_ok=True)
            log.debug("cannot hardlink %s (%s); copying", src, exc)
    with atomic_open(dst, "wb") as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out, _COPY_CHUNK_BYTES)
    shutil.copystat(src, dst)
    return "copy"


def _torch_dtype_name(t: torch.Tensor) -> str:
    import torch

    names = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}
    return names.get(t.dtype, str(t.dtype))


def _position(f: IO[bytes]) -> int:
    f.flush()  # copy_range writes past Python's buffer, so ask the OS where the file ends
    return os.fstat(f.fileno()).st_size
