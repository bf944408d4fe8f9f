"""`kovocab run`: one recipe through every stage, on real text, a real base tokenizer and a tiny Llama.

The recipe is written in the test (50 novels + the Constitution, Llama-2's tokenizer.model grown by
1,024 Korean pieces, a 2-layer Llama); the shipped recipes are checked to build without running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import DATA, LLAMA2_MODEL, ROOT

from kovocab.cli import main
from kovocab.errors import ConfigError
from kovocab.run import STAGES, run_recipe


def tiny_recipe(out: Path) -> dict[str, Any]:
    return {
        "run": {"out_dir": str(out), "nproc_per_node": 2},
        "shard": {
            "sources": [
                {"name": "koconovel", "paths": [str(DATA / "koconovel" / "text" / "*.text.jsonl")],
                 "format": "jsonl", "field": "text"},
                {"name": "kolaw", "paths": [str(DATA / "konlpy_corpus" / "kolaw" / "constitution.txt")],
                 "txt_mode": "paragraph"},
            ],
            "shards": 2, "eval_permille": 20,
        },
        "expand_vocab": {"base": str(LLAMA2_MODEL), "target_vocab_size": 33024},
        "init_model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128},
        "resize_embeddings": {"init": "subword-mean"},
        "pretrain": {
            "deepspeed_config": str(ROOT / "pretrain" / "zero3_cpu.json"),
            "max_documents": 400, "seq_len": 64, "micro_batch_size": 2, "precision": "fp32",
            "checkpoint_every": 0, "eval_every": 0,
            "stages": [{"name": "embeddings-only", "train": "new_embeddings", "steps": 3, "lr": 1e-2},
                       {"name": "all", "train": "all", "steps": 3, "lr": 1e-3}],
        },
        "report": {"max_lines": 500},
        "eval": {"kobest_dir": str(DATA / "kobest"), "tasks": ["copa", "boolq"], "max_examples_per_task": 8,
                 "max_documents": 20},
    }


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.slow
def test_run_every_stage_then_skip_and_rerun_downstream(tmp_path: Path) -> None:
    """The end-to-end test: `kovocab run` through all eight stages, ZeRO-3 on two CPU ranks."""
    from kovocab.model.tiny import InitModelConfig, init_model

    run_dir = tmp_path / "run"
    data = tiny_recipe(run_dir)
    # The chat vector's instruct model: B's architecture and vocabulary, other weights (seed 1).
    instruct = init_model(InitModelConfig(**{**data["init_model"], "tokenizer": LLAMA2_MODEL, "seed": 1,
                                             "out_dir": tmp_path / "instruct"})).out_dir
    data["chat_vector"] = {"instruct_model": str(instruct), "new_rows": "mean"}
    recipe = write_recipe(tmp_path / "tiny.yaml", data)
    assert main(["run", str(recipe), "-q"]) == 0
    state = json.loads((run_dir / "run.json").read_text())
    assert sorted(state["stages"]) == sorted(s for s in STAGES if s != "import_gguf")  # no GGUF here
    assert all(s["status"] == "complete" for s in state["stages"].values())
    expand = state["stages"]["expand_vocab"]["summary"]
    assert expand["golden_tokens_before"] == 30 and expand["vocab_size"] == 33024
    assert expand["korean_tokens_per_sentence_after"] < expand["korean_tokens_per_sentence_before"]
    from safetensors import safe_open

    with safe_open(str(run_dir / "model" / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [33024, 32]
    # pretrain: both stages ran on the resized model, and the export is a loadable checkpoint.
    metrics = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics if "loss" in m] == ["embeddings-only"] * 3 + ["all"] * 3
    assert state["stages"]["pretrain"]["summary"]["steps"] == 6
    with safe_open(str(run_dir / "pretrain" / "hf" / "model.safetensors"), "pt") as f:
        assert f.get_slice("lm_head.weight").get_shape() == [33024, 32]
    # chat_vector: pretrain's export + (instruct - the init_model base), in the expanded vocabulary.
    cv = json.loads((run_dir / "chat_vector" / "manifest.json").read_text())
    assert cv["inputs"]["model_dir"]["path"] == str(run_dir / "pretrain" / "hf")
    assert cv["inputs"]["base_model"]["path"] == str(run_dir / "base_model")
    assert (cv["stats"]["base_rows"], cv["stats"]["rows"]) == (32000, 33024)
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert {"base", "kovocab"} <= set(report["tokenizers"])
    # eval: the resized model (step 0) and the pretrained one, side by side.
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert json.dumps(ev).count("pretrained") >= 1 and json.dumps(ev).count("resized") >= 1
    assert "copa" in (run_dir / "eval" / "eval.md").read_text().lower()

    # Second run: every stage is complete and skipped, nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != "run.json"}
    res = run_recipe(recipe)
    assert all(s.skipped for s in res.stages)
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}

    # A changed report runs report and the stages after it again, not the earlier ones.
    res = run_recipe(recipe, ["report.max_lines=300"])
    assert [s.name for s in res.stages if not s.skipped] == ["report", "eval"]


def test_run_reports_recipe_mistakes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    recipe = tiny_recipe(tmp_path / "run")
    recipe["shrad"] = recipe.pop("shard")
    path = write_recipe(tmp_path / "typo.yaml", recipe)
    assert main(["run", str(path)]) == 1
    assert "shrad: not a section of a run recipe; did you mean 'shard'?" in capsys.readouterr().err
    recipe["shard"] = recipe.pop("shrad")
    recipe["vocab_merge"] = {"target_vocab_size": 33024}
    with pytest.raises(ConfigError, match="vocab_merge: .* in its expand_vocab: section"):
        run_recipe(recipe)
    with pytest.raises(ConfigError, match="run.stages: unknown stage 'sharding'"):
        run_recipe(write_recipe(tmp_path / "ok.yaml", tiny_recipe(tmp_path / "run")), stages=["sharding"])
    # Problems in several stages are reported together, before anything runs, without knock-on
    # complaints from the stages that read a broken stage's outputs.
    ok = write_recipe(tmp_path / "ok.yaml", tiny_recipe(tmp_path / "run"))
    with pytest.raises(ConfigError) as err:
        run_recipe(ok, ["init_model.hidden_size=33", "eval.tasks=[copaa]"])
    assert len(err.value.problems) == 2, err.value.problems
    assert not (tmp_path / "run").exists()
    assert main(["run", str(tmp_path / "missing.yaml")]) == 1
    assert "recipe not found" in capsys.readouterr().err


def test_stage_order_matches_the_pipeline() -> None:
    from kovocab.stages import STAGE_TABLE

    assert [s.name for s in STAGE_TABLE] == [s for s in STAGES if s in {t.name for t in STAGE_TABLE}]


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_build(recipe: Path) -> None:
    """Every section of every shipped run recipe builds into its stage config (nothing is run)."""
    from kovocab.run import plan_recipe

    plan = plan_recipe(recipe)
    assert plan and all(cfg is not None for _, cfg in plan)


def test_from_takes_a_section_from_another_recipe(tmp_path: Path) -> None:
    """`shard: {from: corpora/...}` reads that file's sources (paths relative to it) into this run."""
    recipe = tiny_recipe(tmp_path / "run")
    recipe["shard"] = {"from": str(ROOT / "corpora" / "nsmc_novels.yaml"), "shards": 3}
    from kovocab.run import plan_recipe

    plan = dict(plan_recipe(recipe))
    shard = plan["shard"]
    assert shard.out == tmp_path / "run" / "corpus" and shard.shards == 3
    nsmc = next(s for s in shard.sources if s.name == "nsmc")
    assert Path(nsmc.paths[0]) == DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz"
    assert plan["expand_vocab"].corpus == (tmp_path / "run" / "corpus",)
    recipe["shard"] = {"from": str(ROOT / "tokenizers" / "llama2_ko_46k.yaml")}
    with pytest.raises(ConfigError, match="has no 'shard:' section"):
        plan_recipe(recipe)


def test_stopped_stage_continues_and_changed_stage_starts_clean(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(run_dir))
    stages = ["shard", "expand_vocab"]
    run_recipe(recipe, stages=stages)
    # expand_vocab stopped half-way: its record says "started", its manifest is not written yet.
    state = json.loads((run_dir / "run.json").read_text())
    state["stages"]["expand_vocab"]["status"] = "started"
    (run_dir / "run.json").write_text(json.dumps(state))
    (run_dir / "tokenizer" / "tokenizer" / "manifest.json").unlink()
    # A temporary of the killed stage: kovocab's own, so it is neither refused nor wiped here.
    keep = run_dir / "tokenizer" / "tokenizer" / ".tokenizer.json.ab12cd34.tmp"
    keep.write_text("x")
    res = run_recipe(recipe, stages=stages)
    assert [s.skipped for s in res.stages] == [True, False]
    assert keep.exists(), "a stopped stage with the same config is continued, not wiped"
    assert (run_dir / "tokenizer" / "tokenizer" / "manifest.json").is_file()
    # Another config for the stage: its old outputs go before it runs again.
    res = run_recipe(recipe, ["expand_vocab.seed=1"], stages=stages)
    assert [s.skipped for s in res.stages] == [True, False]
    assert not keep.exists()
    assert json.loads((run_dir / "run.json").read_text())["stages"]["expand_vocab"]["status"] == "complete"


@pytest.mark.parametrize("recipe", sorted((ROOT / "tokenizers").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_tokenizer_recipes_build(recipe: Path) -> None:
    """Each section of the tokenizer recipes builds into its stage's config (nothing is run)."""
    from kovocab.config import load_section, read_recipe
    from kovocab.tokenizer.expand import ExpandVocabConfig
    from kovocab.tokenizer.merge import MergeVocabConfig
    from kovocab.tokenizer.train import TokenizerTrainingConfig

    data = read_recipe(recipe)
    classes = {"expand_vocab": ExpandVocabConfig, "tokenizer_training": TokenizerTrainingConfig,
               "vocab_merge": MergeVocabConfig}
    sections = [k for k in data if not k.startswith("_")]
    assert sections and set(sections) <= set(classes)
    for name in sections:
        load_section(classes[name], data, name)
    if "expand_vocab" in data:
        assert load_section(ExpandVocabConfig, data, "expand_vocab").target_vocab_size % 64 == 0


def test_run_folder_is_locked_and_a_changed_stage_keeps_foreign_files(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A second `kovocab run` into a folder in use is refused; a stage rerun for another config
    removes only what it wrote, and refuses a folder holding anything else (nothing is deleted)."""
    import signal
    import socket
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    recipe = tiny_recipe(run_dir)
    recipe["shard"]["sources"] = recipe["shard"]["sources"][1:]  # the Constitution only: fast
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    hold = ("import sys, time\nfrom kovocab.artifacts import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert main(["run", str(path), "--stages", "shard"]) == 1
        err = capsys.readouterr().err
        assert f"kovocab: error: {run_dir} is in use by pid {proc.pid} on {socket.gethostname()}" in err
        assert not (run_dir / "corpus").exists() and not (run_dir / "run.json").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    assert main(["run", str(path), "--stages", "shard", "-q"]) == 0  # takes over the dead run's lock
    corpus = run_dir / "corpus"
    shards = sorted(p.name for p in corpus.glob("train-*"))
    notes = corpus / "notes.md"
    notes.write_text("# 메모\n", encoding="utf-8")
    assert main(["run", str(path), "--stages", "shard", "--set", "shard.shards=3", "-q"]) == 1
    err = capsys.readouterr().err
    assert "kovocab: error: shard.out:" in err and "notes.md" in err
    assert notes.read_text(encoding="utf-8") == "# 메모\n"
    assert sorted(p.name for p in corpus.glob("train-*")) == shards
    notes.unlink()
    assert main(["run", str(path), "--stages", "shard", "--set", "shard.shards=3", "-q"]) == 0
    assert len(list(corpus.glob("train-*.parquet"))) == 3
