"""Any tokenizer file or folder -> one small `Encoder` interface (ids never include BOS/EOS).

Reads SentencePiece `.model` protos, Hugging Face `tokenizer.json` files and folders,
and tiktoken rank files (base64 token + rank per line, split with Llama-3's pat_str).
The format is detected from the bytes, never from the file name, because tokenizer
files travel under names like `tokenizer.model` whatever they hold.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from abc import ABC, abstractmethod
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from kovocab.errors import TokenizerError, require

log = logging.getLogger(__name__)

# Llama-3's pre-tokenizer regex (llama_models/llama3/tokenizer.py); tiktoken rank files
# carry no regex, so one has to be assumed.
LLAMA3_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL = 256  # Llama-3 reserves ids len(ranks) .. len(ranks)+255 for special tokens
_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2}[ \t]+\d+\s*$")
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
FORMATS_HINT = (
    "give a SentencePiece .model, a Hugging Face tokenizer.json or tokenizer folder, "
    "or a tiktoken rank file (base64 token + rank per line)"
)


class Encoder(ABC):
    """A loaded tokenizer: encode/decode without special tokens, plus what a report needs."""

    kind: str = ""

    def __init__(self, path: Path, vocab_size: int, unk_id: int | None) -> None:
        self.path = path  # the file actually read (inside a folder, the one chosen)
        self.vocab_size = vocab_size
        self.unk_id = unk_id

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""

    @abstractmethod
    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        """Ids and, per token, the character index in `text` where it begins."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (special tokens kept)."""

    @abstractmethod
    def piece(self, token_id: int) -> str:
        """A readable form of one token: `▁안`, `<0xEB>`, `␠오늘`."""

    @abstractmethod
    def _byte_ids(self) -> frozenset[int]: ...

    @cached_property
    def byte_ids(self) -> frozenset[int]:
        """Ids that stand for raw bytes rather than text: byte-fallback pieces, or, in
        byte-level BPE, tokens that are not whole UTF-8 characters."""
        return self._byte_ids()

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.piece(i) for i in ids]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": str(self.path), "vocab_size": self.vocab_size}


def render_bytes(data: bytes) -> str:
    """Bytes as text, with spaces shown as ␠ and partial UTF-8 characters as <0xNN>."""
    out: list[str] = []
    while data:
        try:
            out.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            out.append(data[: exc.start].decode("utf-8"))
            out.extend(f"<0x{b:02X}>" for b in data[exc.start : exc.end])
            data = data[exc.end :]
    return "".join(out).replace(" ", "␠").replace("\n", "↵").replace("\t", "⇥")


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class SentencePieceEncoder(Encoder):
    kind = "sentencepiece"

    def __init__(self, sp: Any, path: Path) -> None:
        unk = sp.unk_id()
        super().__init__(path, sp.get_piece_size(), unk if unk >= 0 else None)
        self.sp = sp

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        from sentencepiece import sentencepiece_pb2 as pb

        # The serialized proto carries byte offsets into the original text in every
        # sentencepiece 0.2.x (the immutable-proto API did not survive 0.2.1).
        spt = pb.SentencePieceText.FromString(self.sp.encode(text, out_type="serialized_proto"))
        ids = [p.id for p in spt.pieces]
        starts = [p.begin for p in spt.pieces]
        if not text.isascii():
            to_char = [ci for ci, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
            to_char.append(len(text))
            starts = [to_char[min(b, len(to_char) - 1)] for b in starts]
        return ids, starts

    def decode(self, ids: list[int]) -> str:
        return str(self.sp.decode(ids))

    def piece(self, token_id: int) -> str:
        return str(self.sp.id_to_piece(token_id))

    def _byte_ids(self) -> frozenset[int]:
        return frozenset(i for i in range(self.vocab_size) if self.sp.is_byte(i))


class TokenizersEncoder(Encoder):
    """A Hugging Face `tokenizers.Tokenizer` (tokenizer.json)."""

    kind = "tokenizers"

    def __init__(self, tok: Any, path: Path, spec: dict[str, Any]) -> None:
        model = spec.get("model") or {}
        unk = model.get("unk_token")
        unk_id = tok.token_to_id(unk) if isinstance(unk, str) else None
        super().__init__(path, tok.get_vocab_size(with_added_tokens=True), unk_id)
        self.tok = tok
        self.byte_fallback = bool(model.get("byte_fallback"))
        # GPT-2-style byte-level BPE spells bytes as printable characters (Ġ for space).
        self.byte_level = '"ByteLevel"' in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        enc = self.tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [start for start, _ in enc.offsets]

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=False))

    def token_bytes(self, token: str) -> bytes | None:
        """The bytes a vocabulary entry stands for, where the model spells bytes."""
        if self.byte_fallback and (m := _BYTE_PIECE.match(token)):
            return bytes([int(m.group(1), 16)])
        if self.byte_level:
            table = _byte_level_decoder()
            if all(ch in table for ch in token):
                return bytes(table[ch] for ch in token)
        return None

    def piece(self, token_id: int) -> str:
        token = self.tok.id_to_token(token_id)
        if token is None:
            return f"<id {token_id}>"
        raw = self.token_bytes(token) if self.byte_level else None
        return render_bytes(raw) if raw is not None else str(token)

    def _byte_ids(self) -> frozenset[int]:
        out = set()
        for token, i in self.tok.get_vocab(with_added_tokens=False).items():
            raw = self.token_bytes(token)
            if raw is not None and (_BYTE_PIECE.match(token) or not _is_text(raw)):
                out.add(i)
        return frozenset(out)


@cache
def _byte_level_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-character table (openai/gpt-2 encoder.py).
    # Cached: it is asked for once per vocabulary entry (150k for Qwen3).
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TiktokenEncoder(Encoder):
    kind = "tiktoken"

    def __init__(self, enc: Any, path: Path, ranks: dict[bytes, int]) -> None:
        super().__init__(path, len(ranks) + LLAMA3_NUM_SPECIAL, None)
        self.enc = enc
        self._ranks = ranks

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: text that looks like <|special|> is plain text in a corpus.
        return list(self.enc.encode_ordinary(text))

    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.encode(text)
        _, starts = self.enc.decode_with_offsets(ids)
        return ids, list(starts)

    def decode(self, ids: list[int]) -> str:
        return str(self.enc.decode(ids))

    def piece(self, token_id: int) -> str:
        return render_bytes(self.enc.decode_single_token_bytes(token_id))

    def _byte_ids(self) -> frozenset[int]:
        return frozenset(r for tok, r in self._ranks.items() if not _is_text(tok))


def load_tokenizer(path: str | Path) -> Encoder:
    """Load a tokenizer file or folder, detecting its format from the content."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer not found: {p}; {FORMATS_HINT}")
    enc = _load_dir(p) if p.is_dir() else _load_file(p)
    log.debug("loaded %s (%s, %d ids)", enc.path, enc.kind, enc.vocab_size)
    return enc


def _load_dir(p: Path) -> Encoder:
    # tokenizer.json first: it is what AutoTokenizer loads by default from a folder.
    for name in ("tokenizer.json", "tokenizer.json.xz", "tokenizer.json.gz"):
        if (p / name).is_file():
            return _load_file(p / name)
    models = [f for f in sorted(p.iterdir()) if f.is_file() and ".model" in f.name]
    models.sort(key=lambda f: f.name != "tokenizer.model")
    if models:
        return _load_file(models[0])
    if (p / "tokenizer_config.json").is_file() or (p / "vocab.json").is_file():
        return _load_transformers(p)
    raise TokenizerError(
        f"{p}: folder holds no tokenizer.json, *.model or tokenizer_config.json; "
        f"give the folder that holds the tokenizer files, or the file itself"
    )


def _load_file(p: Path) -> Encoder:
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"{p}: cannot read tokenizer file ({exc.strerror})") from exc
    data = _decompressed(p, data)
    if not data.strip():
        raise TokenizerError(f"{p}: empty file, not a tokenizer; {FORMATS_HINT}")
    if data.lstrip()[:1] == b"{":
        return _load_tokenizer_json(p, data)
    if all(_RANK_LINE.match(line) for line in data[:4096].splitlines()[:3]):
        return _load_tiktoken(p, data)
    return _load_sentencepiece(p, data)


def _decompressed(p: Path, data: bytes) -> bytes:
    """xz or gzip content (Qwen3's tokenizer.json.xz in ../shared/data), recognised by its magic."""
    import gzip
    import lzma

    try:
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise TokenizerError(f"{p}: compressed file does not decompress ({exc}); re-download it") from exc
    return data


def _load_sentencepiece(p: Path, data: bytes) -> Encoder:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError) as exc:
        raise TokenizerError(
            f"{p}: not a tokenizer this can read: not JSON, not tiktoken ranks, and sentencepiece "
            f"cannot parse it as a .model (truncated or corrupt download?); {FORMATS_HINT}"
        ) from exc
    if sp.get_piece_size() == 0:
        raise TokenizerError(f"{p}: SentencePiece model without pieces; {FORMATS_HINT}")
    return SentencePieceEncoder(sp, p)


def _load_tokenizer_json(p: Path, data: bytes) -> Encoder:
    from tokenizers import Tokenizer

    try:
        spec = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{p}: starts like JSON but does not parse ({exc}); {FORMATS_HINT}") from exc
    if not isinstance(spec, dict) or "model" not in spec:
        raise TokenizerError(
            f"{p}: JSON without a 'model' entry, so not a Hugging Face tokenizer.json "
            f"(a tokenizer_config.json?); give tokenizer.json or the folder that holds it"
        )
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # the Rust side raises a bare Exception
        raise TokenizerError(f"{p}: tokenizers cannot load this tokenizer.json ({exc})") from exc
    return TokenizersEncoder(tok, p, spec)


def _load_tiktoken(p: Path, data: bytes) -> Encoder:
    tiktoken = require("tiktoken", "report", "reading tiktoken rank files")
    ranks: dict[bytes, int] = {}
    for no, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(
                f"{p}:{no}: not a tiktoken rank line (expected 'BASE64TOKEN RANK'): {line[:60]!r}"
            ) from exc
    try:
        enc = tiktoken.Encoding(p.name, pat_str=LLAMA3_PAT_STR, mergeable_ranks=ranks, special_tokens={})
    except ValueError as exc:
        raise TokenizerError(f"{p}: tiktoken rejects these ranks ({exc})") from exc
    return TiktokenEncoder(enc, p, ranks)


def _load_transformers(p: Path) -> Encoder:
    # Folders with only vocab.json + merges.txt (or another slow format): let
    # transformers convert them, then use the fast tokenizer underneath.
    from transformers import AutoTokenizer

    try:
        auto = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        raise TokenizerError(
            f"{p}: transformers cannot load a tokenizer from this folder ({exc}); {FORMATS_HINT}"
        ) from exc
    backend = getattr(auto, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{p}: {type(auto).__name__} has no fast tokenizer to measure; {FORMATS_HINT}")
    return TokenizersEncoder(backend, p, json.loads(backend.to_str()))
