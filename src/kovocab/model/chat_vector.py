"""Stage `chat_vector`: give a continued-pretrained model its instruct model's chat ability.

Inputs: the base model B, its instruct model I (same architecture and vocabulary) and the
continued-pretrained model C (B's architecture, vocabulary possibly expanded), Hugging Face
safetensors folders. Output: C + scale * (I - B) in C's shard layout and dtypes, with C's
config and tokenizer (and I's chat template), `config.yaml` and a manifest holding the
sha256 of every input file. Streamed in row chunks: memory is a few chunks, not a model.
Reference: Huang et al., "Chat Vector", ACL 2024 (arXiv:2310.04799).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from kovocab.artifacts import (
    MANIFEST,
    Owned,
    atomic_write_text,
    claim_output,
    remove_outputs,
    sha256_file,
    write_config,
    write_json,
    write_manifest,
)
from kovocab.config import opt
from kovocab.errors import ConfigError, InputError, require
from kovocab.model.resize import TOKENIZER_FILES, _matrix_names, check_model_folder
from kovocab.model.safetensors_io import (
    FLOAT_DTYPES,
    INDEX,
    MODEL_FILES,
    Checkpoint,
    ShardHeader,
    TensorEntry,
    copy_range,
    link_or_copy,
    read_header,
    read_rows,
    torch_dtype,
    write_shard,
    write_tensor,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SECTION = "chat_vector"
OUTPUTS = Owned(SECTION, files=(*MODEL_FILES, r"chat_template\.jinja"))
# config.json keys that fix the tensor shapes and what they mean; vocab_size may grow in C.
_ARCH_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim")
_ROLES = {"base_model": "B", "instruct_model": "I", "model_dir": "C"}
_MAX_LISTED = 8


@dataclass(frozen=True)
class ChatVectorConfig:
    """C + scale * (I - B): the instruct difference of a base model added to its continued pretraining."""

    base_model: Path = opt(doc="B: the base model the instruct model was tuned from (safetensors folder)")
    instruct_model: Path = opt(doc="I: B's instruct (chat) model, same architecture and vocabulary")
    model_dir: Path = opt(doc="C: the continued-pretrained model (B's architecture; its vocabulary may grow)")
    out_dir: Path = opt(doc="output model folder: C + scale * (I - B), with C's config and tokenizer")
    scale: float = opt(1.0, "s in C + s * (I - B)")
    new_rows: Literal["keep", "mean"] = opt(
        "keep", "embedding/LM-head rows beyond B's: keep C's, or add the mean difference of B's rows")
    chat_template: bool = opt(True, "copy I's chat template into the output when C's tokenizer has none")
    chunk_mib: int = opt(64, "MiB of float32 rows computed at a time; bounds the working memory")

    def check(self) -> list[str]:
        problems = []
        if not math.isfinite(self.scale):
            problems.append("scale: must be a finite number")
        if self.chunk_mib < 1:
            problems.append("chunk_mib: must be 1 or more")
        return problems


@dataclass(frozen=True)
class ChatVectorResult:
    """Where the merged model went and what was added where."""

    out_dir: Path
    manifest: Path
    tensors: int  # tensors written
    base_rows: int  # embedding rows that got the difference (B's rows)
    rows: int  # C's embedding rows
    tied: bool  # C has one matrix for embeddings and LM head
    chat_template: str | None  # where the output's chat template came from: "model_dir", "instruct_model"
    seconds: float
    hash_seconds: float  # of `seconds`, spent on the sha256 of the inputs

    @property
    def stats(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "base_rows": self.base_rows, "rows": self.rows,
                "new_rows": self.rows - self.base_rows, "tied": self.tied,
                "chat_template": self.chat_template,
                "seconds": round(self.seconds, 2), "hash_seconds": round(self.hash_seconds, 2)}


@dataclass(frozen=True)
class _Model:
    """One input: its checkpoint, config.json and every tensor's header entry."""

    key: str  # config key: base_model, instruct_model, model_dir
    folder: Path
    ckpt: Checkpoint
    config: dict[str, Any]
    entries: dict[str, tuple[ShardHeader, TensorEntry]]
    embed: str
    head: str | None

    @property
    def role(self) -> str:
        return f"{_ROLES[self.key]} ({SECTION}.{self.key} {self.folder})"

    def rows(self) -> int:
        return self.entries[self.embed][1].shape[0]


def summary_lines(cfg: ChatVectorConfig, res: ChatVectorResult) -> list[str]:
    """What `kovocab chat-vector` prints."""
    extra = res.rows - res.base_rows
    rows = f"{res.base_rows} base rows" + (f" + {extra} new rows ({cfg.new_rows})" if extra else "")
    return [f"chat model = C + {cfg.scale:g} * (I - B) ({res.tensors} tensors, {rows}, "
            f"{'tied' if res.tied else 'untied'}): {res.out_dir}",
            f"  chat template: {res.chat_template or 'none'}; {res.seconds:.1f} s"]


def chat_vector(cfg: ChatVectorConfig) -> ChatVectorResult:
    """Write `cfg.out_dir`: C + scale * (I - B), tensor by tensor, in row chunks.

    Every check (architectures, tensor names, shapes, dtypes, vocabularies, tied heads)
    runs on the headers before anything is written. Tensors are computed in float32
    (float64 when an input is) and rounded once to C's dtype. Rows of the embedding and
    LM head below B's row count get the difference; C's rows beyond it are new pieces.
    """
    problems = cfg.check()
    if problems:
        raise ConfigError([f"{SECTION}.{p}" for p in problems])
    require("torch", "torch", "chat-vector")
    t0 = time.perf_counter()
    b, i, c = (_load(getattr(cfg, key), key) for key in _ROLES)
    out = Path(cfg.out_dir)
    for m in (b, i, c):
        if out.resolve() == m.folder.resolve():
            raise InputError(f"{SECTION}.out_dir: {out} is the input {m.role}; write to a new folder")
    sources = _check(b, i, c)
    owned = OUTPUTS.with_names(*c.ckpt.shards)
    with claim_output(out, owned, f"{SECTION}.out_dir"):
        t_hash = time.perf_counter()
        inputs = {m.key: {"path": str(m.folder), "sha256": _digests(m)} for m in (b, i, c)}
        hash_seconds = time.perf_counter() - t_hash
        remove_outputs(out, owned, f"{SECTION}.out_dir")
        out.mkdir(parents=True, exist_ok=True)
        with ExitStack() as files:
            opened: dict[Path, BufferedReader] = {}

            def handle(path: Path) -> BufferedReader:
                if path not in opened:
                    opened[path] = files.enter_context(open(path, "rb"))
                return opened[path]

            for shard in c.ckpt.shards:
                header = read_header(c.folder / shard)
                log.info("chat_vector: %s (%d tensors)", shard, len(header.tensors))

                def fill(t: TensorEntry, f: IO[bytes], header: ShardHeader = header) -> None:
                    _merge_tensor(cfg, handle, (b, i, c), sources, header, t, f)

                write_shard(out / shard, header.tensors, fill, header.metadata or {"format": "pt"})
        if c.ckpt.index is not None:
            write_json(out / INDEX, c.ckpt.index)
        for name in ("config.json", "generation_config.json", *TOKENIZER_FILES, "chat_template.jinja"):
            if (c.folder / name).is_file():
                link_or_copy(c.folder / name, out / name, "copy")
        if cfg.chat_template:
            template = _chat_template(i, c, out)
        else:
            template = "model_dir" if _template_of(c.folder)[0] is not None else None
        result = ChatVectorResult(
            out, out / MANIFEST, tensors=len(c.entries), base_rows=b.rows(), rows=c.rows(),
            tied=c.head is None, chat_template=template, seconds=time.perf_counter() - t0,
            hash_seconds=hash_seconds)
        write_config(out, SECTION, cfg)
        write_manifest(out, SECTION, {**result.stats, "scale": cfg.scale, "new_rows_rule": cfg.new_rows},
                       inputs=inputs)
        log.info("chat_vector: %s + %g * (%s - %s) -> %s (%.1f s)", c.folder, cfg.scale, i.folder, b.folder,
                 out, result.seconds)
        return result


def _load(folder: Path, key: str) -> _Model:
    where = f"{SECTION}.{key}"
    ckpt = check_model_folder(folder, where)
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    entries = {}
    for shard in ckpt.shards:
        header = read_header(ckpt.folder / shard)
        entries.update({t.name: (header, t) for t in header.tensors})
    embed, head = _matrix_names(ckpt)
    return _Model(key, Path(folder), ckpt, config, entries, embed, head)


def _check(b: _Model, i: _Model, c: _Model) -> dict[str, str]:
    """Every mismatch at once, from config.json and the headers; returns C's name -> B/I's name."""
    problems = []
    for key in _ARCH_KEYS:
        values = [_config_value(m.config, key) for m in (b, i, c)]
        # A key one config leaves out (older files lack head_dim) is its default: not compared.
        if len({json.dumps(v) for v in values if v is not None}) > 1:
            problems.append(f"config.json {key} differs: B {values[0]}, I {values[1]}, C {values[2]}")
    if (b.head is None) != (i.head is None):
        problems.append(f"tied LM head differs: {_tie(b)} in B, {_tie(i)} in I; give the instruct model of B")
    if c.head is None and b.head is not None:
        problems.append(f"C ties its LM head to its embeddings but B and I have a separate lm_head: the two "
                        f"differences cannot go into one matrix; untie C ({c.folder}) or give a tied B and I")
    # C's untied head of a tied B/I gets the difference of the one matrix B and I have.
    sources = {n: n for n in b.entries}
    if c.head is not None and b.head is None:
        sources[c.head] = b.embed
    heads = {b.head, i.head} if (b.head is None) != (i.head is None) else set()  # said above
    for who, names, want in (("I", set(i.entries) - heads, set(b.entries) - heads),
                             ("C", set(c.entries), set(sources))):
        missing, extra = sorted(want - names), sorted(names - want)
        if missing:
            problems.append(f"{who} lacks {len(missing)} tensor(s) that B has: {_listed(missing)}")
        if extra:
            problems.append(f"{who} has {len(extra)} tensor(s) that B lacks: {_listed(extra)}")
    if problems:
        raise _mismatch(b, i, c, problems)
    vocab = {c.embed, c.head}
    for name, src in sources.items():
        be, ie, ce = b.entries[src][1], i.entries[src][1], c.entries[name][1]
        if be.shape != ie.shape:
            problems.append(f"{src}: shape {list(be.shape)} in B, {list(ie.shape)} in I")
        if be.dtype != ie.dtype:
            problems.append(f"{src}: dtype {be.dtype} in B, {ie.dtype} in I (convert one so both match: "
                            "a difference across precisions is mostly rounding noise)")
        if name in vocab:
            if ce.shape[1:] != be.shape[1:] or ce.shape[0] < be.shape[0]:
                problems.append(f"{name}: shape {list(ce.shape)} in C, B has {list(be.shape)} (C's rows must "
                                "start with B's, widths equal)")
        elif ce.shape != be.shape:
            problems.append(f"{name}: shape {list(ce.shape)} in C, {list(be.shape)} in B")
        if (be.dtype in FLOAT_DTYPES) != (ce.dtype in FLOAT_DTYPES) or (
                be.dtype not in FLOAT_DTYPES and be.dtype != ce.dtype):
            problems.append(f"{name}: dtype {ce.dtype} in C, {be.dtype} in B")
    problems += _vocab_problems(b, i, c)
    if problems:
        raise _mismatch(b, i, c, problems[:_MAX_LISTED * 2] + (
            [f"... and {len(problems) - _MAX_LISTED * 2} more"] if len(problems) > _MAX_LISTED * 2 else []))
    return sources


def _mismatch(b: _Model, i: _Model, c: _Model, problems: list[str]) -> InputError:
    head = (f"{SECTION}: the models do not fit together (B {b.folder}, I {i.folder}, C {c.folder}); give I "
            "tuned from B and C continued from B")
    return InputError("\n  ".join([head, *problems]))


def _vocab_problems(b: _Model, i: _Model, c: _Model) -> list[str]:
    """B's pieces must keep their ids in I and in C (C may append pieces after them)."""
    base = _pieces(b.folder)
    if base is None:
        log.warning("chat_vector: %s has no tokenizer.model or tokenizer.json; vocabularies not compared",
                    b.folder)
        return []
    problems = []
    for m in (i, c):
        who, pieces = _ROLES[m.key], _pieces(m.folder)
        if pieces is None:
            log.warning("chat_vector: %s has no tokenizer; its vocabulary was not compared", m.folder)
            continue
        need = ("I must use B's tokenizer" if m is i else
                "C's tokenizer must be B's with pieces appended (merge-vocab keeps B's ids)")
        if len(pieces) < len(base) or (m is i and len(pieces) != len(base)):
            problems.append(f"vocabulary: {who} has {len(pieces)} pieces, B {len(base)}; {need}")
            continue
        diff = [n for n, (x, y) in enumerate(zip(base, pieces, strict=False)) if x != y]
        if diff:
            n = diff[0]
            problems.append(f"vocabulary: {len(diff)} of B's ids hold other pieces in {who} (id {n}: "
                            f"B {base[n]!r}, {who} {pieces[n]!r}); {need}")
    return problems


def _pieces(folder: Path) -> list[str | None] | None:
    """The tokenizer's pieces by id: tokenizer.model, else tokenizer.json; None without either."""
    if (folder / "tokenizer.model").is_file():
        from kovocab.tokenizer.export import load_proto

        return [p.piece for p in load_proto(folder / "tokenizer.model").pieces]
    if not (folder / "tokenizer.json").is_file():
        return None
    try:
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        ids = dict(vocab.items()) if isinstance(vocab, dict) else {p[0]: n for n, p in enumerate(vocab)}
        ids.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"{folder / 'tokenizer.json'}: not a readable tokenizer.json ({exc})") from exc
    pieces: list[str | None] = [None] * (max(ids.values(), default=-1) + 1)
    for piece, n in ids.items():
        pieces[n] = piece
    return pieces


def _merge_tensor(cfg: ChatVectorConfig, handle: Any, models: tuple[_Model, _Model, _Model],
                  sources: dict[str, str], header: ShardHeader, t: TensorEntry, out: IO[bytes]) -> None:
    """Write C's tensor `t` plus scale * (I - B), chunk by chunk, in C's dtype."""
    import torch

    b, i, c = models
    cf = handle(header.path)
    if t.dtype not in FLOAT_DTYPES:  # integer buffers carry no difference
        copy_range(cf, header.data_start + t.begin, t.nbytes, out)
        return
    (bh, be), (ih, ie) = b.entries[sources[t.name]], i.entries[sources[t.name]]
    rows = t.shape[0] if t.shape else 1
    base_rows = be.shape[0] if be.shape else 1  # below this, C's rows have B/I counterparts
    wide = torch.float64 if "F64" in (t.dtype, be.dtype) else torch.float32
    chunk = max(1, (cfg.chunk_mib << 20) // (4 * max(1, math.prod(t.shape[1:]))))
    bf, if_ = handle(bh.path), handle(ih.path)

    def diff(r0: int, r1: int) -> torch.Tensor:
        d = read_rows(if_, ih, ie, r0, r1).to(wide) - read_rows(bf, bh, be, r0, r1).to(wide)
        return d if cfg.scale == 1.0 else d * cfg.scale

    mean = None
    if cfg.new_rows == "mean" and rows > base_rows:
        total = torch.zeros(t.shape[1:], dtype=torch.float64)
        for r0 in range(0, base_rows, chunk):
            total += diff(r0, min(base_rows, r0 + chunk)).sum(0, dtype=torch.float64)
        mean = (total / base_rows).to(wide)
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        merged = read_rows(cf, header, t, r0, r1).to(wide)
        k = max(0, min(r1, base_rows) - r0)  # rows of this chunk that B and I have
        if k:
            merged[:k] += diff(r0, r0 + k)
        if mean is not None and k < r1 - r0:
            merged[k:] += mean
        write_tensor(merged.to(torch_dtype(t.dtype)), out)


def _digests(m: _Model) -> dict[str, str]:
    names = ["config.json", *([INDEX] if m.ckpt.index is not None else []), *m.ckpt.shards]
    return {n: sha256_file(m.folder / n) for n in names}


def _template_of(folder: Path) -> tuple[str | None, str | None]:
    """(where, template): chat_template.jinja or tokenizer_config.json's chat_template."""
    if (folder / "chat_template.jinja").is_file():
        return "chat_template.jinja", (folder / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, str):
        return "tokenizer_config.json", template
    if template:
        log.warning("chat_vector: %s holds named chat templates; not carried over", folder)
    return None, None


def _chat_template(i: _Model, c: _Model, out: Path) -> str | None:
    """The output's chat template: C's when it has one, else I's written as chat_template.jinja."""
    if _template_of(c.folder)[0] is not None:
        return "model_dir"
    where, template = _template_of(i.folder)
    if template is None:
        return None
    atomic_write_text(out / "chat_template.jinja", template)
    log.info("chat_vector: chat template from %s/%s", i.folder, where)
    return "instruct_model"


def _config_value(config: dict[str, Any], key: str) -> Any:
    text = config.get("text_config")
    if isinstance(text, dict) and key in text:
        return text[key]
    return config.get(key)


def _tie(m: _Model) -> str:
    return "tied" if m.head is None else "untied"


def _listed(names: list[str]) -> str:
    return ", ".join(names[:_MAX_LISTED]) + (f", ... ({len(names) - _MAX_LISTED} more)"
                                             if len(names) > _MAX_LISTED else "")
