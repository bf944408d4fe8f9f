"""The text stages of `kovocab shard` on real Korean text: normalise, filter, dedupe, split."""

from __future__ import annotations

import json
import lzma
import unicodedata

import numpy as np
import pytest
from conftest import DATA
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from kovocab.corpus import ShardConfig, SourceConfig, iter_shard_texts, shard_corpus
from kovocab.corpus.dedup import MinHasher, first_occurrences, shingle_hash, shingles
from kovocab.corpus.filters import filter_reasons
from kovocab.corpus.normalizer import normalise_text, normalise_texts
from kovocab.corpus.sentences import SentenceSplitter

NSMC = DATA / "nsmc" / "nsmc_raw_reviews.tsv.xz"
NOVEL = DATA / "koconovel" / "text" / "23_Spring_Spring.text.jsonl"


@pytest.fixture(scope="module")
def long_reviews() -> list[str]:
    """300 distinct real NSMC reviews of 60+ characters."""
    out: list[str] = []
    with lzma.open(NSMC, "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            review = " ".join(line.rstrip("\n").split("\t")[4].split())
            if len(review) >= 60 and review not in out:
                out.append(review)
                if len(out) == 300:
                    break
    return out


def cfg(tmp_path, **kw) -> ShardConfig:
    src = SourceConfig(name="t", paths=(str(tmp_path / "in.txt"),))
    return ShardConfig(sources=(src,), out=tmp_path / "out", **kw)


_CHARS = list(
    "가나다ㅋ \n\t\r\x0b\x0c\x1c\x1f\x85\u2028\u3000\xa0"  # whitespace of every kind
    "\u200b\u200d\u3164\x01\x7f\ufeff"  # invisible
    "\u1100\u1161\u11a8a\u0301e"  # decomposed jamo and accents (NFC)
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.text(st.sampled_from(_CHARS), max_size=14), min_size=1, max_size=6),
    st.booleans(),
    st.booleans(),
)
def test_batch_normalisation_equals_the_per_text_definition(texts, nfc, invisible) -> None:
    assert normalise_texts(texts, nfc, invisible) == [normalise_text(t, nfc, invisible) for t in texts]


def test_normalisation_composes_hangul_and_cleans_whitespace() -> None:
    decomposed = unicodedata.normalize("NFD", "한국어 문장")
    assert decomposed != "한국어 문장"
    raw = f"  {decomposed}\u200b입니다\t\t끝 \r\n\r\n\u3164 둘째\u00a0줄 \u2028"
    assert normalise_text(raw) == "한국어 문장입니다 끝\n둘째 줄"


def test_filters_count_each_reason_on_real_text(tmp_path, long_reviews) -> None:
    c = cfg(tmp_path, min_chars=5)
    texts = [
        long_reviews[0],
        "",
        "굿",
        "This movie was great, I loved every minute of it",
        "재밌다" + "ㅋ" * 40,
        "최고다\n최고다\n최고다\n최고다",
        "ㅋㅋㅋ 재밌어요",  # a short run of ㅋ is fine
    ]
    assert filter_reasons(texts, c) == [
        None,
        "empty",
        "too-short",
        "low-hangul",
        "repetition",
        "repeated-lines",
        None,
    ]


def test_minhash_equals_datasketch_with_the_same_hash() -> None:
    text = "태어나 처음으로 가슴아리는 영화였다. 20년이상 지났지만.."
    for t in (text, "짧다"):
        m = MinHash(num_perm=32, seed=1, scheme="affine32", hashfunc=lambda s: shingle_hash(s, 5))
        for sh in shingles(t, 5):
            m.update(sh)
        ours = MinHasher(32, 5).signatures([t, "다른 문서입니다"])[0]
        assert np.array_equal(ours, m.hashvalues)


def test_first_occurrences_keeps_the_first_copy() -> None:
    d = np.array([[5, 1], [3, 2], [5, 1], [5, 9], [3, 2], [7, 7]], dtype=np.uint64)
    assert first_occurrences(d).tolist() == [True, True, False, True, False, True]


def test_near_duplicate_of_a_real_review_is_caught_and_distinct_reviews_are_not(
    tmp_path, long_reviews
) -> None:
    original = long_reviews[10]
    near = original[:-3] + "!!!"  # same review, a different ending
    texts = [*long_reviews, near]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    res = shard_corpus(cfg(tmp_path, near_dedupe=True, eval_permille=0))
    m = json.loads(res.manifest.read_text())
    assert m["stats"]["duplicates_by_kind"] == {"near": 1}
    kept = set(iter_shard_texts(res.out))
    assert original in kept
    assert near not in kept
    dropped = sum(m["stats"]["dropped_by_reason"].values())  # one review is mostly Latin letters
    assert len(kept) == len(long_reviews) - dropped


def test_kiwi_splits_real_text_one_sentence_per_line(tmp_path) -> None:
    review = "인생 최고의 영화. 말이 필요없음. 감독판은 감동이 좀 덜함."
    chunk = json.loads(NOVEL.read_text(encoding="utf-8").splitlines()[0])["text"]
    out = SentenceSplitter().split([review, chunk])
    assert out[0] == "인생 최고의 영화.\n말이 필요없음.\n감독판은 감동이 좀 덜함."
    # A novel chunk (lines of dialogue and narration): line breaks stay boundaries and
    # no character is lost, only spaces at new boundaries.
    assert len(out[1].split("\n")) > len(chunk.split("\n"))
    assert out[1].replace("\n", "").replace(" ", "") == chunk.replace("\n", "").replace(" ", "")
    # Through the pipeline: ids and digests stay those of the unsplit document.
    (tmp_path / "in.txt").write_text(review + "\n", encoding="utf-8")
    res = shard_corpus(cfg(tmp_path, split_sentences=True, eval_permille=0))
    assert list(iter_shard_texts(res.out)) == [out[0]]


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_every_line_ending_makes_one_document_per_line(tmp_path, long_reviews, ending) -> None:
    texts = long_reviews[:100]
    (tmp_path / "in.txt").write_bytes(ending.join(texts).encode("utf-8") + ending.encode())
    res = shard_corpus(cfg(tmp_path))
    assert res.docs_in == 100 and res.kept == 100
    out = tmp_path / "out"
    assert sorted([*iter_shard_texts(out, "train"), *iter_shard_texts(out, "eval")]) == sorted(texts)


def test_crlf_split_across_read_blocks_is_one_line_end() -> None:
    import io

    from kovocab.corpus.decoding import BLOCK_BYTES, iter_line_chunks

    first = b"a" * (BLOCK_BYTES - 1) + b"\r"  # the CR ends one read block, its LF starts the next
    data = first + b"\nb\rc\r"
    lines = b"".join(c for c in iter_line_chunks(io.BytesIO(data), 4 * BLOCK_BYTES) if isinstance(c, bytes))
    assert lines.split(b"\n") == [b"a" * (BLOCK_BYTES - 1) + b"\r", b"b", b"c", b""]
