"""SentencePiece BPE `tokenizer.model` -> Hugging Face tokenizer folder that agrees with it.

Inputs: a SentencePiece BPE ModelProto (Llama-2 style: identity normaliser, dummy
prefix, byte fallback). Outputs: `tokenizer.model`, `tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json`. The `tokenizers` BPE needs
merges where sentencepiece has piece scores; see `sentencepiece_merges` for why
they agree. Format: https://huggingface.co/docs/tokenizers/api/models#tokenizers.models.BPE
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kovocab.artifacts import atomic_write_bytes, atomic_write_text, write_json
from kovocab.errors import TokenizerError

# sentencepiece_model.proto ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


def load_proto(path: str | Path) -> Any:
    """Parse a SentencePiece `.model` file, with a clear error for anything else."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    p = Path(path)
    if not p.is_file():
        raise TokenizerError(f"SentencePiece model not found: {p}")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(p.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError by backend
        raise TokenizerError(f"{p}: not a SentencePiece model ({exc})") from exc
    if len(proto.pieces) == 0:
        raise TokenizerError(f"{p}: not a SentencePiece model (no pieces)")
    return proto


def sentencepiece_merges(proto: Any) -> list[tuple[str, str]]:
    """BPE merges equivalent to sentencepiece's score-driven BPE.

    sentencepiece merges, at each step, the adjacent pair whose concatenation is the
    highest-scoring piece. A merge list ranked by the score of the merged piece (ties by
    piece id) reproduces that, provided every split (left, right) of a piece whose
    halves are both pieces is listed: sentencepiece does not care which split made it.
    """
    vocab = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in (NORMAL, USER_DEFINED)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, pid in vocab.items():
        score = proto.pieces[pid].score
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, pid, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def check_llama_style(proto: Any, where: str) -> None:
    """Refuse models whose encoding this exporter cannot reproduce exactly."""
    if proto.trainer_spec.model_type != 2:  # BPE
        raise TokenizerError(
            f"{where}: model_type is not BPE (sentencepiece type {proto.trainer_spec.model_type}); "
            "kovocab merges into SentencePiece BPE models such as Llama-2's"
        )
    ns = proto.normalizer_spec
    if ns.name not in ("identity", "") or ns.precompiled_charsmap:
        raise TokenizerError(
            f"{where}: normaliser '{ns.name}' is not 'identity'; only Llama-style models "
            "(identity normaliser, dummy prefix, byte fallback) are supported"
        )


def build_tokenizer_json(proto: Any) -> str:
    """The `tokenizer.json` text for a Llama-style SentencePiece BPE model."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    check_llama_style(proto, "tokenizer.model")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    model = BPE(
        vocab=vocab,
        merges=sentencepiece_merges(proto),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=proto.trainer_spec.byte_fallback,
    )
    tok = Tokenizer(model)
    norms: list[Any] = []
    if proto.normalizer_spec.add_dummy_prefix:
        norms.append(normalizers.Prepend(SPACE))
    norms.append(normalizers.Replace(" ", SPACE))
    tok.normalizer = normalizers.Sequence(norms)
    decs: list[Any] = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        decs.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decs)
    specials = _specials(proto)
    tok.add_special_tokens([s for s in specials.values() if s])
    bos = specials.get("bos_token")
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, vocab[bos])],
        )
    return str(tok.to_str(pretty=True))


def _specials(proto: Any) -> dict[str, str]:
    ts = proto.trainer_spec
    out = {}
    for name, idx in (("bos_token", ts.bos_id), ("eos_token", ts.eos_id), ("unk_token", ts.unk_id)):
        if 0 <= idx < len(proto.pieces):
            out[name] = proto.pieces[idx].piece
    if 0 <= ts.pad_id < len(proto.pieces):
        out["pad_token"] = proto.pieces[ts.pad_id].piece
    return out


def write_hf_tokenizer(
    proto: Any, out_dir: str | Path, model_max_length: int = 4096
) -> list[str]:
    """Write the four files of a Hugging Face Llama tokenizer folder; return their names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "tokenizer.model", proto.SerializeToString())
    atomic_write_text(out / "tokenizer.json", build_tokenizer_json(proto))
    specials = _specials(proto)
    write_json(out / "special_tokens_map.json", specials)
    # Not "LlamaTokenizer": transformers 5 rebuilds a Llama pipeline of its own
    # (Metaspace pre-tokenizer) that drops a leading space sentencepiece keeps, the
    # kind of drift that cost Llama-2-Ko its spaces. PreTrainedTokenizerFast loads
    # tokenizer.json exactly as written, in transformers 4 and 5 alike.
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "legacy": True,
            "model_max_length": model_max_length,
            "padding_side": "right",
            **specials,
        },
    )
    return ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
