"""Real pretrained weights: karpathy's stories260K (llama2.c legacy .bin) converted to
Hugging Face here, checked against a llama2.c-style forward pass, then resized 512 -> 576.

Its own 512-piece tokenizer is not available, so the first 512 Llama-2 pieces stand in
as the base tokenizer (ids only matter for `mean`; for `subword-mean` they are the split).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, LLAMA2_MODEL
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from kovocab.model.resize import resize_embeddings

BIN = DATA / "llama2c_stories260K" / "stories260K.bin"


def read_llama2c(path: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Header 7 x int32, then float32 weights in llama2.c's legacy order (shared classifier)."""
    raw = path.read_bytes()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("7i", raw[:28])
    h = {"dim": dim, "hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads,
         "vocab": abs(vocab), "seq_len": seq_len}
    flat = torch.from_numpy(np.frombuffer(raw, dtype="<f4", offset=28).copy())
    kv_dim, head = dim * kv_heads // heads, dim // heads
    shapes = [("tok", (abs(vocab), dim)), ("rms_att", (layers, dim)), ("wq", (layers, dim, dim)),
              ("wk", (layers, kv_dim, dim)), ("wv", (layers, kv_dim, dim)), ("wo", (layers, dim, dim)),
              ("rms_ffn", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
              ("w3", (layers, hidden, dim)), ("rms_final", (dim,)), ("freq_real", (seq_len, head // 2)),
              ("freq_imag", (seq_len, head // 2))]
    w, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        w[name] = flat[at : at + n].view(shape)
        at += n
    assert at == flat.numel() and vocab > 0  # positive vocab: classifier shared with the embedding
    return h, w


def to_hf(h: dict[str, int], w: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=h["vocab"], hidden_size=h["dim"], intermediate_size=h["hidden"],
                      num_hidden_layers=h["layers"], num_attention_heads=h["heads"],
                      num_key_value_heads=h["kv_heads"], max_position_embeddings=h["seq_len"],
                      rms_norm_eps=1e-5, tie_word_embeddings=True)
    head = h["dim"] // h["heads"]

    def permute(t: torch.Tensor, n: int) -> torch.Tensor:
        # llama2.c rotates interleaved pairs (x0,x1),(x2,x3); HF rotates halves: reorder per head
        return t.view(n, head // 2, 2, t.shape[1]).transpose(1, 2).reshape(t.shape)

    sd = {"model.embed_tokens.weight": w["tok"], "model.norm.weight": w["rms_final"]}
    for i in range(h["layers"]):
        p = f"model.layers.{i}."
        sd |= {p + "input_layernorm.weight": w["rms_att"][i],
               p + "post_attention_layernorm.weight": w["rms_ffn"][i],
               p + "self_attn.q_proj.weight": permute(w["wq"][i], h["heads"]),
               p + "self_attn.k_proj.weight": permute(w["wk"][i], h["kv_heads"]),
               p + "self_attn.v_proj.weight": w["wv"][i], p + "self_attn.o_proj.weight": w["wo"][i],
               p + "mlp.gate_proj.weight": w["w1"][i], p + "mlp.down_proj.weight": w["w2"][i],
               p + "mlp.up_proj.weight": w["w3"][i]}
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model.eval()


def llama2c_forward(h: dict[str, int], w: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """The forward pass of llama2.c's run.c, in float64, with its own freq_cis tables."""
    d = {k: v.double() for k, v in w.items()}
    hs, nh, nkv = h["dim"] // h["heads"], h["heads"], h["kv_heads"]

    def rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * g

    def rope(x: torch.Tensor) -> torch.Tensor:  # (T, heads, hs), pairs (2j, 2j+1)
        c, s = d["freq_real"][: x.shape[0], None, :], d["freq_imag"][: x.shape[0], None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)

    x = d["tok"][ids]
    t = len(ids)
    mask = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(h["layers"]):
        xb = rms(x, d["rms_att"][i])
        q = rope((xb @ d["wq"][i].T).view(t, nh, hs))
        k = rope((xb @ d["wk"][i].T).view(t, nkv, hs)).repeat_interleave(nh // nkv, 1)
        v = (xb @ d["wv"][i].T).view(t, nkv, hs).repeat_interleave(nh // nkv, 1)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / hs**0.5 + mask, -1)
        x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(t, -1) @ d["wo"][i].T
        xb = rms(x, d["rms_ffn"][i])
        x = x + (torch.nn.functional.silu(xb @ d["w1"][i].T) * (xb @ d["w3"][i].T)) @ d["w2"][i].T
    return rms(x, d["rms_final"]) @ d["tok"].T


def first_pieces(n: int, out: Path) -> Path:
    proto = pb.ModelProto()
    proto.ParseFromString(LLAMA2_MODEL.read_bytes())
    del proto.pieces[n:]
    out.write_bytes(proto.SerializeToString())
    return out


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int], dict[str, torch.Tensor]]:
    h, w = read_llama2c(BIN)
    folder = tmp_path_factory.mktemp("stories") / "hf"
    to_hf(h, w).save_pretrained(folder, max_shard_size="300KB")
    return folder, h, w


def test_conversion_matches_llama2c(stories: tuple[Path, dict[str, int], dict[str, torch.Tensor]]) -> None:
    folder, h, w = stories
    assert (h["dim"], h["layers"], h["heads"], h["kv_heads"], h["vocab"]) == (64, 5, 8, 4, 512)
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0].double()
    torch.testing.assert_close(got, llama2c_forward(h, w, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init", ["mean", "subword-mean"])
def test_resize_real_weights_keeps_base_logits(
    stories: tuple[Path, dict[str, int], dict[str, torch.Tensor]], tmp_path: Path, init: str
) -> None:
    folder, _, w = stories
    base, expanded = first_pieces(512, tmp_path / "base.model"), first_pieces(540, tmp_path / "exp.model")
    res = resize_embeddings(folder, expanded, tmp_path / "out", init=init, base_tokenizer=base)  # type: ignore[arg-type]
    assert (res.vocab_size, res.plan.new_pieces, res.plan.padding_rows, res.tied) == (576, 28, 36, True)
    before = AutoModelForCausalLM.from_pretrained(folder).eval()
    after = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    emb = after.get_input_embeddings().weight
    assert emb.shape == (576, 64) and torch.equal(emb[:512], w["tok"])
    if init == "mean":
        torch.testing.assert_close(emb[512:], w["tok"].mean(0).expand(64, -1), rtol=1e-5, atol=1e-6)
    ids = torch.randint(3, 512, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = before(ids).logits, after(ids).logits
    torch.testing.assert_close(b[..., :512], a, rtol=1e-5, atol=1e-5)
    # the new rows take some probability mass from the base ids, which is what bpb shows
    assert (torch.logsumexp(b, -1) > torch.logsumexp(a, -1)).all()
