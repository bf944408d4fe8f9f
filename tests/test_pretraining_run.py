"""`kovocab pretrain` end to end on CPU: two gloo ranks, DeepSpeed ZeRO-3, a tiny Llama, real Korean text.

A 32,000-row tiny Llama is resized by kovocab to the real expanded tokenizer (33,024 rows,
so the resize manifest is real), then trained in two stages. One uninterrupted run serves
most assertions; a second run is SIGKILLed after a checkpoint and resumed, and must
reproduce the first run's losses exactly. Launches are shared to stay within time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import news_lines

from kovocab.cli import main

ROOT = Path(__file__).resolve().parents[1]
STAGES = "[{name: s1, train: new_embeddings, steps: 4, lr: 2.0e-2, warmup_steps: 1}, " \
         "{name: s2, train: all, steps: 4, lr: 1.0e-2, embedding_lr: 2.0e-2, warmup_steps: 1}]"
TOTAL = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, expanded_tokenizer: Path, korean_shards: Path,
          shared_data: Path) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kovocab.model.resize import resize_embeddings

    root = tmp_path_factory.mktemp("pretrain")
    torch.manual_seed(0)
    base = root / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=False)).save_pretrained(base)
    (base / "tokenizer.model").write_bytes((shared_data / "llama2_tokenizer/tokenizer.model").read_bytes())
    resized = resize_embeddings(base, expanded_tokenizer, root / "resized").out_dir
    lines = news_lines("en")[:64]
    english = root / "english.txt"
    english.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = root / "tiny.yaml"
    recipe.write_text((ROOT / "pretrain" / "tiny_cpu.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    common = [f"pretrain.model_dir={resized}", f"pretrain.train_data=[{korean_shards}]",
              f"pretrain.eval_korean=[{korean_shards}]", f"pretrain.eval_english=[{english}]",
              f"pretrain.deepspeed_config={ROOT / 'pretrain' / 'zero3_cpu.json'}",
              f"pretrain.token_store_dir={root / 'tokens'}", "pretrain.max_documents=2000",
              "pretrain.checkpoint_every=3", "pretrain.keep_checkpoints=3", "pretrain.eval_every=6",
              "pretrain.eval_max_documents=16", f"pretrain.stages={STAGES}"]
    return {"root": root, "resized": resized, "recipe": recipe, "common": common}


def argv(setup: dict[str, Any], out: Path, *extra: str, nproc: int = 2) -> list[str]:
    sets = [a for kv in [*setup["common"], f"pretrain.out_dir={out}", *extra] for a in ("--set", kv)]
    return ["pretrain", "--config", str(setup["recipe"]), "--nproc-per-node", str(nproc), *sets]


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def full_run(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "a"
    # The ranks inherit file descriptor 2: keep what they log, as a cluster's log file would.
    with open(setup["root"] / "a.log", "w") as log_file:
        saved = os.dup(2)
        os.dup2(log_file.fileno(), 2)
        try:
            rc = main(argv(setup, out, "pretrain.log_every=2"))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    assert rc == 0, (setup["root"] / "a.log").read_text()[-3000:]
    return out


@pytest.mark.slow
def test_two_rank_zero3_run_trains_partitions_and_reports(full_run: Path) -> None:
    rows = metrics(full_run)
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))
    assert [r["stage"] for r in rows] == ["s1"] * 4 + ["s2"] * 4
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2 - 0.2, losses
    assert all(r["mfu"] is None and r["tokens_per_s"] > 0 and math.isfinite(r["grad_norm"]) for r in rows)
    assert rows[0]["tokens"] == 128 * 4 * 2 and rows[-1]["tokens"] == TOTAL * 128 * 4 * 2
    assert rows[4]["lr"] == 1.0e-2 and rows[4]["embedding_lr"] == 2.0e-2  # stage 2 starts at its peak
    for r in (rows[5], rows[-1]):  # eval_every 6, and at the end
        assert 0 < r["bpb_ko"] < 20 and 0 < r["bpb_en"] < 20
    assert rows[-1]["bpb_ko"] < rows[5]["bpb_ko"]
    assert "bpb_ko" not in rows[4] and "bpb_ko" not in rows[6]
    # ZeRO-3 really partitions: every tensor is split in two, each rank holds its half.
    parts = json.loads((full_run / "zero3_partitions.json").read_text())
    assert parts["world_size"] == 2 and len(parts["tensors"]) == 2 + 2 * 9 + 1
    for name, t in parts["tensors"].items():
        assert t["held"] == [math.ceil(t["numel"] / 2)] * 2, name
    assert parts["tensors"]["model.embed_tokens.weight"]["numel"] == 33024 * 64
    ds = json.loads((full_run / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 8 and ds["bf16"]["enabled"] is False


@pytest.mark.slow
def test_stage_one_moves_only_new_rows(full_run: Path, setup: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    before = load_file(setup["resized"] / "model.safetensors")
    s1 = load_file(full_run / "stages" / "s1" / "model.safetensors")
    s2 = load_file(full_run / "stages" / "s2" / "model.safetensors")
    assert set(before) == set(s1) == set(s2)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch_equal(s1[name][:32000], before[name][:32000]), name  # bit-identical
        changed = (s1[name][32000:] != before[name][32000:]).any(dim=1)
        assert changed.sum() > 100, name
        assert not torch_equal(s2[name][:32000], before[name][:32000])  # stage 2 trains them
    body = [n for n in before if "embed_tokens" not in n and "lm_head" not in n]
    assert all(torch_equal(s1[n], before[n]) for n in body)
    assert not all(torch_equal(s2[n], before[n]) for n in body)


@pytest.mark.slow
def test_rank_zero_logs_a_progress_line_every_log_every_steps(full_run: Path) -> None:
    from kovocab.pretraining.metrics import parse_progress_line

    text = (full_run.parent / "a.log").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if parse_progress_line(line)]
    parsed = [parse_progress_line(line) for line in lines]
    # log_every 2, plus the checkpoints (every 3, and the last step) and the stage ends (4, 8);
    # once per step, from rank 0 only, through logging.
    assert [p["step"] for p in parsed if p] == [2, 3, 4, 6, 8], lines
    assert all(" kovocab.pretraining.loop: step " in line for line in lines)
    events = {p["step"]: p["events"] for p in parsed if p}
    assert events == {2: [], 3: ["checkpoint step-00000003"], 4: ["end of stage s1"],
                      6: ["checkpoint step-00000006"], 8: ["checkpoint step-00000008", "end of stage s2"]}
    rows = {r["step"]: r for r in metrics(full_run)}
    for p in parsed:
        assert p is not None
        row = rows[p["step"]]
        assert p["total_steps"] == TOTAL and p["stage"] == row["stage"]
        assert p["loss"] == pytest.approx(row["loss"], abs=1e-4)
        assert p["lr"] == pytest.approx(row["lr"], rel=1e-2)
        assert p["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-3)
        assert p["tokens_per_s"] > 0 and p["eta_s"] >= 0
        assert "mfu" not in p  # peak_flops is null on CPU
        assert ("bpb_ko" in p) == ("bpb_ko" in row)
    assert parsed[-1] is not None and parsed[-1]["eta_s"] == 0


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.slow
def test_export_loads_with_auto_classes_and_generates(full_run: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = full_run / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    assert model.config.vocab_size == 33024 and len(tok) == 33024
    last = load_file(full_run / "stages" / "s2" / "model.safetensors")
    assert all(torch.equal(p.detach(), last[n]) for n, p in model.named_parameters())
    ids = tok("안녕하세요, 오늘은", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)
    manifest = json.loads((hf / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and "model.safetensors" in manifest["files"]
    result = json.loads((full_run / "result.json").read_text())
    assert result["steps"] == TOTAL and result["resumed_from"] is None


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(full_run: Path, setup: dict[str, Any]) -> None:
    out = setup["root"] / "b"
    proc = subprocess.Popen([sys.executable, "-m", "kovocab", *argv(setup, out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 150
    while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher's group; the ranks die with their parent
    proc.wait()
    assert latest.read_text().strip() == "step-00000003"
    for _ in range(100):
        if not _pids_mentioning(str(out / "launch.yaml")):
            break
        time.sleep(0.1)
    assert not _pids_mentioning(str(out / "launch.yaml")), "ranks outlived the killed launcher"
    assert not (out / "hf").exists()

    assert main([*argv(setup, out), "--resume"]) == 0
    resumed, reference = metrics(out), metrics(full_run)
    assert [r["step"] for r in resumed] == list(range(1, TOTAL + 1))
    keys = ("step", "stage", "loss", "grad_norm", "lr", "tokens")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in reference]
    assert resumed[-1]["bpb_ko"] == reference[-1]["bpb_ko"]
    assert json.loads((out / "result.json").read_text())["resumed_from"] == 3


@pytest.mark.slow
def test_nan_guard_stops_with_a_clear_message(setup: dict[str, Any], tmp_path: Path) -> None:
    args = argv(setup, tmp_path / "nan", "pretrain.stages=[{name: boom, train: all, steps: 4, lr: 1.0e+30}]",
                "pretrain.eval_every=0", "pretrain.export_stages=false", nproc=1)
    res = subprocess.run([sys.executable, "-m", "kovocab", *args], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "kovocab: error: pretrain: training diverged at step 2 (stage 'boom')" in res.stderr
    assert "Lower stages.boom.lr" in res.stderr
    assert not (tmp_path / "nan" / "hf").exists()


def test_config_typo_and_missing_model_are_clear_errors(setup: dict[str, Any], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv(setup, tmp_path / "x", "pretrain.seq_lenn=64")]) == 1
    err = capsys.readouterr().err
    assert "kovocab: error: pretrain.seq_lenn: unknown key; did you mean 'seq_len'?" in err
    assert main([*argv(setup, tmp_path / "x", f"pretrain.model_dir={tmp_path / 'nope'}")]) == 1
    err = capsys.readouterr().err
    assert f"kovocab: error: pretrain.model_dir: no Hugging Face model at {tmp_path / 'nope'}" in err
    assert not (tmp_path / "x").exists()


class _Payload:
    """Unpickling this runs `open(marker, "w")`: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_crafted_rank_state_is_refused_without_running_code(tmp_path: Path) -> None:
    import torch

    from kovocab.errors import InputError
    from kovocab.pretraining.checkpoint import load_rank_state, write_rank_state

    marker = tmp_path / "pwned"
    tag = tmp_path / "checkpoints" / "step-00000003"
    tag.mkdir(parents=True)
    torch.save({"data": {}, "step": 3, "stage": 0, "rng": _Payload(marker)}, tag / "kovocab_rank0.pt")
    with pytest.raises(InputError, match=r"kovocab_rank0\.pt: refused to load this checkpoint file") as err:
        load_rank_state(tmp_path / "checkpoints", "step-00000003", 0)
    assert not marker.exists()
    assert "(io.open)" in str(err.value) and f"Delete {tag}" in str(err.value)
    # DeepSpeed unpickles its own files without restriction: a crafted one is refused before that.
    write_rank_state(tag / "kovocab_rank0.pt", {"data": {}, "step": 3, "stage": 0})
    torch.save({"module": None, "x": _Payload(marker)}, tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    with pytest.raises(InputError, match=r"zero_pp_rank_0_mp_rank_00_model_states\.pt: refused to load"):
        load_rank_state(tmp_path / "checkpoints", "step-00000003", 0)
    assert not marker.exists()
    (tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").unlink()
    assert load_rank_state(tmp_path / "checkpoints", "step-00000003", 0)["step"] == 3


def test_rank_state_round_trips_every_rng_exactly(tmp_path: Path) -> None:
    import random

    import numpy as np
    import torch

    from kovocab.pretraining.checkpoint import load_rank_state, set_rng_state, write_rank_state

    def draws() -> tuple[Any, ...]:
        return (random.random(), random.gauss(0, 1), float(np.random.standard_normal()),
                float(np.random.rand()), torch.rand(3).tolist())

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave a cached Gaussian in both generators
    data = {"version": 1, "main": {"epoch": 0, "index": 7}, "replay": None}
    write_rank_state(tmp_path / "step-00000001" / "kovocab_rank0.pt", {"data": data, "step": 1, "stage": 0})
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = load_rank_state(tmp_path, "step-00000001", 0)
    set_rng_state(state["rng"])
    assert draws() == expected
    assert state["data"] == data and state["step"] == 1


def test_pretrain_into_a_folder_in_use_is_refused_without_touching_it(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12.2: two `kovocab pretrain` runs into one out_dir; the second stops before writing anything
    (no error.json, launch.yaml or metrics of its own in the other run's folder)."""
    import socket

    out = tmp_path / "busy"
    hold = ("import sys, time\nfrom kovocab.artifacts import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert main(argv(setup, out, "pretrain.seed=1")) == 1
        err = capsys.readouterr().err
        assert f"kovocab: error: {out} is in use by pid {proc.pid} on {socket.gethostname()}" in err
        assert sorted(p.name for p in out.iterdir()) == [".kovocab.lock"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# --- LoRA continued pretraining (issue 15): the same engine, checkpoints and export ---------------------

LORA = "{rank: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj, down_proj], embeddings: new_rows}"
LORA_STAGES = "[{name: emb, train: new_embeddings, steps: 2, lr: 2.0e-2}, " \
              "{name: lora, train: lora, steps: 3, lr: 1.0e-2, embedding_lr: 2.0e-2}]"


def lora_argv(setup: dict[str, Any], out: Path, *extra: str) -> list[str]:
    return argv(setup, out, f"pretrain.lora={LORA}", f"pretrain.stages={LORA_STAGES}",
                "pretrain.eval_every=0", "pretrain.export_stages=false", "pretrain.checkpoint_every=2",
                "pretrain.log_every=0", *extra)


@pytest.fixture(scope="module")
def lora_run(setup: dict[str, Any]) -> Path:
    out = setup["root"] / "lora"
    assert main(lora_argv(setup, out)) == 0
    return out


@pytest.mark.slow
def test_lora_two_ranks_trains_adapters_and_new_rows_only(lora_run: Path, setup: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    rows = metrics(lora_run)
    assert [(r["step"], r["stage"]) for r in rows] == [(1, "emb"), (2, "emb"), (3, "lora"), (4, "lora"),
                                                       (5, "lora")]
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    before = load_file(setup["resized"] / "model.safetensors")
    merged = load_file(lora_run / "hf" / "model.safetensors")
    assert set(merged) == set(before)  # plain Hugging Face names: no base_layer, no lora_A/B
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # lora.embeddings: new_rows
        assert torch_equal(merged[name][:32000], before[name][:32000]), name
        assert (merged[name][32000:] != before[name][32000:]).any(dim=1).sum() > 100, name
    targets = [n for n in before if n.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight"))]
    assert len(targets) == 6 and not any(torch_equal(merged[n], before[n]) for n in targets)
    frozen = [n for n in before if n not in targets and "embed_tokens" not in n and "lm_head" not in n]
    assert len(frozen) == 13 and all(torch_equal(merged[n], before[n]) for n in frozen)
    adapter = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    b_weights = [v for k, v in adapter.items() if ".lora_B." in k]  # peft initialises B to zeros
    assert len(b_weights) == 6 and all(bool(v.abs().sum() > 0) for v in b_weights)
    assert sum(".lora_A." in k for k in adapter) == 6
    assert {k for k in adapter if "lora_" not in k} == {"base_model.model.model.embed_tokens.weight",
                                                         "base_model.model.lm_head.weight"}


@pytest.mark.slow
def test_lora_merged_export_loads_without_peft_and_matches_the_adapter(lora_run: Path,
                                                                       setup: dict[str, Any]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(lora_run / "hf")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    config = json.loads((lora_run / "hf" / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 33024
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["resized"]),
                                           lora_run / "adapter")
    tok = AutoTokenizer.from_pretrained(lora_run / "adapter")
    ids = tok("안녕하세요, 오늘은 날씨가 좋네요. The court held that the statute applies.",
              return_tensors="pt").input_ids
    merged.eval(), peft_model.eval()
    with torch.no_grad():
        a, b = merged(ids).logits, peft_model(ids).logits
    base = AutoModelForCausalLM.from_pretrained(setup["resized"]).eval()
    with torch.no_grad():
        assert (base(ids).logits - a).abs().max() > 1e-3  # training moved it
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


@pytest.mark.slow
def test_lora_resume_reproduces_the_uninterrupted_run(lora_run: Path, setup: dict[str, Any]) -> None:
    import shutil

    out = setup["root"] / "lora-resumed"
    shutil.copytree(lora_run, out, ignore=shutil.ignore_patterns("hf", "adapter", ".kovocab.lock"))
    # Back to the checkpoint at step 4, inside the lora stage (adapters and Adam moments restored).
    shutil.rmtree(out / "checkpoints" / "step-00000005")
    (out / "checkpoints" / "latest").write_text("step-00000004\n")
    assert main([*lora_argv(setup, out), "--resume"]) == 0
    keys = ("step", "stage", "loss", "grad_norm", "lr", "embedding_lr")
    assert [[r[k] for k in keys] for r in metrics(out)] == [[r[k] for k in keys] for r in metrics(lora_run)]
    assert json.loads((out / "result.json").read_text())["resumed_from"] == 4
    from safetensors.torch import load_file

    a, b = load_file(out / "adapter" / "adapter_model.safetensors"), \
        load_file(lora_run / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch_equal(a[k], b[k]) for k in a)


def test_lora_config_mistakes_and_qlora_without_cuda_are_clear_errors(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x"
    assert main(lora_argv(setup, out, "pretrain.lora={rnak: 4}")) == 1
    assert "kovocab: error: pretrain.lora.rnak: unknown key; did you mean 'rank'?" in capsys.readouterr().err
    assert main(lora_argv(setup, out, "pretrain.stages=[{name: a, train: all, steps: 2, lr: 1.0e-3}, "
                                      "{name: b, train: lora, steps: 2, lr: 1.0e-3}]")) == 1
    assert "pretrain.stages: train: lora and train: all in one run" in capsys.readouterr().err
    assert main(lora_argv(setup, out, "pretrain.stages=[{name: a, train: all, steps: 2, lr: 1.0e-3}]")) == 1
    assert "pretrain.lora: given, but no stage has train: lora" in capsys.readouterr().err
    # QLoRA: checked before the token store is built or a rank starts.
    assert main(lora_argv(setup, out, "pretrain.lora={rank: 4, quantize: 4bit}",
                          f"pretrain.token_store_dir={tmp_path / 'tokens'}")) == 1
    err = capsys.readouterr().err
    assert "kovocab: error: pretrain.lora.quantize: 4bit (QLoRA) keeps the frozen base in NF4" in err
    assert "this machine has no CUDA device" in err and "set pretrain.lora.quantize: none" in err
    assert not out.exists() and not (tmp_path / "tokens").exists()


def test_lora_target_modules_that_match_nothing_name_the_model_modules() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kovocab.errors import ConfigError
    from kovocab.pretraining.config import LoraConfig
    from kovocab.pretraining.lora import add_adapters

    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ConfigError, match=r"pretrain\.lora\.target_modules: \['q_prj'\] do not all name "
                                          r"linear modules of the model \(its linear modules: down_proj, "
                                          r"gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj\)"):
        add_adapters(model, LoraConfig(target_modules=("q_prj",)))
