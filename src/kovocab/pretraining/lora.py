"""LoRA continued pretraining: peft adapters on the ZeRO-3 model, merged back at export.

Chinese-LLaMA (arXiv:2304.08177) trains LoRA adapters (arXiv:2106.09685) on attention and
MLP while the embeddings and LM head train in full; `lora.embeddings: new_rows` instead
trains only the rows of the added pieces, with the gradient mask of `masks.py`. The
adapters are added to the partitioned model before the first lora stage; DeepSpeed
partitions them when that stage's engine is built. The export is W + (alpha/r)·B·A
(peft's own `get_delta_weight`), gathered one module at a time, so `hf/` is an ordinary
checkpoint that loads without peft; `adapter/` is the adapter alone in peft's format.
QLoRA (arXiv:2305.14314): `quantize: 4bit`.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from kovocab.errors import ConfigError
from kovocab.pretraining.config import SECTION, LoraConfig, PretrainConfig

log = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name: one adapter per run


def is_adapter(name: str) -> bool:
    """A LoRA parameter by its (peft) name: `...q_proj.lora_A.default.weight`."""
    return ".lora_A." in name or ".lora_B." in name


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def check_lora_environment(cfg: PretrainConfig) -> None:
    """Before any work: peft is installed, and `quantize: 4bit` has CUDA and bitsandbytes."""
    lc = cfg.lora_config
    if lc is None:
        return
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"{SECTION}.stages: train: lora needs peft, which is not installed; "
                          "pip install -e '.[lora]' (with torch pinned as in README.md)")
    if lc.quantize == "none":
        return
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append(f"this machine has no CUDA device (torch {torch.__version__})")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed (pip install -e '.[qlora]')")
    if missing:
        raise ConfigError(
            f"{SECTION}.lora.quantize: 4bit (QLoRA) keeps the frozen base in NF4 with bitsandbytes, "
            f"which needs a CUDA GPU, but {' and '.join(missing)}; set {SECTION}.lora.quantize: none to "
            "train LoRA on the full-precision base here, or run on a GPU machine"
        )


def quantization_kwargs(cfg: PretrainConfig, dtype: Any) -> dict[str, Any]:
    """from_pretrained keywords for QLoRA: NF4 with double quantization, stored in `dtype` so that
    ZeRO-3 can partition the packed weights like any other tensor."""
    lc = cfg.lora_config
    if lc is None or lc.quantize == "none":
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)}


def add_adapters(model: Any, lc: LoraConfig) -> Any:
    """`model` wrapped by peft with adapters on `lc.target_modules` (every other weight frozen)."""
    import peft
    import torch

    config = peft.LoraConfig(r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, bias="none",
                             target_modules=list(lc.target_modules), task_type="CAUSAL_LM")
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()})
        raise ConfigError(f"{SECTION}.lora.target_modules: {list(lc.target_modules)} do not all name linear "
                          f"modules of the model (its linear modules: {', '.join(linear)}); peft says: "
                          f"{str(exc).splitlines()[0]}") from exc
    n = sum(int(getattr(p, "ds_numel", p.numel())) for name, p in wrapped.named_parameters()
            if is_adapter(name))
    log.info("LoRA adapters on %s: rank %d, alpha %g, %d parameters", ", ".join(lc.target_modules), lc.rank,
             lc.alpha, n)
    return wrapped


def merged_state_dict(model: Any, is_main: bool) -> dict[str, Any] | None:
    """The base model's parameters under their Hugging Face names, every adapter merged in (rank 0, CPU).

    A collective: every rank gathers each module's base weight and adapters together, and
    rank 0 keeps W + delta, computed in float32 and stored in W's dtype.
    """
    import deepspeed
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    out: dict[str, Any] = {}
    lora_modules: dict[str, Any] = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, module in lora_modules.items():
        layer: Any = module.get_base_layer()
        params = [layer.weight, module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight]
        with deepspeed.zero.GatheredParameters(params):
            if is_main:
                weight = _base_weight(layer)
                delta = module.get_delta_weight(ADAPTER).detach().float().cpu()
                out[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
                if getattr(layer, "bias", None) is not None:
                    out[f"{name}.bias"] = layer.bias.detach().to("cpu", copy=True)
    inside = tuple(f"{name}." for name in lora_modules)
    for pname, p in base.named_parameters():
        if pname.startswith(inside):
            continue
        with deepspeed.zero.GatheredParameters([p]):
            if is_main:
                out[pname] = p.detach().to("cpu", copy=True)
    return out if is_main else None


def _base_weight(layer: Any) -> Any:
    """A base layer's weight on the CPU; an NF4 weight (QLoRA) dequantized by peft's helper."""
    if hasattr(layer.weight, "quant_state"):  # bitsandbytes Params4bit: only a GPU run checks this
        from peft.utils.integrations import dequantize_module_weight

        return dequantize_module_weight(layer).detach().to("cpu", copy=True)
    return layer.weight.detach().to("cpu", copy=True)


def adapter_state_dict(model: Any, with_embeddings: bool, is_main: bool) -> dict[str, Any] | None:
    """The adapters (and the embeddings and LM head when they trained) under peft's names, on rank 0."""
    import deepspeed

    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    wanted = {id(emb), id(head)} if with_embeddings else set()
    out: dict[str, Any] = {}
    for name, p in model.named_parameters():
        if is_adapter(name) or id(p) in wanted:
            with deepspeed.zero.GatheredParameters([p]):
                if is_main:
                    out[name] = p.detach().to("cpu", copy=True)
    return out if is_main else None


def trainable_counts(model: Any) -> dict[str, int]:
    """Parameters that train now and in all (full sizes, also when partitioned)."""
    total = trainable = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", p.numel()))
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable": trainable, "total": total}
