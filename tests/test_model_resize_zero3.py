"""The in-memory resize under DeepSpeed ZeRO-3: two CPU processes over gloo, no GPU.

Each worker (this file run as a script) builds a tiny Llama partitioned by
`deepspeed.zero.Init`, resizes it with `resize_model_embeddings` and saves the gathered
matrices; the test compares them with each other and with the rows recomputed here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPANDED = "tokenizers/chinese_llama2_expanded"


def worker(rank: int, port: int, out: Path, data: Path) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    # DeepSpeed would JIT-compile its shared-memory allreduce (~80 s, into ~/.cache); gloo needs none.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    from kovocab.model.resize import resize_model_embeddings
    from kovocab.model.row_init import _gathered

    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    keep = HfDeepSpeedConfig(ds)  # noqa: F841 - transformers sees ZeRO-3 while this lives
    cfg = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = LlamaForCausalLM(cfg)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert hasattr(emb, "ds_id") and emb.numel() == 0  # partitioned
    with deepspeed.zero.GatheredParameters([emb, head]):
        before = {"embed": emb.detach().clone(), "head": head.detach().clone()}
    plan = resize_model_embeddings(model, data / "llama2_tokenizer" / "tokenizer.model", data / EXPANDED)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    params = [p for p in (emb, head) if hasattr(p, "ds_id")]
    with deepspeed.zero.GatheredParameters(params):
        after = {"embed": emb.detach().clone(), "head": head.detach().clone()}
    # A partitioned parameter written through _gathered: rank 0's values reach every rank.
    with deepspeed.zero.Init(config_dict_or_path=ds):
        probe = torch.nn.Linear(4, 4, bias=False)
    with _gathered([probe.weight]) as writer, torch.no_grad():
        if writer:
            probe.weight.data.fill_(float(rank + 7))
    with deepspeed.zero.GatheredParameters([probe.weight]):
        probe_value = probe.weight.detach().clone()
    torch.save({"before": before, "after": after, "rows": plan.total_rows, "vocab": model.config.vocab_size,
                "writer": rank == 0, "probe": probe_value}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_zero3_resize_gathers_and_initialises(tmp_path: Path, shared_data: Path) -> None:
    pytest.importorskip("deepspeed")
    from kovocab.pretraining.engine import free_port

    port = free_port()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), str(tmp_path), str(shared_data)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["rows"] == r0["vocab"] == 55296
    import sentencepiece as spm
    from test_model_resize import expected_rows

    sp = spm.SentencePieceProcessor(model_file=str(shared_data / EXPANDED / "tokenizer.model"))
    pieces = [sp.id_to_piece(i) for i in range(32000, 55296)]
    for name in ("embed", "head"):
        old, new = r0["before"][name], r0["after"][name]
        assert new.shape == (55296, 32) and torch.equal(new[:32000], old)
        assert torch.equal(new, r1["after"][name])  # every rank holds the same matrix
        torch.testing.assert_close(new[32000:].double(), expected_rows(old, pieces, 55296),
                                   rtol=1e-5, atol=1e-7)
    assert torch.equal(r0["probe"], torch.full((4, 4), 7.0)) and torch.equal(r1["probe"], r0["probe"])


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
