"""Continued-pretraining config: the `pretrain:` recipe section, its stages, and the DeepSpeed JSON.

A recipe names a resized checkpoint, the text, a DeepSpeed ZeRO-3 JSON and a list of
stages (EEVE, arXiv:2402.14714: new embeddings first, then everything). The JSON stays a
DeepSpeed file: kovocab fills only the keys it derives (batch sizes, clipping,
precision) where they say "auto", and refuses values that disagree with the recipe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kovocab.artifacts import Owned, exact
from kovocab.config import opt
from kovocab.errors import ConfigError
from kovocab.model.gguf_import import gguf_hint
from kovocab.model.safetensors_io import MODEL_FILES
from kovocab.tokenizer.weights import SourceWeight

SECTION = "pretrain"
Train = Literal["new_embeddings", "embeddings", "all", "lora"]
Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class StageConfig:
    """One training stage: what trains, for how many optimizer steps, at which learning rate."""

    name: str = opt(doc="stage name, shown in metrics.jsonl and checkpoints")
    steps: int = opt(doc="optimizer steps in this stage")
    lr: float = opt(doc="peak learning rate of the non-embedding parameters")
    train: Train = opt(
        "all", "new_embeddings: only rows past the base vocabulary of embeddings and LM head (one "
        "matrix when tied); embeddings: both matrices; all: every parameter; lora: the LoRA adapters "
        "of `lora:` (+ embeddings and LM head as lora.embeddings says)",
    )
    embedding_lr: float | None = opt(None, "peak learning rate of embeddings and LM head; default lr")
    warmup_steps: int = opt(0, "linear warmup from 0 over this many steps, then cosine decay")
    min_lr_ratio: float = opt(0.1, "the cosine ends at this fraction of the peak learning rate")
    weight_decay: float = opt(0.0, "AdamW decoupled decay of matrices (never embeddings, LM head, norms)")
    betas: tuple[float, ...] = opt((0.9, 0.95), "AdamW betas")

    def check(self) -> list[str]:
        problems = []
        if self.steps < 1:
            problems.append("steps: must be 1 or more")
        if not 0 <= self.warmup_steps <= self.steps:
            problems.append(f"warmup_steps: must be between 0 and steps ({self.steps})")
        if self.lr <= 0 or (self.embedding_lr is not None and self.embedding_lr <= 0):
            problems.append("lr, embedding_lr: must be above 0")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append("min_lr_ratio: must be between 0 and 1")
        if self.weight_decay < 0:
            problems.append("weight_decay: must be 0 or more")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append("betas: two numbers in [0, 1)")
        return problems


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) for `train: lora` stages; the base weights stay frozen (Chinese-LLaMA)."""

    rank: int = opt(8, "adapter rank r")
    alpha: int = opt(16, "scaling numerator: the update is (alpha / rank) * B @ A")
    dropout: float = opt(0.05, "dropout on the adapters' input")
    target_modules: tuple[str, ...] = opt(LORA_TARGETS, "module names that get adapters (Llama: every linear "
                                                        "of attention and MLP)")
    embeddings: Literal["all", "new_rows", "frozen"] = opt(
        "all", "what of the input embeddings and LM head trains in lora stages: all rows, new_rows (rows "
        "past the base vocabulary, the gradient mask of new_embeddings), or frozen (adapters only)")
    quantize: Literal["none", "4bit"] = opt("none", "4bit: QLoRA, the frozen base in NF4 (needs CUDA and "
                                                    "bitsandbytes, extra `qlora`)")
    save_adapter: bool = opt(True, "also write the adapter alone (peft format) to out_dir/adapter")

    def check(self) -> list[str]:
        problems = []
        if self.rank < 1:
            problems.append("rank: must be 1 or more")
        if self.alpha <= 0:
            problems.append("alpha: must be above 0")
        if not 0 <= self.dropout < 1:
            problems.append("dropout: must be in [0, 1)")
        if not self.target_modules or len(set(self.target_modules)) != len(self.target_modules):
            problems.append(f"target_modules: distinct module names, e.g. [q_proj, v_proj], got "
                            f"{list(self.target_modules)}")
        return problems


@dataclass(frozen=True)
class PretrainConfig:
    """Continued pretraining of a resized Llama checkpoint under DeepSpeed ZeRO-3."""

    model_dir: Path = opt(doc="Hugging Face Llama folder from `kovocab resize-embeddings`")
    train_data: tuple[Path, ...] = opt(doc="training text: shard folders (train split), .txt or .jsonl")
    out_dir: Path = opt(doc="run folder: metrics.jsonl, checkpoints/, hf/ (the exported model)")
    stages: tuple[StageConfig, ...] = opt(doc="the stages, in order (see 'each entry of stages')")
    deepspeed_config: Path = opt(doc="DeepSpeed JSON with zero_optimization.stage 3 (pretrain/zero3.json)")
    tokenizer: Path | None = opt(None, "tokenizer folder; default model_dir (resize-embeddings copies it)")
    base_vocab_size: int | None = opt(None, "rows kept frozen by new_embeddings; default the resize manifest")
    token_store_dir: Path | None = opt(None, "token ids on disk (built once, reused); default out_dir/tokens")
    max_documents: int | None = opt(None, "read at most this many training documents (tests, smoke runs)")
    source_weights: Mapping[str, SourceWeight] | None = opt(
        None, "per-source sampling of train_data (tokenizer recipes' key, seeded by `seed`): "
        "{NAME: {weight: FACTOR, max_share: SHARE}}; `kovocab run` takes expand_vocab's by default"
    )
    replay_data: tuple[Path, ...] = opt((), "text mixed in to limit forgetting, e.g. English")
    replay_ratio: float = opt(0.0, "share of training blocks drawn from replay_data")
    seq_len: int = opt(2048, "tokens per training sequence (documents packed, BOS/EOS between them)")
    micro_batch_size: int = opt(1, "sequences per device per forward")
    gradient_accumulation_steps: int = opt(1, "forwards per optimizer step")
    precision: Precision = opt("auto", "auto: bf16 on GPU, fp32 on CPU")
    gradient_checkpointing: bool = opt(True, "recompute activations in backward: less memory, more compute")
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this (0: no clipping)")
    seed: int = opt(0, "seed for data order and initialisation of RNGs")
    checkpoint_every: int = opt(1000, "resumable DeepSpeed checkpoint every N steps (0: at the end only)")
    log_every: int = opt(10, "rank 0 logs a progress line (step, stage, loss, lr, grad norm, tokens/s, MFU, "
                               "ETA) every N steps, and at each stage end and checkpoint (0: only those)")
    keep_checkpoints: int = opt(2, "keep the newest N checkpoints")
    eval_korean: tuple[Path, ...] = opt((), "held-out Korean for bits per byte (shard folders: eval split)")
    eval_english: tuple[Path, ...] = opt((), "held-out English text for bits per byte")
    eval_every: int = opt(500, "bits-per-byte evaluation every N steps, and at the end (0: never)")
    eval_max_documents: int = opt(200, "documents per evaluation set")
    peak_flops: float | None = opt(None, "peak FLOP/s per device for MFU (H100 SXM bf16: 989e12); null: none")
    export_stages: bool = opt(False, "also export a Hugging Face checkpoint at the end of every stage")
    dist_backend: Literal["auto", "nccl", "gloo"] = opt("auto", "auto: nccl with GPUs, gloo on CPU")
    lora: LoraConfig | None = opt(None, "LoRA adapters for `train: lora` stages (see 'pretrain.lora'); "
                                        "null: the defaults listed there")

    def check(self) -> list[str]:
        problems = [f"stages[{i}].{p}" for i, s in enumerate(self.stages) for p in s.check()]
        if not self.stages:
            problems.append("stages: give at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            problems.append(f"stages: names must be unique, got {names}")
        positive = {"seq_len": self.seq_len, "micro_batch_size": self.micro_batch_size,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "keep_checkpoints": self.keep_checkpoints, "eval_max_documents": self.eval_max_documents}
        problems += [f"{k}: must be 1 or more" for k, v in positive.items() if v < 1]
        if self.checkpoint_every < 0 or self.eval_every < 0 or self.log_every < 0:
            problems.append("checkpoint_every, eval_every, log_every: must be 0 or more")
        if not 0 <= self.replay_ratio < 1:
            problems.append("replay_ratio: must be in [0, 1)")
        if self.replay_ratio > 0 and not self.replay_data:
            problems.append("replay_ratio: needs replay_data")
        if self.max_grad_norm < 0:
            problems.append("max_grad_norm: must be 0 or more")
        if self.peak_flops is not None and self.peak_flops <= 0:
            problems.append("peak_flops: must be above 0, or null")
        trains = {s.train for s in self.stages}
        if "lora" in trains and "all" in trains:
            problems.append("stages: train: lora and train: all in one run; a LoRA run keeps the base "
                            "weights frozen (train them all in another run, or drop the lora stage)")
        if self.lora is not None and "lora" not in trains:
            problems.append("lora: given, but no stage has train: lora; add one or remove lora:")
        return problems

    @property
    def lora_config(self) -> LoraConfig | None:
        """The adapters' settings when a stage trains LoRA (the section, or its defaults), else None."""
        if not any(s.train == "lora" for s in self.stages):
            return None
        return self.lora if self.lora is not None else LoraConfig()

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def tokenizer_dir(self) -> Path:
        return self.tokenizer if self.tokenizer is not None else self.model_dir

    @property
    def store_dir(self) -> Path:
        return self.token_store_dir if self.token_store_dir is not None else self.out_dir / "tokens"


def check_paths(cfg: PretrainConfig) -> None:
    """Every input the run reads exists; all missing ones are reported at once."""
    problems = []
    model_config = cfg.model_dir / "config.json"
    hint = gguf_hint(cfg.model_dir, f"{SECTION}.model_dir")
    if hint is not None:
        problems.append(hint)
    elif not model_config.is_file():
        problems.append(f"{SECTION}.model_dir: no Hugging Face model at {cfg.model_dir} "
                        "(config.json missing); give the output folder of `kovocab resize-embeddings`")
    for key in ("train_data", "replay_data", "eval_korean", "eval_english"):
        problems += [f"{SECTION}.{key}: path not found: {p}" for p in getattr(cfg, key) if not p.exists()]
    if not cfg.train_data:
        problems.append(f"{SECTION}.train_data: give at least one shard folder or text file")
    if not cfg.deepspeed_config.is_file():
        problems.append(f"{SECTION}.deepspeed_config: file not found: {cfg.deepspeed_config}")
    if problems:
        raise ConfigError(problems)


def deepspeed_config(cfg: PretrainConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed JSON with kovocab's derived values filled in where it says "auto".

    A value the JSON spells out must agree with the recipe, so the two files never
    disagree silently about the batch, the clipping or the precision.
    """
    where = str(cfg.deepspeed_config)
    try:
        ds: dict[str, Any] = json.loads(cfg.deepspeed_config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{SECTION}.deepspeed_config: cannot read {where} as JSON: {exc}") from exc
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu)
    derived: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16.enabled": bf16,
    }
    problems = []
    for key, value in derived.items():
        node, leaf = _node(ds, key)
        given = node.get(leaf, "auto")
        if given == "auto":
            node[leaf] = value
        elif given != value:
            problems.append(f"{where}: {key} is {given!r} but the recipe gives {value!r} "
                            f"(set it to \"auto\" or make the two agree)")
    zero = ds.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") != 3:
        problems.append(f"{where}: zero_optimization.stage must be 3 (kovocab trains under ZeRO-3)")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            problems.append(f"{where}: remove '{key}': kovocab builds AdamW and warmup+cosine from the "
                            "stages (their learning rates and parameter groups change per stage)")
    if (ds.get("fp16") or {}).get("enabled") in (True, "auto"):
        problems.append(f"{where}: fp16 is not supported (Llama is trained in bf16); remove 'fp16'")
    problems += [f"{where}: {k} is \"auto\", which kovocab does not fill (it fills {', '.join(derived)}); "
                 "give a value" for k in _autos(ds)]
    if problems:
        raise ConfigError(problems)
    # The optimizer is a torch AdamW handed to DeepSpeed, which asks for this to accept it.
    ds["zero_allow_untested_optimizer"] = True
    return ds


def _autos(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _autos(v, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "auto" else []


def _node(ds: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    *parents, leaf = dotted.split(".")
    node = ds
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    return node, leaf


def load_pretrain_config(data: dict[str, Any]) -> PretrainConfig:
    """The `pretrain:` section of a raw recipe, validated, with paths taken from the recipe's folder."""
    from kovocab.config import load_section, resolve_paths

    cfg = load_section(PretrainConfig, data, SECTION)
    return resolve_paths(cfg, data.get("_recipe_dir"))



# hf/ and stages/NAME/: a model folder as kovocab writes one.
EXPORT = Owned(SECTION, files=MODEL_FILES)
# adapter/: a LoRA adapter in peft's format (and peft's model card), with the run's tokenizer.
ADAPTER = Owned(SECTION, files=(*exact("adapter_config.json", "adapter_model.safetensors", "README.md"),
                                 *MODEL_FILES[-5:]))


def outputs(cfg: PretrainConfig) -> Owned:
    """What pretrain writes in `out_dir` (artifacts.Owned): a folder holding anything else is
    refused, and only these are ever removed (`kovocab run` with a changed config)."""
    from kovocab.pretraining.token_store import OUTPUTS as STORE

    dirs: dict[str, Owned | None] = {"checkpoints": None, "hf": EXPORT, "adapter": ADAPTER,
                                     "stages": Owned(SECTION, dirs={".+": EXPORT})}
    if cfg.store_dir.parent == cfg.out_dir:  # the default out_dir/tokens, or a folder beside it
        dirs[re.escape(cfg.store_dir.name)] = Owned("token_store", dirs={"train|replay": STORE})
    files = exact("metrics.jsonl", "zero3_partitions.json", "ds_config.json", "launch.yaml", "result.json",
                  "error.json")
    return Owned(SECTION, files=files, dirs=dirs)
