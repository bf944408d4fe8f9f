"""What a run reports: `metrics.jsonl` (one object per step, rank 0) and held-out bits per byte.

bits/byte = NLL in bits over UTF-8 bytes (kovocab.bpb), so Korean and English figures
compare across tokenizers and with the base model. Under ZeRO-3 every forward gathers
parameters collectively, so every rank scores the same documents in the same order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kovocab.artifacts import atomic_write_text


class MetricsLog:
    """Appends one JSON object per line; on resume drops lines past the resumed step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        if not enabled:
            return
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line)["step"]) <= resume_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class HeldOut:
    """One evaluation set: its documents and their UTF-8 byte count."""

    name: str
    documents: tuple[str, ...]
    bytes: int


def load_held_out(name: str, paths: Sequence[Path], limit: int, key: str) -> HeldOut | None:
    """Up to `limit` documents (shard folders: eval split); None without paths."""
    if not paths:
        return None
    from kovocab.bpb import read_documents

    docs = read_documents(list(paths), limit, what=key)
    return HeldOut(name, tuple(docs), sum(len(d.encode("utf-8")) for d in docs))


def bits_per_byte(model: Any, tokenizer_dir: Path, held: HeldOut, window: int, device: str,
                  batch_size: int = 8) -> float:
    """bits/byte of `held` under the live (partitioned) model, scored as `kovocab bpb` scores.

    `document_nll` runs under torch.inference_mode; under ZeRO-3 that would leave gathered
    parameters as inference tensors that the next training step cannot use, so this calls
    its window scorers under the caller's no_grad instead.
    """
    import sentencepiece as spm

    from kovocab.evaluation.scoring import score_batch, score_long
    from kovocab.vocab_merge import find_sentencepiece_model

    model_file = find_sentencepiece_model(tokenizer_dir, "pretrain.tokenizer")
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    bos = [sp.bos_id()] if sp.bos_id() >= 0 else []
    seqs = [bos + ids for ids in sp.encode(list(held.documents))]
    nats = 0.0
    short = sorted((s for s in seqs if len(s) <= window), key=len)
    for i in range(0, len(short), batch_size):
        nats += score_batch(model, short[i : i + batch_size], device)[0]
    for s in (s for s in seqs if len(s) > window):
        nats += score_long(model, s, window, max(1, window // 2), device)[0]
    return nats / math.log(2) / held.bytes if held.bytes else math.nan


def mfu(params: int, tokens_per_s: float, peak_flops: float | None, world_size: int) -> float | None:
    """Model FLOPs utilisation: 6·N·tokens/s over the job's peak (None when the peak is unknown).

    6·N counts forward + backward of every parameter, as in PaLM's MFU; activation
    recomputation and frozen stages are not credited, so it is a lower bound there.
    """
    if peak_flops is None:
        return None
    return 6.0 * params * tokens_per_s / (peak_flops * world_size)
