"""What a run reports: `metrics.jsonl` (one object per step, rank 0), held-out bits per byte, MFU
and the plain progress line rank 0 logs every `log_every` steps.

bits/byte = NLL in bits over UTF-8 bytes (kovocab.evaluation.bpb), so Korean and English figures
compare across tokenizers and with the base model. Under ZeRO-3 every forward gathers
parameters collectively, so every rank scores the same documents in the same order.
"""

from __future__ import annotations

import json
import math
import re
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
    from kovocab.evaluation.bpb import read_documents

    docs = read_documents(list(paths), limit, what=key)
    return HeldOut(name, tuple(docs), sum(len(d.encode("utf-8")) for d in docs))


def bits_per_byte(model: Any, tokenizer_dir: Path, held: HeldOut, window: int, device: str,
                  batch_size: int = 8) -> float:
    """bits/byte of `held` under the live (partitioned) model, scored as `kovocab bpb` scores.

    `document_nll` runs under torch.inference_mode; under ZeRO-3 that would leave gathered
    parameters as inference tensors that the next training step cannot use, so this calls
    its window scorers under the caller's no_grad instead.
    """
    from kovocab.evaluation.scoring import score_batch, score_long, text_ids

    sp, _ = text_ids(tokenizer_dir, "pretrain.tokenizer")
    bos = [sp.bos_id()] if sp.bos_id() >= 0 else []
    seqs = [bos + ids for ids in sp.encode(list(held.documents))]
    nats = 0.0
    short = sorted((s for s in seqs if len(s) <= window), key=len)
    for i in range(0, len(short), batch_size):
        nats += score_batch(model, short[i : i + batch_size], device)[0]
    for s in (s for s in seqs if len(s) > window):
        nats += score_long(model, s, window, max(1, window // 2), device)[0]
    return nats / math.log(2) / held.bytes if held.bytes else math.nan


def flops_per_token(params: int, input_embedding: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N for the matmuls plus 12·layers·hidden·seq_len for attention.

    N leaves out the input embedding (a lookup, not a matmul; the LM head is counted).
    The attention term is PaLM's (arXiv:2204.02311, appendix B): QKᵀ and AV over the whole
    window, forward and backward, not halved for the causal mask.
    """
    return 6.0 * (params - input_embedding) + 12.0 * layers * hidden * seq_len


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None,
        world_size: int) -> float | None:
    """Model FLOPs utilisation: model FLOPs per second over the job's peak (None when the peak is unknown).

    Model FLOPs, as in PaLM's MFU: activation recomputation is not credited, and a stage
    that freezes most weights is still charged the full 6·N, so it is a lower bound there.
    """
    if peak_flops is None:
        return None
    return flops_per_token * tokens_per_s / (peak_flops * world_size)


def progress_line(record: dict[str, Any], total_steps: int, eta_s: float | None,
                  events: Sequence[str] = ()) -> str:
    """The plain progress line rank 0 logs (cluster logs are files, not terminals).

    `step 20/240 stage=all loss=6.8812 lr=2.91e-03 grad_norm=0.412 tokens/s=1,106 mfu=41.3%
    mem=23.1GiB eta=0:03:05 [checkpoint step-00000020]`: key=value pairs, so
    `parse_progress_line` (and grep/awk) read it back.
    """
    parts = [f"step {record['step']}/{total_steps}", f"stage={record['stage']}", f"loss={record['loss']:.4f}",
             f"lr={record['lr']:.3g}"]
    if record.get("grad_norm") is not None:
        parts.append(f"grad_norm={record['grad_norm']:.4g}")
    parts.append(f"tokens/s={record['tokens_per_s']:,.0f}")
    if record.get("mfu") is not None:
        parts.append(f"mfu={100 * record['mfu']:.1f}%")
    if record.get("max_memory_gib") is not None:
        parts.append(f"mem={record['max_memory_gib']:.1f}GiB")
    for key in ("bpb_ko", "bpb_en"):
        if key in record:
            parts.append(f"{key}={record[key]:.4f}")
    if eta_s is not None:
        parts.append(f"eta={_clock(eta_s)}")
    parts += [f"[{e}]" for e in events]
    return " ".join(parts)


_LINE = re.compile(r"\bstep (\d+)/(\d+) (stage=.*)$")


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """A `progress_line` back as numbers (loss, lr, tokens_per_s, mfu as a fraction, eta_s, events)."""
    m = _LINE.search(line.rstrip())
    if not m:
        return None
    out: dict[str, Any] = {"step": int(m[1]), "total_steps": int(m[2]),
                           "events": re.findall(r"\[([^\]]*)\]", m[3])}
    for key, value in re.findall(r"(\S+?)=(\S+)", re.sub(r"\[[^\]]*\]", "", m[3])):
        if key == "stage":
            out[key] = value
        elif key == "eta":
            h, mi, se = (int(x) for x in value.split(":"))
            out["eta_s"] = 3600 * h + 60 * mi + se
        elif key == "mfu":
            out["mfu"] = float(value.rstrip("%")) / 100
        elif key == "mem":
            out["max_memory_gib"] = float(value.removesuffix("GiB"))
        else:
            out[key.replace("tokens/s", "tokens_per_s")] = float(value.replace(",", ""))
    return out


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
