"""Merge Korean BPE pieces into a base SentencePiece BPE vocabulary (Llama-2's 32k).

Inputs: the base `tokenizer.model` (or a tokenizer/model folder holding one) and a
Korean SentencePiece BPE model from `tokenizer.train`. Output: a Hugging Face
tokenizer folder (see `tokenizer.export`) plus `new_pieces.tsv`, `config.yaml` and
`manifest.json`. Base pieces keep ids, strings, scores and types; new pieces are
appended. Compare Chinese-LLaMA's merge_tokenizers.py, which appends with score 0.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab.artifacts import Owned, atomic_write_text, claims_output, exact, write_config, write_manifest
from kovocab.config import opt
from kovocab.errors import TokenizerError
from kovocab.tokenizer.export import (
    BYTE,
    NORMAL,
    SPACE,
    check_llama_style,
    load_proto,
    write_hf_tokenizer,
)

log = logging.getLogger(__name__)

# What merge-vocab writes in out_dir; a folder holding anything else is refused.
# (new_tokens.tsv: the byte-level merge, tokenizer.bytelevel.)
OUTPUTS = Owned("vocab_merge", files=exact("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                            "special_tokens_map.json", "new_pieces.tsv", "new_tokens.tsv"))

# Hangul syllables, jamo and compatibility jamo: a new piece must hold one of them,
# so no text without Korean can ever meet a new piece (English encodes as before).
HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff]")


@dataclass(frozen=True)
class MergeVocabConfig:
    """Append Korean pieces to a base SentencePiece BPE vocabulary."""

    base: Path = opt(doc="base tokenizer: a tokenizer.model, or a tokenizer/model folder holding one")
    korean_model: Path = opt(doc="Korean SentencePiece BPE model from train-tokenizer")
    out_dir: Path = opt(doc="output folder for the merged Hugging Face tokenizer")
    target_vocab_size: int = opt(46336, "size after the merge (Llama-2-Ko: 46336, a multiple of 64)")
    model_max_length: int = opt(4096, "model_max_length written to tokenizer_config.json")

    def check(self) -> list[str]:
        problems = []
        if self.target_vocab_size <= 0:
            problems.append("target_vocab_size: must be positive")
        elif self.target_vocab_size % 64:
            log.warning("target_vocab_size %d is not a multiple of 64", self.target_vocab_size)
        return problems


@dataclass(frozen=True)
class MergeResult:
    """Where the merged tokenizer went and what the merge did."""

    out_dir: Path
    tokenizer_model: Path
    tokenizer_json: Path
    base_size: int
    vocab_size: int
    new_pieces: int
    replaced_unreachable: int
    new_characters: tuple[str, ...]

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "base_size": self.base_size,
            "vocab_size": self.vocab_size,
            "new_pieces": self.new_pieces,
            "replaced_unreachable": self.replaced_unreachable,
            "new_characters": len(self.new_characters),
        }


def find_sentencepiece_model(path: str | Path, what: str = "base") -> Path:
    """A `.model` file, or the `tokenizer.model` inside a tokenizer or model folder."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("tokenizer.model", "spiece.model", "sentencepiece.model"):
            if (p / name).is_file():
                return p / name
        raise TokenizerError(
            f"{what}: {p} holds no tokenizer.model; kovocab merges into SentencePiece BPE "
            "models, so point it at the folder or file that has Llama-2's tokenizer.model"
        )
    raise TokenizerError(f"{what}: path not found: {p}")


def korean_candidates(korean: Any, base_pieces: set[str]) -> list[str]:
    """New pieces in the order they are appended: characters first, then merges by rank.

    The Korean model lists its single characters after its merges; they come first
    here because without them every uncommon syllable falls back to three UTF-8 bytes.
    """
    fresh = [
        p.piece
        for p in korean.pieces
        if p.type == NORMAL and p.piece not in base_pieces and HANGUL.search(p.piece)
    ]
    chars = [p for p in fresh if len(p) == 1]
    merged = sorted((p for p in fresh if len(p) > 1), key=_rank_in(korean))
    return chars + merged


def _rank_in(proto: Any) -> Any:
    order = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces)}
    return lambda piece: order[piece]


def lowest_regular_score(proto: Any) -> float:
    """The score below which appended pieces go.

    Llama-2 parks `▁▁` at -1e9, far below its last real merge (-31740); going below
    that would lose float32 precision, so sentinels more than 1e6 below the rest
    are ignored.
    """
    scores = sorted({p.score for p in proto.pieces if p.type == NORMAL}, reverse=True)
    floor = scores[0]
    for s in scores[1:]:
        if floor - s > 1e6:
            break
        floor = s
    return float(floor)


def append_pieces(base: Any, pieces: list[str]) -> Any:
    """A copy of `base` with `pieces` appended, scores descending below all base merges."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    merged = pb.ModelProto()
    merged.CopyFrom(base)
    start = lowest_regular_score(base) - 1.0
    for i, piece in enumerate(pieces):
        new = merged.pieces.add()
        new.piece = piece
        new.score = start - i
        new.type = NORMAL
    return merged


def unreachable_pieces(proto: Any, pieces: list[str]) -> list[str]:
    """Pieces that BPE never produces, even from their own text.

    A piece is reachable when encoding its surface alone (no dummy prefix) yields
    exactly that piece; otherwise its slot is wasted.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    probe = pb.ModelProto()
    probe.CopyFrom(proto)
    probe.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=probe.SerializeToString())
    encoded = sp.encode([p.replace(SPACE, " ") for p in pieces], out_type=str)
    return [p for p, enc in zip(pieces, encoded, strict=True) if enc != [p]]


def select_pieces(base: Any, candidates: list[str], n_new: int) -> tuple[list[str], int]:
    """The first `n_new` reachable candidates, replacing unreachable ones with the next.

    Dropping a piece can strand a longer piece built on it, so this repeats until the
    chosen set is stable. Returns the pieces and how many were replaced.
    """
    chosen = candidates[:n_new]
    pool = iter(candidates[n_new:])
    rejected: set[str] = set()
    for _ in range(20):
        bad = set(unreachable_pieces(append_pieces(base, chosen), chosen))
        if not bad:
            return chosen, len(rejected)
        rejected |= bad
        chosen = [p for p in chosen if p not in bad]
        for p in pool:
            if len(chosen) >= n_new:
                break
            chosen.append(p)
        if len(chosen) < n_new:
            break
    remaining = set(unreachable_pieces(append_pieces(base, chosen), chosen))
    chosen = [p for p in chosen if p not in remaining]
    return chosen, len(rejected | remaining)


def check_target_size(target: int, base_size: int, key: str) -> None:
    """A merge must add pieces: a target at or below the base size is a mistake, said before any work."""
    if target < base_size:
        raise TokenizerError(f"{key}: {target} is smaller than the base vocabulary ({base_size}); pieces are "
                             "only ever appended: set it above the base size, e.g. "
                             f"{base_size + 14336} (+14,336 as Llama-2-Ko: 32000 -> 46336)")
    if target == base_size:
        raise TokenizerError(f"{key}: {target} equals the base vocabulary size, so no Korean piece would be "
                             f"added: set it above {base_size}, e.g. {base_size + 14336} "
                             "(+14,336 as Llama-2-Ko)")


def summary_lines(cfg: MergeVocabConfig, res: MergeResult) -> list[str]:
    """What `kovocab merge-vocab` prints."""
    return [f"merged tokenizer ({res.base_size} + {res.new_pieces} = {res.vocab_size} pieces, "
            f"{res.replaced_unreachable} unreachable replaced): {res.out_dir}"]


@claims_output(OUTPUTS, "vocab_merge.out_dir")
def merge_vocab(cfg: MergeVocabConfig) -> MergeResult:
    """Append Korean pieces to the base vocabulary and write the merged tokenizer folder."""
    base_path = find_sentencepiece_model(cfg.base, "vocab_merge.base")
    base = load_proto(base_path)
    check_llama_style(base, f"vocab_merge.base ({base_path})")
    korean = load_proto(find_sentencepiece_model(cfg.korean_model, "vocab_merge.korean_model"))
    if korean.trainer_spec.model_type != 2:
        raise TokenizerError(f"vocab_merge.korean_model: {cfg.korean_model} is not a BPE model")
    base_size = len(base.pieces)
    check_target_size(cfg.target_vocab_size, base_size, "vocab_merge.target_vocab_size")
    n_new = cfg.target_vocab_size - base_size
    base_pieces = {p.piece for p in base.pieces}
    candidates = korean_candidates(korean, base_pieces)
    chosen, replaced = select_pieces(base, candidates, n_new)
    if len(chosen) < n_new:
        raise TokenizerError(
            f"vocab_merge: the Korean model offers only {len(chosen)} usable new pieces, "
            f"{n_new} are needed for target_vocab_size={cfg.target_vocab_size}; train it with "
            f"a larger vocab_size (tokenizer_training.vocab_size) or lower the target"
        )
    merged = append_pieces(base, chosen)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_hf_tokenizer(merged, out, cfg.model_max_length)
    new_chars = _byte_fallback_characters(base, chosen)
    _write_new_pieces(out / "new_pieces.tsv", base_size, chosen, merged)
    result = MergeResult(
        out_dir=out,
        tokenizer_model=out / "tokenizer.model",
        tokenizer_json=out / "tokenizer.json",
        base_size=base_size,
        vocab_size=len(merged.pieces),
        new_pieces=len(chosen),
        replaced_unreachable=replaced,
        new_characters=tuple(new_chars),
    )
    write_config(out, "vocab_merge", cfg)
    write_manifest(
        out,
        "vocab_merge",
        result.stats,
        inputs={"base": str(base_path), "korean_model": str(cfg.korean_model)},
        new_characters="".join(new_chars),
    )
    log.info(
        "merged %d new pieces into %s (%d -> %d; %d unreachable replaced)",
        len(chosen), base_path, base_size, len(merged.pieces), replaced,
    )
    return result


def _byte_fallback_characters(base: Any, pieces: list[str]) -> list[str]:
    """New single characters the base could only spell as UTF-8 byte pieces.

    These are the pieces that change how text already seen by the base model
    encodes beyond merging: three byte tokens become one character token.
    """
    base_chars = {p.piece for p in base.pieces if p.type != BYTE and len(p.piece) == 1}
    return [p for p in pieces if len(p) == 1 and p not in base_chars]


def _write_new_pieces(path: Path, base_size: int, pieces: list[str], merged: Any) -> None:
    lines = ["id\tpiece\tscore"]
    for i, piece in enumerate(pieces):
        pid = base_size + i
        lines.append(f"{pid}\t{piece}\t{merged.pieces[pid].score:g}")
    atomic_write_text(path, "\n".join(lines) + "\n")
