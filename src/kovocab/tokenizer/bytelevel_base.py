"""Byte-level BPE bases as one `tokenizer.json` spec: Hugging Face files, tiktoken ranks, GGUF.

Llama-3.x, Qwen2.5/3 and SmolLM2 spell text as GPT-2's printable byte alphabet and
merge with BPE. `load_byte_level_base` reads any of the forms they ship in and returns
the Hugging Face `tokenizer.json` spec (a dict) that `tokenizer.bytelevel` appends to:

- a `tokenizer.json` (also `.xz`/`.gz`), or a folder holding one;
- tiktoken rank files (Llama-3's `tokenizer.model`): ranks become the vocabulary, every
  split of a token into two tokens becomes a merge ranked by the token, Llama-3's split
  regex and `ignore_merges` reproduce tiktoken's encoding, and the 256 special tokens
  Meta reserves at ids 128000-128255 are added under Llama-3.0's names (the rank file
  carries none; give the checkpoint's `tokenizer.json` to keep a 3.1+ model's names);
- GGUF files (llama.cpp): `tokenizer.ggml.*` arrays, with the pre-tokenizer llama.cpp
  uses for `tokenizer.ggml.pre` (SmolLM2's `smollm` isolates every digit first).

The kind is detected from the bytes, never the file name (`load.py` does the same).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from kovocab.errors import TokenizerError

log = logging.getLogger(__name__)

LLAMA3_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's regex (llama.cpp `qwen2`): digits one at a time.
QWEN2_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL = 256
# Meta-Llama-3-8B's tokenizer.json: ids 128000.. in this order, the rest reserved.
_LLAMA3_SPECIAL_NAMES = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "<|eot_id|>",
}
BYTE_LEVEL_HINT = (
    "byte-level BPE bases are a tokenizer.json (or a folder holding one), a tiktoken rank file "
    "such as Llama-3's tokenizer.model, or a GGUF file"
)
GGUF_MAGIC = b"GGUF"


@dataclass
class ByteLevelBase:
    """A byte-level BPE base: its tokenizer.json spec and where it came from."""

    spec: dict[str, Any]
    source: Path  # the file actually read
    form: str  # "tokenizer.json", "tiktoken" or "gguf"
    config: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json to write beside it
    _tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Ids in use: one past the largest id of the vocabulary and the added tokens."""
        ids = list(self.spec["model"]["vocab"].values()) + [
            t["id"] for t in self.spec.get("added_tokens", [])
        ]
        return max(ids) + 1

    def tokenizer(self) -> Any:
        """The base as a `tokenizers.Tokenizer` (built once: ~2 s for Llama-3's 280k merges)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_str(json.dumps(self.spec))
        return self._tokenizer


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (openai/gpt-2 encoder.py)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_string(data: bytes) -> str:
    """The vocabulary spelling of `data` (Ġ for a space)."""
    return data.decode("latin-1").translate(_latin1_to_token())


@cache
def _latin1_to_token() -> dict[int, str]:
    return dict(bytes_to_unicode().items())  # byte value == latin-1 code point


def token_bytes(token: str) -> bytes:
    """The bytes a vocabulary entry stands for."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError as exc:
        raise TokenizerError(f"token {token!r} is not spelled in the byte-level alphabet") from exc


def is_byte_level(spec: dict[str, Any]) -> bool:
    """A BPE tokenizer.json whose pre-tokenizer spells bytes GPT-2's way."""
    model = spec.get("model") or {}
    return model.get("type") == "BPE" and '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer"))


def sniff(path: Path) -> str | None:
    """ "tokenizer.json", "tiktoken" or "gguf" if `path` (a file or folder) is a byte-level base."""
    from kovocab.tokenizer.load import _RANK_LINE, _decompressed

    files = _candidate_files(path) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(4096)
        if head[:4] == GGUF_MAGIC:
            return "gguf"
        if head[:6] == b"\xfd7zXZ\x00" or head[:2] == b"\x1f\x8b":
            head = _decompressed(f, f.read_bytes())[:4096]
        if head.lstrip()[:1] == b"{":
            return "tokenizer.json"
        if all(_RANK_LINE.match(line) for line in head.splitlines()[:3]):
            return "tiktoken"
    return None


def _candidate_files(folder: Path) -> list[Path]:
    names = ["tokenizer.json", "tokenizer.json.xz", "tokenizer.json.gz", "tokenizer.model"]
    found = [folder / n for n in names if (folder / n).is_file()]
    found += sorted(folder.glob("*.gguf"))
    return found


def load_byte_level_base(path: str | Path, what: str = "base") -> ByteLevelBase:
    """Read a byte-level BPE base in any supported form (see the module doc).

    Conversions are remembered per file and modification time (Llama-3's rank file takes
    a few seconds), so treat the returned spec as read-only.
    """
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"{what}: path not found: {p}; {BYTE_LEVEL_HINT}")
    stamp = tuple(
        (str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size)
        for f in (_candidate_files(p) if p.is_dir() else [p])
    )
    return _load_cached(p, stamp, what)


@lru_cache(maxsize=4)
def _load_cached(p: Path, stamp: tuple[tuple[str, int, int], ...], what: str) -> ByteLevelBase:
    files = _candidate_files(p) if p.is_dir() else [p]
    if (
        p.is_dir()
        and len([f for f in files if f.suffix == ".gguf"]) > 1
        and not any(f.name.startswith("tokenizer") for f in files)
    ):
        raise TokenizerError(f"{what}: {p} holds several .gguf files; give the one to read")
    for f in files:
        kind = sniff(f)
        if kind == "gguf":
            return _from_gguf(f, what)
        if kind == "tiktoken":
            return _from_tiktoken(f, what)
        if kind == "tokenizer.json":
            return _from_tokenizer_json(f, what)
    raise TokenizerError(f"{what}: {p} is not a byte-level BPE tokenizer; {BYTE_LEVEL_HINT}")


def _from_tokenizer_json(p: Path, what: str) -> ByteLevelBase:
    from kovocab.tokenizer.load import _decompressed

    try:
        spec = json.loads(_decompressed(p, p.read_bytes()))
    except ValueError as exc:
        raise TokenizerError(f"{what}: {p} starts like JSON but does not parse ({exc})") from exc
    if not isinstance(spec, dict) or "model" not in spec:
        raise TokenizerError(f"{what}: {p} is JSON but not a tokenizer.json (no 'model' entry)")
    if not is_byte_level(spec):
        model_type = (spec.get("model") or {}).get("type")
        raise TokenizerError(
            f"{what}: {p} is a {model_type} tokenizer.json without a ByteLevel pre-tokenizer; "
            "SentencePiece-style bases (Llama-2, Mistral v1, Gemma) are merged from their "
            "tokenizer.model: give that file"
        )
    config_file = p.parent / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    return ByteLevelBase(spec, p, "tokenizer.json", config)


def _byte_level_spec(
    vocab: dict[str, int],
    merges: list[list[str]],
    pre_tokenizer: dict[str, Any],
    added: list[dict[str, Any]],
    ignore_merges: bool,
    bos: str | None = None,
) -> dict[str, Any]:
    post: dict[str, Any] = {
        "type": "ByteLevel",
        "add_prefix_space": True,
        "trim_offsets": False,
        "use_regex": True,
    }
    if bos is not None:  # AutoTokenizer adds BOS the way the model was trained
        bos_id = next(t["id"] for t in added if t["content"] == bos)
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _split_then_bytes(pattern: str) -> dict[str, Any]:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


def _added(token_id: int, content: str, special: bool = True) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": not special,
        "special": special,
    }


def _from_tiktoken(p: Path, what: str) -> ByteLevelBase:
    ranks: dict[bytes, int] = {}
    for no, line in enumerate(p.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            encoded, rank_text = line.split()
            ranks[base64.b64decode(encoded, validate=True)] = int(rank_text)
        except ValueError as exc:
            raise TokenizerError(f"{what}: {p}:{no}: not a tiktoken rank line: {line[:60]!r}") from exc
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{what}: {p}: tiktoken ranks are not 0..{len(ranks) - 1} without gaps")
    # tiktoken merges the adjacent pair whose concatenation has the lowest rank: every
    # split of a token into two tokens is a merge ranked by the token.
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    spelled = {t: token_string(t) for t in ranks}
    vocab = {spelled[t]: r for t, r in ranks.items()}
    n = len(ranks)
    added = [
        _added(n + i, _LLAMA3_SPECIAL_NAMES.get(i, f"<|reserved_special_token_{_reserved_no(i)}|>"))
        for i in range(LLAMA3_NUM_SPECIAL)
    ]
    spec = _byte_level_spec(
        vocab,
        [[spelled[a], spelled[b]] for *_, a, b in merges],
        _split_then_bytes(LLAMA3_PAT_STR),
        added,
        ignore_merges=True,
        bos="<|begin_of_text|>",
    )
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": True,
    }
    log.info(
        "tiktoken %s: %d ranks, %d merges, %d special tokens at %d+", p, n, len(merges), LLAMA3_NUM_SPECIAL, n
    )
    return ByteLevelBase(spec, p, "tiktoken", config)


def _reserved_no(i: int) -> int:
    """Llama-3.0 numbers its reserved specials skipping the five named ones."""
    return i - sum(1 for j in _LLAMA3_SPECIAL_NAMES if j < i)


def read_gguf_metadata(p: Path, prefix: str = "tokenizer.") -> dict[str, Any]:
    """The key-value metadata of a GGUF file whose keys start with `prefix`.

    GGUF (llama.cpp's docs/gguf.md): magic, version, tensor count, key-value count, then
    the key-value pairs, all little-endian. Read directly because the `gguf` package's
    reader maps every field of the file first (~10 s for SmolLM2's 49k-token arrays).
    """
    import struct

    scalar = {
        0: "<B",
        1: "<b",
        2: "<H",
        3: "<h",
        4: "<I",
        5: "<i",
        6: "<f",
        7: "<?",
        10: "<Q",
        11: "<q",
        12: "<d",
    }
    with open(p, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24 or head[:4] != GGUF_MAGIC:
            raise TokenizerError(f"{p}: not a GGUF file (no GGUF magic)")
        version, _tensors, n_kv = struct.unpack("<IQQ", head[4:])
        if version not in (2, 3):
            raise TokenizerError(
                f"{p}: GGUF version {version} (big-endian or unknown); kovocab reads 2 and 3"
            )

        def read(n: int) -> bytes:
            data = fh.read(n)
            if len(data) < n:
                raise TokenizerError(f"{p}: GGUF file ends inside its metadata (truncated download?)")
            return data

        def string() -> str:
            (n,) = struct.unpack("<Q", read(8))
            return read(n).decode("utf-8", "replace")

        def value(kind: int) -> Any:
            if kind == 8:
                return string()
            if kind == 9:
                elem, count = struct.unpack("<IQ", read(12))
                if elem in scalar:
                    fmt = scalar[elem]
                    size = struct.calcsize(fmt)
                    return list(struct.unpack(f"<{count}{fmt[1]}", read(size * count)))
                return [value(elem) for _ in range(count)]
            if kind not in scalar:
                raise TokenizerError(f"{p}: GGUF metadata value of unknown type {kind}")
            fmt = scalar[kind]
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack("<I", read(4))
            item = value(kind)
            if key.startswith(prefix):
                out[key] = item
    return out


def _from_gguf(p: Path, what: str) -> ByteLevelBase:
    fields = read_gguf_metadata(p)

    def get(name: str, default: Any = None) -> Any:
        return fields.get(name, default)

    model = get("tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(
            f"{what}: {p}: GGUF tokenizer.ggml.model is {model!r}, not 'gpt2' (byte-level BPE); "
            "llama.cpp's 'llama' kind is SentencePiece: give the model's tokenizer.model"
        )
    pre = get("tokenizer.ggml.pre", "default")
    pre_tokenizers: dict[str, dict[str, Any]] = {
        "default": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "gpt2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        # llama.cpp `smollm`: "\p{N}" (each digit alone), then GPT-2's regex.
        "smollm": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "llama-bpe": _split_then_bytes(LLAMA3_PAT_STR),
        "qwen2": _split_then_bytes(QWEN2_PAT_STR),
    }
    if pre not in pre_tokenizers:
        raise TokenizerError(
            f"{what}: {p}: GGUF pre-tokenizer {pre!r} is not one kovocab knows "
            f"({', '.join(sorted(pre_tokenizers))}); give the model's tokenizer.json instead"
        )
    tokens = list(get("tokenizer.ggml.tokens"))
    types = list(get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [m.split(" ") for m in get("tokenizer.ggml.merges", [])]
    control, user_defined = 3, 4
    added = [
        _added(i, t, special=ty == control)
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
        if ty in (control, user_defined)
    ]
    bos_id = get("tokenizer.ggml.bos_token_id")
    bos = tokens[int(bos_id)] if get("tokenizer.ggml.add_bos_token", False) and bos_id is not None else None
    spec = _byte_level_spec(
        {t: i for i, t in enumerate(tokens)}, merges, pre_tokenizers[pre], added, ignore_merges=False, bos=bos
    )
    config: dict[str, Any] = {"model_max_length": 8192, "clean_up_tokenization_spaces": False}
    for key in ("bos", "eos", "unknown", "padding"):
        token_id = get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            config[{"unknown": "unk", "padding": "pad"}.get(key, key) + "_token"] = tokens[int(token_id)]
    if (template := get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    log.info("GGUF %s: %d tokens, %d merges, pre-tokenizer %s", p, len(tokens), len(merges), pre)
    return ByteLevelBase(spec, p, "gguf", config)
