"""Append Korean tokens and merges to a byte-level BPE base (Llama-3, Qwen3, SmolLM2).

Appended merges rank after every base merge, so they only ever act on the base's own
segmentation of a word: BPE applies the lowest-ranked merge available, a base merge
never takes a new token, and so a word is first split exactly as the base splits it
and only then can new merges join its pieces. Training therefore starts from that
segmentation, not from bytes: each Korean word (the base's pre-tokenizer decides what
a word is) becomes the sequence of its base tokens, each base token one symbol, and
`tokenizers`' own BPE trainer learns which adjacent tokens to merge. Merges learned
from raw bytes would assume splits the base never makes, and never fire.

The guarantee that text without Hangul encodes exactly as before rests on one rule
(`implies_hangul`): a new merge is kept only if any valid UTF-8 text containing the
merged bytes must contain Hangul. The merged bytes hold a whole Hangul character, or
end in a character prefix that only Hangul completes (`EC 9D` is U+C740..U+C77F, all
syllables; `EA 80` is Yi and is refused; a token of continuation bytes only, e.g.
`9D 98`, sits inside countless scripts and is refused). Such a merge cannot fire on
text without Hangul, and before a new merge fires the segmentation is the base's.

Ids: new tokens take ids from the base's size on (after added and special tokens,
e.g. Llama-3's 256 specials at 128000-128255 stay where they are); new merges follow
the base merges. A token is kept only if the final tokenizer emits it for some word of
the training text (its witness, in `new_tokens.tsv`); an unreachable one is replaced
by the next candidate, as in the SentencePiece merge.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab.artifacts import Owned, atomic_write_text, exact, write_manifest
from kovocab.errors import TokenizerError
from kovocab.tokenizer.bytelevel_base import ByteLevelBase, token_bytes, token_string
from kovocab.tokenizer.load import _is_text
from kovocab.tokenizer.merge import HANGUL

log = logging.getLogger(__name__)

CANDIDATES_FILE = "korean_merges.json"  # in korean_bpe/ (train.OUTPUTS owns it)
BASE_DIR = "base_tokenizer"  # expand_vocab's copy of the base as tokenizer.json (a converted one)
BASE_OUTPUTS = Owned("expand_vocab", files=exact("tokenizer.json", "tokenizer_config.json"))

# Code point blocks that are Hangul: jamo, compatibility jamo, jamo extended A, and
# syllables through jamo extended B (AC00-D7FF is one run: syllables, 12 unassigned, ext B).
_HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF))
_SYMBOL_BASE = 0x20000  # training symbols: one code point per base token, never whitespace


def _is_hangul_cp(lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in _HANGUL_RANGES)


def implies_hangul(data: bytes) -> bool:
    """True if every valid UTF-8 text that contains `data` contains a Hangul character."""
    i = 0
    while i < len(data) and 0x80 <= data[i] < 0xC0:  # the tail of a character begun before
        i += 1
    while i < len(data):
        lead = data[i]
        n = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        part = data[i : i + n]
        if any(not 0x80 <= b < 0xC0 for b in part[1:]):
            return False  # not UTF-8 at all
        if len(part) == n:
            try:
                cp = ord(part.decode("utf-8"))
            except UnicodeDecodeError:
                return False
            if _is_hangul_cp(cp, cp):
                return True
        else:  # a prefix: is every character it can begin Hangul?
            return _prefix_is_hangul(part)
        i += n
    return False


def _prefix_is_hangul(part: bytes) -> bool:
    """Every valid completion of an incomplete UTF-8 character `part` is Hangul."""
    if len(part) == 0 or part[0] < 0xE0 or part[0] >= 0xF0:
        return False  # 2- and 4-byte characters are never Hangul (all Hangul is in U+1100..U+D7FF)
    lead = part[0] & 0x0F
    if len(part) == 1:
        lo, hi = lead << 12, (lead << 12) | 0xFFF
    else:
        lo = (lead << 12) | ((part[1] & 0x3F) << 6)
        hi = lo | 0x3F
    if 0xD800 <= lo <= 0xDFFF:
        return False  # surrogates: never in valid UTF-8
    hi = min(hi, 0xD7FF) if lo < 0xD800 <= hi else hi  # ED alone: D000..D7FF, the rest are surrogates
    return _is_hangul_cp(lo, hi)


@dataclass(frozen=True)
class Candidate:
    """One learned merge: left + right -> token (all as bytes), in training order."""

    left: bytes
    right: bytes

    @property
    def token(self) -> bytes:
        return self.left + self.right


@dataclass
class Words:
    """Korean training words: the base's tokens of each distinct word (as bytes), counts, cuts."""

    segments: list[tuple[bytes, ...]]  # base tokens of each distinct word
    cuts: list[tuple[int, ...]]  # byte offsets where a morpheme starts (morpheme-bpe)
    counts: list[int]
    strings: list[str]  # byte-level spelling of each word

    @property
    def occurrences(self) -> int:
        return sum(self.counts)


def collect_words(base_tok: Any, sentences: Iterable[str], morphemes: list[list[int]] | None = None) -> Words:
    """Split sentences into the base's words and keep those with Hangul, with their base tokens.

    `morphemes`, per sentence, are character offsets where Kiwi starts a morpheme; a cut
    inside a word is kept where it falls between two base tokens.
    """
    counter: Counter[tuple[str, tuple[int, ...]]] = Counter()
    normalizer = base_tok.normalizer
    pre = base_tok.pre_tokenizer
    for k, sentence in enumerate(sentences):
        text = normalizer.normalize_str(sentence) if normalizer is not None else sentence
        starts = morphemes[k] if morphemes is not None and text == sentence else ()
        for word, (a, b) in pre.pre_tokenize_str(text):
            if not HANGUL.search(text[a:b]):
                continue
            byte_cuts: tuple[int, ...] = ()
            if starts:
                byte_cuts = tuple(len(text[a:c].encode("utf-8")) for c in starts if a < c < b)
            counter[(word, byte_cuts)] += 1
    model = base_tok.model
    words = Words([], [], [], [])
    for (word, byte_cuts), count in counter.items():
        words.segments.append(tuple(token_bytes(t.value) for t in model.tokenize(word)))
        words.cuts.append(byte_cuts)
        words.counts.append(count)
        words.strings.append(word)
    return words


def character_merges(words: Words, coverage: float = 0.9995) -> list[Candidate]:
    """Merges that make whole Hangul characters the base splits into several tokens.

    Learned from bytes, BPE would join continuation bytes first (`9D 98`), which other
    scripts share, and every later merge built on them would be refused. So the
    characters come first, as in the SentencePiece merge: each split character that
    belongs to the `coverage` share of Hangul occurrences is joined left to right (`EC`
    + `9D` -> `EC 9D`, + `98` -> 의), each step a Hangul-only prefix; a character
    without such a path (ㄱ: `E3 84` is also Bopomofo) stays in pieces.
    """
    counts: Counter[tuple[bytes, ...]] = Counter()
    total: Counter[bytes] = Counter()
    for segment, count in zip(words.segments, words.counts, strict=True):
        for parts in _split_characters(segment):
            char = b"".join(parts)
            total[char] += count
            if len(parts) > 1:
                counts[parts] += count
    budget = coverage * sum(total.values())
    covered: set[bytes] = set()
    running = 0
    for char, count in total.most_common():
        if running >= budget:
            break
        covered.add(char)
        running += count
    merges: list[Candidate] = []
    made: set[bytes] = set()
    for parts, _count in counts.most_common():
        if b"".join(parts) not in covered:
            continue
        steps, acc = [], parts[0]
        for part in parts[1:]:
            steps.append(Candidate(acc, part))
            acc += part
        if all(implies_hangul(c.token) for c in steps):
            for c in steps:
                if c.token not in made:
                    made.add(c.token)
                    merges.append(c)
    return merges


def _split_characters(segment: tuple[bytes, ...]) -> Iterable[tuple[bytes, ...]]:
    """Per Hangul character that starts and ends on token boundaries: its tokens."""
    word = b"".join(segment)
    ends, pos = [], 0
    for piece in segment:
        pos += len(piece)
        ends.append(pos)
    text = word.decode("utf-8", "ignore") if len(word) else ""
    if len(text.encode("utf-8")) != len(word):
        return
    start, k, first = 0, 0, 0  # k: token index whose end is the next boundary
    boundaries = {0: 0}
    for i, e in enumerate(ends):
        boundaries[e] = i + 1
    for ch in text:
        end = start + len(ch.encode("utf-8"))
        if start in boundaries and end in boundaries and HANGUL.match(ch):
            first, k = boundaries[start], boundaries[end]
            yield segment[first:k]
        start = end


def train_merges(
    words: Words, n_merges: int, premerged: Sequence[Candidate] = (), max_token_symbols: int = 16
) -> list[Candidate]:
    """Learn `n_merges` merges over the base segmentation with `tokenizers`' BpeTrainer.

    Each base token (and each token `premerged` makes) is one symbol of the trainer's
    alphabet; `premerged` are applied to every word first and lead the result.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    symbol_of: dict[bytes, str] = {}
    made = {c.token: c for c in premerged}

    def symbols(segment: tuple[bytes, ...], cuts: tuple[int, ...]) -> str:
        out, pos = [], 0
        for piece in _apply(segment, made):
            if pos in cuts:
                out.append(" ")  # a morpheme starts: the trainer never merges across it
            out.append(symbol_of.setdefault(piece, chr(_SYMBOL_BASE + len(symbol_of))))
            pos += len(piece)
        return "".join(out)

    texts = [symbols(seg, cuts) for seg, cuts in zip(words.segments, words.cuts, strict=True)]
    bytes_of = {sym: raw for raw, sym in symbol_of.items()}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=len(symbol_of) + n_merges,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=list(symbol_of.values()),
        limit_alphabet=len(symbol_of),
        max_token_length=max_token_symbols,
    )

    def feed() -> Iterable[str]:
        # The trainer counts words itself: repeat each as often as it occurs.
        batch: list[str] = []
        for text, count in zip(texts, words.counts, strict=True):
            batch.append(" ".join([text] * count))
            if len(batch) >= 1000:
                yield "\n".join(batch)
                batch = []
        if batch:
            yield "\n".join(batch)

    tok.train_from_iterator(feed(), trainer)
    learned = json.loads(tok.to_str())["model"]["merges"]
    out = list(premerged)
    for merge in learned:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        out.append(Candidate(b"".join(bytes_of[c] for c in left), b"".join(bytes_of[c] for c in right)))
    return out


def _apply(segment: tuple[bytes, ...], made: dict[bytes, Candidate]) -> list[bytes]:
    """`segment` with the character merges applied (whole characters joined)."""
    if not made:
        return list(segment)
    out: list[bytes] = []
    for piece in segment:
        out.append(piece)
        while len(out) >= 2 and (c := made.get(out[-2] + out[-1])) is not None and c.left == out[-2]:
            out[-2:] = [c.token]
    return out


def usable(candidates: Sequence[Candidate], base_tokens: set[bytes]) -> tuple[list[Candidate], Counter[str]]:
    """Candidates that may be appended, in order, and why the others were not.

    Dropped: merges whose bytes do not imply Hangul (they could fire on other scripts),
    merges that make a token the base already has, and merges that need a dropped token.
    """
    known = set(base_tokens)
    kept: list[Candidate] = []
    dropped: Counter[str] = Counter()
    for c in candidates:
        if c.left not in known or c.right not in known:
            dropped["needs a dropped token"] += 1
        elif c.token in base_tokens:
            dropped["token already in the base"] += 1
        elif not implies_hangul(c.token):
            dropped["bytes also occur in text without Hangul"] += 1
        else:
            kept.append(c)
            known.add(c.token)
    return kept, dropped


def appended_spec(base: ByteLevelBase, merges: Sequence[Candidate]) -> tuple[dict[str, Any], list[bytes]]:
    """The base spec with `merges` appended; returns it and the new tokens in id order."""
    model = {
        **base.spec["model"],
        "vocab": dict(base.spec["model"]["vocab"]),
        "merges": list(base.spec["model"]["merges"]),
    }
    spec = {**base.spec, "model": model}  # the rest is shared with the base and never changed
    vocab: dict[str, int] = model["vocab"]
    pairs_as_lists = not model["merges"] or isinstance(model["merges"][0], list)
    # tokenizers gives an added token that is not in the model's vocabulary the id after
    # the vocabulary, whatever tokenizer.json says: with new tokens after Llama-3's
    # specials, <|begin_of_text|> would move from 128000. In the vocabulary it keeps its id
    # (BPE never makes it: no merge produces it).
    for added in spec.get("added_tokens", []):
        have = vocab.setdefault(added["content"], added["id"])
        if have != added["id"]:
            raise TokenizerError(
                f"base: added token {added['content']!r} has id {added['id']} but the "
                f"vocabulary gives it {have}; the base tokenizer.json is inconsistent"
            )
    next_id = base.size
    new_tokens: list[bytes] = []
    for c in merges:
        name = token_string(c.token)
        if name not in vocab:
            vocab[name] = next_id
            next_id += 1
            new_tokens.append(c.token)
        pair = [token_string(c.left), token_string(c.right)]
        model["merges"].append(pair if pairs_as_lists else " ".join(pair))
    return spec, new_tokens


@dataclass(frozen=True)
class Selection:
    spec: dict[str, Any]
    new_tokens: list[bytes]
    witnesses: dict[bytes, str]
    replaced_unreachable: int
    dropped: dict[str, int]
    tokenizer: Any  # the expanded `tokenizers.Tokenizer`


def select_merges(
    base: ByteLevelBase, candidates: Sequence[Candidate], n_new: int, words: Words
) -> Selection:
    """The first candidates that give `n_new` reachable new tokens, appended to the base."""
    from tokenizers import Tokenizer

    base_tokens = {token_bytes(t) for t in base.spec["model"]["vocab"]}
    pool, dropped = usable(candidates, base_tokens)
    unreachable: set[bytes] = set()
    for _round in range(20):
        chosen = _first_tokens(pool, unreachable, base_tokens, n_new)
        spec, new_tokens = appended_spec(base, chosen)
        tok = Tokenizer.from_str(json.dumps(spec))
        witnesses = _witnesses(tok, base.size, words)
        missing = [t for t in new_tokens if t not in witnesses and not _prefix_witness(tok, t, witnesses)]
        if not missing:
            if len(new_tokens) < n_new:
                raise TokenizerError(
                    f"only {len(new_tokens)} of {n_new} Korean tokens could be learned from this "
                    f"text ({dict(dropped)} merges were not usable); give more Korean text or a "
                    "smaller target_vocab_size"
                )
            return Selection(spec, new_tokens, witnesses, len(unreachable), dict(dropped), tok)
        unreachable.update(missing)
        log.info("byte-level merge: %d unreachable tokens replaced", len(missing))
    raise TokenizerError("byte-level merge: unreachable tokens kept appearing after 20 rounds")


def _first_tokens(
    pool: Sequence[Candidate], unreachable: set[bytes], base_tokens: set[bytes], n_new: int
) -> list[Candidate]:
    """Merges, in order, up to `n_new` distinct new tokens, skipping unreachable ones and their
    dependants."""
    known = set(base_tokens)
    tokens: set[bytes] = set()
    out = []
    for c in pool:
        if c.token in unreachable or c.left not in known or c.right not in known:
            continue
        if c.token not in tokens:
            if len(tokens) == n_new:
                break
            tokens.add(c.token)
        known.add(c.token)
        out.append(c)
    return out


def _witnesses(tok: Any, first_new: int, words: Words) -> dict[bytes, str]:
    """New token -> a training word whose encoding uses it (the most frequent such word)."""
    model = tok.model
    seen: dict[bytes, tuple[int, str]] = {}
    for word, count in zip(words.strings, words.counts, strict=True):
        for t in model.tokenize(word):
            if t.id >= first_new:
                raw = token_bytes(t.value)
                if raw not in seen or seen[raw][0] < count:
                    seen[raw] = (count, word)
    return {raw: word for raw, (_, word) in seen.items()}


def _prefix_witness(tok: Any, token: bytes, witnesses: dict[bytes, str]) -> bool:
    """For a token that is the start of a character (`EC 9D`): a Hangul character that the
    tokenizer spells with it, found by encoding each completion; recorded in `witnesses`."""
    starts = [i for i, byte in enumerate(token) if byte >= 0xC0]
    if not starts or _is_text(token):
        return False
    head, lead = token[: starts[-1]], token[starts[-1] :]
    if not 0xE0 <= lead[0] < 0xF0 or len(lead) >= 3:  # Hangul is all 3-byte characters
        return False
    vocab_id = tok.token_to_id(token_string(token))
    tails = (
        [bytes([a, b]) for a in range(0x80, 0xC0) for b in range(0x80, 0xC0)]
        if len(lead) == 1
        else [bytes([b]) for b in range(0x80, 0xC0)]
    )
    for tail in tails:
        try:
            text = (head + lead + tail).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if vocab_id in tok.encode(text, add_special_tokens=False).ids:
            witnesses[token] = token_string(text.encode("utf-8"))
            return True
    return False


def write_tokenizer_folder(
    out: Path, base: ByteLevelBase, selection: Selection, model_max_length: int | None
) -> None:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json, new_tokens.tsv."""
    out.mkdir(parents=True, exist_ok=True)
    spec = selection.spec
    atomic_write_text(
        out / "tokenizer.json", json.dumps(spec, ensure_ascii=False) + "\n"
    )  # C encoder: no indent
    config = tokenizer_config(base, spec, model_max_length)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    special_map = {
        k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)
    }
    atomic_write_text(
        out / "special_tokens_map.json", json.dumps(special_map, ensure_ascii=False, indent=2) + "\n"
    )
    vocab = spec["model"]["vocab"]
    lines = ["id\ttoken\ttext\twitness"]
    for raw in selection.new_tokens:
        name = token_string(raw)
        witness = token_bytes(selection.witnesses[raw]).decode("utf-8", "replace")
        lines.append(f"{vocab[name]}\t{name}\t{_readable(raw)}\t{witness}")
    atomic_write_text(out / "new_tokens.tsv", "\n".join(lines) + "\n")


def write_base_folder(out: Path, base: ByteLevelBase) -> None:
    """The base as a tokenizer.json folder (what a tiktoken or GGUF base was converted to)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tokenizer.json", json.dumps(base.spec, ensure_ascii=False) + "\n")
    config = tokenizer_config(base, base.spec, None)
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def tokenizer_config(
    base: ByteLevelBase, spec: dict[str, Any], model_max_length: int | None
) -> dict[str, Any]:
    """The base's tokenizer_config.json, with what AutoTokenizer needs to load tokenizer.json."""
    config = {k: v for k, v in base.config.items() if k not in ("tokenizer_file", "auto_map")}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # added_tokens_decoder (ids never move) stays valid; tokenizer.json holds the same list.
    config.setdefault(
        "added_tokens_decoder",
        {
            str(t["id"]): {
                k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
            }
            for t in spec.get("added_tokens", [])
        },
    )
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config


def _readable(raw: bytes) -> str:
    from kovocab.tokenizer.load import render_bytes

    return render_bytes(raw)


def write_candidates(
    out: Path, candidates: Sequence[Candidate], stats: dict[str, Any], inputs: dict[str, str], **manifest: Any
) -> Path:
    """korean_bpe/korean_merges.json: the learned merges in order, bytes as hex."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / CANDIDATES_FILE
    atomic_write_text(
        path, json.dumps({"merges": [[c.left.hex(), c.right.hex()] for c in candidates]}) + "\n"
    )
    write_manifest(out, "tokenizer_training", stats, inputs=inputs, **manifest)
    return path


def read_candidates(path: Path) -> list[Candidate]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Candidate(bytes.fromhex(a), bytes.fromhex(b)) for a, b in data["merges"]]


def train_candidates(
    base: ByteLevelBase, sentences: list[str], n_merges: int, method: str, num_workers: int = 2
) -> tuple[list[Candidate], Words, dict[str, Any]]:
    """Words of `sentences` under the base, then merges learned over them."""
    start = time.perf_counter()
    morphemes = None
    if method == "morpheme-bpe":
        morphemes = morpheme_starts(sentences, num_workers)
    tok = base.tokenizer()
    words = collect_words(tok, sentences, morphemes)
    if not words.segments:
        raise TokenizerError("no Korean word in the training text: the corpus holds no Hangul")
    counted = time.perf_counter()
    chars = character_merges(words)
    candidates = train_merges(words, max(0, n_merges - len(chars)), chars)
    stats = {
        "distinct_words": len(words.segments),
        "word_occurrences": words.occurrences,
        "merges_learned": len(candidates),
        "character_merges": len(chars),
        "seconds_words": round(counted - start, 2),
        "seconds_training": round(time.perf_counter() - counted, 2),
        "method": method,
    }
    log.info(
        "learned %d merges over %d Korean words (%d distinct) in %.1f s",
        len(candidates),
        words.occurrences,
        len(words.segments),
        time.perf_counter() - start,
    )
    return candidates, words, stats


def morpheme_starts(sentences: list[str], num_workers: int = 2) -> list[list[int]]:
    """Per sentence, character offsets where Kiwi starts a morpheme inside a word."""
    from kovocab.tokenizer.train import DELIMITER, mark_morphemes

    out = []
    for marked in mark_morphemes(sentences, num_workers):
        starts, pos = [], 0
        for part in marked.split(DELIMITER)[:-1]:
            pos += len(part)
            starts.append(pos)
        out.append(starts)
    return out
