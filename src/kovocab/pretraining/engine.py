"""DeepSpeed ZeRO-3 pieces of a run: the process group, the partitioned model, one engine per stage.

The model is loaded with `from_pretrained` while an `HfDeepSpeedConfig` is alive, so
transformers builds it under `deepspeed.zero.Init` (partitioned from the start, no
random init) and scatters the checkpoint into the partitions. Reference: DeepSpeed
ZeRO-3 (arXiv:1910.02054) and transformers' DeepSpeed integration.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kovocab.errors import InputError
from kovocab.pretraining.config import SECTION, LoraConfig, PretrainConfig, StageConfig
from kovocab.pretraining.masks import mask_old_rows, unmask_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda:N" or "cpu"

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_distributed(backend: str = "auto") -> Dist:
    """Join the job the launcher started (RANK/WORLD_SIZE/MASTER_* in env), or make a 1-process one."""
    import torch

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # DeepSpeed's ZeRO-3 calls these torch collectives by their old names on every step.
    warnings.filterwarnings("ignore", r".*torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)",
                            FutureWarning)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    else:
        _skip_shm_op()
    import deepspeed

    if backend == "auto":
        backend = "nccl" if on_gpu else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    import torch.distributed as dist

    if dist.get_rank() != 0:  # only rank 0 logs
        for name in ("kovocab", "DeepSpeed", "deepspeed"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank,
                f"cuda:{local_rank}" if on_gpu else "cpu")


def forget_launcher_env() -> None:
    """Drop the variables `setup_distributed` invented for a 1-process job.

    The process group itself stays: DeepSpeed caches its groups, so a destroyed and
    re-made group breaks the next engine; a later run in this process reuses it. Without
    the variables, `launch_pretrain` does not mistake this process for a launched rank.
    """
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)


def _skip_shm_op() -> None:
    # On a CPU accelerator DeepSpeed JIT-compiles a shared-memory allreduce kernel when
    # its comm backend starts (40-80 s, once per machine, into TORCH_EXTENSIONS_DIR). Only
    # `inference_all_reduce` (tensor-parallel inference) uses it; ZeRO-3 training talks
    # through the gloo process group, so the build is pure cost here. Not done on GPU.
    comm = importlib.import_module("deepspeed.comm.torch")
    comm.build_shm_op = lambda: None  # type: ignore[attr-defined]


def torch_dtype(ds: dict[str, Any]) -> Any:
    import torch

    return torch.bfloat16 if (ds.get("bf16") or {}).get("enabled") is True else torch.float32


def load_model(cfg: PretrainConfig, ds: dict[str, Any]) -> tuple[Any, Any]:
    """The checkpoint partitioned under ZeRO-3; returns (model, the HfDeepSpeedConfig to keep alive)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    # transformers keeps only a weak reference: this object must outlive from_pretrained,
    # and it stays alive for the run so that later gathers see ZeRO-3 as enabled.
    keep = HfDeepSpeedConfig(ds)
    from kovocab.pretraining.lora import quantization_kwargs

    model = AutoModelForCausalLM.from_pretrained(str(cfg.model_dir), dtype=torch_dtype(ds),
                                                 **quantization_kwargs(cfg, torch_dtype(ds)))
    head = model.get_output_embeddings()
    if head is None:
        raise InputError(f"{SECTION}.model_dir: {cfg.model_dir} has no LM head; give a causal LM")
    # A tied model keeps one matrix for both (build_engine lists it once; the row mask on
    # both modules masks both paths of its gradient, and the export stays tied).
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied != (head.weight is model.get_input_embeddings().weight):
        raise InputError(f"{SECTION}.model_dir: {cfg.model_dir}/config.json says tie_word_embeddings: "
                         f"{str(tied).lower()} but the loaded model {'does not share' if tied else 'shares'} "
                         "one matrix between input embeddings and LM head; fix config.json")
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing lets gradients reach the embeddings when every layer is frozen.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model, keep


def base_rows(cfg: PretrainConfig) -> int | None:
    """Rows of the base vocabulary: the recipe's value, else the resize manifest's record."""
    if cfg.base_vocab_size is not None:
        return cfg.base_vocab_size
    from kovocab.artifacts import read_manifest

    manifest = read_manifest(cfg.model_dir) or {}
    value = (manifest.get("stats") or {}).get("base_vocab_size")
    return int(value) if isinstance(value, int) else None


class WarmupCosine:
    """Linear warmup to 1, then cosine to `min_ratio` at `steps`: the LambdaLR factor per step."""

    def __init__(self, steps: int, warmup: int, min_ratio: float) -> None:
        self.steps, self.warmup, self.min_ratio = steps, warmup, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_shape(p: Any) -> tuple[int, ...]:
    """The full shape of a parameter, also when ZeRO-3 has partitioned it (its .shape is then (0,))."""
    return tuple(getattr(p, "ds_shape", p.shape))


def build_engine(model: Any, stage: StageConfig, ds: dict[str, Any], first_trainable: int | None,
                 on_gpu: bool, lora: LoraConfig | None = None) -> Any:
    """A DeepSpeed engine that trains what `stage` names.

    One engine per stage, not one engine with lr=0 groups: frozen parameters are left
    out of the optimizer (requires_grad False), so ZeRO-3 neither reduce-scatters their
    gradients nor keeps fp32 masters and Adam moments for them (in stage 1 of a 7B model
    that is ~97% of the parameters), and every stage starts with fresh Adam moments.
    A `lora` stage trains the adapters and, as `lora.embeddings` says, the two matrices.
    """
    import deepspeed
    import torch

    from kovocab.pretraining.lora import is_adapter

    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    # One entry when tied: an optimizer refuses a parameter listed twice.
    both = [emb] if head is emb else [emb, head]
    matrices = {id(p) for p in both}
    body = stage.train == "all"
    adapters = [p for n, p in model.named_parameters() if is_adapter(n)] if stage.train == "lora" else []
    embeddings = "all" if lora is None or stage.train != "lora" else lora.embeddings
    trainable = ({*matrices} if embeddings != "frozen" else set()) | {id(p) for p in adapters}
    for p in model.parameters():
        p.requires_grad_(body or id(p) in trainable)
    if stage.train == "new_embeddings" or embeddings == "new_rows":
        if first_trainable is None:
            what = "train: new_embeddings" if stage.train == "new_embeddings" else "lora.embeddings: new_rows"
            raise InputError(
                f"{SECTION}.stages.{stage.name}: {what} needs the base vocabulary size; "
                f"{SECTION}.model_dir has no resize manifest, so set {SECTION}.base_vocab_size"
            )
        mask_old_rows(model, first_trainable)
    else:
        unmask_rows(model)
    # Embeddings and LM head never decay: decoupled decay would move rows whose gradient is 0.
    groups = [] if embeddings == "frozen" else [
        {"params": both, "lr": stage.embedding_lr or stage.lr, "weight_decay": 0.0}]
    if adapters:  # LoRA's A and B: matrices, decayed like the body's
        groups.append({"params": adapters, "lr": stage.lr, "weight_decay": stage.weight_decay})
    if body:
        rest = [p for p in model.parameters() if id(p) not in matrices]
        groups.append({"params": [p for p in rest if len(param_shape(p)) >= 2], "lr": stage.lr,
                       "weight_decay": stage.weight_decay})
        groups.append({"params": [p for p in rest if len(param_shape(p)) < 2], "lr": stage.lr,
                       "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    betas = (stage.betas[0], stage.betas[1])

    offload = ((ds.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device", "none")

    def optimizer(params: Any) -> Any:
        if offload in ("cpu", "nvme"):  # ZeRO-Offload steps on the CPU with DeepSpeed's own kernel
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, lr=stage.lr, betas=betas, eps=1e-8, adamw_mode=True)
        return torch.optim.AdamW(params, lr=stage.lr, betas=betas, eps=1e-8, fused=on_gpu or None)

    schedule = WarmupCosine(stage.steps, stage.warmup_steps, stage.min_lr_ratio)

    def scheduler(opt: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                      lr_scheduler=scheduler, config=dict(ds))
    return engine


def partition_report(model: Any, dist: Dist) -> dict[str, Any] | None:
    """Per tensor, the full size and what each rank holds (rank 0 gets the table, others None)."""
    import torch.distributed as tdist

    mine = {n: [int(getattr(p, "ds_numel", p.numel())), int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor")
                else int(p.numel())] for n, p in model.named_parameters()}
    table: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(table, mine)
    if not dist.is_main:
        return None
    full = sum(v[0] for v in mine.values())
    return {"world_size": dist.world_size, "parameters": full,
            "held_per_rank": [sum(v[1] for v in t.values()) for t in table],
            "tensors": {n: {"numel": mine[n][0], "held": [t[n][1] for t in table]} for n in mine}}


def gather_state_dict(model: Any, is_main: bool) -> dict[str, Any] | None:
    """The whole model on rank 0 (CPU tensors), one parameter gathered at a time; None elsewhere."""
    import deepspeed

    out: dict[str, Any] = {}
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):  # a collective: every rank takes part
            if is_main:
                out[name] = p.detach().to("cpu", copy=True)
    return out if is_main else None


def no_grad_eval(model: Any, fn: Callable[[], Any]) -> Any:
    """Run `fn` with the model in eval mode and gradients off, then back to training."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn()
    finally:
        model.train(was_training)
