"""Pretraining config, DeepSpeed JSON filling, the row mask and the schedule: no processes started.

Every recipe in pretrain/ must build and agree with its DeepSpeed JSON, including the
7B one that is never run here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kovocab.errors import ConfigError
from kovocab.pretraining.config import PretrainConfig, deepspeed_config
from kovocab.pretraining.launch import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "pretrain").glob("*.yaml"))


def test_pretrain_folder_is_data_only() -> None:
    assert RECIPES, "pretrain/ has no recipes"
    assert not list((ROOT / "pretrain").rglob("*.py"))
    assert {"zero3.json", "hostfile.example", "slurm.sbatch", "README.md"} <= {
        p.name for p in (ROOT / "pretrain").iterdir()}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_builds_and_agrees_with_its_deepspeed_json(recipe: Path) -> None:
    cfg = load_recipe(recipe)
    assert isinstance(cfg, PretrainConfig) and cfg.stages and cfg.deepspeed_config.is_file()
    assert cfg.deepspeed_config.parent == recipe.parent  # relative paths resolve from the recipe
    on_gpu = cfg.precision != "fp32"
    ds = deepspeed_config(cfg, world_size=8, on_gpu=on_gpu)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_batch_size"] == cfg.micro_batch_size * cfg.gradient_accumulation_steps * 8
    assert ds["bf16"]["enabled"] is on_gpu and ds["gradient_clipping"] == cfg.max_grad_norm
    assert "auto" not in json.dumps(ds)


def test_7b_recipe_is_the_two_stage_eeve_plan() -> None:
    cfg = load_recipe(ROOT / "pretrain" / "llama2_7b_ko_46k.yaml")
    assert [s.train for s in cfg.stages] == ["new_embeddings", "all"]
    assert cfg.precision == "bf16" and cfg.gradient_checkpointing and cfg.peak_flops
    assert cfg.seq_len == 4096


def test_deepspeed_json_values_that_disagree_are_refused(tmp_path: Path) -> None:
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "gradient_clipping": "auto",
                              "optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  model_dir: m\n  train_data: [d]\n  out_dir: o\n"
                      "  deepspeed_config: ds.json\n"
                      "  micro_batch_size: 4\n  stages: [{name: a, steps: 2, lr: 1.0e-3}]\n")
    with pytest.raises(ConfigError) as err:
        deepspeed_config(load_recipe(recipe), world_size=2, on_gpu=False)
    text = str(err.value)
    assert "train_micro_batch_size_per_gpu is 8 but the recipe gives 4" in text
    assert "zero_optimization.stage must be 3" in text and "remove 'optimizer'" in text


def test_config_problems_are_reported_together(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  model_dir: m\n  train_data: [d]\n  out_dir: o\n"
                      "  deepspeed_config: x.json\n"
                      "  seq_lenn: 64\n  stages: [{name: a, steps: 2, lr: 1.0e-3, warmup_steps: 5}]\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe)
    assert "2 config problems" in str(err.value)
    assert "pretrain.seq_lenn: unknown key; did you mean 'seq_len'?" in str(err.value)
    assert "pretrain.stages[0].warmup_steps: must be between 0 and steps (2)" in str(err.value)


def test_row_mask_zeroes_old_rows_only() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kovocab.pretraining.masks import mask_old_rows, unmask_rows

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    mask_old_rows(model, 32)
    ids = torch.randint(0, 40, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert w.grad is not None
        assert torch.count_nonzero(w.grad[:32]) == 0 and torch.count_nonzero(w.grad[32:]) > 0
    unmask_rows(model)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    assert torch.count_nonzero(model.get_output_embeddings().weight.grad[:32]) > 0


def test_warmup_cosine_schedule() -> None:
    from kovocab.pretraining.engine import WarmupCosine

    f = WarmupCosine(steps=10, warmup=2, min_ratio=0.1)
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0
    assert math.isclose(f(10), 0.1) and all(f(i) >= f(i + 1) for i in range(2, 12))


def test_missing_inputs_and_a_gguf_model_are_refused_before_launch(tmp_path: Path) -> None:
    import dataclasses

    from kovocab.pretraining.config import StageConfig, check_paths

    model = tmp_path / "model"
    model.mkdir()
    # Tied models train (tests/test_pretraining_tied.py): only the missing text is refused here.
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": True}))
    cfg = PretrainConfig(model_dir=model, train_data=(tmp_path / "nope",), out_dir=tmp_path / "out",
                         stages=(StageConfig(name="a", steps=1, lr=1e-3),),
                         deepspeed_config=ROOT / "pretrain" / "zero3_cpu.json")
    with pytest.raises(ConfigError) as err:
        check_paths(cfg)
    assert str(err.value) == f"pretrain.train_data: path not found: {tmp_path / 'nope'}"
    gguf = tmp_path / "m.gguf"
    with pytest.raises(ConfigError, match=r"pretrain.model_dir: .*m\.gguf is a GGUF file; convert it once"):
        check_paths(dataclasses.replace(cfg, model_dir=gguf))


def test_deepspeed_json_conflicts_stop_the_launcher_before_any_rank_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 12.6: a conflict surfaced only in the ranks, once per rank, under torchrun's
    # ChildFailedError traceback, after the token store had been built.
    from conftest import LLAMA2_MODEL

    from kovocab.cli import main
    from kovocab.tokenizer.export import load_proto, write_hf_tokenizer

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False}))
    write_hf_tokenizer(load_proto(LLAMA2_MODEL), model)  # so the token store could be built
    (tmp_path / "ko.txt").write_text("안녕하세요, 오늘은 날씨가 좋네요.\n", encoding="utf-8")
    ds = json.loads((ROOT / "pretrain" / "zero3_cpu.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = 8
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pretrain:\n  model_dir: model\n  train_data: [ko.txt]\n  out_dir: out\n"
                      "  deepspeed_config: ds.json\n  micro_batch_size: 4\n"
                      "  stages: [{name: a, steps: 2, lr: 1.0e-3}]\n", encoding="utf-8")
    assert main(["pretrain", "--config", str(recipe), "--nproc-per-node", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kovocab: error: {tmp_path / 'ds.json'}: train_micro_batch_size_per_gpu is 8 but "
                          "the recipe gives 4")
    assert err.count("train_micro_batch_size_per_gpu") == 1
    assert not (tmp_path / "out").exists()  # no token store, no launch.yaml: nothing started
