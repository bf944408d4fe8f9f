"""Resize a Llama checkpoint's input embeddings and LM head to an expanded vocabulary.

Inputs: a Hugging Face checkpoint folder (safetensors) or a live model, and the expanded
tokenizer. Output folder: the checkpoint with both matrices grown (only the shards
holding them are rewritten, the rest hardlinked), `config.json` with the new
`vocab_size`, the tokenizer, `config.yaml` and `manifest.json`. Rows: `model.row_init`.
An earlier kovocab output in the folder is replaced whole (no stale shard, index or
`pytorch_model.bin` stays beside the new model); a folder holding files kovocab did not
write (another model's weights among them) is refused and left as it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kovocab.artifacts import (
    MANIFEST,
    Owned,
    claim_output,
    remove_outputs,
    write_config,
    write_json,
    write_manifest,
)
from kovocab.config import opt
from kovocab.errors import ConfigError, InputError, TokenizerError
from kovocab.model.gguf_import import gguf_hint
from kovocab.model.row_init import Init, RowPlan, bytelevel_json, init_rows, plan_rows
from kovocab.model.row_init import resize_model_embeddings as resize_model_embeddings  # the in-memory path
from kovocab.model.safetensors_io import (
    INDEX,
    MODEL_FILES,
    SINGLE,
    Checkpoint,
    check_checkpoint,
    link_or_copy,
    open_checkpoint,
    read_tensor,
    rewrite_shard,
)
from kovocab.tokenizer.export import load_proto, write_hf_tokenizer
from kovocab.tokenizer.merge import find_sentencepiece_model

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
# Weights in other formats would be stale next to the resized safetensors.
_STALE = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.safetensors")
# The output folder: a model folder as kovocab writes one, plus the names a run copies from
# its source (shards under their own names, README, LICENSE) or an earlier run's manifest lists.
OUTPUTS = Owned("resize_embeddings", files=MODEL_FILES)


@dataclass(frozen=True)
class ResizeConfig:
    """Resize a checkpoint's embeddings and LM head to an expanded tokenizer."""

    model_dir: Path = opt(doc="Hugging Face Llama folder with safetensors weights (read only)")
    tokenizer: Path = opt(doc="expanded tokenizer: folder from merge-vocab, or its tokenizer.model; or a "
                              "byte-level BPE folder (tokenizer.json, base ids kept, new tokens appended)")
    out_dir: Path = opt(doc="output model folder (must differ from model_dir)")
    init: Init = opt("subword-mean", "new rows: mean of the base split's rows, or mean of all rows")
    base_tokenizer: Path | None = opt(None, "the checkpoint's tokenizer; default model_dir/tokenizer.model, "
                                            "else model_dir/tokenizer.json (byte-level BPE)")
    pad_to_multiple_of: int = opt(64, "pad the rows to a multiple of this (1: no padding rows)")
    noise_scale: float = opt(0.0, "noise ~ N(0, scale * covariance) on mean rows (transformers: 1e-9)")
    seed: int = opt(0, "seed for the noise")
    link: Literal["hardlink", "copy"] = opt("hardlink", "unchanged shards: hardlink when possible, or copy")
    chunk_rows: int = opt(1024, "rows averaged per step; bounds the float32 working memory")

    def check(self) -> list[str]:
        problems = []
        if self.pad_to_multiple_of < 1:
            problems.append("pad_to_multiple_of: must be 1 or more")
        if self.noise_scale < 0:
            problems.append("noise_scale: must be 0 or more")
        if self.chunk_rows < 1:
            problems.append("chunk_rows: must be 1 or more")
        return problems


@dataclass(frozen=True)
class ResizeResult:
    """Where the resized checkpoint went and how its rows were made."""

    out_dir: Path
    plan: RowPlan
    tied: bool
    tensors: tuple[str, ...]  # the resized tensors
    rewritten: tuple[str, ...]  # shard files rewritten
    linked: tuple[str, ...]  # unchanged shards, hardlinked
    copied: tuple[str, ...]  # unchanged shards, copied
    seconds: float
    manifest: Path

    @property
    def base_vocab_size(self) -> int:
        return self.plan.base_rows

    @property
    def tokenizer_vocab_size(self) -> int:
        return self.plan.tokenizer_size

    @property
    def vocab_size(self) -> int:
        return self.plan.total_rows

    @property
    def stats(self) -> dict[str, Any]:
        return {**self.plan.stats, "tied": self.tied, "tensors": list(self.tensors),
                "shards_rewritten": len(self.rewritten), "shards_linked": len(self.linked),
                "shards_copied": len(self.copied), "seconds": round(self.seconds, 2)}


def resize_embeddings(
    model_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    init: Init = "subword-mean",
    pad_to_multiple_of: int = 64,
    base_tokenizer: str | Path | None = None,
    **options: Any,
) -> ResizeResult:
    """Write `out_dir`: the checkpoint with embeddings and LM head resized to the tokenizer.

    `options` are the other `ResizeConfig` fields (noise_scale, seed, link, chunk_rows).
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ResizeConfig)})
    if unknown:
        raise TypeError(f"resize_embeddings() got unknown options {unknown}")
    cfg = ResizeConfig(
        model_dir=Path(model_dir), tokenizer=Path(tokenizer_dir), out_dir=Path(out_dir), init=init,
        pad_to_multiple_of=pad_to_multiple_of,
        base_tokenizer=None if base_tokenizer is None else Path(base_tokenizer), **options,
    )
    problems = cfg.check()
    if problems:
        raise ConfigError([f"resize_embeddings.{p}" for p in problems])
    return resize_embeddings_from_config(cfg)


def summary_lines(cfg: ResizeConfig, res: ResizeResult) -> list[str]:
    """What `kovocab resize-embeddings` prints, ending with the step-0 check to run next."""
    p = res.plan
    return [f"resized model ({p.base_rows} -> {p.total_rows} rows: {p.new_pieces} new pieces, "
            f"{p.padding_rows} padding; {p.init}, {'tied' if res.tied else 'untied'}): {res.out_dir}",
            f"  shards: {len(res.rewritten)} rewritten, {len(res.linked)} hardlinked, "
            f"{len(res.copied)} copied; {res.seconds:.1f} s",
            f"  step-0 check: kovocab bpb --model {cfg.model_dir} --model {res.out_dir} --text HELD_OUT.txt"]


def resize_embeddings_from_config(cfg: ResizeConfig) -> ResizeResult:
    """`resize_embeddings` driven by a recipe section (`resize_embeddings:`)."""
    t0 = time.perf_counter()
    src, out = Path(cfg.model_dir), Path(cfg.out_dir)
    ckpt = check_model_folder(src, "resize_embeddings.model_dir")
    if out.resolve() == src.resolve():
        raise InputError(f"resize_embeddings.out_dir: {out} is the input folder; write to a new folder")
    model_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    embed, head = _matrix_names(ckpt)
    tied = head is None or bool(model_config.get("tie_word_embeddings"))
    if head is None and model_config.get("tie_word_embeddings") is False:
        raise InputError(f"{src}: config.json says tie_word_embeddings: false but there is no lm_head.weight")

    base = cfg.base_tokenizer
    if base is None:
        # SentencePiece's tokenizer.model, else a byte-level BPE tokenizer.json (SmolLM2, Llama-3).
        base = next((src / n for n in ("tokenizer.model", "tokenizer.json") if (src / n).is_file()), None)
        if base is None:
            raise TokenizerError(
                f"resize_embeddings.base_tokenizer: {src} has no tokenizer.model or tokenizer.json; give the "
                "tokenizer the checkpoint was trained with (--base-tokenizer PATH)"
            )
    plan = plan_rows(base, cfg.tokenizer, cfg.init, cfg.pad_to_multiple_of)
    rows, hidden = ckpt.header(embed).entry(embed).shape
    if rows != plan.base_rows:
        raise InputError(
            f"{src}: {embed} has {rows} rows but the base tokenizer {base} has {plan.base_rows} pieces; "
            "give the tokenizer this checkpoint was trained with (--base-tokenizer)"
        )
    names = (embed,) if head is None else (embed, head)

    extras = _extras(src)
    # Refused: anything kovocab did not write (pytorch_model.bin, another model's shards, notes).
    # Replaced: an earlier kovocab output there, whole, so no stale shard or index stays.
    owned = OUTPUTS.with_names(*ckpt.shards, *(p.name for p in extras))
    with claim_output(out, owned, "resize_embeddings.out_dir"):
        remove_outputs(out, owned, "resize_embeddings.out_dir")
        rewritten: list[str] = []
        linked: list[str] = []
        copied: list[str] = []
        grown_bytes = 0
        for shard in ckpt.shards:
            changed = [n for n in names if ckpt.weight_map[n] == shard]
            if not changed:
                how = link_or_copy(src / shard, out / shard, cfg.link)
                (linked if how == "hardlink" else copied).append(shard)
                continue
            # One shard at a time, so memory holds at most the matrices of one shard.
            header = ckpt.header(changed[0])
            replacements = {n: _resized(read_tensor(src / shard, n), plan, cfg) for n in changed}
            grown_bytes += rewrite_shard(header, out / shard, replacements)
            rewritten.append(shard)
            del replacements
        if ckpt.index is not None:
            index = json.loads(json.dumps(ckpt.index))
            meta = index.setdefault("metadata", {})
            grown_rows = (plan.total_rows - rows) * len(names)
            if "total_size" in meta:
                meta["total_size"] = int(meta["total_size"]) + grown_bytes
            if "total_parameters" in meta:
                meta["total_parameters"] = int(meta["total_parameters"]) + grown_rows * hidden
            write_json(out / INDEX, index)
        _set_vocab_size(model_config, plan.total_rows)
        write_json(out / "config.json", model_config)
        for p in extras:
            link_or_copy(p, out / p.name, "copy")
        _write_tokenizer(Path(cfg.tokenizer), out, plan, model_config.get("max_position_embeddings", 4096))

        result = ResizeResult(out, plan, tied, names, tuple(rewritten), tuple(linked), tuple(copied),
                              time.perf_counter() - t0, out / MANIFEST)
        write_config(out, "resize_embeddings", cfg)
        inputs = {"model_dir": str(src), "tokenizer": str(cfg.tokenizer), "base_tokenizer": str(base)}
        write_manifest(out, "resize_embeddings", result.stats, inputs=inputs)
        log.info("resized %s -> %s: %d -> %d rows (%s)", src, out, rows, plan.total_rows, cfg.init)
        return result


def check_model_folder(model_dir: str | Path, where: str, base_rows: int | None = None) -> Checkpoint:
    """The checks resize makes of its input model before it writes anything.

    A Hugging Face folder with config.json, safetensors shards whose sizes match their
    headers (a truncated download is named here, not by safetensors mid-way), a
    config.json vocab_size that matches the weights, and, with `base_rows`, that many
    embedding rows. `expand-vocab --model` runs it before training the tokenizer.
    """
    src = Path(model_dir)
    hint = gguf_hint(src, where)
    if hint is not None:
        raise InputError(hint)
    if not src.is_dir():
        raise InputError(f"{where}: folder not found: {src} (give a Hugging Face model folder)")
    if not (src / "config.json").is_file():
        raise InputError(f"{where}: {src} has no config.json; is it a Hugging Face model folder?")
    ckpt = check_checkpoint(src, where)
    check_config_vocab(src, where)
    if base_rows is not None:
        embed, _ = _matrix_names(ckpt)
        rows = ckpt.header(embed).entry(embed).shape[0]
        if rows != base_rows:
            raise InputError(f"{where}: {src}: {embed} has {rows} rows but the base tokenizer has "
                             f"{base_rows} pieces; give the model the base tokenizer belongs to")
    return ckpt


def check_config_vocab(model_dir: str | Path, where: str) -> None:
    """Stop when config.json's vocab_size disagrees with the embedding rows in the safetensors.

    Read from the headers only. transformers would stop with a size-mismatch traceback
    (or, told to ignore it, re-initialise the matrices); a folder without safetensors
    weights is left to the loader.
    """
    d = Path(model_dir)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
        ckpt = open_checkpoint(d)
    except (OSError, ValueError, InputError):
        return
    text = config.get("text_config")
    declared = text.get("vocab_size") if isinstance(text, dict) and "vocab_size" in text \
        else config.get("vocab_size")
    if not isinstance(declared, int):
        return
    embed, head = _matrix_names(ckpt)
    for name in filter(None, (embed, head)):
        rows = ckpt.header(name).entry(name).shape[0]
        if rows != declared:
            raise InputError(
                f"{where}: {d / 'config.json'} says vocab_size {declared} but {name} in the weights has "
                f"{rows} rows; the folder is inconsistent (config.json edited, or weights from another "
                f"model): set vocab_size to {rows} in config.json, or give the folder that matches"
            )


def _matrix_names(ckpt: Checkpoint) -> tuple[str, str | None]:
    """The input-embedding tensor and, when untied, the LM head tensor."""
    embeds = [n for n in ckpt.weight_map if n.endswith("embed_tokens.weight")]
    heads = [n for n in ckpt.weight_map if n.endswith("lm_head.weight")]
    if len(embeds) != 1 or len(heads) > 1:
        raise InputError(
            f"{ckpt.folder}: expected one '*embed_tokens.weight' and at most one '*lm_head.weight' "
            f"tensor (a Llama-family checkpoint), found {embeds + heads or 'none'}"
        )
    return embeds[0], heads[0] if heads else None


def _resized(old: Any, plan: RowPlan, cfg: ResizeConfig) -> Any:
    import torch

    new = torch.empty(plan.total_rows, old.shape[1], dtype=old.dtype)
    new[: plan.base_rows] = old
    new[plan.base_rows :] = init_rows(old, plan, cfg.noise_scale, cfg.seed, cfg.chunk_rows)
    return new


def _set_vocab_size(config: dict[str, Any], rows: int) -> None:
    config["vocab_size"] = rows
    text = config.get("text_config")
    if isinstance(text, dict) and "vocab_size" in text:
        text["vocab_size"] = rows


def _extras(src: Path) -> list[Path]:
    """Small side files (generation_config.json, README, LICENSE) that travel with the weights."""
    skip = {INDEX, SINGLE, "config.json", MANIFEST, "config.yaml", *TOKENIZER_FILES}
    extras = []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name in skip:
            continue
        if any(p.match(g) for g in _STALE):
            if p.suffix != ".safetensors":
                log.warning("not copying %s: weights in another format would not match", p.name)
            continue
        extras.append(p)
    return extras


def _write_tokenizer(tokenizer: Path, out: Path, plan: RowPlan, max_length: int) -> None:
    """The expanded tokenizer beside the weights; a bare `.model` gets its Hugging Face files."""
    byte_level = bytelevel_json(tokenizer)
    folder: Path | None
    if byte_level is not None:  # a byte-level BPE folder (or its tokenizer.json): its files as they are
        model_file, folder = byte_level, byte_level.parent
    else:
        model_file = find_sentencepiece_model(tokenizer, "resize_embeddings.tokenizer")
        folder = tokenizer if tokenizer.is_dir() else None
    if folder is not None and (folder / "tokenizer.json").is_file():
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        ids = [*data.get("model", {}).get("vocab", {}).values()]
        ids += [t["id"] for t in data.get("added_tokens", [])]
        if ids and max(ids) >= plan.total_rows:
            raise TokenizerError(
                f"{folder / 'tokenizer.json'} has id {max(ids)}, beyond the {plan.total_rows} rows "
                f"made for {model_file} ({plan.tokenizer_size} pieces); regenerate the tokenizer folder"
            )
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                link_or_copy(folder / name, out / name, "copy")
        return
    # Without tokenizer.json a loader would rebuild one its own way; write the exact one.
    write_hf_tokenizer(load_proto(model_file), out, model_max_length=max_length)
