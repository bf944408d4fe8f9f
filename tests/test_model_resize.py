"""Embedding resize: tiny Llama checkpoints built here, the real Llama-2 tokenizer and a real
expanded one (Chinese-LLaMA-2's 55,296 pieces, read in place from ../shared/data).

Every expected row is recomputed here from the base rows with sentencepiece, independently
of kovocab's code; the saved checkpoints are loaded back with transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
import torch
from conftest import DATA, GOLDEN_KO, LLAMA2_MODEL
from safetensors import safe_open
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kovocab.cli import main
from kovocab.errors import ConfigError, InputError, KovocabError, TokenizerError
from kovocab.model.resize import ResizeResult, resize_embeddings, resize_model_embeddings
from kovocab.model.safetensors_io import open_checkpoint, read_header
from kovocab.tokenizer.export import write_hf_tokenizer
from kovocab.tokenizer.merge import append_pieces

CHINESE = DATA / "tokenizers" / "chinese_llama2_expanded"
MISTRAL = DATA / "tokenizers" / "mistral_v1" / "tokenizer.model.v1"
ENGLISH = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def tiny_llama(folder: Path, *, tied: bool = False, dtype: torch.dtype = torch.float32,
               vocab: int = 32000, shard: str = "1MB", seed: int = 0) -> Path:
    """A random tiny Llama saved as sharded safetensors (embeddings and head in their own shards)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in open_checkpoint(folder).shards:
        with safe_open(str(folder / shard), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - safe_open is no dict
    return out


def base_split() -> Any:
    """Llama-2 without the dummy prefix, built here independently of kovocab."""
    proto = pb.ModelProto()
    proto.ParseFromString(LLAMA2_MODEL.read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def truncated(path: Path, n: int, out: Path) -> Path:
    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    del proto.pieces[n:]
    out.write_bytes(proto.SerializeToString())
    return out


def expected_rows(old: torch.Tensor, pieces: list[str], n_total: int) -> torch.Tensor:
    """float64 means: each new piece over its base split, each padding row over all rows."""
    sp, o = base_split(), old.double()
    rows = [o[sp.encode(p.replace("\u2581", " "))].mean(0) for p in pieces]
    rows += [o.mean(0)] * (n_total - old.shape[0] - len(pieces))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def untied_bf16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ResizeResult]:
    root = tmp_path_factory.mktemp("bf16")
    base = tiny_llama(root / "base", dtype=torch.bfloat16)
    return base, resize_embeddings(base, CHINESE, root / "out", base_tokenizer=LLAMA2_MODEL)


@pytest.fixture(scope="module")
def padded_f32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ResizeResult]:
    """float32, and the expanded tokenizer cut to 32,100 pieces: 28 padding rows up to 32,128."""
    root = tmp_path_factory.mktemp("f32")
    base = tiny_llama(root / "base")
    (base / "tokenizer.model").write_bytes(LLAMA2_MODEL.read_bytes())  # default base tokenizer
    tok = truncated(CHINESE / "tokenizer.model", 32100, root / "expanded.model")
    return base, tok, resize_embeddings(base, tok, root / "out")


def test_old_rows_bitwise_and_dtype_kept(untied_bf16: tuple[Path, ResizeResult]) -> None:
    base, res = untied_bf16
    old, new = weights(base), weights(res.out_dir)
    assert set(old) == set(new)
    for name, t in old.items():
        assert new[name].dtype == torch.bfloat16
        if name in (EMBED, HEAD):
            assert new[name].shape == (55296, 32)
            assert torch.equal(new[name][:32000].view(torch.int16), t.view(torch.int16))
        else:
            assert torch.equal(new[name].view(torch.int16), t.view(torch.int16))
    assert res.vocab_size == 55296 and res.plan.new_pieces == 23296 and res.plan.padding_rows == 0


def test_only_the_two_shards_are_rewritten(untied_bf16: tuple[Path, ResizeResult]) -> None:
    base, res = untied_bf16
    assert len(res.rewritten) == 2 and res.linked and not res.copied
    for shard in res.linked:  # same filesystem: a hardlink, the original untouched
        assert os.stat(base / shard).st_ino == os.stat(res.out_dir / shard).st_ino
    index = json.loads((res.out_dir / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    sizes = [t.nbytes for s in shards for t in read_header(res.out_dir / s).tensors]
    assert index["metadata"]["total_size"] == sum(sizes)
    for shard in res.rewritten:
        assert read_header(res.out_dir / shard).metadata == {"format": "pt"}
    manifest = json.loads((res.out_dir / "manifest.json").read_text())
    assert manifest["stage"] == "resize_embeddings" and "tokenizer.json" in manifest["files"]


def test_bf16_new_rows_are_the_subword_means(untied_bf16: tuple[Path, ResizeResult]) -> None:
    base, res = untied_bf16
    old, new = weights(base), weights(res.out_dir)
    exp_sp = spm.SentencePieceProcessor(model_file=str(CHINESE / "tokenizer.model"))
    pieces = [exp_sp.id_to_piece(i) for i in range(32000, 55296)]
    for name in (EMBED, HEAD):  # untied: each matrix from its own rows
        want = expected_rows(old[name], pieces, 55296)
        # kovocab averages in float32 then rounds to bf16: within one bf16 step of the float64 mean
        torch.testing.assert_close(new[name][32000:].double(), want, rtol=2**-7, atol=1e-6)
    assert not torch.equal(new[EMBED][32000:], new[HEAD][32000:])


def test_f32_new_and_padding_rows_exact(padded_f32: tuple[Path, Path, ResizeResult]) -> None:
    base, tok, res = padded_f32
    assert (res.base_vocab_size, res.tokenizer_vocab_size, res.vocab_size) == (32000, 32100, 32128)
    assert res.vocab_size % 64 == 0 and res.plan.padding_rows == 28
    old, new = weights(base), weights(res.out_dir)
    exp_sp = spm.SentencePieceProcessor(model_file=str(tok))
    pieces = [exp_sp.id_to_piece(i) for i in range(32000, 32100)]
    for name in (EMBED, HEAD):
        assert torch.equal(new[name][:32000], old[name])
        torch.testing.assert_close(new[name][32000:].double(), expected_rows(old[name], pieces, 32128),
                                   rtol=1e-5, atol=1e-7)


def test_saved_model_loads_and_agrees_with_config_and_tokenizer(
    padded_f32: tuple[Path, Path, ResizeResult],
) -> None:
    base, _, res = padded_f32
    cfg = json.loads((res.out_dir / "config.json").read_text())
    assert cfg["vocab_size"] == 32128
    model = AutoModelForCausalLM.from_pretrained(res.out_dir)
    assert model.get_input_embeddings().weight.shape[0] == 32128
    assert model.get_output_embeddings().weight.shape[0] == 32128
    tok = AutoTokenizer.from_pretrained(res.out_dir)
    assert len(tok) == 32100 <= cfg["vocab_size"]  # padding rows are never produced
    sp = spm.SentencePieceProcessor(model_file=str(res.out_dir / "tokenizer.model"))
    assert sp.get_piece_size() == 32100
    text = "中国的天气很好"
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    out = model(torch.tensor([[1, *sp.encode(text)]])).logits
    assert out.shape == (1, 1 + len(sp.encode(text)), 32128) and torch.isfinite(out).all()


def test_base_logits_unchanged_on_english(padded_f32: tuple[Path, Path, ResizeResult]) -> None:
    base, tok, res = padded_f32
    base_ids = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL)).encode(ENGLISH)
    assert spm.SentencePieceProcessor(model_file=str(tok)).encode(ENGLISH) == base_ids  # no new piece
    ids = torch.tensor([[1, *base_ids]])
    before = AutoModelForCausalLM.from_pretrained(base).eval()
    after = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    with torch.no_grad():
        a, b = before(ids).logits, after(ids).logits
    assert b.shape[-1] == 32128
    torch.testing.assert_close(b[..., :32000], a, rtol=1e-5, atol=1e-6)


def test_in_memory_path_gives_the_same_tensors(untied_bf16: tuple[Path, ResizeResult]) -> None:
    base, res = untied_bf16
    model = AutoModelForCausalLM.from_pretrained(base)
    plan = resize_model_embeddings(model, LLAMA2_MODEL, CHINESE)
    assert plan.total_rows == res.vocab_size == model.config.vocab_size
    saved = weights(res.out_dir)
    assert torch.equal(model.get_input_embeddings().weight, saved[EMBED])
    assert torch.equal(model.get_output_embeddings().weight, saved[HEAD])
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_tied_single_file(tmp_path: Path) -> None:
    base = tiny_llama(tmp_path / "base", tied=True, shard="50MB")
    assert (base / "model.safetensors").is_file() and EMBED in weights(base) and HEAD not in weights(base)
    tok = truncated(CHINESE / "tokenizer.model", 32100, tmp_path / "expanded.model")
    res = resize_embeddings(base, tok, tmp_path / "out", base_tokenizer=LLAMA2_MODEL)
    assert res.tied and res.tensors == (EMBED,) and res.rewritten == ("model.safetensors",)
    assert not (res.out_dir / "model.safetensors.index.json").exists()
    old, new = weights(base)[EMBED], weights(res.out_dir)[EMBED]
    assert torch.equal(new[:32000], old)
    model = AutoModelForCausalLM.from_pretrained(res.out_dir)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight, new)
    # in memory, tied: the one matrix is initialised once, to the same values
    live = AutoModelForCausalLM.from_pretrained(base)
    resize_model_embeddings(live, LLAMA2_MODEL, tok)
    assert live.get_output_embeddings().weight is live.get_input_embeddings().weight
    assert torch.equal(live.get_input_embeddings().weight, new)


def test_subword_split_is_mid_word_unless_the_piece_starts_a_word(tmp_path: Path) -> None:
    # Llama-2 splits the golden sentence's first word as ▁ 안 <0xEB> <0x85> <0x95> 하 ...
    proto = pb.ModelProto()
    proto.ParseFromString(LLAMA2_MODEL.read_bytes())
    write_hf_tokenizer(append_pieces(proto, ["▁안녕", "녕하", "하세요"]), tmp_path / "tok")
    base = tiny_llama(tmp_path / "base")
    res = resize_embeddings(base, tmp_path / "tok", tmp_path / "out", base_tokenizer=LLAMA2_MODEL,
                            pad_to_multiple_of=1)
    assert res.plan.sources == ((29871, 31734, 238, 136, 152), (238, 136, 152, 30944), (30944, 31578, 31527))
    assert res.vocab_size == 32003 and res.plan.padding_rows == 0
    old, new = weights(base)[EMBED], weights(res.out_dir)[EMBED]
    torch.testing.assert_close(new[32000], old[[29871, 31734, 238, 136, 152]].mean(0))
    # a tokenizer folder with tokenizer.json is copied as it is
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        assert (res.out_dir / name).read_bytes() == (tmp_path / "tok" / name).read_bytes()
    ko = AutoTokenizer.from_pretrained(res.out_dir)
    assert len(ko) == 32003 and ko.convert_tokens_to_ids("녕하") == 32001
    assert len(ko(GOLDEN_KO, add_special_tokens=False)["input_ids"]) <= 30


def test_mean_init_with_and_without_noise(tmp_path: Path) -> None:
    base = tiny_llama(tmp_path / "base")
    tok = truncated(CHINESE / "tokenizer.model", 32010, tmp_path / "expanded.model")
    old = weights(base)[HEAD].double()
    plain = resize_embeddings(base, tok, tmp_path / "mean", init="mean", base_tokenizer=LLAMA2_MODEL)
    new = weights(plain.out_dir)[HEAD]
    assert new.shape[0] == 32064 and plain.plan.mean_rows == 64
    torch.testing.assert_close(new[32000:].double(), old.mean(0).expand(64, -1), rtol=1e-5, atol=1e-7)
    noisy = [weights(resize_embeddings(base, tok, tmp_path / f"noisy{k}", init="mean", noise_scale=1e-2,
                                       base_tokenizer=LLAMA2_MODEL).out_dir)[HEAD] for k in range(2)]
    assert torch.equal(noisy[0], noisy[1])  # seeded
    rows = noisy[0][32000:].double()
    assert not torch.equal(rows[0], rows[1])
    assert (rows - old.mean(0)).abs().max() < 0.05  # noise is 0.1 of the rows' spread (0.02)
    assert torch.equal(noisy[0][:32000], weights(base)[HEAD])


def test_errors_say_what_and_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match="folder not found"):
        resize_embeddings(tmp_path / "missing", CHINESE, tmp_path / "o1", base_tokenizer=LLAMA2_MODEL)
    small = tiny_llama(tmp_path / "small", vocab=512)
    with pytest.raises(InputError, match="has 512 rows but the base tokenizer .* has 32000 pieces"):
        resize_embeddings(small, CHINESE, tmp_path / "o2", base_tokenizer=LLAMA2_MODEL)
    base = tiny_llama(tmp_path / "base")
    with pytest.raises(TokenizerError, match=r"piece 260 is .* but the base .* has"):
        resize_embeddings(base, MISTRAL, tmp_path / "o3", base_tokenizer=LLAMA2_MODEL)
    with pytest.raises(TokenizerError, match="no tokenizer.model or tokenizer.json; give the tokenizer"):
        resize_embeddings(base, CHINESE, tmp_path / "o4")
    with pytest.raises(InputError, match="is the input folder"):
        resize_embeddings(base, CHINESE, base, base_tokenizer=LLAMA2_MODEL)
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        resize_embeddings(base, CHINESE, tmp_path / "o5", pad_to_multiple_of=0)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text("{}")
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match="no safetensors"):
        resize_embeddings(tmp_path / "bin", CHINESE, tmp_path / "o6", base_tokenizer=LLAMA2_MODEL)
    assert issubclass(InputError, KovocabError)
    code = main(["resize-embeddings", "--model", str(small), "--tokenizer", str(CHINESE),
                 "--out", str(tmp_path / "o7"), "--base-tokenizer", str(LLAMA2_MODEL)])
    assert code == 1 and "kovocab: error:" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()  # checks come before any output


def test_cli_resize_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_llama(tmp_path / "base")
    tok = truncated(CHINESE / "tokenizer.model", 32001, tmp_path / "expanded.model")
    code = main(["resize-embeddings", "--model", str(base), "--tokenizer", str(tok), "--out",
                 str(tmp_path / "out"), "--base-tokenizer", str(LLAMA2_MODEL), "--init", "mean",
                 "--pad-to-multiple-of", "128"])
    assert code == 0
    assert "32000 -> 32128 rows" in capsys.readouterr().out
    assert "init: mean" in (tmp_path / "out" / "config.yaml").read_text()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 32128
    assert main(["resize-embeddings", "--help"]) == 0


def test_real_merge_output_golden_sentence(tmp_path: Path) -> None:
    """The contract with the merge stage: its tokenizer folder in, Korean rows out."""
    from kovocab.tokenizer.merge import MergeVocabConfig, merge_vocab
    from kovocab.tokenizer.train import TokenizerTrainingConfig, train_tokenizer

    corpus = (DATA / "konlpy_corpus" / "kolaw" / "constitution.txt",
              *sorted((DATA / "koconovel" / "text").glob("1*.jsonl")))
    korean = train_tokenizer(TokenizerTrainingConfig(corpus=corpus, out_dir=tmp_path / "ko", vocab_size=3000))
    merged = merge_vocab(MergeVocabConfig(base=LLAMA2_MODEL, korean_model=korean.model_path,
                                          out_dir=tmp_path / "tok", target_vocab_size=33024))
    base = tiny_llama(tmp_path / "base")
    res = resize_embeddings(base, merged.out_dir, tmp_path / "out", base_tokenizer=LLAMA2_MODEL)
    assert res.vocab_size == 33024 and res.plan.padding_rows == 0
    tok = AutoTokenizer.from_pretrained(res.out_dir)
    ids = tok(GOLDEN_KO, add_special_tokens=False)["input_ids"]
    assert len(ids) < 30 and tok.decode(ids) == GOLDEN_KO and any(i >= 32000 for i in ids)
    old, new, sp = weights(base)[HEAD].double(), weights(res.out_dir)[HEAD], base_split()
    for i in (i for i in ids if i >= 32000):  # the new pieces of the golden sentence
        piece = tok.convert_ids_to_tokens(i)
        want = old[sp.encode(piece.replace("\u2581", " "))].mean(0)
        torch.testing.assert_close(new[i].double(), want, rtol=1e-5, atol=1e-7)


def test_config_vocab_size_disagreeing_with_the_weights_is_an_error(tmp_path: Path) -> None:
    base = tiny_llama(tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    config["vocab_size"] = 32001  # edited by hand, or the weights of another model
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config\.json says vocab_size 32001 but model\.embed_tokens"
                                         r"\.weight in the weights has 32000 rows.*set vocab_size to 32000"):
        resize_embeddings(base, CHINESE, tmp_path / "out", base_tokenizer=LLAMA2_MODEL)
    assert not (tmp_path / "out").exists()


def test_resize_replaces_its_own_earlier_output_and_refuses_foreign_weights(tmp_path: Path) -> None:
    """Re-resizing over kovocab's own output leaves no stale shard or index beside the new model;
    a folder holding weights kovocab did not write (pytorch_model.bin, another model's shard) is
    refused and left byte-identical."""
    from kovocab.errors import OutputError

    sharded = tiny_llama(tmp_path / "sharded", shard="1MB")
    single = tiny_llama(tmp_path / "single", shard="50MB", seed=1)
    tok = truncated(CHINESE / "tokenizer.model", 32100, tmp_path / "expanded.model")
    out = tmp_path / "out"
    first = resize_embeddings(sharded, tok, out, base_tokenizer=LLAMA2_MODEL)
    assert len(first.rewritten + first.linked) > 1 and (out / "model.safetensors.index.json").is_file()
    second = resize_embeddings(single, tok, out, base_tokenizer=LLAMA2_MODEL)
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith("model-") or n.endswith(".index.json")], names
    assert names - {"manifest.json"} == set(json.loads((out / "manifest.json").read_text())["files"])
    assert list(open_checkpoint(out).shards) == ["model.safetensors"]
    assert torch.equal(weights(out)[EMBED][:32000], weights(single)[EMBED])
    assert second.rewritten == ("model.safetensors",)

    # The same folder with a user's .bin beside kovocab's output: refused, nothing removed.
    torch.save({"w": torch.arange(4)}, out / "pytorch_model.bin")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputError, match=r"resize_embeddings\.out_dir: .*pytorch_model\.bin"):
        resize_embeddings(sharded, tok, out, base_tokenizer=LLAMA2_MODEL)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # Another model's shards, not written here by kovocab: refused too.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    shard = next(p for p in sorted(sharded.iterdir()) if p.name.startswith("model-"))
    (theirs / shard.name).write_bytes(shard.read_bytes())
    (theirs / "notes.md").write_text("원본 모델\n")
    with pytest.raises(OutputError, match="notes.md"):
        resize_embeddings(single, tok, theirs, base_tokenizer=LLAMA2_MODEL)
    assert sorted(p.name for p in theirs.iterdir()) == sorted([shard.name, "notes.md"])
    assert (theirs / shard.name).read_bytes() == shard.read_bytes()


def test_truncated_safetensors_is_named_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 12.6: SafetensorError tracebacks in resize, eval and bpb, and in `expand-vocab --model`
    # only after the whole tokenizer had been trained.
    single = tiny_llama(tmp_path / "single", shard="100MB")
    sharded = tiny_llama(tmp_path / "sharded")
    for folder in (single, sharded):
        (folder / "tokenizer.model").write_bytes(LLAMA2_MODEL.read_bytes())
    damaged = sharded / open_checkpoint(sharded).weight_map[EMBED]
    size = damaged.stat().st_size
    os.truncate(damaged, size - 100)
    os.truncate(single / "model.safetensors", 40)  # inside the header
    constitution = DATA / "konlpy_corpus" / "kolaw" / "constitution.txt"
    capsys.readouterr()  # save_pretrained's bars
    resize = ["resize-embeddings", "--model", str(sharded), "--tokenizer", str(CHINESE)]
    expand = ["expand-vocab", str(constitution), "--base", str(LLAMA2_MODEL), "--target-vocab-size", "33024"]
    cases = [
        ([*resize, "--out", str(tmp_path / "r")],
         f"resize_embeddings.model_dir: {damaged} is truncated: its header describes {size:,} bytes, "
         f"the file has {size - 100:,}; download or copy it again"),
        (["bpb", "--model", str(sharded), "--text", str(constitution)],
         f"bpb.models: {damaged} is truncated"),
        (["eval", "--model", str(single), "--text", f"law={constitution}", "--tasks", "none", "--out",
          str(tmp_path / "e")], f"eval.models: {single / 'model.safetensors'}: not a readable safetensors"),
        ([*expand, "--out", str(tmp_path / "x"), "--model", str(sharded)],
         f"expand_vocab.model: {damaged} is truncated"),
    ]
    for argv, message in cases:
        assert main([*argv, "-q"]) == 1, argv[0]
        err = capsys.readouterr().err
        assert err.startswith("kovocab: error: ") and message in err, (argv[0], err)
    for out in ("r", "e", "x"):  # refused before anything was written (expand-vocab: before training)
        assert not (tmp_path / out).exists(), out
