"""Stage `init_model`: a Llama checkpoint built from a config, for smoke runs and tests.

Inputs: a base SentencePiece tokenizer (e.g. Llama-2's tokenizer.model) and Llama
shape fields. Output: a Hugging Face folder (config.json, model.safetensors, the base
tokenizer as tokenizer.model + tokenizer.json) that `resize-embeddings` and
`pretrain` read like any downloaded Llama. Weights are Hugging Face's own init, seeded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab.artifacts import Owned, claim_output, remove_outputs, write_config, write_manifest
from kovocab.config import opt
from kovocab.errors import ConfigError, require
from kovocab.model.safetensors_io import MODEL_FILES
from kovocab.tokenizer.export import load_proto, write_hf_tokenizer
from kovocab.tokenizer.merge import find_sentencepiece_model

log = logging.getLogger(__name__)

SECTION = "init_model"
OUTPUTS = Owned(SECTION, files=MODEL_FILES)


@dataclass(frozen=True)
class InitModelConfig:
    """A randomly initialised Llama whose vocabulary is the base tokenizer's."""

    tokenizer: Path = opt(doc="base tokenizer: tokenizer.model, or a folder holding one")
    out_dir: Path = opt(doc="output model folder")
    hidden_size: int = opt(64, "model width")
    intermediate_size: int = opt(172, "MLP width")
    num_hidden_layers: int = opt(2, "transformer blocks")
    num_attention_heads: int = opt(4, "query heads")
    num_key_value_heads: int = opt(2, "key/value heads (grouped-query attention when fewer)")
    max_position_embeddings: int = opt(512, "longest sequence in tokens")
    tie_word_embeddings: bool = opt(False, "share input embeddings and LM head (Llama-2: no)")
    seed: int = opt(0, "seed of the weight init")

    def check(self) -> list[str]:
        problems = []
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be 1 or more")
        if self.num_attention_heads >= 1 and self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size: {self.hidden_size} is not a multiple of num_attention_heads "
                            f"({self.num_attention_heads})")
        if self.num_key_value_heads >= 1 and self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_key_value_heads: {self.num_key_value_heads} does not divide "
                            f"num_attention_heads ({self.num_attention_heads})")
        return problems


@dataclass(frozen=True)
class InitModelResult:
    """Where the checkpoint went and its size."""

    out_dir: Path
    manifest: Path
    vocab_size: int
    parameters: int
    seconds: float


def summary_lines(cfg: InitModelConfig, res: InitModelResult) -> list[str]:
    """What `kovocab init-model` prints."""
    return [f"model ({res.parameters:,} parameters, vocabulary {res.vocab_size}): {res.out_dir}"]


def init_model(cfg: InitModelConfig) -> InitModelResult:
    """Write a seeded, randomly initialised Llama (safetensors) with the base tokenizer beside it.

    Holds the lock on `cfg.out_dir`; a folder holding other files than a model folder as
    kovocab writes one is refused, and an earlier output there is replaced whole.
    """
    with claim_output(cfg.out_dir, OUTPUTS, f"{SECTION}.out_dir"):
        return _init_model(cfg)


def _init_model(cfg: InitModelConfig) -> InitModelResult:
    problems = cfg.check()
    if problems:
        raise ConfigError([f"{SECTION}.{p}" for p in problems])
    require("torch", "torch", "building a model")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    proto = load_proto(find_sentencepiece_model(cfg.tokenizer, f"{SECTION}.tokenizer"))
    ts = proto.trainer_spec
    vocab = len(proto.pieces)
    model_cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=ts.bos_id, eos_token_id=ts.eos_id,
        pad_token_id=ts.pad_id if ts.pad_id >= 0 else None,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(model_cfg)
    out = Path(cfg.out_dir)
    # An earlier output goes whole: a stale index beside a new single file would be read first.
    remove_outputs(out, OUTPUTS, f"{SECTION}.out_dir")
    out.mkdir(parents=True, exist_ok=True)
    # safetensors only: resize-embeddings reads shards lazily and refuses stale .bin files.
    model.save_pretrained(out, safe_serialization=True)
    write_hf_tokenizer(proto, out, model_max_length=cfg.max_position_embeddings)
    write_config(out, SECTION, cfg)
    params = sum(p.numel() for p in model.parameters())
    stats: dict[str, Any] = {"vocab_size": vocab, "parameters": params}
    manifest = write_manifest(out, SECTION, stats)
    seconds = time.perf_counter() - t0
    log.info("init_model: %s parameters, vocabulary %d -> %s (%.1f s)", f"{params:,}", vocab, out, seconds)
    return InitModelResult(out_dir=out, manifest=manifest, vocab_size=vocab, parameters=params,
                           seconds=seconds)
