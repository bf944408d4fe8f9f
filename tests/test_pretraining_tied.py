"""Tied input embeddings and LM head (SmolLM2, Llama-3.2-1B, Qwen2.5) through resize, pretrain and eval.

A tiny tied Llama with Llama-2's vocabulary is resized to the real expanded tokenizer,
trained under DeepSpeed ZeRO-3 on two gloo ranks (new rows only, then everything),
exported and loaded back. (Exact resume of a tied run was tested once, in the commit that
added this file, and dropped for the suite's time budget: it costs a second launch.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import news_lines

from kovocab.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE_ROWS = 32000
STAGES = "[{name: s1, train: new_embeddings, steps: 2, lr: 2.0e-2}, " \
         "{name: s2, train: all, steps: 2, lr: 1.0e-2, embedding_lr: 2.0e-2}]"
EMBED = "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory: pytest.TempPathFactory, expanded_tokenizer: Path, korean_shards: Path,
             shared_data: Path) -> dict[str, Any]:
    import torch

    from kovocab.model.resize import resize_embeddings
    from kovocab.model.tiny import InitModelConfig, init_model

    root = tmp_path_factory.mktemp("tied")
    base = init_model(InitModelConfig(tokenizer=shared_data / "llama2_tokenizer" / "tokenizer.model",
                                      out_dir=root / "base", tie_word_embeddings=True, hidden_size=64,
                                      intermediate_size=128, max_position_embeddings=256)).out_dir
    torch.manual_seed(0)
    resized = resize_embeddings(base, expanded_tokenizer, root / "resized")
    english = root / "english.txt"
    english.write_text("\n".join(news_lines("en")[:16]) + "\n", encoding="utf-8")
    sets = [f"pretrain.model_dir={resized.out_dir}", f"pretrain.train_data=[{korean_shards}]",
            "pretrain.eval_korean=[]", f"pretrain.eval_english=[{english}]",
            f"pretrain.deepspeed_config={ROOT / 'pretrain/zero3_cpu.json'}",
            f"pretrain.token_store_dir={root / 'tokens'}", "pretrain.max_documents=300",
            "pretrain.checkpoint_every=2", "pretrain.keep_checkpoints=2", "pretrain.eval_every=4",
            "pretrain.eval_max_documents=4", "pretrain.seq_len=64", f"pretrain.stages={STAGES}"]

    def pretrain(out: Path, *extra: str) -> None:
        args = [a for kv in [*sets, f"pretrain.out_dir={out}"] for a in ("--set", kv)]
        rc = main(["pretrain", "--config", str(ROOT / "pretrain/tiny_cpu.yaml"), "--nproc-per-node", "2",
                   *args, *extra])
        assert rc == 0, (out / "error.json").read_text() if (out / "error.json").is_file() else rc

    pretrain(root / "a")
    return {"root": root, "resized": resized, "english": english}


def test_resize_keeps_one_shared_matrix(tied_run: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    res = tied_run["resized"]
    assert res.tied and res.tensors == (EMBED,)
    weights = load_file(res.out_dir / "model.safetensors")
    assert "lm_head.weight" not in weights and weights[EMBED].shape == (33024, 64)
    config = json.loads((res.out_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == 33024


@pytest.mark.slow
def test_tied_stages_move_only_new_rows_then_all_and_export_stays_tied(tied_run: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tied_run["root"] / "a"
    before = load_file(tied_run["resized"].out_dir / "model.safetensors")
    s1 = load_file(out / "stages" / "s1" / "model.safetensors")
    s2 = load_file(out / "stages" / "s2" / "model.safetensors")
    assert set(before) == set(s1) == set(s2) and "lm_head.weight" not in s1
    # Stage 1: the base rows of the one matrix are bit-identical, the new rows moved, the body froze.
    assert torch.equal(s1[EMBED][:BASE_ROWS], before[EMBED][:BASE_ROWS])
    assert (s1[EMBED][BASE_ROWS:] != before[EMBED][BASE_ROWS:]).any(dim=1).sum() > 50
    body = [n for n in before if n != EMBED]
    assert all(torch.equal(s1[n], before[n]) for n in body)
    # Stage 2 trains everything, the base rows of the shared matrix among them.
    assert not torch.equal(s2[EMBED][:BASE_ROWS], before[EMBED][:BASE_ROWS])
    assert not all(torch.equal(s2[n], before[n]) for n in body)
    hf = out / "hf"
    assert json.loads((hf / "config.json").read_text())["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight.detach(), s2[EMBED])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["s1", "s1", "s2", "s2"] and 0 < rows[-1]["bpb_en"] < 30
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"  # saved under ZeRO-3


def test_eval_scores_the_tied_export(tied_run: dict[str, Any]) -> None:
    from kovocab.evaluation.bpb import bits_per_byte

    docs = tied_run["english"].read_text().splitlines()[:4]
    trained = bits_per_byte(tied_run["root"] / "a" / "hf", tied_run["root"] / "a" / "hf", docs)
    resized = bits_per_byte(tied_run["resized"].out_dir, tied_run["resized"].out_dir, docs)
    assert 0 < trained.bits_per_byte < 30 and trained.bits_per_byte != resized.bits_per_byte


def test_after_stage_one_english_changes_only_by_the_new_rows_mass(tied_run: dict[str, Any],
                                                                   shared_data: Path) -> None:
    """Stage 1 moves only new rows of the tied matrix, so on English (no new token) every
    log-probability is the base model's plus log(1 - q), q the probability the stage-1 model
    puts on the new rows: the only English cost of stage 1, exactly."""
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM

    sp = spm.SentencePieceProcessor(model_file=str(shared_data / "llama2_tokenizer" / "tokenizer.model"))
    lines = news_lines("en")
    ids = torch.tensor([[sp.bos_id(), *sp.encode(" ".join(lines[k:k + 20]))][:128] for k in (40, 80)])
    assert ids.shape == (2, 128)
    base = AutoModelForCausalLM.from_pretrained(str(tied_run["root"] / "base")).eval()
    s1 = AutoModelForCausalLM.from_pretrained(str(tied_run["root"] / "a" / "stages" / "s1")).eval()
    with torch.no_grad():
        lp_base = torch.log_softmax(base(ids).logits.double(), -1)
        lp_s1 = torch.log_softmax(s1(ids).logits.double(), -1)
    target = ids[:, 1:].unsqueeze(-1)
    base_tok = lp_base[:, :-1].gather(-1, target).squeeze(-1)
    s1_tok = lp_s1[:, :-1].gather(-1, target).squeeze(-1)
    q = lp_s1[:, :-1, BASE_ROWS:].exp().sum(-1)
    assert lp_s1.shape[-1] > BASE_ROWS and float(q.min()) > 0
    torch.testing.assert_close(s1_tok, base_tok + torch.log1p(-q), atol=1e-4, rtol=0)
    assert float((s1_tok - base_tok).abs().max()) > 1e-6  # the term is there, not zero
