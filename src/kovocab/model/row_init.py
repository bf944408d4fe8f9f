"""New embedding rows for an expanded vocabulary: plan them, compute them, write a live model.

Inputs: base and expanded SentencePiece BPE models, or base and expanded byte-level BPE
`tokenizer.json` files (base pieces keep their ids either way), and a matrix's base rows.
`subword-mean`: mean of the rows of the base split of the piece (EEVE, arXiv:2402.14714);
`mean` and padding rows: mean of all rows, optionally noised (Hewitt 2021).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kovocab.errors import TokenizerError
from kovocab.tokenizer.export import BYTE, NORMAL, SPACE, USER_DEFINED, load_proto
from kovocab.tokenizer.merge import find_sentencepiece_model

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Init = Literal["subword-mean", "mean"]


@dataclass(frozen=True)
class RowPlan:
    """Where every row after the base rows gets its initial value."""

    base_rows: int  # rows of the checkpoint = pieces of the base tokenizer
    tokenizer_size: int  # pieces of the expanded tokenizer
    total_rows: int  # tokenizer_size padded to the multiple
    init: Init
    sources: tuple[tuple[int, ...], ...]  # per row from base_rows on: base ids to average, () = all rows

    @property
    def new_pieces(self) -> int:
        return self.tokenizer_size - self.base_rows

    @property
    def padding_rows(self) -> int:
        return self.total_rows - self.tokenizer_size

    @property
    def mean_rows(self) -> int:
        return sum(1 for s in self.sources if not s)

    @property
    def stats(self) -> dict[str, Any]:
        split = [len(s) for s in self.sources if s]
        return {
            "init": self.init,
            "base_vocab_size": self.base_rows,
            "tokenizer_vocab_size": self.tokenizer_size,
            "vocab_size": self.total_rows,
            "new_pieces": self.new_pieces,
            "padding_rows": self.padding_rows,
            "rows_from_subwords": len(split),
            "rows_from_mean": self.mean_rows,
            "subwords_per_new_piece": round(sum(split) / len(split), 3) if split else 0.0,
        }


def padded_rows(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple)) * multiple if multiple > 1 else n


def plan_rows(
    base_tokenizer: str | Path,
    expanded_tokenizer: str | Path,
    init: Init = "subword-mean",
    pad_to_multiple_of: int = 64,
) -> RowPlan:
    """Check the expanded tokenizer extends the base one and plan every new row."""
    base_json, exp_json = bytelevel_json(base_tokenizer), bytelevel_json(expanded_tokenizer)
    if base_json is not None or exp_json is not None:
        if base_json is None or exp_json is None:
            which = (base_tokenizer, expanded_tokenizer) if base_json is not None else \
                (expanded_tokenizer, base_tokenizer)
            raise TokenizerError(f"{which[0]} is a byte-level BPE tokenizer.json but {which[1]} is not; "
                                 "give the base tokenizer and its expansion (both byte-level, or both "
                                 "SentencePiece)")
        return _plan_bytelevel(base_json, exp_json, init, pad_to_multiple_of)
    base_path = find_sentencepiece_model(base_tokenizer, "base tokenizer")
    exp_path = find_sentencepiece_model(expanded_tokenizer, "expanded tokenizer")
    base, exp = load_proto(base_path), load_proto(exp_path)
    n_base, n_exp = len(base.pieces), len(exp.pieces)
    if n_exp < n_base:
        raise TokenizerError(
            f"expanded tokenizer {exp_path} has {n_exp} pieces, fewer than the base {base_path} ({n_base}); "
            "give the merged tokenizer (kovocab merge-vocab), not the Korean model alone"
        )
    for i in range(n_base):
        a, b = base.pieces[i], exp.pieces[i]
        if a.piece != b.piece or a.type != b.type:
            raise TokenizerError(
                f"expanded tokenizer {exp_path}: piece {i} is {b.piece!r} but the base {base_path} has "
                f"{a.piece!r} there; the base pieces must keep their ids (merge with kovocab merge-vocab, "
                "and give the tokenizer the checkpoint was trained with as the base)"
            )
    total = padded_rows(n_exp, pad_to_multiple_of)
    sources: list[tuple[int, ...]] = [()] * (total - n_base)
    if init == "subword-mean":
        new = [(k, p.piece) for k, p in enumerate(exp.pieces[n_base:]) if p.type in (NORMAL, USER_DEFINED)]
        splits = _base_splitter(base).encode([piece.replace(SPACE, " ") for _, piece in new])
        for (k, _), ids in zip(new, splits, strict=True):
            sources[k] = tuple(ids)
        skipped = sum(1 for p in exp.pieces[n_base:] if p.type not in (NORMAL, USER_DEFINED, BYTE))
        if skipped:
            log.info("%d new control/unused pieces get the mean of all rows", skipped)
    plan = RowPlan(n_base, n_exp, total, init, tuple(sources))
    log.info("rows %d -> %d (%d new pieces, %d padding)", n_base, total, plan.new_pieces, plan.padding_rows)
    return plan


def bytelevel_json(tokenizer: str | Path) -> Path | None:
    """The byte-level BPE `tokenizer.json` that `tokenizer` names (the file, or a folder holding
    one and no tokenizer.model), or None for anything else (SentencePiece, WordPiece, ...)."""
    path = Path(tokenizer)
    if path.is_dir():
        if (path / "tokenizer.model").is_file():
            return None
        path = path / "tokenizer.json"
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: cannot read it as a tokenizer.json: {exc}") from exc
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "merges" not in model:
        return None
    byte_level = '"ByteLevel"' in json.dumps([data.get("pre_tokenizer"), data.get("decoder")])
    return path if byte_level else None


def _plan_bytelevel(base_path: Path, exp_path: Path, init: Init, pad_to_multiple_of: int) -> RowPlan:
    """`plan_rows` for byte-level BPE: a new token's row averages the base tokens its bytes split into.

    The token string is in ByteLevel's printable-byte alphabet, so the base BPE model
    splits it directly (no pre-tokenizer), also when it holds part of a UTF-8 character.
    Added and special tokens past the base get the mean of all rows.
    """
    from tokenizers import Tokenizer

    base, exp = Tokenizer.from_file(str(base_path)), Tokenizer.from_file(str(exp_path))
    base_ids = {i: t for t, i in base.get_vocab(with_added_tokens=True).items()}
    exp_ids = {i: t for t, i in exp.get_vocab(with_added_tokens=True).items()}
    n_base, n_exp = max(base_ids) + 1, max(exp_ids) + 1
    moved = next((i for i in range(n_base) if base_ids.get(i) != exp_ids.get(i)), None)
    if moved is not None:
        raise TokenizerError(
            f"expanded tokenizer {exp_path}: id {moved} is {exp_ids.get(moved)!r} but the base {base_path} "
            f"has {base_ids.get(moved)!r} there; the base tokens must keep their ids (append new tokens "
            f"after id {n_base - 1}, and give the tokenizer the checkpoint was trained with as the base)"
        )
    total = padded_rows(n_exp, pad_to_multiple_of)
    sources: list[tuple[int, ...]] = [()] * (total - n_base)
    if init == "subword-mean":
        added = set(exp.get_added_tokens_decoder())
        for i in range(n_base, n_exp):
            if i in exp_ids and i not in added:
                sources[i - n_base] = tuple(t.id for t in base.model.tokenize(_byte_alphabet(exp_ids[i])))
        if added & set(range(n_base, n_exp)):
            log.info("%d new added/special tokens get the mean of all rows",
                     len(added & set(range(n_base, n_exp))))
    plan = RowPlan(n_base, n_exp, total, init, tuple(sources))
    log.info("rows %d -> %d (%d new tokens, %d padding)", n_base, total, plan.new_pieces, plan.padding_rows)
    return plan


def _byte_alphabet(token: str) -> str:
    """A token in ByteLevel's printable-byte alphabet, as vocabularies store them; a token
    written as plain text (an added token, a hand-made vocabulary) is spelled byte by byte."""
    from tokenizers import pre_tokenizers

    if set(token) <= set(pre_tokenizers.ByteLevel.alphabet()):
        return token
    spell = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return "".join(piece for piece, _ in spell.pre_tokenize_str(token))


def _base_splitter(base: Any) -> Any:
    """The base model without its dummy prefix, so a piece splits as it would inside a word.

    `▁안녕` (surface " 안녕") then splits word-initially and `녕하` mid-word, which is
    what the rows being averaged were trained on.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.CopyFrom(base)
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def init_rows(
    old: torch.Tensor, plan: RowPlan, noise_scale: float = 0.0, seed: int = 0, chunk_rows: int = 1024
) -> torch.Tensor:
    """Rows `plan.base_rows ..< plan.total_rows` for the matrix whose base rows are `old`.

    Means are taken in float32, `chunk_rows` new rows at a time, and cast to `old`'s
    dtype at the end; `old` is only read, so its rows stay bit-identical.
    """
    import torch

    n_new, hidden = plan.total_rows - plan.base_rows, old.shape[1]
    out = torch.empty(n_new, hidden, dtype=old.dtype, device=old.device)
    mean = _mean_rows(old, plan, noise_scale, seed, chunk_rows)
    it = iter(mean) if mean is not None else iter(())
    for start in range(0, n_new, chunk_rows):
        chunk = plan.sources[start : start + chunk_rows]
        ids = [i for s in chunk for i in s]
        acc = torch.zeros(len(chunk), hidden, dtype=torch.float32, device=old.device)
        if ids:
            seg = torch.tensor([k for k, s in enumerate(chunk) for _ in s], device=old.device)
            rows = old.index_select(0, torch.tensor(ids, device=old.device)).float()
            acc.index_add_(0, seg, rows)
            counts = torch.tensor([max(len(s), 1) for s in chunk], device=old.device, dtype=torch.float32)
            acc /= counts[:, None]
        for k, s in enumerate(chunk):
            if not s:
                acc[k] = next(it)
        out[start : start + len(chunk)] = acc.to(old.dtype)
    return out


def _mean_rows(
    old: torch.Tensor, plan: RowPlan, noise_scale: float, seed: int, chunk_rows: int
) -> torch.Tensor | None:
    """The rows that get the mean of all rows (with noise from their covariance, if asked)."""
    import torch

    n = plan.mean_rows
    if n == 0:
        return None
    total = torch.zeros(old.shape[1], dtype=torch.float64, device=old.device)
    for start in range(0, old.shape[0], chunk_rows):
        total += old[start : start + chunk_rows].to(torch.float64).sum(0)
    mean = (total / old.shape[0]).float()
    if noise_scale == 0:
        return mean.expand(n, -1)
    cov = torch.zeros(old.shape[1], old.shape[1], dtype=torch.float32, device=old.device)
    for start in range(0, old.shape[0], chunk_rows):
        c = old[start : start + chunk_rows].float() - mean
        cov += c.T @ c
    cov /= old.shape[0]
    chol, info = torch.linalg.cholesky_ex(noise_scale * cov)
    if int(info) != 0:  # as transformers' mean_resizing: no noise without a positive definite covariance
        log.warning("covariance of the rows is not positive definite; mean rows get no noise")
        return mean.expand(n, -1)
    gen = torch.Generator(device=old.device).manual_seed(seed)
    z = torch.randn(n, old.shape[1], generator=gen, device=old.device, dtype=torch.float32)
    return mean + z @ chol.T


def resize_model_embeddings(
    model: Any,
    base_tokenizer: str | Path,
    expanded_tokenizer: str | Path,
    init: Init = "subword-mean",
    pad_to_multiple_of: int = 64,
    noise_scale: float = 0.0,
    seed: int = 0,
    chunk_rows: int = 1024,
) -> RowPlan:
    """Resize a live `PreTrainedModel` in place and initialise its new rows; returns the plan.

    transformers' `resize_token_embeddings` replaces the modules and `config.vocab_size`;
    kovocab then writes the rows after the base, exactly as `resize_embeddings` does.
    Under DeepSpeed ZeRO-3 (parameters with `ds_id`; model built with ZeRO-3 enabled
    for transformers) the matrices are gathered, written on rank 0 and re-partitioned.
    """
    import torch

    plan = plan_rows(base_tokenizer, expanded_tokenizer, init, pad_to_multiple_of)
    emb = model.get_input_embeddings()
    rows = int(getattr(emb.weight, "ds_shape", emb.weight.shape)[0])
    if rows != plan.base_rows:
        raise TokenizerError(
            f"model has {rows} embedding rows but the base tokenizer has {plan.base_rows} pieces; "
            "give the tokenizer the model was trained with as the base"
        )
    model.resize_token_embeddings(plan.total_rows, mean_resizing=False)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    params = [emb.weight]
    if head is not None and head.weight is not emb.weight:
        params.append(head.weight)
    with _gathered(params) as writer, torch.no_grad():
        if writer:
            for w in params:
                old = w.data[: plan.base_rows]
                w.data[plan.base_rows :] = init_rows(old, plan, noise_scale, seed, chunk_rows)
    log.info("resized %s in memory: %s", type(model).__name__, plan.stats)
    return plan


@contextmanager
def _gathered(params: list[Any]) -> Iterator[bool]:
    """Whole parameters inside the block; yields whether this process writes them."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield True
        return
    import deepspeed
    import torch.distributed as dist

    # modifier_rank=0: rank 0's values are scattered back to every partition on exit.
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield not dist.is_initialized() or dist.get_rank() == 0
