"""bench/gpu_check.py --tiny: the prepared GPU check runs its every step on CPU, so it cannot rot.

The same steps as on a GPU (environment, real Korean shards + expanded tokenizer + a Llama
from config, `kovocab pretrain` with gradient checkpointing on and off, the new_embeddings
row check on weights and fp32 masters, export + reload, `kovocab eval`, a resize + offloaded
ZeRO-3 load) at toy size: one rank, gloo, fp32.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_step_and_records_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    doc = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert doc["mode"] == "tiny" and doc["finished"]
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == ["environment", "prepare", "pretrain_ckpt", "pretrain_no_ckpt", "new_embeddings",
                           "export_reload", "eval", "fused_ops_jit", "resize_load_7b"]
    for s in doc["steps"]:
        assert {"status", "seconds", "budget_s"} <= set(s), s
        if s["name"] != "fused_ops_jit":  # JIT-building CUDA ops is a GPU-only step
            assert s["status"] == "ok", (s["name"], s.get("error"), s.get("traceback"))
            assert s["seconds"] > 0
    env = steps["environment"]["result"]
    assert env["torch"] and env["deepspeed"] and env["gpu"] is None
    assert env["peak_flops_source"].startswith("nominal")

    # Training through `kovocab pretrain`: figures from metrics.jsonl and from its progress lines.
    a, b = steps["pretrain_ckpt"]["result"], steps["pretrain_no_ckpt"]["result"]
    assert a["gradient_checkpointing"] is True and b["gradient_checkpointing"] is False
    assert a["steps"] == 8 and b["steps"] == 3 and a["bf16"] is False
    for r in (a, b):
        assert r["tokens_per_s"] > 0 and r["step_time_s"] > 0 and 0 < r["mfu"] < 1
        assert r["log_lines_at_expected_steps"] and r["log_loss_matches_metrics"] and r["log_mfu_present"]
    assert a["log_line_steps"] == [2, 4, 6, 8] and a["log_lines_checkpoints"] == [4, 8]
    assert a["log_lines_stage_ends"] == [4, 8] and b["log_line_steps"] == [2, 3]
    assert a["loss_last"] < a["loss_first"]

    emb = steps["new_embeddings"]["result"]
    assert emb["old_rows_bit_identical"] is True
    assert emb["weights_old_rows_identical"] and emb["masters_old_rows_identical"] and emb["body_identical"]
    assert emb["masters_dtype"] == "torch.float32" and emb["masters_round_to_weights"]
    assert min(emb["weights_new_rows_changed"].values()) > 0

    rel = steps["export_reload"]["result"]
    assert rel["generated_tokens"] == 32 and rel["parameters"] == steps["prepare"]["result"]["parameters"]
    assert rel["bpb_training"] == a["bpb_ko_last"] and rel["bpb_agrees"] is True
    assert 0 < rel["bpb_reloaded"] < 20

    ev = steps["eval"]["result"]
    assert ev["copa_items"] == 16 and ev["copa_items_per_s"] > 0
    assert abs(ev["bpb_ko"] - rel["bpb_reloaded"]) < 1e-3 * rel["bpb_reloaded"]

    big = steps["resize_load_7b"]["result"]
    assert big["resized_rows"] == 33024 and big["embedding_rows"] == 33024 and big["load_s"] > 0
    h, f, layers = 64, 128, 2  # the tiny stand-in for 7B: MHA, both matrices resized to 33,024 rows
    assert big["parameters"] == layers * (4 * h * h + 3 * h * f + 2 * h) + h + 2 * 33024 * h

    s = doc["summary"]
    assert s["old_rows_bit_identical"] is True and s["failed"] == [] and s["eval_copa_items_per_s"] > 0
    md = (out / "gpu_check.md").read_text(encoding="utf-8")
    assert "| pretrain_ckpt | ok |" in md and "bit-identical (weights and fp32 masters): True" in md
    assert (out / "logs" / "pretrain_ckpt.log").is_file() and not (out / "work").exists()
