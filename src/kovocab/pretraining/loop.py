"""The one training loop: stages in order, ZeRO-3 engine per stage, metrics, evaluation, checkpoints.

Runs in every rank (started by `launch.py`, torchrun, the deepspeed launcher or SLURM).
Writes under `out_dir`: metrics.jsonl, zero3_partitions.json, checkpoints/, hf/ (the
exported model), stages/NAME/ (optional per-stage exports), result.json, error.json.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab.artifacts import claim_output, write_config, write_json
from kovocab.errors import ConfigError, InputError, KovocabError
from kovocab.pretraining.checkpoint import latest_tag, load_rank_state, save_checkpoint, set_rng_state
from kovocab.pretraining.config import SECTION, PretrainConfig, check_paths, deepspeed_config, outputs
from kovocab.pretraining.engine import (
    Dist,
    base_rows,
    build_engine,
    forget_launcher_env,
    load_model,
    no_grad_eval,
    param_shape,
    partition_report,
    setup_distributed,
)
from kovocab.pretraining.export import export_adapter, export_hf
from kovocab.pretraining.lora import add_adapters, check_lora_environment, is_peft, trainable_counts
from kovocab.pretraining.metrics import (
    MetricsLog,
    bits_per_byte,
    flops_per_token,
    load_held_out,
    mfu,
    progress_line,
)

log = logging.getLogger(__name__)

LAUNCHED = "KOVOCAB_PRETRAIN_LAUNCHED"  # set in ranks started by launch_pretrain: the parent reports


class TrainingDiverged(KovocabError):
    """Loss or gradient norm stopped being finite."""


@dataclass(frozen=True)
class PretrainResult:
    """Where a finished run put its model, metrics and checkpoints."""

    out_dir: Path
    export_dir: Path
    metrics: Path
    checkpoints: Path
    steps: int
    final_loss: float | None
    resumed_from: int | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainResult:
        return cls(Path(d["out_dir"]), Path(d["export_dir"]), Path(d["metrics"]), Path(d["checkpoints"]),
                   int(d["steps"]), d["final_loss"], d["resumed_from"], float(d["seconds"]))


def pretrain(cfg: PretrainConfig, resume: bool = False) -> PretrainResult:
    """Train `cfg.stages` in this process, one rank of the job (a 1-process job without a launcher)."""
    check_paths(cfg)
    check_lora_environment(cfg)
    own_group = "RANK" not in os.environ  # a 1-process job made here, not by a launcher
    dist = setup_distributed(cfg.dist_backend)
    try:
        # Outside the except below: a folder in use by another run gets no error.json of ours.
        with _out_dir_lock(cfg, dist):
            try:
                return _run(cfg, dist, resume)
            except KovocabError as exc:
                if dist.is_main:  # the launching process re-raises this message
                    write_json(cfg.out_dir / "error.json", {"error": str(exc), "type": type(exc).__name__})
                raise
    finally:
        if own_group:
            forget_launcher_env()


def prepare_data(cfg: PretrainConfig) -> tuple[Any, Any]:
    """Build (or reuse) the train and replay token stores under `cfg.store_dir`."""
    from kovocab.pretraining.token_store import TokenStoreConfig, build_token_store

    def store(sources: tuple[Path, ...], name: str, limit: int | None, **weights: Any) -> Any:
        return build_token_store(TokenStoreConfig(sources=sources, tokenizer=cfg.tokenizer_dir,
                                                  out_dir=cfg.store_dir / name, max_documents=limit,
                                                  **weights))

    train = store(cfg.train_data, "train", cfg.max_documents, source_weights=cfg.source_weights,
                  seed=cfg.seed)
    replay = store(cfg.replay_data, "replay", cfg.max_documents) if cfg.replay_data else None
    return train, replay


def _out_dir_lock(cfg: PretrainConfig, dist: Dist) -> contextlib.AbstractContextManager[Any]:
    """The lock on out_dir: held by rank 0 of a job started by torchrun, the deepspeed launcher
    or srun; in ranks that `kovocab pretrain` started, the launching process holds it."""
    if not dist.is_main or os.environ.get(LAUNCHED):
        return contextlib.nullcontext()
    return claim_output(cfg.out_dir, outputs(cfg), f"{SECTION}.out_dir")


def open_stores(cfg: PretrainConfig, dist: Dist) -> tuple[Any, Any]:
    """Train (and replay) token stores: built or reused by rank 0, opened by the others after it."""
    import torch.distributed as tdist

    from kovocab.pretraining.token_store import TokenStore

    if dist.is_main:
        stores = prepare_data(cfg)
    tdist.barrier()
    if not dist.is_main:
        stores = (TokenStore.open(cfg.store_dir / "train"),
                  TokenStore.open(cfg.store_dir / "replay") if cfg.replay_data else None)
    return stores


def _run(cfg: PretrainConfig, dist: Dist, resume: bool) -> PretrainResult:
    import torch

    from kovocab.pretraining.packing import PackedBlocks

    t_start = time.perf_counter()
    ds = deepspeed_config(cfg, dist.world_size, dist.on_gpu)
    ckpt_root = cfg.out_dir / "checkpoints"
    tag = latest_tag(ckpt_root)
    if resume and tag is None:
        raise InputError(f"{SECTION}: --resume given but {ckpt_root} holds no complete checkpoint; "
                         "start without --resume")
    if not resume and tag is not None:
        raise InputError(f"{SECTION}.out_dir: {cfg.out_dir} holds checkpoints of an earlier run "
                         f"({tag}); add --resume to continue it, or choose another out_dir")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        write_config(cfg.out_dir, SECTION, cfg)
        write_json(cfg.out_dir / "ds_config.json", ds)
        (cfg.out_dir / "error.json").unlink(missing_ok=True)
    train_store, replay_store = open_stores(cfg, dist)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model, keep_ds = load_model(cfg, ds)
    log.info("loaded %s under ZeRO-3 on %d ranks in %.1f s", cfg.model_dir, dist.world_size,
             time.perf_counter() - t0)
    rows = param_shape(model.get_input_embeddings().weight)[0]
    if train_store.vocab_size > rows:
        raise ConfigError(f"{SECTION}: the tokenizer has {train_store.vocab_size} pieces but {cfg.model_dir} "
                          f"has {rows} embedding rows; give the resized model and its tokenizer")
    first_trainable = base_rows(cfg)
    partitions = partition_report(model, dist)
    if partitions is not None:
        write_json(cfg.out_dir / "zero3_partitions.json", partitions)
    lora = cfg.lora_config
    n_params = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
    mc = model.config
    # A tied embedding is counted once in n_params and is also the LM head's matmul: keep it.
    lookup = 0 if getattr(mc, "tie_word_embeddings", False) else math.prod(
        param_shape(model.get_input_embeddings().weight))
    flops = flops_per_token(n_params, lookup, mc.num_hidden_layers, mc.hidden_size, cfg.seq_len)
    held = [h for h in (
        load_held_out("ko", cfg.eval_korean, cfg.eval_max_documents, f"{SECTION}.eval_korean"),
        load_held_out("en", cfg.eval_english, cfg.eval_max_documents, f"{SECTION}.eval_english"),
    ) if h is not None]
    blocks = PackedBlocks(train_store, cfg.seq_len, cfg.seed, replay=replay_store,
                          replay_ratio=cfg.replay_ratio, rank=dist.rank, world_size=dist.world_size)
    state: dict[str, Any] = {}
    if tag is not None:
        state = load_rank_state(ckpt_root, tag, dist.rank)
        blocks.load_state_dict(state["data"])
    resumed = int(state["step"]) if state else None
    metrics = MetricsLog(cfg.out_dir / "metrics.jsonl", dist.is_main, resumed)
    tokens_per_step = cfg.seq_len * cfg.micro_batch_size * cfg.gradient_accumulation_steps * dist.world_size
    step, last_loss, first = 0, None, True
    bar, redirect = _progress(cfg.total_steps, resumed or 0, dist.is_main)
    window = _Window(cfg.total_steps, resumed or 0)
    try:
        for index, stage in enumerate(cfg.stages):
            end = step + stage.steps
            if resumed is not None and resumed >= end and int(state["stage"]) != index:
                step = end  # finished before the checkpoint
                continue
            t0 = time.perf_counter()
            if stage.train == "lora" and lora is not None and not is_peft(model):
                # Added right before the first engine that trains them: adapters partitioned by an
                # earlier engine that froze them came back unpartitioned in the recompute of
                # non-reentrant activation checkpointing (torch CheckpointError, DeepSpeed 0.19).
                model = add_adapters(model, lora)
            engine = build_engine(model, stage, ds, first_trainable, dist.on_gpu, lora)
            if first and state:
                engine.load_checkpoint(str(ckpt_root), tag=tag)
                log.info("resumed from %s (step %d)", ckpt_root / str(tag), resumed)
                set_rng_state(state["rng"])  # after loading: DeepSpeed may draw random numbers
                step = resumed or 0
            first = False
            counts = trainable_counts(model)
            log.info("stage '%s' (%s, %d steps): engine ready in %.1f s, %d of %d parameters train",
                     stage.name, stage.train, stage.steps, time.perf_counter() - t0, counts["trainable"],
                     counts["total"])
            engine.train()
            while step < end:
                t0 = time.perf_counter()
                lrs = [float(x) for x in engine.get_lr()]
                last_loss = _train_step(engine, blocks, cfg, dist)
                step += 1
                grad_norm = _float(engine.get_global_grad_norm())
                if not math.isfinite(last_loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
                    raise TrainingDiverged(
                        f"{SECTION}: training diverged at step {step} (stage '{stage.name}'): "
                        f"loss {last_loss}, grad norm {grad_norm}, lr {lrs[-1]:.3g}; stopped without saving. "
                        f"Lower stages.{stage.name}.lr (or embedding_lr, warmup_steps) and start again, or "
                        f"resume from the last checkpoint ({latest_tag(ckpt_root) or 'none yet'}) "
                        "with --resume"
                    )
                dt = time.perf_counter() - t0
                record: dict[str, Any] = {
                    "step": step, "stage": stage.name, "loss": last_loss, "lr": lrs[-1],
                    "embedding_lr": lrs[0], "grad_norm": grad_norm, "tokens": step * tokens_per_step,
                    "tokens_per_s": tokens_per_step / dt,
                    "mfu": mfu(flops, tokens_per_step / dt, cfg.peak_flops, dist.world_size),
                }
                if dist.on_gpu:
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2**30
                window.add(tokens_per_step, dt)
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.total_steps):
                    record.update(_evaluate(engine.module, held, cfg, dist.device))
                metrics.write(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(stage=stage.name, loss=f"{last_loss:.3f}")
                events = []
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.total_steps:
                    tag = save_checkpoint(engine, ckpt_root, step, dist.rank, dist.is_main,
                                          {"step": step, "stage": index, "data": blocks.state_dict()},
                                          cfg.keep_checkpoints)
                    events.append(f"checkpoint {tag}")
                if step == end:
                    events.append(f"end of stage {stage.name}")
                if events or (cfg.log_every and step % cfg.log_every == 0):
                    log.info("%s", window.line(record, flops, cfg.peak_flops, dist.world_size, events))
            if cfg.export_stages:
                export_hf(engine.module, cfg.out_dir / "stages" / stage.name, cfg, dist.is_main,
                          {"stage": stage.name, "step": step})
            if index < len(cfg.stages) - 1:
                # Drop the stage's optimizer (fp32 masters, Adam moments) before the next one is built.
                engine.destroy()
                del engine
                gc.collect()
                if dist.on_gpu:
                    torch.cuda.empty_cache()
        export = export_hf(model, cfg.out_dir / "hf", cfg, dist.is_main,
                           {"steps": step, "final_loss": last_loss, "parameters": n_params})
        if lora is not None and lora.save_adapter:
            export_adapter(model, cfg.out_dir / "adapter", cfg, dist.is_main,
                           {"steps": step, "final_loss": last_loss})
    finally:
        metrics.close()
        if bar is not None:
            redirect.close()
            bar.close()
    del keep_ds
    result = PretrainResult(cfg.out_dir, export, cfg.out_dir / "metrics.jsonl", ckpt_root, step, last_loss,
                            resumed, time.perf_counter() - t_start)
    if dist.is_main:
        write_json(cfg.out_dir / "result.json", result.to_dict())
    return result


def _train_step(engine: Any, blocks: Any, cfg: PretrainConfig, dist: Dist) -> float:
    """One optimizer step (DeepSpeed steps at the accumulation boundary); the loss averaged over ranks."""
    import torch
    import torch.distributed as tdist

    total = torch.zeros((), dtype=torch.float64)
    for _ in range(cfg.gradient_accumulation_steps):
        ids = torch.from_numpy(blocks.next_batch(cfg.micro_batch_size)).to(dist.device)
        loss = engine(input_ids=ids, labels=ids).loss  # transformers shifts the labels
        engine.backward(loss)
        engine.step()
        total += loss.detach().double().cpu()
    tdist.all_reduce(total)  # every rank sees the same value, so a NaN stops all of them together
    return float(total) / (cfg.gradient_accumulation_steps * dist.world_size)


def _evaluate(module: Any, held: list[Any], cfg: PretrainConfig, device: str) -> dict[str, float]:
    """bits/byte of every held-out set; every rank runs the same forwards (ZeRO-3 gathers)."""

    def score(h: Any) -> float:
        return float(no_grad_eval(module, lambda: bits_per_byte(module, cfg.tokenizer_dir, h, cfg.seq_len,
                                                                device)))

    return {f"bpb_{h.name}": score(h) for h in held}


def _float(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


class _Window:
    """Throughput since the last progress line and the ETA, for `progress_line`."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.start_step, self.start = total, done, time.perf_counter()
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def line(self, record: dict[str, Any], flops: float, peak_flops: float | None, world_size: int,
             events: list[str]) -> str:
        # tokens/s and MFU over the training steps since the last line (evaluation and
        # checkpoint time left out); the ETA from wall time, which includes them.
        rate = self.tokens / self.seconds if self.seconds else record["tokens_per_s"]
        shown = {**record, "tokens_per_s": rate, "mfu": mfu(flops, rate, peak_flops, world_size)}
        done = record["step"] - self.start_step
        eta = (time.perf_counter() - self.start) / done * (self.total - record["step"]) if done else None
        self.tokens, self.seconds = 0, 0.0
        return progress_line(shown, self.total, eta, events)


def _progress(total: int, done: int, enabled: bool) -> tuple[Any, contextlib.ExitStack]:
    """A tqdm bar on rank 0 when stderr is a terminal (log lines then print above it), else None."""
    redirect = contextlib.ExitStack()
    if not enabled or not sys.stderr.isatty():
        return None, redirect
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    redirect.enter_context(logging_redirect_tqdm())
    return tqdm(total=total, initial=done, unit="step", desc="pretrain"), redirect
