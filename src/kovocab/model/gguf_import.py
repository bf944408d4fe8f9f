"""Stage `import_gguf`: a llama.cpp `.gguf` model file -> a Hugging Face safetensors folder, once.

Input: a GGUF file (weights de-quantised by transformers' GGUF loader, the tokenizer rebuilt
from its metadata). Output: config.json, model.safetensors, the tokenizer files, config.yaml
and manifest.json (the GGUF's sha256 among its inputs); every later stage reads that folder.
References: the GGUF format (ggml docs/gguf.md) and llama.cpp's pre-tokenizers (llama-vocab.cpp).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kovocab.artifacts import (
    MANIFEST,
    Owned,
    claim_output,
    read_manifest,
    remove_outputs,
    sha256_file,
    write_config,
    write_manifest,
)
from kovocab.config import opt
from kovocab.errors import InputError, require
from kovocab.model.safetensors_io import MODEL_FILES

log = logging.getLogger(__name__)

SECTION = "import_gguf"
OUTPUTS = Owned(SECTION, files=(*MODEL_FILES, r"chat_template\.jinja"))
MAGIC = b"GGUF"
# A short English sentence: a converted model that knows English scores it far below chance.
PROBE = "The little cat sat on the mat and looked out of the window at the rain."


@dataclass(frozen=True)
class ImportGgufConfig:
    """Convert a llama.cpp GGUF model file into a Hugging Face safetensors model folder."""

    gguf: Path = opt(doc="the .gguf model file (llama.cpp format; quantised weights are de-quantised)")
    out_dir: Path = opt(doc="output model folder: config.json, model.safetensors, tokenizer files")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "dtype of the written (de-quantised) weights")


@dataclass(frozen=True)
class ImportGgufResult:
    """Where the converted model went and what it is."""

    out_dir: Path
    manifest: Path
    architecture: str
    vocab_size: int
    parameters: int
    tied: bool
    pre_tokenizer: str | None  # the GGUF's tokenizer.ggml.pre
    probe_nll: float  # nats per token of PROBE under the converted model
    reused: bool  # the folder already held this conversion
    seconds: float

    @property
    def stats(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "vocab_size": self.vocab_size,
                "parameters": self.parameters, "tied": self.tied, "pre_tokenizer": self.pre_tokenizer,
                "probe_nll": round(self.probe_nll, 4), "chance_nll": round(math.log(self.vocab_size), 4)}


def summary_lines(cfg: ImportGgufConfig, res: ImportGgufResult) -> list[str]:
    """What `kovocab import-gguf` prints."""
    how = "already converted" if res.reused else f"converted in {res.seconds:.1f} s"
    return [f"{res.architecture} model ({res.parameters:,} parameters, vocabulary {res.vocab_size}, "
            f"{'tied' if res.tied else 'untied'}; {how}): {res.out_dir}",
            f"  English probe: {res.probe_nll:.2f} nats/token (chance: {math.log(res.vocab_size):.2f})"]


def gguf_hint(path: str | Path, where: str) -> str | None:
    """The message for a stage given a .gguf file where it reads a model folder, else None."""
    p = Path(path)
    if p.suffix.lower() != ".gguf" and not (p.is_file() and _is_gguf(p)):
        return None
    return (f"{where}: {p} is a GGUF file; convert it once into a Hugging Face folder with "
            f"`kovocab import-gguf --gguf {p} --out DIR` (recipe section import_gguf:) and give DIR")


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def import_gguf(cfg: ImportGgufConfig) -> ImportGgufResult:
    """Write `cfg.out_dir` from `cfg.gguf`, or reuse it when it already holds that conversion.

    Holds the lock on `cfg.out_dir`; a folder holding other files than a model folder as
    kovocab writes one is refused, and an earlier output there is replaced whole.
    """
    src = Path(cfg.gguf)
    if not src.is_file():
        raise InputError(f"{SECTION}.gguf: file not found: {src}")
    if not _is_gguf(src):
        raise InputError(f"{SECTION}.gguf: {src} is not a GGUF file (it does not start with 'GGUF')")
    with claim_output(cfg.out_dir, OUTPUTS, f"{SECTION}.out_dir"):
        t0 = time.perf_counter()
        sha = sha256_file(src)
        earlier = _earlier(cfg, sha)
        if earlier is not None:
            log.info("%s already holds %s (sha256 %s…): reusing it", cfg.out_dir, src.name, sha[:12])
            return _result(cfg, earlier, reused=True, seconds=time.perf_counter() - t0)
        return _convert(cfg, sha, t0)


def _convert(cfg: ImportGgufConfig, sha: str, t0: float) -> ImportGgufResult:
    require("gguf", "gguf", "reading a GGUF file")
    require("torch", "torch", "converting a GGUF model")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out = Path(cfg.gguf), Path(cfg.out_dir)
    try:
        metadata = _metadata(src)
    except (ValueError, OSError) as exc:
        raise InputError(f"{SECTION}.gguf: cannot read {src}: {exc}") from exc
    pre = metadata.get("tokenizer.ggml.pre")
    folder, name = str(src.parent), src.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                          dtype=getattr(torch, cfg.dtype))
    except (ValueError, OSError, KeyError, NotImplementedError) as exc:
        raise InputError(f"{SECTION}.gguf: transformers cannot load {src} as a causal LM: {exc}") from exc
    byte_level = None
    if metadata.get("tokenizer.ggml.model") == "gpt2":
        # The tokenizer as llama.cpp runs it (tokenizer.bytelevel_base: with SmolLM2's
        # 'smollm' digit split, which transformers' converter drops), as expand-vocab reads it.
        from kovocab.tokenizer.bytelevel_base import load_byte_level_base

        byte_level = load_byte_level_base(src, f"{SECTION}.gguf")
        tokenizer.backend_tokenizer.pre_tokenizer = byte_level.tokenizer().pre_tokenizer
    # The weights are plain tensors now; the GGUF quantizer only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    probe = _probe_nll(model, tokenizer)
    remove_outputs(out, OUTPUTS, f"{SECTION}.out_dir")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if byte_level is not None:
        from kovocab.tokenizer.bytelevel import write_base_folder

        write_base_folder(out, byte_level)
    else:
        tokenizer.save_pretrained(out)
    write_config(out, SECTION, cfg)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    res = ImportGgufResult(
        out_dir=out, manifest=out / MANIFEST, architecture=str(metadata.get("general.architecture")),
        vocab_size=int(emb.shape[0]), parameters=sum(p.numel() for p in model.parameters()),
        tied=head is not None and head.weight is emb, pre_tokenizer=None if pre is None else str(pre),
        probe_nll=probe, reused=False, seconds=time.perf_counter() - t0,
    )
    write_manifest(out, SECTION, res.stats, inputs={"gguf": str(src), "gguf_sha256": sha, "dtype": cfg.dtype})
    level = logging.WARNING if probe > 0.8 * math.log(res.vocab_size) else logging.INFO
    log.log(level, "%s -> %s: %s parameters, English probe %.2f nats/token (chance %.2f)%s", src, out,
            f"{res.parameters:,}", probe, math.log(res.vocab_size),
            "; near chance: check the conversion" if level == logging.WARNING else "")
    return res


def _metadata(path: Path) -> dict[str, Any]:
    """The GGUF's metadata keys (arrays such as the vocabulary left as counts where possible)."""
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:  # transformers 4.x: gguf's own reader (slower: it maps every array element)
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
        keys = ("general.architecture", "tokenizer.ggml.pre")
        return {k: fields[k].contents() for k in keys if k in fields}
    return dict(read_gguf_metadata(str(path))[0])


def _probe_nll(model: Any, tokenizer: Any) -> float:
    """Mean NLL per token of PROBE (the sanity check recorded in the manifest)."""
    import torch

    ids = tokenizer(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def _earlier(cfg: ImportGgufConfig, sha: str) -> dict[str, Any] | None:
    """The manifest of this same conversion in out_dir, with every file it lists still in place."""
    manifest = read_manifest(cfg.out_dir)
    if not manifest or manifest.get("stage") != SECTION:
        return None
    inputs = manifest.get("inputs") or {}
    if inputs.get("gguf_sha256") != sha or inputs.get("dtype") != cfg.dtype:
        return None
    files = manifest.get("files") or {}
    for name, entry in files.items():
        p = Path(cfg.out_dir) / name
        if not p.is_file() or p.stat().st_size != entry.get("bytes"):
            return None
    return manifest


def _result(cfg: ImportGgufConfig, manifest: dict[str, Any], reused: bool,
            seconds: float) -> ImportGgufResult:
    s = manifest.get("stats") or {}
    return ImportGgufResult(
        out_dir=Path(cfg.out_dir), manifest=Path(cfg.out_dir) / MANIFEST, architecture=str(s["architecture"]),
        vocab_size=int(s["vocab_size"]), parameters=int(s["parameters"]), tied=bool(s["tied"]),
        pre_tokenizer=s.get("pre_tokenizer"), probe_nll=float(s["probe_nll"]), reused=reused, seconds=seconds,
    )
