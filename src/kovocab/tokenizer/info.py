"""The fast tokenizer a token store is built with: tokenizer.json, its digest, size, BOS and EOS.

Packing separates documents with EOS and starts them with BOS, so both ids must be known;
they come from the folder's special_tokens_map.json / tokenizer_config.json, else from
the names Llama-2, Llama-3, GPT-2 and Gemma use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kovocab.artifacts import sha256_file
from kovocab.errors import TokenizerError

# Used when the tokenizer folder names no bos_token/eos_token (Llama-2, Llama-3, GPT-2, Gemma).
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")


@dataclass(frozen=True)
class TokenizerInfo:
    """The fast tokenizer a store is built with: its file, digest, size and document markers."""

    file: Path
    sha256: str
    vocab_size: int
    bos_id: int | None
    eos_id: int
    tokenizer: Any = field(repr=False, compare=False)  # the loaded tokenizers.Tokenizer


def read_tokenizer(path: str | Path) -> TokenizerInfo:
    """Find tokenizer.json in a folder (or take the file) and its BOS/EOS ids."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file() or file.suffix != ".json":
        raise TokenizerError(
            f"{p}: no tokenizer.json; token stores use the fast tokenizer: give the folder written by "
            "`kovocab merge-vocab` (or a model folder holding tokenizer.json)"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a bare Exception
        raise TokenizerError(f"{file}: tokenizers cannot load it ({exc})") from exc
    vocab = tok.get_vocab(with_added_tokens=True)
    vocab_size = max(len(vocab), max(vocab.values(), default=-1) + 1)
    named = _special_names(file.parent)

    def find(key: str, fallbacks: tuple[str, ...]) -> int | None:
        for name in ([named[key]] if key in named else []) + list(fallbacks):
            if (i := tok.token_to_id(name)) is not None:
                return int(i)
        return None

    eos = find("eos_token", EOS_NAMES)
    if eos is None:
        raise TokenizerError(
            f"{file}: no EOS token (looked for {named.get('eos_token') or ', '.join(EOS_NAMES)}); packing "
            "separates documents with it: add eos_token to special_tokens_map.json beside tokenizer.json"
        )
    return TokenizerInfo(file, sha256_file(file), vocab_size, find("bos_token", BOS_NAMES), eos, tok)


def _special_names(folder: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            data = json.loads((folder / fname).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("bos_token", "eos_token"):
            value = data.get(key) if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and value:
                names.setdefault(key, value)
    return names
