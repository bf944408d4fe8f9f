"""Chat vector: C + s * (I - B) on real tiny Llamas built and trained here.

B is `init_model` on Llama-2's real tokenizer; I is B after a few AdamW steps on English
news (with a chat template); C is B resized to Chinese-LLaMA-2's real 55,296-piece
tokenizer with seeded noise on every weight (standing in for continued pretraining). Every
expected tensor is recomputed here from the three checkpoints with torch, independently of
kovocab's streaming code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
import torch
from conftest import DATA, LLAMA2_MODEL, news_lines
from safetensors import safe_open
from safetensors.torch import save_file
from test_model_resize import weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from kovocab.artifacts import sha256_file
from kovocab.cli import main
from kovocab.errors import InputError
from kovocab.model.chat_vector import ChatVectorConfig, chat_vector
from kovocab.model.resize import resize_embeddings
from kovocab.model.safetensors_io import open_checkpoint
from kovocab.model.tiny import InitModelConfig, init_model

CHINESE = DATA / "tokenizers" / "chinese_llama2_expanded"
MISTRAL = DATA / "tokenizers" / "mistral_v1" / "tokenizer.model.v1"
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}<|assistant|>"
SIDE_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def base(folder: Path, *, tied: bool = False, hidden: int = 32) -> Path:
    init_model(InitModelConfig(tokenizer=LLAMA2_MODEL, out_dir=folder, hidden_size=hidden,
                               intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied))
    return folder


def trained(src: Path, dst: Path, text: str, seed: int) -> Path:
    """`src` after 3 AdamW steps on `text` (weight decay moves every row, seen or not)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ids = torch.tensor(spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model")).encode(text)[:128])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        model(input_ids=ids.reshape(2, -1), labels=ids.reshape(2, -1)).loss.backward()
        opt.step()
        opt.zero_grad()
    return saved(model, src, dst)


def perturbed(src: Path, dst: Path, seed: int) -> Path:
    """`src` with seeded noise on every weight (a stand-in for continued pretraining), in 1 MB shards."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)
    return saved(model, src, dst, shard="1MB")


def saved(model: Any, src: Path, dst: Path, shard: str = "5GB") -> Path:
    model.save_pretrained(dst, max_shard_size=shard)
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


def models(root: Path, tied: bool) -> tuple[Path, Path, Path]:
    b = base(root / "B", tied=tied)
    i = trained(b, root / "I", " ".join(news_lines("en")[:40]), seed=1)
    (i / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    resized = resize_embeddings(b, CHINESE, root / "resized", init="mean").out_dir
    # C in several shards, so the output keeps a sharded layout and its index.
    c = perturbed(resized, root / "C", seed=2)
    return b, i, c


@pytest.fixture(scope="module")
def untied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return models(tmp_path_factory.mktemp("untied"), tied=False)


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return models(tmp_path_factory.mktemp("tied"), tied=True)


def expected(b: Path, i: Path, c: Path, scale: float, mean: bool) -> dict[str, torch.Tensor]:
    """C + s * (I - B) in float32, base rows only for embeddings/head; new rows keep C or add the mean."""
    wb, wi, wc = weights(b), weights(i), weights(c)
    out = {}
    for name, ct in wc.items():
        src = name if name in wb else EMBED  # C's untied head of a tied B/I
        d = scale * (wi[src].float() - wb[src].float())
        merged = ct.float().clone()
        n = d.shape[0]
        merged[:n] = merged[:n] + d
        if mean and ct.shape[0] > n:
            merged[n:] += d.double().mean(0).float()
        out[name] = merged.to(ct.dtype)
    return out


def test_output_is_c_plus_difference_exactly(untied: tuple[Path, Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    b, i, c = untied
    out = tmp_path / "chat"
    # chunk_mib 1: 8,192 rows of 32 floats per chunk, so a chunk straddles row 32,000 (B's last + 1).
    assert main(["chat-vector", "--base", str(b), "--instruct", str(i), "--model", str(c), "--out", str(out),
                 "--chunk-mib", "1", "-q"]) == 0
    assert "C + 1 * (I - B)" in capsys.readouterr().out
    got, want, wc, wb = weights(out), expected(b, i, c, 1.0, mean=False), weights(c), weights(b)
    assert set(got) == set(wc) and len(got) == 2 * 9 + 3
    for name, t in got.items():
        assert t.dtype == wc[name].dtype and torch.equal(t, want[name]), name
    for name in (EMBED, HEAD):
        assert got[name].shape == (55296, 32)
        assert not torch.equal(got[name][:32000], wc[name][:32000])  # the difference went in
        assert torch.equal(got[name][32000:], wc[name][32000:])  # new pieces keep C's rows
    assert not torch.equal(weights(i)[EMBED], wb[EMBED])
    # C's layout, config and tokenizer; the manifest holds the sha256 of all three inputs.
    assert sorted(p.name for p in out.glob("*.safetensors")) == open_checkpoint(c).shards
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 55296
    assert (out / "tokenizer.model").read_bytes() == (c / "tokenizer.model").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    for key, folder in (("base_model", b), ("instruct_model", i), ("model_dir", c)):
        digests = manifest["inputs"][key]["sha256"]
        assert {"config.json", *open_checkpoint(folder).shards} <= set(digests)
        assert all(digests[n] == sha256_file(folder / n) for n in digests)
    assert manifest["stats"]["new_rows"] == 23296 and manifest["stats"]["chat_template"] == "instruct_model"


def test_scale_mean_rows_and_a_bf16_c(untied: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """scale 0.5, new rows + the mean difference, C in bfloat16 (computed in float32, rounded once)."""
    b, i, c = untied
    c16 = tmp_path / "C16"
    shutil.copytree(c, c16)
    for shard in open_checkpoint(c).shards:
        save_file({k: v.to(torch.bfloat16) for k, v in weights(c).items()
                   if open_checkpoint(c).weight_map[k] == shard}, str(c16 / shard), metadata={"format": "pt"})
    index = json.loads((c16 / "model.safetensors.index.json").read_text())
    index["metadata"].pop("total_size", None)
    (c16 / "model.safetensors.index.json").write_text(json.dumps(index))
    res = chat_vector(ChatVectorConfig(base_model=b, instruct_model=i, model_dir=c16,
                                       out_dir=tmp_path / "out", scale=0.5, new_rows="mean"))
    got, want = weights(res.out_dir), expected(b, i, c16, 0.5, mean=True)
    for name, t in got.items():
        assert t.dtype == torch.bfloat16
        if name in (EMBED, HEAD):
            assert torch.equal(t[:32000], want[name][:32000])
            # The mean is summed in another order here; one bf16 step apart at most.
            assert torch.allclose(t[32000:].float(), want[name][32000:].float(), rtol=1e-2, atol=1e-4)
            assert not torch.equal(t[32000:], weights(c16)[name][32000:])
        else:
            assert torch.equal(t, want[name]), name


def test_tied_difference_added_once_loads_and_generates(tied: tuple[Path, Path, Path],
                                                        tmp_path: Path) -> None:
    b, i, c = tied
    res = chat_vector(ChatVectorConfig(base_model=b, instruct_model=i, model_dir=c, out_dir=tmp_path / "out"))
    got, want = weights(res.out_dir), expected(b, i, c, 1.0, mean=False)
    assert res.tied and HEAD not in got and set(got) == set(want)
    assert all(torch.equal(got[n], want[n]) for n in got)
    model = AutoModelForCausalLM.from_pretrained(res.out_dir, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.embed_tokens.weight, want[EMBED])
    tok = AutoTokenizer.from_pretrained(res.out_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "안녕하세요"}], tokenize=False)
    assert prompt.startswith("<|user|> 안녕하세요") and prompt.endswith("<|assistant|>")
    ids = tok(prompt, return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)[0, ids.shape[1]:]
    assert len(new) == 6 and isinstance(tok.decode(new), str)
    # An untied C of the tied B and I: its separate head gets the one matrix's difference too.
    untied_c = tmp_path / "C_untied"
    shutil.copytree(c, untied_c, ignore=shutil.ignore_patterns("model*.safetensors*"))
    wc = weights(c)
    save_file({**wc, HEAD: wc[EMBED].clone()}, str(untied_c / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((untied_c / "config.json").read_text())
    (untied_c / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    res = chat_vector(ChatVectorConfig(base_model=b, instruct_model=i, model_dir=untied_c,
                                       out_dir=tmp_path / "out2"))
    got = weights(res.out_dir)
    assert not res.tied and torch.equal(got[HEAD], want[EMBED]) and torch.equal(got[EMBED], want[EMBED])


def test_mismatches_are_named_before_anything_is_written(
        untied: tuple[Path, Path, Path], tied: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    b, i, c = untied

    def refused(match: str, base_model: Path = b, instruct: Path = i, model: Path = c) -> None:
        out = tmp_path / "out"
        with pytest.raises(InputError, match=match):
            chat_vector(ChatVectorConfig(base_model=base_model, instruct_model=instruct, model_dir=model,
                                         out_dir=out))
        assert not (out / "manifest.json").exists()

    refused(r"hidden_size differs: B 32, I 48, C 32", instruct=base(tmp_path / "wide", hidden=48))
    refused(r"C ties its LM head .* separate lm_head", model=tied[2])
    refused(r"tied LM head differs: untied in B, tied in I", instruct=tied[1])
    i16 = tmp_path / "I16"
    shutil.copytree(i, i16)
    save_file({k: v.to(torch.bfloat16) for k, v in weights(i).items()}, str(i16 / "model.safetensors"),
              metadata={"format": "pt"})
    refused(r"dtype F32 in B, BF16 in I", instruct=i16)
    other = tmp_path / "mistral_c"  # the right shapes under another model's 32,000 pieces
    shutil.copytree(b, other)
    (other / "tokenizer.model").write_bytes(MISTRAL.read_bytes())
    refused(r"vocabulary: \d+ of B's ids hold other pieces in C .*pieces appended", model=other)
    short = tmp_path / "short_c"  # a tensor lost in a conversion
    shutil.copytree(c, short)
    shard = open_checkpoint(c).weight_map["model.layers.1.mlp.up_proj.weight"]
    with safe_open(str(c / shard), framework="pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if k != "model.layers.1.mlp.up_proj.weight"}  # noqa: SIM118
    save_file(kept, str(short / shard), metadata={"format": "pt"})
    refused(r"C lacks 1 tensor\(s\) that B has: model.layers.1.mlp.up_proj.weight", model=short)
    with pytest.raises(InputError, match=r"chat_vector.out_dir: .* is the input C"):
        chat_vector(ChatVectorConfig(base_model=b, instruct_model=i, model_dir=c, out_dir=c))
    assert main(["chat-vector", "--base", str(b), "--instruct", str(tied[1]), "--model", str(c),
                 "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert "kovocab: error: chat_vector: the models do not fit together" in err
    assert "tied LM head differs" in err and "lacks" not in err and "Traceback" not in err
