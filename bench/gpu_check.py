"""One prepared check of the CUDA path, in one command: ZeRO-3 continued pretraining in bf16 with
MFU, the new-rows stage, export and reload, `kovocab eval`, and (time permitting) 7B resize + load.

    .venv/bin/python bench/gpu_check.py            # one H100/H200: <= 8 minutes, runs/gpu_check/
    .venv/bin/python bench/gpu_check.py --tiny     # CPU, the same steps at toy size: 1-2 minutes

Every step is timed and recorded in gpu_check.json (status ok/failed/timeout/skipped, seconds,
its budget, its figures or its error) and summarised in gpu_check.md; a failed step does not
stop the ones after it. Training goes through `kovocab pretrain` itself (a child process, its
log kept), and its figures are read from metrics.jsonl and from the progress lines it logs.
Inputs: only this repository and ../shared/data (the Llama-2 tokenizer, Korean text, KoBEST).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchdata import DATA, news_lines  # noqa: E402

log = logging.getLogger("gpu_check")
LLAMA2 = DATA / "llama2_tokenizer" / "tokenizer.model"
BASE_ROWS = 32000

# Dense bf16 peak per GPU (no sparsity), from the vendors' datasheets; the MFU figures name
# the one used. Matched in order against torch.cuda.get_device_name().
PEAK_BF16 = [("H200", 989e12, "H200 SXM dense bf16"), ("H100 PCIe", 756e12, "H100 PCIe dense bf16"),
             ("H100", 989e12, "H100 SXM dense bf16"), ("H800", 989e12, "H800 SXM dense bf16"),
             ("GH200", 989e12, "GH200 dense bf16"), ("A100", 312e12, "A100 dense bf16"),
             ("L40S", 362e12, "L40S dense bf16")]
TINY_PEAK = (1e11, "nominal 100 GFLOP/s for a CPU: exercises the MFU code path, measures nothing")
MFU_GOAL = 0.45


@dataclass(frozen=True)
class Profile:
    """Shapes, step counts and time budgets (seconds) of one mode."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int  # model rows = pieces of the expanded tokenizer
    seq_len: int
    micro_batch: int  # 0: chosen from the GPU's memory
    # Run A checkpoints every stage1_steps, so stage 2 is no longer than stage 1: exactly two
    # checkpoints, the one at the end of stage 1 (its fp32 masters are checked) and the last.
    stage1_steps: int  # new_embeddings
    stage2_steps: int  # all, gradient checkpointing on
    no_ckpt_steps: int  # all, gradient checkpointing off
    log_every: int
    max_documents: int
    eval_documents: int
    kobest_limit: int
    lr: float
    embedding_lr: float
    big: dict[str, int]  # the "7B-shaped" model of the optional step
    budget_s: float
    budgets: dict[str, float] = field(default_factory=dict)


GPU = Profile(
    "gpu", hidden=2048, layers=22, intermediate=5632, heads=32, kv_heads=4, vocab=46336, seq_len=2048,
    micro_batch=0, stage1_steps=30, stage2_steps=30, no_ckpt_steps=30, log_every=10, max_documents=100_000,
    eval_documents=32, kobest_limit=500, lr=3e-4, embedding_lr=1e-3,
    big={"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
         "num_key_value_heads": 32},
    budget_s=480,
    budgets={"environment": 30, "prepare": 90, "pretrain_ckpt": 180, "pretrain_no_ckpt": 110,
             "new_embeddings": 45, "export_reload": 50, "eval": 75, "fused_ops_jit": 60,
             "resize_load_7b": 170},
)
TINY = Profile(
    "tiny", hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, vocab=33024, seq_len=128,
    micro_batch=4, stage1_steps=4, stage2_steps=4, no_ckpt_steps=3, log_every=2, max_documents=100,
    eval_documents=16, kobest_limit=16, lr=1e-2, embedding_lr=2e-2,
    big={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 4},
    # Generous: on a shared CPU they only guard against a hang; the GPU budgets are the plan.
    budget_s=900,
    budgets={"environment": 60, "prepare": 120, "pretrain_ckpt": 240, "pretrain_no_ckpt": 180,
             "new_embeddings": 60, "export_reload": 60, "eval": 120, "fused_ops_jit": 0,
             "resize_load_7b": 150},
)


class StepTimeout(Exception):
    """A step ran past its budget."""


class Skip(Exception):
    """A step cannot run (an input step failed, or no time is left)."""


@dataclass
class Check:
    profile: Profile
    out: Path
    work: Path
    deadline: float
    on_gpu: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what later steps need from earlier ones
    step_deadline: float = 0.0

    @property
    def tiny(self) -> bool:
        return self.profile.name == "tiny"

    def left(self) -> float:
        return min(self.deadline, self.step_deadline) - time.monotonic()

    def need(self, *names: str) -> None:
        for n in names:
            if n not in self.facts:
                raise Skip(f"needs the outputs of an earlier step ({n}), which did not complete")

    def run(self, name: str, fn: Callable[[Check], dict[str, Any]], optional: bool = False) -> None:
        budget = self.profile.budgets.get(name, 60)
        remaining = self.deadline - time.monotonic()
        entry: dict[str, Any] = {"name": name, "budget_s": budget, "optional": optional}
        self.steps.append(entry)
        t0 = time.monotonic()
        try:
            if budget <= 0:
                raise Skip("not run in this mode")
            if remaining < (0.8 * budget if optional else 10):
                raise Skip(f"out of time ({remaining:.0f} s of the {self.profile.budget_s:.0f} s left)")
            self.step_deadline = t0 + min(budget, remaining)
            log.info("step %s (budget %.0f s, %.0f s left in all)", name, budget, remaining)
            signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, max(1.0, self.left()))
            try:
                entry["result"] = fn(self)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            entry["status"] = "ok"
        except Skip as exc:
            entry["status"], entry["error"] = "skipped", str(exc)
        except StepTimeout as exc:
            entry["status"], entry["error"] = "timeout", str(exc) or f"ran past its {budget:.0f} s budget"
            entry["partial"] = getattr(exc, "partial", None)
        except Exception as exc:  # noqa: BLE001 - record it and go on to the next step
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-4000:]
            entry["partial"] = getattr(exc, "partial", None)
        entry["seconds"] = round(time.monotonic() - t0, 2)
        log.info("step %s: %s in %.1f s%s", name, entry["status"], entry["seconds"],
                 f" ({entry['error'][:300]})" if "error" in entry else "")


def _alarm(signum: int, frame: Any) -> None:
    raise StepTimeout("ran past its budget")


def run_child(check: Check, argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> str:
    """Run a command (its own process group) within the step's time; its output goes to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    timeout = check.left()
    if timeout < 1:
        raise StepTimeout("no time left to start the command")
    t0 = time.monotonic()
    with open(log_file, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        try:
            # Disarm the step's alarm while waiting: the timeout below does its job and kills the group.
            signal.setitimer(signal.ITIMER_REAL, 0)
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise StepTimeout(f"{argv[3] if len(argv) > 3 else argv[0]} ran past the step's time "
                              f"({timeout:.0f} s); log: {log_file}") from None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            left = check.left()
            if left > 0:
                signal.setitimer(signal.ITIMER_REAL, max(1.0, left))
    text = log_file.read_text(encoding="utf-8", errors="replace")
    if rc != 0:
        raise RuntimeError(f"exit code {rc} after {time.monotonic() - t0:.0f} s; log {log_file}; "
                           f"last lines:\n{_tail(text, 25)}")
    return text


def _tail(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


def kovocab(*args: str) -> list[str]:
    return [sys.executable, "-m", "kovocab", *args]


# --------------------------------------------------------------------------- steps


def step_environment(check: Check) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_runtime": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                           "cpu_count": os.cpu_count(), "host": platform.node()}
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
    except Exception as exc:  # noqa: BLE001
        out["deepspeed"] = f"import failed: {exc}"
    import transformers

    out["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}",
                   bf16_supported=torch.cuda.is_bf16_supported(), nccl=_nccl_version(),
                   cudnn=torch.backends.cudnn.version())
        # The optimizer kovocab's engine builds on GPU: torch AdamW with fused=True.
        p = torch.zeros(4096, device="cuda", requires_grad=True)
        p.grad = torch.ones_like(p)
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
        torch.cuda.synchronize()
        out["torch_fused_adamw"] = "ok"
        del p
    else:
        out.update(gpu=None, bf16_supported=False, nccl=None)
    peak = _peak(out.get("gpu"), check.tiny)
    out["peak_flops"], out["peak_flops_source"] = peak
    out["deepspeed_ops"] = _deepspeed_ops()
    check.facts["env"] = out
    return out


def _nccl_version() -> str:
    import torch

    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple | list) else str(v)


def _peak(gpu: str | None, tiny: bool) -> tuple[float | None, str]:
    if tiny or not gpu:
        return TINY_PEAK if tiny else (None, "no GPU")
    for key, flops, what in PEAK_BF16:
        if key in gpu:
            return flops, what
    return None, f"unknown GPU {gpu!r}: no peak, so no MFU (add it to PEAK_BF16)"


def _deepspeed_ops() -> dict[str, Any]:
    """Which DeepSpeed ops are prebuilt into the wheel and which this machine could build."""
    out: dict[str, Any] = {}
    try:
        from deepspeed.git_version_info import installed_ops
        from deepspeed.ops.op_builder import CPUAdamBuilder, FusedAdamBuilder

        for name, builder in (("fused_adam", FusedAdamBuilder), ("cpu_adam", CPUAdamBuilder)):
            out[name] = {"prebuilt": bool(installed_ops.get(name)),
                         "compatible": bool(builder().is_compatible(verbose=False))}
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def step_fused_ops_jit(check: Check) -> dict[str, Any]:
    """Load (JIT-build if not prebuilt) DeepSpeed's FusedAdam: needs nvcc and ninja on the machine."""
    check.need("env")
    code = ("import time; t=time.perf_counter(); from deepspeed.ops.op_builder import FusedAdamBuilder; "
            "FusedAdamBuilder().load(); print('loaded in %.1f s' % (time.perf_counter()-t))")
    text = run_child(check, [sys.executable, "-c", code], check.work / "logs" / "fused_adam.log")
    return {"fused_adam": "loaded", "output": _tail(text, 2)}


def step_prepare(check: Check) -> dict[str, Any]:
    """Real Korean shards, the expanded tokenizer, and a random Llama with its shapes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kovocab.corpus import ShardConfig, shard_corpus
    from kovocab.corpus.options import SourceConfig
    from kovocab.tokenizer.expand import expand_vocab

    pr, w = check.profile, check.work
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    sources = [SourceConfig(name="koconovel", paths=(str(DATA / "koconovel" / "text" / "*.text.jsonl"),),
                            format="jsonl", field="text"),
               SourceConfig(name="kolaw", txt_mode="paragraph",
                            paths=(str(DATA / "konlpy_corpus" / "kolaw" / "constitution.txt"),))]
    if not check.tiny:  # the README main job's corpus (corpora/nsmc_novels.yaml)
        sources.append(SourceConfig(name="nsmc", paths=(str(DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz"),),
                                    format="tsv", field="review"))
    shard = shard_corpus(ShardConfig(sources=tuple(sources), out=w / "corpus", shards=2,
                                     eval_permille=20 if check.tiny else 10), progress=False)
    out["shard_s"] = round(time.perf_counter() - t0, 1)
    out["corpus"] = {"documents_kept": shard.kept, "documents_in": shard.docs_in}
    t0 = time.perf_counter()
    tok = expand_vocab(base=LLAMA2, corpus=w / "corpus", out_dir=w / "expanded", target_vocab_size=pr.vocab,
                       report=False)
    out["expand_vocab_s"] = round(time.perf_counter() - t0, 1)
    out["tokenizer_pieces"] = pr.vocab
    # Held-out Korean for bits per byte everywhere (training, reload, `kovocab eval`): the news
    # dev sentences, which are in no training source.
    held_out = w / "held_out_ko.txt"
    held_out.write_text("\n".join(news_lines("ko")[: pr.eval_documents]) + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    dtype = torch.float32 if check.tiny else torch.bfloat16
    config = LlamaConfig(vocab_size=pr.vocab, hidden_size=pr.hidden, intermediate_size=pr.intermediate,
                         num_hidden_layers=pr.layers, num_attention_heads=pr.heads,
                         num_key_value_heads=pr.kv_heads, max_position_embeddings=pr.seq_len,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda" if check.on_gpu else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(w / "model")
    del model
    if check.on_gpu:
        torch.cuda.empty_cache()
    out["model_s"] = round(time.perf_counter() - t0, 1)
    out["model"] = {"hidden": pr.hidden, "layers": pr.layers, "intermediate": pr.intermediate,
                    "heads": pr.heads, "kv_heads": pr.kv_heads, "vocab": pr.vocab, "seq_len": pr.seq_len,
                    "dtype": str(dtype)}
    check.facts.update(corpus=w / "corpus", tokenizer=tok.tokenizer_dir, model=w / "model",
                       parameters=out["parameters"], held_out=held_out)
    return out


def _micro_batch(check: Check) -> int:
    if check.profile.micro_batch:
        return check.profile.micro_batch
    mem = float(check.facts.get("env", {}).get("gpu_memory_gib") or 0)
    return 8 if mem >= 120 else 4  # ~65 GiB at 8 x 2048 tokens without recomputation


def _recipe(check: Check, name: str, stages: list[dict[str, Any]], ckpt: bool, checkpoint_every: int,
            export_stages: bool, eval_every: int) -> Path:
    import yaml

    pr = check.profile
    env = check.facts.get("env", {})
    section = {
        "model_dir": str(check.facts["model"]), "tokenizer": str(check.facts["tokenizer"]),
        "train_data": [str(check.facts["corpus"])], "eval_korean": [str(check.facts["held_out"])],
        "out_dir": str(check.work / name), "token_store_dir": str(check.work / "tokens"),
        "deepspeed_config": str(ROOT / "pretrain" / ("zero3_cpu.json" if check.tiny else "zero3.json")),
        "base_vocab_size": BASE_ROWS, "max_documents": pr.max_documents, "seq_len": pr.seq_len,
        "micro_batch_size": _micro_batch(check), "gradient_accumulation_steps": 1,
        "precision": "fp32" if check.tiny else "bf16", "gradient_checkpointing": ckpt,
        "checkpoint_every": checkpoint_every, "keep_checkpoints": 2, "eval_every": eval_every,
        "eval_max_documents": pr.eval_documents, "log_every": pr.log_every,
        "peak_flops": env.get("peak_flops"), "export_stages": export_stages, "stages": stages,
    }
    path = check.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"pretrain": section}, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    return path


def _pretrain(check: Check, name: str, recipe: Path, ckpt: bool) -> dict[str, Any]:
    """`kovocab pretrain` in a child; figures from its metrics.jsonl and its progress lines."""
    out_dir, log_file = check.work / name, check.work / "logs" / f"{name}.log"
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        text = run_child(check, kovocab("pretrain", "--config", str(recipe)), log_file)
    except Exception as exc:
        # A run cut short (out of time, out of memory) still has the figures of its steps so far.
        try:
            so_far = log_file.read_text(encoding="utf-8", errors="replace")
            exc.partial = _pretrain_figures(check, out_dir, so_far, time.perf_counter() - t0,  # type: ignore
                                            ckpt)
        except Exception:  # noqa: BLE001 - no step finished: nothing to add
            pass
        raise
    return _pretrain_figures(check, out_dir, text, time.perf_counter() - t0, ckpt)


def _pretrain_figures(check: Check, out_dir: Path, text: str, wall: float, ckpt: bool) -> dict[str, Any]:
    from kovocab.pretraining.metrics import flops_per_token, parse_progress_line

    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x]
    lines = [r for r in map(parse_progress_line, text.splitlines()) if r is not None]
    cfg = json.loads((out_dir / "ds_config.json").read_text(encoding="utf-8"))
    pr = check.profile
    last_stage = rows[-1]["stage"]
    timed = [r for r in rows if r["stage"] == last_stage]
    timed = timed[3:] if len(timed) >= 6 else timed  # the first steps of a stage pay for warm-up
    tps = _median([r["tokens_per_s"] for r in timed])
    tokens_per_step = pr.seq_len * cfg["train_micro_batch_size_per_gpu"]
    params = int(check.facts["parameters"])
    fpt = flops_per_token(params, pr.vocab * pr.hidden, pr.layers, pr.hidden, pr.seq_len)
    peak, peak_name = check.facts["env"]["peak_flops"], check.facts["env"]["peak_flops_source"]
    mfu = fpt * tps / peak if peak else None
    mem = [r["max_memory_gib"] for r in rows if r.get("max_memory_gib") is not None]
    total = rows[-1]["step"]
    expected = {s for s in range(1, total + 1) if s % pr.log_every == 0}
    ends, ckpts = set(), set()
    for r in lines:
        ends |= {r["step"] for e in r["events"] if e.startswith("end of stage")}
        ckpts |= {r["step"] for e in r["events"] if e.startswith("checkpoint")}
    by_step = {r["step"]: r for r in rows}
    result = {
        "wall_s": round(wall, 1), "steps": total, "stages": sorted({r["stage"] for r in rows}),
        "micro_batch": cfg["train_micro_batch_size_per_gpu"], "tokens_per_step": tokens_per_step,
        "bf16": cfg.get("bf16", {}).get("enabled"), "gradient_checkpointing": ckpt,
        "timed_steps": [timed[0]["step"], timed[-1]["step"]] if timed else None,
        "tokens_per_s": round(tps, 1), "step_time_s": round(tokens_per_step / tps, 4) if tps else None,
        "flops_per_token": fpt, "peak_flops": peak, "peak_flops_source": peak_name,
        "mfu": round(mfu, 4) if mfu is not None else None,
        "mfu_logged_median": _median([r["mfu"] for r in timed if r.get("mfu") is not None]) or None,
        "mfu_goal": MFU_GOAL,
        "mfu_goal_met": (mfu >= MFU_GOAL) if mfu is not None and not check.tiny else None,
        "peak_gpu_memory_gib": round(max(mem), 2) if mem else None,
        "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
        "bpb_ko_last": rows[-1].get("bpb_ko"),
        "log_lines": len(lines), "log_line_steps": [r["step"] for r in lines],
        "log_lines_at_expected_steps": {r["step"] for r in lines} == expected | ends | ckpts,
        "log_lines_stage_ends": sorted(ends), "log_lines_checkpoints": sorted(ckpts),
        "log_loss_matches_metrics": all(abs(r["loss"] - by_step[r["step"]]["loss"]) < 1e-4 for r in lines),
        "log_eta_s_first": lines[0].get("eta_s") if lines else None,
        "log_mfu_present": all("mfu" in r for r in lines) if peak else None,
        "metrics": str(out_dir / "metrics.jsonl"), "log": str(check.work / "logs" / f"{out_dir.name}.log"),
    }
    return result


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return 0.0
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def step_pretrain_ckpt(check: Check) -> dict[str, Any]:
    """Stage 1 new rows only, stage 2 everything; gradient checkpointing on; bits/byte at the end."""
    check.need("env", "model")
    pr = check.profile
    stages = [{"name": "new-embeddings", "train": "new_embeddings", "steps": pr.stage1_steps,
               "lr": pr.embedding_lr, "warmup_steps": 1},
              {"name": "all", "train": "all", "steps": pr.stage2_steps, "lr": pr.lr,
               "embedding_lr": pr.embedding_lr, "warmup_steps": 2}]
    total = pr.stage1_steps + pr.stage2_steps
    recipe = _recipe(check, "pretrain_ckpt", stages, True, pr.stage1_steps, True, total)
    run = check.facts["run"] = check.work / "pretrain_ckpt"  # later steps read what a cut-short run left
    result = _pretrain(check, "pretrain_ckpt", recipe, True)
    check.facts["bpb_training"] = result["bpb_ko_last"]
    # The last checkpoint (full optimizer state) is not read again: free the disk for what follows.
    shutil.rmtree(run / "checkpoints" / f"step-{total:08d}", ignore_errors=True)
    return result


def step_pretrain_no_ckpt(check: Check) -> dict[str, Any]:
    """Everything trains, gradient checkpointing off: the throughput without recomputation."""
    check.need("env", "model")
    pr = check.profile
    stages = [{"name": "all", "train": "all", "steps": pr.no_ckpt_steps, "lr": pr.lr, "warmup_steps": 1}]
    recipe = _recipe(check, "pretrain_no_ckpt", stages, False, 0, False, 0)
    result = _pretrain(check, "pretrain_no_ckpt", recipe, False)
    shutil.rmtree(check.work / "pretrain_no_ckpt" / "checkpoints", ignore_errors=True)
    return result


def step_new_embeddings(check: Check) -> dict[str, Any]:
    """Rows 0..base-1 after the new_embeddings stage: bit-identical in the weights and the fp32 masters."""
    import torch
    from safetensors.torch import load_file

    check.need("run")
    run = check.facts["run"]
    before = load_file(check.facts["model"] / "model.safetensors")
    after = load_file(run / "stages" / "new-embeddings" / "model.safetensors")
    matrices = ("model.embed_tokens.weight", "lm_head.weight")
    out: dict[str, Any] = {"weights_dtype": str(after[matrices[0]].dtype), "base_rows": BASE_ROWS}
    out["weights_old_rows_identical"] = all(torch.equal(after[n][:BASE_ROWS], before[n][:BASE_ROWS])
                                            for n in matrices)
    out["weights_new_rows_changed"] = {n: int((after[n][BASE_ROWS:] != before[n][BASE_ROWS:]).any(1).sum())
                                       for n in matrices}
    out["body_identical"] = all(torch.equal(after[n], before[n]) for n in before if n not in matrices)
    # The fp32 masters of the stage-1 optimizer, from DeepSpeed's checkpoint at the stage's end.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = f"step-{check.profile.stage1_steps:08d}"
    masters = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=tag,
                                                       exclude_frozen_parameters=True)
    out["masters"] = sorted(masters)
    out["masters_dtype"] = str(masters[matrices[0]].dtype)
    out["masters_old_rows_identical"] = all(
        torch.equal(masters[n][:BASE_ROWS], before[n][:BASE_ROWS].float()) for n in matrices)
    out["masters_round_to_weights"] = all(torch.equal(masters[n].to(after[n].dtype), after[n])
                                          for n in matrices)
    out["old_rows_bit_identical"] = out["weights_old_rows_identical"] and out["masters_old_rows_identical"]
    return out


def step_export_reload(check: Check) -> dict[str, Any]:
    """`AutoModelForCausalLM` on the exported folder: generate, and bits/byte against training's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kovocab.pretraining.metrics import bits_per_byte, load_held_out

    check.need("run", "bpb_training")
    hf = check.facts["run"] / "hf"
    device = "cuda" if check.on_gpu else "cpu"
    dtype = torch.float32 if check.tiny else torch.bfloat16
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(str(hf))
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 2),
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "dtype": str(next(model.parameters()).dtype), "device": device}
    ids = tok("안녕하세요, 오늘은", return_tensors="pt").input_ids.to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=tok.eos_token_id)
    if check.on_gpu:
        torch.cuda.synchronize()
    out["generated_tokens"] = int(gen.shape[1] - ids.shape[1])
    out["generate_tokens_per_s"] = round(out["generated_tokens"] / (time.perf_counter() - t0), 1)
    out["generated_text"] = tok.decode(gen[0], skip_special_tokens=True)
    held = load_held_out("ko", [check.facts["held_out"]], check.profile.eval_documents, "gpu_check.held_out")
    assert held is not None
    with torch.no_grad():
        bpb = bits_per_byte(model, check.facts["tokenizer"], held, check.profile.seq_len, device)
    train = float(check.facts["bpb_training"])
    tolerance = 1e-4 if check.tiny else 1e-2  # relative: fp32 vs bf16 kernels of two code paths
    out.update(bpb_reloaded=bpb, bpb_training=train, bpb_abs_diff=abs(bpb - train),
               bpb_rel_tolerance=tolerance, bpb_agrees=abs(bpb - train) <= tolerance * train)
    del model
    if check.on_gpu:
        torch.cuda.empty_cache()
    check.facts["hf"] = hf
    return out


def step_eval(check: Check) -> dict[str, Any]:
    """`kovocab eval` on the exported model: Korean bits/byte and KoBEST COPA 0-shot, items/s."""
    check.need("hf")
    pr, ev = check.profile, check.work / "eval"
    shutil.rmtree(ev, ignore_errors=True)
    argv = ("eval", "--model", str(check.facts["hf"]), "--name", "pretrained",
                   "--text", f"ko={check.facts['held_out']}", "--kobest-dir", str(DATA / "kobest"),
                   "--tasks", "copa", "--shots", "0", "--limit", str(pr.kobest_limit),
                   "--dtype", "float32" if check.tiny else "bfloat16",
                   "--device", "cuda" if check.on_gpu else "cpu",
                   "--batch-size", "8" if check.tiny else "32", "--out", str(ev),
                   "--set", f"eval.max_documents={pr.eval_documents}")
    from kovocab.cli import main as kovocab_main

    t0 = time.perf_counter()
    rc = kovocab_main(list(argv))  # `kovocab eval` itself, in this process (its imports are paid)
    wall = time.perf_counter() - t0
    if check.on_gpu:
        import torch

        torch.cuda.empty_cache()
    if rc != 0:
        raise RuntimeError(f"kovocab eval exited with {rc}; its error is in the log above")
    fig = json.loads((ev / "eval.json").read_text(encoding="utf-8"))
    copa = fig["kobest"]["copa"]["0"]["pretrained"]
    scored = [json.loads(x) for x in (ev / "items.jsonl").read_text(encoding="utf-8").splitlines() if x]
    items = sum(1 for x in scored if x.get("task") == "copa") or len(scored)
    bpb = fig["bpb"]["ko"]["pretrained"]
    return {"wall_s": round(wall, 1), "eval_seconds": round(fig["seconds"], 2),
            "device": fig["settings"]["device"],
            "bpb_ko": bpb["bits_per_byte"], "bpb_documents": bpb["documents"],
            "bpb_training": check.facts.get("bpb_training"),
            "copa_items": items, "copa_seconds": round(copa["seconds"], 3),
            "copa_items_per_s": round(items / copa["seconds"], 2) if copa["seconds"] else None,
            "copa_metrics": {k: v for k, v in copa.items() if k != "seconds"}}


def step_resize_load_7b(check: Check) -> dict[str, Any]:
    """A 7B-shaped bf16 checkpoint on this disk: kovocab's file-level resize, then the ZeRO-3 load
    with one process and parameters offloaded to CPU, timed."""
    check.need("tokenizer")
    for done in ("pretrain_ckpt/checkpoints", "pretrain_ckpt/stages", "pretrain_no_ckpt"):  # room on disk
        shutil.rmtree(check.work / done, ignore_errors=True)
    big = check.work / "big"
    shutil.rmtree(big, ignore_errors=True)
    out: dict[str, Any] = {"shape": dict(check.profile.big)}
    t0 = time.perf_counter()
    out["checkpoint_gb"] = round(_write_big_checkpoint(check, big / "base") / 1e9, 2)
    out["write_s"] = round(time.perf_counter() - t0, 1)
    from kovocab.model.resize import resize_embeddings

    t0 = time.perf_counter()
    resized = resize_embeddings(big / "base", check.facts["tokenizer"], big / "resized")
    out["resize_s"] = round(time.perf_counter() - t0, 1)
    out["resized_rows"] = resized.plan.total_rows
    out["resized_files"] = {"rewritten": len(resized.rewritten), "hardlinked": len(resized.linked)}
    shutil.rmtree(big / "base", ignore_errors=True)
    out.update(load_offloaded(big / "resized", check.work / "zero3_offload.json"))
    shutil.rmtree(big, ignore_errors=True)
    return out


def _write_big_checkpoint(check: Check, folder: Path) -> int:
    """Random bf16 matrices in Llama-2's shard layout, generated on the GPU when there is one."""
    import torch
    from embeddings_bench import llama_tensors

    from kovocab.model.safetensors_io import TensorEntry, write_shard, write_tensor

    folder.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": BASE_ROWS,
              **check.profile.big, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
              "dtype": "bfloat16"}
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for name, shape in llama_tensors(config):
        n = 2 * math.prod(shape)
        if shards[-1] and size + n > 10e9:
            shards.append([])
            size = 0
        shards[-1].append(TensorEntry(name, "BF16", shape, 0, 0))
        size += n
    device = "cuda" if check.on_gpu else "cpu"

    def fill(t: TensorEntry, f: object) -> None:
        x = (torch.ones(t.shape, dtype=torch.bfloat16) if len(t.shape) == 1 else
             torch.empty(t.shape, dtype=torch.bfloat16, device=device).normal_(0, 0.02).cpu())
        write_tensor(x, f)  # type: ignore[arg-type]

    weight_map, total = {}, 0
    for k, entries in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(folder / fname, entries, fill, {"format": "pt"})
        weight_map.update({t.name: fname for t in entries})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(LLAMA2, folder / "tokenizer.model")
    return total


def load_offloaded(model_dir: Path, ds_file: Path) -> dict[str, Any]:
    """kovocab's ZeRO-3 load (`load_model`) as one process, parameters offloaded to CPU, timed.

    In this process, as the last step: a child would pay a minute of imports again.
    """
    import torch

    from kovocab.pretraining.config import PretrainConfig, StageConfig, deepspeed_config
    from kovocab.pretraining.engine import forget_launcher_env, load_model, setup_distributed

    ds = json.loads((ROOT / "pretrain" / "zero3.json").read_text(encoding="utf-8"))
    ds["zero_optimization"].update(offload_param={"device": "cpu", "pin_memory": True},
                                   offload_optimizer={"device": "cpu", "pin_memory": True})
    ds_file.write_text(json.dumps(ds), encoding="utf-8")
    gpu = torch.cuda.is_available()
    cfg = PretrainConfig(model_dir=model_dir, train_data=(model_dir,), out_dir=ds_file.parent,
                         stages=(StageConfig(name="load", steps=1, lr=1e-5),), deepspeed_config=ds_file,
                         precision="bf16" if gpu else "fp32", gradient_checkpointing=True)
    dist = setup_distributed()
    try:
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model, keep = load_model(cfg, deepspeed_config(cfg, dist.world_size, dist.on_gpu))
        seconds = time.perf_counter() - t0
        n = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
        rows = int(getattr(model.get_input_embeddings().weight, "ds_shape", [0])[0])
        out = {"load_s": round(seconds, 1), "parameters": n, "embedding_rows": rows,
               "offload": "parameters (and optimizer) to CPU, pinned",
               "gpu_memory_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None}
        del model, keep
    finally:
        forget_launcher_env()
    return out


# --------------------------------------------------------------------------- report


def summarise(check: Check) -> dict[str, Any]:
    res = {s["name"]: s.get("result") or s.get("partial") or {} for s in check.steps}
    env = res.get("environment", {})
    a, b = res.get("pretrain_ckpt", {}), res.get("pretrain_no_ckpt", {})
    return {
        "gpu": env.get("gpu"), "peak_flops": env.get("peak_flops"),
        "peak_flops_source": env.get("peak_flops_source"),
        "mfu_ckpt_on": a.get("mfu"), "mfu_ckpt_off": b.get("mfu"), "mfu_goal": MFU_GOAL,
        "tokens_per_s_ckpt_on": a.get("tokens_per_s"), "tokens_per_s_ckpt_off": b.get("tokens_per_s"),
        "peak_gpu_memory_gib_ckpt_on": a.get("peak_gpu_memory_gib"),
        "peak_gpu_memory_gib_ckpt_off": b.get("peak_gpu_memory_gib"),
        "old_rows_bit_identical": res.get("new_embeddings", {}).get("old_rows_bit_identical"),
        "bpb_training": res.get("export_reload", {}).get("bpb_training"),
        "bpb_reloaded": res.get("export_reload", {}).get("bpb_reloaded"),
        "bpb_eval": res.get("eval", {}).get("bpb_ko"),
        "eval_copa_items_per_s": res.get("eval", {}).get("copa_items_per_s"),
        "failed": [s["name"] for s in check.steps if s["status"] in ("failed", "timeout")],
    }


def render_md(doc: dict[str, Any]) -> str:
    s = doc["summary"]

    def f(x: Any, spec: str = "") -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"# GPU check ({doc['mode']}, {doc['finished'] or 'unfinished'})", "",
             f"Device: {s['gpu'] or 'CPU'}; {doc['seconds']:.0f} s of a {doc['budget_s']:.0f} s budget.",
             "",
             "| step | status | seconds | budget |", "|---|---|---:|---:|"]
    for st in doc["steps"]:
        note = f" ({st['error'].splitlines()[0][:120]})" if st.get("error") else ""
        lines.append(f"| {st['name']} | {st['status']}{note} | {st.get('seconds', 0):.1f} "
                     f"| {st['budget_s']:.0f} |")
    peak = f"{s['peak_flops'] / 1e12:.3g} TFLOP/s, {s['peak_flops_source']}" if s["peak_flops"] else "none"
    lines += ["", f"MFU (6·N + attention FLOPs per token; peak {peak}; goal {MFU_GOAL:.0%}):", "",
              "| gradient checkpointing | tokens/s | MFU | peak GPU memory GiB |", "|---|---:|---:|---:|",
              f"| on | {f(s['tokens_per_s_ckpt_on'], ',.0f')} | {f(s['mfu_ckpt_on'], '.1%')} | "
              f"{f(s['peak_gpu_memory_gib_ckpt_on'], '.1f')} |",
              f"| off | {f(s['tokens_per_s_ckpt_off'], ',.0f')} | {f(s['mfu_ckpt_off'], '.1%')} | "
              f"{f(s['peak_gpu_memory_gib_ckpt_off'], '.1f')} |", "",
              f"- new_embeddings: rows 0..{BASE_ROWS - 1} bit-identical (weights and fp32 masters): "
              f"{f(s['old_rows_bit_identical'])}",
              f"- bits/byte (Korean held-out): in training {f(s['bpb_training'], '.4f')}, reloaded "
              f"{f(s['bpb_reloaded'], '.4f')}, `kovocab eval` {f(s['bpb_eval'], '.4f')}",
              f"- `kovocab eval` KoBEST COPA 0-shot: {f(s['eval_copa_items_per_s'], '.1f')} items/s",
              f"- failed or timed out: {', '.join(s['failed']) or 'none'}", ""]
    if doc["mode"] == "tiny":
        lines.append("Tiny mode: CPU, fp32, toy shapes; the figures check the code path, not a device.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU, toy shapes, the same steps (1-2 minutes)")
    p.add_argument("--out", type=Path, help="where gpu_check.json/.md go (default runs/gpu_check[_tiny])")
    p.add_argument("--work", type=Path, help="scratch folder (default OUT/work, /dev/shm on a GPU if roomy)")
    p.add_argument("--budget-s", type=float, help="time for the whole check (default 480 on GPU)")
    p.add_argument("--skip", default="", help="comma-separated steps not to run, e.g. resize_load_7b")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (models, runs, logs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, also on a machine with a GPU
    import torch

    on_gpu = torch.cuda.is_available()
    profile = TINY if args.tiny else GPU
    if args.budget_s:
        profile = Profile(**{**asdict(profile), "budget_s": args.budget_s})
    out = (args.out or ROOT / "runs" / ("gpu_check_tiny" if args.tiny else "gpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or _default_work(out, on_gpu)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start, started = time.monotonic(), datetime.now(UTC)
    check = Check(profile, out, work, start + profile.budget_s - 5, on_gpu)
    if not args.tiny and not torch.cuda.is_available():
        log.warning("no CUDA device: the GPU profile runs on CPU only with --tiny; recording the environment")
    skip = {s for s in args.skip.split(",") if s}
    plan: list[tuple[str, Callable[[Check], dict[str, Any]], bool]] = [
        ("environment", step_environment, False), ("prepare", step_prepare, False),
        ("pretrain_ckpt", step_pretrain_ckpt, False), ("pretrain_no_ckpt", step_pretrain_no_ckpt, False),
        ("new_embeddings", step_new_embeddings, False), ("export_reload", step_export_reload, False),
        ("eval", step_eval, False), ("fused_ops_jit", step_fused_ops_jit, True),
        ("resize_load_7b", step_resize_load_7b, True)]
    for name, fn, optional in plan:
        if name in skip:
            check.steps.append({"name": name, "status": "skipped", "error": "--skip", "seconds": 0,
                                "budget_s": profile.budgets.get(name, 0), "optional": optional})
        elif name != "environment" and not args.tiny and not on_gpu:
            check.steps.append({"name": name, "status": "skipped", "error": "no CUDA device", "seconds": 0,
                                "budget_s": profile.budgets.get(name, 0), "optional": optional})
        else:
            if name == "fused_ops_jit" and _prebuilt(check):
                continue  # prebuilt into the wheel: nothing to build
            check.run(name, fn, optional)
        doc = write_report(check, start, started, finished=False)  # a killed check leaves what it had
    doc = write_report(check, start, started, finished=True)
    if not args.keep_work:
        logs = out / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        if (work / "logs").is_dir():
            shutil.copytree(work / "logs", logs)
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s and %s (%.0f s)", out / "gpu_check.json", out / "gpu_check.md", doc["seconds"])
    failed = [s["name"] for s in check.steps if not s["optional"] and s["status"] in ("failed", "timeout")]
    return 1 if failed else 0


def write_report(check: Check, start: float, started: datetime, finished: bool) -> dict[str, Any]:
    doc = {"mode": check.profile.name, "started": started.isoformat(timespec="seconds"),
           "finished": datetime.now(UTC).isoformat(timespec="seconds") if finished else None,
           "seconds": round(time.monotonic() - start, 1), "budget_s": check.profile.budget_s,
           "work": str(check.work), "profile": asdict(check.profile), "steps": check.steps,
           "summary": summarise(check)}
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"
    (check.out / "gpu_check.json").write_text(text, encoding="utf-8")
    (check.out / "gpu_check.md").write_text(render_md(doc), encoding="utf-8")
    return doc


def _prebuilt(check: Check) -> bool:
    ops = check.facts.get("env", {}).get("deepspeed_ops", {})
    return bool(ops.get("fused_adam", {}).get("prebuilt"))


def _default_work(out: Path, on_gpu: bool) -> Path:
    # ZeRO-3 checkpoints of a 1B run are ~14 GB each; tmpfs writes them in seconds where a
    # network disk may take a minute, so use /dev/shm on a GPU machine when it is roomy.
    shm = Path("/dev/shm")
    if on_gpu and shm.is_dir() and shutil.disk_usage(shm).free > 48 * 2**30:
        return shm / "kovocab-gpu-check"
    return out / "work"


if __name__ == "__main__":
    sys.exit(main())
