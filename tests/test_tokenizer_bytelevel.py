"""Byte-level BPE bases expanded with Korean: Llama-3 (tiktoken), Qwen3 (tokenizer.json.xz),
SmolLM2 (inside its GGUF), all real files from ../shared/data.

Each base is expanded once per module on real Korean text (novels + the constitution)
through `expand_vocab()` or the CLI, then checked against the base itself (for Llama-3:
against tiktoken, the reference implementation) on text without Hangul, including
characters whose UTF-8 bytes begin like Hangul's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, GOLDEN_KO, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from kovocab.cli import main
from kovocab.errors import TokenizerError
from kovocab.tokenizer.bytelevel import implies_hangul
from kovocab.tokenizer.bytelevel_base import load_byte_level_base, token_bytes
from kovocab.tokenizer.expand import expand_vocab
from kovocab.tokenizer.load import load_tokenizer
from kovocab.tokenizer.merge import HANGUL

LLAMA3 = DATA / "tokenizers" / "llama3" / "tokenizer.model"
QWEN3 = DATA / "tokenizers" / "qwen3"
SMOLLM2 = DATA / "models" / "smollm2_135m_instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW = 512  # Korean tokens added to each base here; the floors are measured in bench/
SENTENCES = 6000

# Characters that share a first UTF-8 byte (or two) with Hangul, and other scripts.
NEIGHBOURS = (
    "ꀀꀁꂿꃀ꒐ꓐꔀꙀꚠꜢꝿꞀꟹꠀꡀꢂꣲ꤀ꤰꦄꧏꨀꩠꪀꫠꬁꭰꯀ꯹"  # U+A000..U+ABFF: EA 80..AF, like 가 (EA B0 80)
    "ㄅㄆㄩ㆐㆑ㆠㇰㇱ㈀㋿"  # Bopomofo, Kanbun, CJK around the compatibility jamo (E3 84..86)
    "ကဿ၀ႠႡᏀᐁ"  # Myanmar, Georgian, Cherokee (E1 80..8F, like jamo E1 84..87)
)
NON_HANGUL_TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog. 1234567890",
    "def f(x: int) -> list[str]:\n    return [str(i) for i in range(x)]  # comment\n\tpass",
    "中华人民共和国宪法 第一条 国家的根本任务",
    "日本語のテキスト、カタカナとひらがな。東京都",
    "emoji 😀🎉👍🏽 🇰🇷 ❤️ and symbols ©®™ ½ € ₩",
    "Здравствуйте, мир. Γειά σου Κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया",
    NEIGHBOURS,
    "  leading and trailing spaces  \n\n\r\n multiple   spaces",
]
SPECIAL_LOOKALIKE = "<|begin_of_text|> <|im_start|> <|endoftext|> in a text"


def _non_hangul_lines() -> list[str]:
    """Real lines: this repository's English docs and code, and the Hanja of Korean law with
    every Hangul character removed."""
    lines = [
        ln
        for f in (ROOT / "README.md", ROOT / "src" / "kovocab" / "cli.py")
        for ln in f.read_text(encoding="utf-8").splitlines()
        if ln.strip()
    ][:400]
    law = (DATA / "konlpy_corpus" / "kolaw" / "constitution.txt").read_text(encoding="utf-8").splitlines()
    lines += [HANGUL.sub("", ln) for ln in law[:200] if ln.strip()]
    return [ln for ln in lines if ln.strip() and not HANGUL.search(ln)]


def _expand(base: Path, out: Path, korean_shards: Path, cli: bool) -> Path:
    target = {LLAMA3: 128256, QWEN3: 151669, SMOLLM2: 49152}[base] + NEW
    if cli:
        assert (
            main(
                [
                    "expand-vocab",
                    "--base",
                    str(base),
                    str(korean_shards),
                    "--out",
                    str(out),
                    "--target-vocab-size",
                    str(target),
                    "--max-sentences",
                    str(SENTENCES),
                    "--no-report",
                ]
            )
            == 0
        )
    else:
        res = expand_vocab(
            base=base,
            corpus=korean_shards,
            out_dir=out,
            target_vocab_size=target,
            max_sentences=SENTENCES,
            report=False,
        )
        assert res.merge.vocab_size == target
    return out


@pytest.fixture(scope="module", params=["llama3", "qwen3", "smollm2"])
def expanded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, korean_shards: Path
) -> dict[str, Any]:
    """One expansion per base: Llama-3 and Qwen3 through expand_vocab(), SmolLM2 through the CLI."""
    name = request.param
    base_path = {"llama3": LLAMA3, "qwen3": QWEN3, "smollm2": SMOLLM2}[name]
    out = _expand(base_path, tmp_path_factory.mktemp(name), korean_shards, cli=name == "smollm2")
    base = load_byte_level_base(base_path)
    # The reference: tiktoken itself for Llama-3, the base's own tokenizer.json otherwise.
    reference = load_tokenizer(LLAMA3) if name == "llama3" else load_tokenizer(out / "base_tokenizer")
    return {
        "name": name,
        "out": out,
        "base": base,
        "reference": reference,
        "tok": Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json")),
    }


def _ids(tok: Tokenizer, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False).ids)


def test_base_ids_merges_and_special_tokens_never_move(expanded: dict[str, Any]) -> None:
    base, tok = expanded["base"], expanded["tok"]
    spec = json.loads((expanded["out"] / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab, base_vocab = spec["model"]["vocab"], base.spec["model"]["vocab"]
    assert all(vocab[t] == i for t, i in base_vocab.items())
    specials = {t["content"] for t in base.spec["added_tokens"]}
    new_ids = sorted(i for t, i in vocab.items() if t not in base_vocab and t not in specials)
    assert new_ids == list(range(base.size, base.size + NEW))  # after every added/special token
    n_base = len(base.spec["model"]["merges"])
    assert spec["model"]["merges"][:n_base] == base.spec["model"]["merges"]
    assert len(spec["model"]["merges"]) >= n_base + NEW
    assert spec["added_tokens"] == base.spec["added_tokens"]
    for added in base.spec["added_tokens"]:
        assert tok.token_to_id(added["content"]) == added["id"]
    base_tok = base.tokenizer()
    assert _ids(tok, SPECIAL_LOOKALIKE) == _ids(base_tok, SPECIAL_LOOKALIKE)  # specials split off alike
    if expanded["name"] == "llama3":
        assert tok.token_to_id("<|begin_of_text|>") == 128000 and tok.token_to_id("<|eot_id|>") == 128009
        assert tok.encode("hi").ids[0] == 128000  # BOS as Llama-3 adds it
        assert base.size == 128256
    assert tok.get_vocab_size() == base.size + NEW


def test_text_without_hangul_encodes_exactly_as_the_base(expanded: dict[str, Any]) -> None:
    tok, ref = expanded["tok"], expanded["reference"]
    for text in [*NON_HANGUL_TEXTS, *_non_hangul_lines()]:
        assert _ids(tok, text) == ref.encode(text), text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.one_of(
            st.characters(exclude_categories=["Cs"]).filter(lambda c: not HANGUL.match(c)),
            st.sampled_from(NEIGHBOURS + " \n"),  # neighbours of Hangul's bytes, and spaces
        ),
        max_size=40,
    )
)
def test_property_text_without_hangul_is_unchanged(expanded: dict[str, Any], text: str) -> None:
    assert _ids(expanded["tok"], text) == expanded["reference"].encode(text)


def test_round_trip_and_korean_gets_shorter(expanded: dict[str, Any], korean_shards: Path) -> None:
    tok, base_tok = expanded["tok"], expanded["base"].tokenizer()
    from kovocab.corpus.texts import iter_corpus_texts

    docs = iter_corpus_texts([korean_shards], split="eval", what="test")
    lines = [ln for d in docs for ln in d.split("\n") if ln.strip()]
    assert len(lines) > 100
    korean = [
        GOLDEN_KO,
        "ㅋㅋㅋ 진짜 재밌었어요!!! 10점 만점에 9점 ^^",
        "한국어 English 中文 mixed 😀 텍스트",
        *lines[:300],
    ]
    before = after = 0
    for text in korean:
        ids = _ids(tok, text)
        assert tok.decode(ids) == text
        after += len(ids)
        before += len(_ids(base_tok, text))
    # +512 tokens: Llama-3 and Qwen3 already spell most syllables whole, SmolLM2 spells them as bytes.
    assert after < (0.7 if expanded["name"] == "smollm2" else 0.98) * before, (before, after)


def test_every_new_token_is_reachable_from_its_witness(expanded: dict[str, Any]) -> None:
    tok = expanded["tok"]
    rows = (expanded["out"] / "tokenizer" / "new_tokens.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == NEW
    for row in rows:
        token_id, token, _text, witness = row.split("\t")
        assert tok.token_to_id(token) == int(token_id)
        assert int(token_id) in _ids(tok, witness), row
        assert implies_hangul(token_bytes(token)), row  # no new token can occur outside Korean


def test_tokenizers_autotokenizer_and_saved_folder_agree(expanded: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = expanded["out"] / "tokenizer"
    auto = AutoTokenizer.from_pretrained(str(folder))
    again = auto
    if expanded["name"] == "smollm2":  # saved again by transformers (once: ~10 s for a 128k vocabulary)
        auto.save_pretrained(str(tmp_path / "saved"))
        again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert len(auto) == expanded["tok"].get_vocab_size()
    for text in [GOLDEN_KO, "한국어 English 123 😀", *NON_HANGUL_TEXTS[:3]]:
        ids = _ids(expanded["tok"], text)
        assert auto.encode(text, add_special_tokens=False) == ids
        assert again.encode(text, add_special_tokens=False) == ids
        assert auto.decode(ids) == text


def test_implies_hangul_matches_every_completion_of_every_prefix() -> None:
    """The safety rule, checked exhaustively: a 1- or 2-byte start of a 3-byte character
    implies Hangul exactly when every valid character it can begin is Hangul."""
    for lead in range(0xE0, 0xF0):
        prefixes = [bytes([lead])] + [bytes([lead, b]) for b in range(0x80, 0xC0)]
        for prefix in prefixes:
            completions = []
            for tail in range(0, 64 ** (3 - len(prefix))):
                rest = bytes(0x80 | (tail >> (6 * k) & 0x3F) for k in reversed(range(3 - len(prefix))))
                try:
                    completions.append((prefix + rest).decode("utf-8"))
                except UnicodeDecodeError:
                    continue
            expected = bool(completions) and all(
                HANGUL.match(c) or 0xD7A4 <= ord(c) <= 0xD7AF for c in completions
            )
            assert implies_hangul(prefix) == expected, prefix.hex()
            assert implies_hangul(b" " + prefix) == expected
    assert not implies_hangul(b"9D98") and not implies_hangul(bytes.fromhex("9d98"))
    assert implies_hangul("의".encode()) and implies_hangul(bytes.fromhex("98ec9d98"))


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(NEIGHBOURS)), max_size=12
    )
)
def test_property_no_byte_run_of_text_without_hangul_implies_hangul(text: str) -> None:
    text = HANGUL.sub("", text)
    data = text.encode("utf-8")
    for i in range(len(data)):
        for j in range(i + 1, min(len(data), i + 9) + 1):
            assert not implies_hangul(data[i:j]), data[i:j].hex()


def test_gguf_tokenizer_isolates_digits_like_llama_cpp() -> None:
    tok = load_byte_level_base(SMOLLM2).tokenizer()
    enc = tok.encode(" 123 abc 2024년", add_special_tokens=False)
    assert [t for t in enc.tokens if any(ch.isdigit() for ch in t)] == ["1", "2", "3", "2", "0", "2", "4"]


def test_non_byte_level_bases_and_bad_targets_are_refused(tmp_path: Path, korean_shards: Path) -> None:
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_byte_level_base(DATA / "tokenizers" / "llama2_hf_json" / "tokenizer.json")
    with pytest.raises(TokenizerError, match=r"smaller than the base vocabulary \(128256\)"):
        expand_vocab(base=LLAMA3, corpus=korean_shards, out_dir=tmp_path / "x", target_vocab_size=46336)
    assert not (tmp_path / "x" / "korean_bpe").exists()
