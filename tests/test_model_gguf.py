"""`kovocab import-gguf` on a small GGUF written here the way llama.cpp's converter writes one.

The file holds a tiny tied Llama and a byte-level BPE (SmolLM2's layout: `tokenizer.ggml.pre`
"smollm", specials at ids 0-2) trained on real English news. The real SmolLM2 GGUF takes
minutes to de-quantise on these machines; bench/gguf_import.py converts it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LLAMA2_MODEL as ROOT_LLAMA2
from conftest import news_lines

from kovocab.cli import main

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_CPP_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                   "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                   "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                   "ffn_down": "mlp.down_proj"}


def smollm_style_tokenizer(lines: list[str], vocab_size: int) -> Any:
    """A byte-level BPE split as SmolLM's tokenizer.json splits (each digit, then GPT-2's rule),
    plus the token 'Ġ1' that only GPT-2's rule alone can reach (it keeps ' 1' in one piece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    data = json.loads(tok.to_str())
    data["model"]["vocab"]["Ġ1"] = len(data["model"]["vocab"])
    data["model"]["merges"].append(["Ġ", "1"])
    return Tokenizer.from_str(json.dumps(data))


def write_gguf(model: Any, tok: Any, path: Path) -> None:
    """What llama.cpp's convert_hf_to_gguf.py writes for a Llama: its tensor names, Q/K rows
    permuted for its rotary layout, the vocabulary and merges as metadata; tied: no output.weight."""
    from gguf import GGUFWriter

    c = model.config
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    data = json.loads(tok.to_str())
    tokens = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([" ".join(m) for m in data["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def permute(t: np.ndarray, heads: int) -> np.ndarray:
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(c.num_hidden_layers):
        for ours, theirs in LLAMA_CPP_NAMES.items():
            t = sd[f"model.layers.{i}.{theirs}.weight"]
            if ours in ("attn_q", "attn_k"):
                t = permute(t, c.num_attention_heads if ours == "attn_q" else c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("gguf")
    tok = smollm_style_tokenizer(news_lines("en")[:600], 700)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2)).eval()
    gguf = root / "src" / "tiny-smollm.gguf"
    gguf.parent.mkdir()
    write_gguf(model, tok, gguf)
    out = root / "hf"
    assert main(["import-gguf", "--gguf", str(gguf), "--out", str(out)]) == 0
    return {"root": root, "gguf": gguf, "out": out, "model": model, "tok": tok}


def test_import_gguf_writes_the_same_tied_model_with_a_manifest(tiny_gguf: dict[str, Any],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from kovocab.artifacts import sha256_file

    out = tiny_gguf["out"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    text = "The president said on Monday that 12 talks would go on."
    ids = torch.tensor([tiny_gguf["tok"].encode(text).ids])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_gguf["model"](ids).logits, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "import_gguf"
    assert manifest["inputs"]["gguf_sha256"] == sha256_file(tiny_gguf["gguf"])
    assert manifest["stats"]["tied"] is True and manifest["stats"]["pre_tokenizer"] == "smollm"
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(manifest["files"])
    # Converted once: the same file into the same folder is reused, not converted again.
    before = (out / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["import-gguf", "--gguf", str(tiny_gguf["gguf"]), "--out", str(out)]) == 0
    assert "already converted" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_smollm_pre_tokenizer_isolates_digits_as_llama_cpp_does(tiny_gguf: dict[str, Any]) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    saved = Tokenizer.from_file(str(tiny_gguf["out"] / "tokenizer.json"))
    assert "Ġ1" in saved.get_vocab()  # GPT-2's rule alone would reach it: ' 1' is one piece there
    assert saved.encode(" 123 abc").tokens[:4] == ["Ġ", "1", "2", "3"]
    assert [p for p, _ in saved.pre_tokenizer.pre_tokenize_str(" 123 abc")] == ["Ġ", "1", "2", "3", "Ġabc"]
    # The same ids as the tokenizer the file was made from, on real English with numbers in it.
    lines = [line for line in news_lines("en")[600:] if any(ch.isdigit() for ch in line)][:50]
    assert [e.ids for e in saved.encode_batch(lines)] == [e.ids for e in tiny_gguf["tok"].encode_batch(lines)]
    hf = AutoTokenizer.from_pretrained(tiny_gguf["out"])
    assert hf(" 123 abc").input_ids == saved.encode(" 123 abc").ids and hf.eos_token == "<|im_end|>"


def test_a_gguf_file_where_a_model_folder_goes_names_import_gguf(tiny_gguf: dict[str, Any], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    gguf = tiny_gguf["gguf"]
    assert main(["resize-embeddings", "--model", str(gguf), "--tokenizer", str(tiny_gguf["out"]),
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert f"kovocab: error: resize_embeddings.model_dir: {gguf} is a GGUF file" in err
    assert f"kovocab import-gguf --gguf {gguf} --out DIR" in err
    not_gguf = tiny_gguf["out"] / "config.json"
    assert main(["import-gguf", "--gguf", str(not_gguf), "--out", str(tmp_path / "x")]) == 1
    assert "is not a GGUF file" in capsys.readouterr().err


# --- subword-mean rows for a byte-level base (the converted folder above as the base model) ---


def spelled(text: str) -> str:
    """`text` in ByteLevel's printable-byte alphabet, as a vocabulary stores it."""
    from tokenizers import pre_tokenizers

    return "".join(p for p, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                   .pre_tokenize_str(text))


def expand_bytelevel(base_json: Path, out: Path, words: list[str], special: str) -> dict[str, int]:
    """A hand-made expansion: each word's bytes merged left to right into new tokens (the
    prefixes, partial UTF-8 characters among them, are new tokens too), then a special token."""
    data = json.loads(base_json.read_text(encoding="utf-8"))
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    size = 1 + max([*vocab.values(), *(t["id"] for t in data["added_tokens"])])
    for word in words:
        chars = spelled(word)
        prefix = chars[0]
        for ch in chars[1:]:
            if prefix + ch not in vocab:
                vocab[prefix + ch] = size
                size += 1
                merges.append([prefix, ch])
            prefix += ch
    data["added_tokens"].append({"id": size, "content": special, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json",):
        (out / name).write_bytes((base_json.parent / name).read_bytes())
    return {**vocab, special: size}


def test_resize_to_a_bytelevel_expansion_averages_the_base_bytes(tiny_gguf: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from kovocab.model.resize import resize_embeddings

    base = tiny_gguf["out"]
    base_vocab = json.loads((base / "tokenizer.json").read_text())["model"]
    n_base = len(base_vocab["vocab"])
    words = ["안녕", "하세요", " 대한민국"]
    vocab = expand_bytelevel(base / "tokenizer.json", tmp_path / "tok", words, "<|ko|>")
    res = resize_embeddings(base, tmp_path / "tok", tmp_path / "resized", pad_to_multiple_of=64)
    assert res.tied and res.base_vocab_size == n_base and res.vocab_size % 64 == 0
    old = load_file(base / "model.safetensors")["model.embed_tokens.weight"]
    new = load_file(tmp_path / "resized" / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(new[:n_base], old) and new.shape[0] == res.vocab_size
    base_merges = {tuple(m) for m in base_vocab["merges"]}
    for word in ("안녕", "하세요", "하"):  # whole words, and a partial UTF-8 character: 2 of 하's 3 bytes
        chars = spelled(word)[: 2 if word == "하" else None]
        # English text taught the base no merge between these bytes: it splits them byte by byte.
        assert not any((a, b) in base_merges for a, b in zip(chars, chars[1:], strict=False))
        expected = old[[base_vocab["vocab"][c] for c in chars]].mean(0)
        assert torch.allclose(new[vocab[chars]], expected, atol=1e-6), word
    # ' 대한민국': the space is its own base token 'Ġ'; the special token gets the mean of all rows.
    ko = spelled(" 대한민국")
    expected = old[[base_vocab["vocab"][c] for c in ko]].mean(0)
    assert torch.allclose(new[vocab[ko]], expected, atol=1e-6)
    assert torch.allclose(new[vocab["<|ko|>"]], old.mean(0), atol=1e-6)
    assert res.plan.stats["rows_from_subwords"] == len(vocab) - n_base - 1
    tok = AutoTokenizer.from_pretrained(tmp_path / "resized")
    assert tok("안녕").input_ids == [vocab[spelled("안녕")]] and len(tok) == len(vocab)
    config = json.loads((tmp_path / "resized" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == res.vocab_size


def test_bytelevel_expansion_that_moves_a_base_id_is_refused(tiny_gguf: dict[str, Any],
                                                             tmp_path: Path) -> None:
    from kovocab.errors import TokenizerError
    from kovocab.model.row_init import plan_rows

    data = json.loads((tiny_gguf["out"] / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = "Ġthe", "Ġand"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="the base tokens must keep their ids"):
        plan_rows(tiny_gguf["out"], tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerError, match="is a byte-level BPE tokenizer.json but"):
        plan_rows(tiny_gguf["out"] / "tokenizer.json", ROOT_LLAMA2)
