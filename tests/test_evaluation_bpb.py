"""The step-0 check: bits per byte under (model, tokenizer) pairs, sliding window included.

Reference NLLs are computed here token by token with plain forward passes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from conftest import DATA, GOLDEN_KO, LLAMA2_MODEL
from sentencepiece import sentencepiece_model_pb2 as pb
from test_model_resize import CHINESE, ENGLISH, tiny_llama
from transformers import AutoModelForCausalLM

from kovocab.cli import main
from kovocab.errors import TokenizerError
from kovocab.evaluation.bpb import bits_per_byte
from kovocab.model.resize import resize_embeddings

DOCS = [ENGLISH, GOLDEN_KO, "中国的天气很好，我们去公园吧。", "Short."]


def reference_nats(model: torch.nn.Module, seq: list[int], window: int, stride: int) -> float:
    """Token p is scored in the first window (starts 0, stride, 2*stride, ...) that ends after it."""
    total = 0.0
    for p in range(1, len(seq)):
        k = 0
        while min(k * stride + window, len(seq)) <= p:
            k += 1
        ctx = torch.tensor([seq[k * stride : p]])
        with torch.no_grad():
            logits = model(ctx).logits[0, -1]
        total -= float(torch.log_softmax(logits.double(), -1)[seq[p]])
    return total


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("bpb") / "base")


def test_bits_per_byte_is_nll_over_utf8_bytes(base_model: Path) -> None:
    res = bits_per_byte(base_model, LLAMA2_MODEL, DOCS, batch_size=3)
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    seqs = [[1, *sp.encode(d)] for d in DOCS]
    nats = 0.0
    for s in seqs:  # every document fits the 64-token window: one forward pass each
        with torch.no_grad():
            logits = model(torch.tensor([s])).logits[0, :-1].double()
        nats += float(torch.nn.functional.cross_entropy(logits, torch.tensor(s[1:]), reduction="sum"))
    assert res.bytes == sum(len(d.encode()) for d in DOCS) and res.documents == 4
    assert res.tokens == sum(len(s) - 1 for s in seqs)
    assert res.bits_per_byte == pytest.approx(nats / math.log(2) / res.bytes, rel=1e-5)
    # an untrained model is close to uniform over 32000 ids: ~15 bits per token
    assert res.bits_per_token == pytest.approx(math.log2(32000), rel=0.05)


def test_sliding_window_scores_every_token_once(base_model: Path) -> None:
    doc = " ".join([ENGLISH] * 3)
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    seq = [1, *sp.encode(doc)]
    assert len(seq) > 60
    res = bits_per_byte(base_model, LLAMA2_MODEL, [doc], max_length=16, stride=5)
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    assert res.tokens == len(seq) - 1
    assert res.nll_bits == pytest.approx(reference_nats(model, seq, 16, 5) / math.log(2), rel=1e-5)
    with pytest.raises(Exception, match="stride"):
        bits_per_byte(base_model, LLAMA2_MODEL, [doc], max_length=16, stride=16)


def test_cli_bpb_base_vs_resized(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proto = pb.ModelProto()
    proto.ParseFromString((CHINESE / "tokenizer.model").read_bytes())
    del proto.pieces[33000:]
    (tmp_path / "expanded.model").write_bytes(proto.SerializeToString())
    resized = resize_embeddings(base_model, tmp_path / "expanded.model", tmp_path / "resized",
                                base_tokenizer=LLAMA2_MODEL).out_dir
    text = tmp_path / "held_out.txt"
    text.write_text("\n".join(DOCS) + "\n\n", encoding="utf-8")
    out = tmp_path / "bpb.json"
    code = main(["bpb", "--model", str(base_model), "--tokenizer", str(LLAMA2_MODEL), "--model", str(resized),
                 "--text", str(text), "--max-length", "32", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bits/byte" in printed and str(resized) in printed
    results = json.loads(out.read_text())["results"]
    assert [r["bytes"] for r in results] == [sum(len(d.encode()) for d in DOCS)] * 2
    assert results[1]["tokens"] < results[0]["tokens"]  # the Chinese pieces shorten the third line
    with pytest.raises(TokenizerError, match="output rows"):
        bits_per_byte(base_model, tmp_path / "expanded.model", DOCS)
    assert DATA.is_dir()
