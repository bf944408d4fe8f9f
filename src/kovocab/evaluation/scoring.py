"""Log-likelihood scoring under a causal LM: whole documents (bits per byte) and continuations.

Inputs: a Hugging Face model folder and its tokenizer (`load_scorer`: sentencepiece for a
tokenizer.model, else the fast tokenizer.json, e.g. a byte-level one). Documents are
scored with a sliding window; (context, continuation) pairs follow lm-evaluation-harness's
HFLM (`_encode_pair`, left truncation to the window, lm_eval/models/huggingface.py), batched.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab.errors import InputError, TokenizerError
from kovocab.tokenizer.merge import find_sentencepiece_model

log = logging.getLogger(__name__)


class FastTokenizerIds:
    """The part of sentencepiece's interface scoring uses, over a `tokenizers` tokenizer.json.

    BOS is the folder's bos_token (`tokenizer.info`); a tokenizer without one
    starts documents with EOS instead, as lm-evaluation-harness's HFLM prefixes them.
    """

    def __init__(self, path: Path) -> None:
        from kovocab.tokenizer.info import read_tokenizer

        info = read_tokenizer(path)
        self.file, self.tok, self.size = info.file, info.tokenizer, info.vocab_size
        self.bos = info.bos_id if info.bos_id is not None else info.eos_id

    def encode(self, text: str | list[str]) -> Any:
        if isinstance(text, list):
            return [list(e.ids) for e in self.tok.encode_batch(text, add_special_tokens=False)]
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def bos_id(self) -> int:
        return self.bos

    def get_piece_size(self) -> int:
        return int(self.size)


def text_ids(tokenizer: str | Path, what: str) -> tuple[Any, Path]:
    """What scoring encodes with, and its file: a tokenizer.model through sentencepiece (where a
    folder has both, as kovocab's SentencePiece merges do; the ids are the same), else tokenizer.json."""
    import sentencepiece as spm

    p = Path(tokenizer)
    fast = p / "tokenizer.json" if p.is_dir() else p
    if (p.is_dir() and not (p / "tokenizer.model").is_file() and fast.is_file()) or (
            p.is_file() and p.suffix == ".json"):
        ids = FastTokenizerIds(fast)
        return ids, ids.file
    tok_path = find_sentencepiece_model(tokenizer, what)
    return spm.SentencePieceProcessor(model_file=str(tok_path)), tok_path


LOGITS_BUDGET = 1 << 28  # float32 logits per forward pass when scoring whole documents (1 GiB)


@dataclass
class Scorer:
    """A loaded model, its tokenizer and the window it is scored with."""

    model: Any
    sp: Any
    model_dir: Path
    tokenizer: Path
    device: str
    window: int
    add_bos: bool = True

    @property
    def decoder(self) -> Any:
        """The transformer without its LM head: hidden states for every position."""
        return self.model.get_decoder()

    def head(self, hidden: Any) -> Any:
        """Logits for selected hidden states, as the model's forward computes them."""
        return self.model.get_output_embeddings()(hidden)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, BOS first when `add_bos` (what Llama's HF tokenizer does by default)."""
        ids: list[int] = self.sp.encode(text)
        return [self.sp.bos_id(), *ids] if self.add_bos and self.sp.bos_id() >= 0 else ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The harness's `_encode_pair`: trailing spaces of the context move into the continuation,
        and the continuation is what encoding the whole string adds after the context's tokens."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx) :]


def load_scorer(
    model_dir: str | Path,
    tokenizer: str | Path,
    dtype: str = "float32",
    device: str = "auto",
    max_length: int | None = None,
    add_bos: bool | None = None,
    what: str = "models",
) -> Scorer:
    """Load a causal LM for scoring; `what` names the config key in error messages.

    `add_bos` None follows the model's Hugging Face tokenizer (see `hf_adds_bos`), as the
    harness's HFLM does when its add_bos_token is not set.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from kovocab.model.gguf_import import gguf_hint

    hint = gguf_hint(model_dir, what)
    if hint is not None:
        raise InputError(hint)
    if not Path(model_dir).is_dir():
        raise InputError(f"{what}: model folder not found: {model_dir}")
    sp, tok_path = text_ids(tokenizer, what.replace("models", "tokenizers"))
    if add_bos is None:
        add_bos = hf_adds_bos(Path(model_dir), Path(tokenizer))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    from transformers.utils import logging as hf_logging

    from kovocab.model.resize import check_config_vocab
    from kovocab.model.safetensors_io import safetensors_problems

    damaged = safetensors_problems(model_dir, what)  # safetensors would stop with a SafetensorError
    if damaged:
        raise InputError("\n  ".join(damaged))
    check_config_vocab(model_dir, what)  # transformers would stop with a size-mismatch traceback
    bars = hf_logging.is_progress_bar_enabled()
    if not show_progress(None):  # transformers draws its loading bar even into a log file
        hf_logging.disable_progress_bar()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: {model_dir} is not a loadable Hugging Face causal LM: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model = model.to(device).eval()
    rows = model.get_output_embeddings().weight.shape[0]
    if sp.get_piece_size() > rows:
        raise TokenizerError(
            f"{tok_path} has {sp.get_piece_size()} pieces but {model_dir} has {rows} output rows; "
            "pair the resized model with the expanded tokenizer and the base model with the base one"
        )
    scaled = [k for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
              if getattr(model.config, k, None) not in (None, 1, 1.0)]
    if scaled:  # the head is applied to selected hidden states here, without such extras
        raise InputError(f"{what}: {model_dir} scales its logits ({', '.join(scaled)}); kovocab scores "
                         "Llama-style models whose logits are the LM head's output")
    window = max_length or int(getattr(model.config, "max_position_embeddings", 2048))
    return Scorer(model, sp, Path(model_dir), tok_path, device, window, add_bos)


def hf_adds_bos(model_dir: Path, tokenizer: Path) -> bool:
    """Whether the model's Hugging Face tokenizer puts BOS first when it encodes a prompt.

    The tokenizer's folder is asked first, then the model's; a folder with only a
    tokenizer.model (no HF tokenizer files) means Llama's default, BOS.
    """
    from transformers import AutoTokenizer

    for folder in dict.fromkeys([tokenizer if tokenizer.is_dir() else tokenizer.parent, model_dir]):
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            continue
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot load its Hugging Face tokenizer (%s); trying the next one", folder, exc)
            continue
        ids = tok("가").input_ids
        adds = tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id
        log.info("%s: its Hugging Face tokenizer %s BOS; scoring does the same (set add_bos to override)",
                 folder, "adds" if adds else "adds no")
        return adds
    return True


def show_progress(progress: bool | None) -> bool:
    """Bars only on a terminal unless asked explicitly."""
    return sys.stderr.isatty() if progress is None else progress


# --- whole documents (bits per byte) ---------------------------------------------------------


def document_nll(
    scorer: Scorer, documents: Sequence[str], stride: int | None = None, batch_size: int = 8
) -> tuple[float, int]:
    """Total NLL (nats) of the documents, each after BOS, and the number of tokens scored."""
    import torch

    window = scorer.window
    step = stride or max(1, window // 2)
    if step >= window:
        raise InputError(f"stride: {step} must be smaller than the window ({window})")
    bos = [scorer.sp.bos_id()] if scorer.sp.bos_id() >= 0 else []
    seqs = [bos + ids for ids in scorer.sp.encode(list(documents))]
    nats, tokens = 0.0, 0
    with torch.inference_mode():
        short = sorted((s for s in seqs if len(s) <= window), key=len)
        vocab = scorer.model.get_output_embeddings().weight.shape[0]
        batches: list[list[list[int]]] = [[]]
        for s in short:
            # whole-sequence logits are rows x width x vocab floats: keep them near 1 GiB
            rows = len(batches[-1]) + 1
            if rows > batch_size or rows * len(s) * vocab > LOGITS_BUDGET:
                batches.append([])
            batches[-1].append(s)
        for batch in filter(None, batches):
            n, t = score_batch(scorer.model, batch, scorer.device)
            nats, tokens = nats + n, tokens + t
        for s in (s for s in seqs if len(s) > window):
            n, t = score_long(scorer.model, s, window, step, scorer.device)
            nats, tokens = nats + n, tokens + t
    return nats, tokens


def score_batch(model: Any, seqs: list[list[int]], device: str) -> tuple[float, int]:
    """NLL (nats) and count of every token after the first, right-padded into one batch."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for k, s in enumerate(seqs):
        ids[k, : len(s)] = torch.tensor(s)
        mask[k, : len(s)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    labels = ids.masked_fill(mask == 0, -100)[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="sum")
    return float(nll), int((labels != -100).sum())


def score_long(model: Any, seq: list[int], window: int, step: int, device: str) -> tuple[float, int]:
    """Sliding window: each token is scored once, with up to `window - 1` tokens of context."""
    import torch

    nats, scored_to = 0.0, 1  # position 0 (BOS) is context only
    begin = 0
    while scored_to < len(seq):
        end = min(begin + window, len(seq))
        ids = torch.tensor([seq[begin:end]], device=device)
        logits = model(input_ids=ids).logits[0].float()
        # position p is predicted by the logits at p - 1; score only what earlier windows did not
        first = scored_to - begin
        targets = ids[0, first:]
        nats += float(torch.nn.functional.cross_entropy(logits[first - 1 : -1], targets, reduction="sum"))
        scored_to = end
        begin += step
    return nats, len(seq) - 1
