"""Export a ZeRO-3-partitioned model as one consolidated Hugging Face safetensors checkpoint.

Every rank takes part in gathering each parameter; rank 0 writes `model*.safetensors`,
`config.json`, `generation_config.json`, the tokenizer files of the run, `config.yaml`
and `manifest.json`. The folder loads with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kovocab.artifacts import Owned, remove_outputs, write_config, write_manifest
from kovocab.errors import OutputError
from kovocab.pretraining.config import ADAPTER, EXPORT, SECTION, PretrainConfig
from kovocab.pretraining.engine import gather_state_dict

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def export_hf(model: Any, out: Path, cfg: PretrainConfig, is_main: bool, stats: dict[str, Any]) -> Path:
    """Write the whole model to `out` (rank 0); a collective, so call it on every rank."""
    import torch.distributed as dist

    from kovocab.pretraining.lora import is_peft, merged_state_dict

    if is_peft(model):  # LoRA: the adapters merged into their weights, saved as the plain model
        state, model = merged_state_dict(model, is_main), model.get_base_model()
    else:
        state = gather_state_dict(model, is_main)
    if is_main and state is not None:
        # Written to a temporary folder and renamed, so `out` is either complete or absent.
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp), state_dict=state, max_shard_size="5GB")
        _drop_quantization(tmp)
        _publish(tmp, out, cfg, stats, EXPORT)
        log.info("exported the model to %s", out)
    dist.barrier()
    return out


def export_adapter(model: Any, out: Path, cfg: PretrainConfig, is_main: bool, stats: dict[str, Any]) -> Path:
    """Write the LoRA adapter alone in peft's format to `out` (rank 0), with the embeddings and LM head
    when they trained: `PeftModel.from_pretrained(base, out)` on the resized model gives the run's model.
    A collective, so call it on every rank."""
    import torch.distributed as dist

    from kovocab.pretraining.lora import adapter_state_dict

    lc = cfg.lora_config
    with_embeddings = lc is not None and lc.embeddings != "frozen"
    state = adapter_state_dict(model, with_embeddings, is_main)
    if is_main and state is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp), state_dict=state, save_embedding_layers=with_embeddings)
        _publish(tmp, out, cfg, {**stats, "with_embeddings": with_embeddings}, ADAPTER)
        log.info("saved the LoRA adapter to %s", out)
    dist.barrier()
    return out


def _publish(tmp: Path, out: Path, cfg: PretrainConfig, stats: dict[str, Any], owned: Owned) -> None:
    """The tokenizer, config and manifest into `tmp`, then `tmp` renamed to `out`: complete or absent."""
    for name in TOKENIZER_FILES:
        src = cfg.tokenizer_dir / name
        if src.is_file():
            shutil.copy2(src, tmp / name)
    write_config(tmp, SECTION, cfg)
    write_manifest(tmp, "pretrain", stats, inputs={"model_dir": str(cfg.model_dir),
                                                   "tokenizer": str(cfg.tokenizer_dir)})
    if out.exists():  # an earlier export: only what it wrote goes (checked when the run began)
        remove_outputs(out, owned, f"{SECTION}.out_dir")
        try:
            out.rmdir()
        except OSError as exc:
            raise OutputError(f"{out} still holds other files ({exc.strerror}); remove them and "
                              f"resume: the model is in {tmp}") from exc
    tmp.rename(out)


def _drop_quantization(folder: Path) -> None:
    # A QLoRA base was loaded in NF4; the merged export holds plain dequantized weights.
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
