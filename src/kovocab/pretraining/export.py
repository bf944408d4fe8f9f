"""Export a ZeRO-3-partitioned model as one consolidated Hugging Face safetensors checkpoint.

Every rank takes part in gathering each parameter; rank 0 writes `model*.safetensors`,
`config.json`, `generation_config.json`, the tokenizer files of the run, `config.yaml`
and `manifest.json`. The folder loads with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kovocab.artifacts import remove_outputs, write_config, write_manifest
from kovocab.errors import OutputError
from kovocab.pretraining.config import EXPORT, SECTION, PretrainConfig
from kovocab.pretraining.engine import gather_state_dict

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


def export_hf(model: Any, out: Path, cfg: PretrainConfig, is_main: bool, stats: dict[str, Any]) -> Path:
    """Write the whole model to `out` (rank 0); a collective, so call it on every rank."""
    import torch.distributed as dist

    state = gather_state_dict(model, is_main)
    if is_main and state is not None:
        # Written to a temporary folder and renamed, so `out` is either complete or absent.
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp), state_dict=state, max_shard_size="5GB")
        for name in TOKENIZER_FILES:
            src = cfg.tokenizer_dir / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        write_config(tmp, SECTION, cfg)
        write_manifest(tmp, "pretrain", stats, inputs={"model_dir": str(cfg.model_dir),
                                                       "tokenizer": str(cfg.tokenizer_dir)})
        if out.exists():  # an earlier export: only what it wrote goes (checked when the run began)
            remove_outputs(out, EXPORT, f"{SECTION}.out_dir")
            try:
                out.rmdir()
            except OSError as exc:
                raise OutputError(f"{out} still holds other files ({exc.strerror}); remove them and "
                                  f"resume: the model is in {tmp}") from exc
        tmp.rename(out)
        log.info("exported the model to %s", out)
    dist.barrier()
    return out
