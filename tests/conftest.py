"""Shared fixtures: the real data in ../shared/data, read in place, never copied."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests and benches read the same data the same way: bench/benchdata.py (DATA honours
# KOVOCAB_SHARED_DATA; the news tarball readers).
sys.path.insert(0, str(ROOT / "bench"))
from benchdata import DATA, news_file, news_lines  # noqa: E402

LLAMA2_MODEL = DATA / "llama2_tokenizer" / "tokenizer.model"

# The golden sentence from the Llama-2-Ko model card; Llama-2 spends 30 pieces on it.
GOLDEN_KO = "안녕하세요, 오늘은 날씨가 좋네요."

__all__ = ["DATA", "GOLDEN_KO", "LLAMA2_MODEL", "ROOT", "news_file", "news_lines"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; set KOVOCAB_SHARED_DATA")
    return DATA


@pytest.fixture(scope="session")
def korean_shards(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A real shard folder (`kovocab shard` output): 50 novels, the Constitution, 1% eval split."""
    from kovocab.corpus import ShardConfig, shard_corpus
    from kovocab.corpus.options import SourceConfig

    out = tmp_path_factory.mktemp("korean_shards") / "corpus"
    cfg = ShardConfig(
        sources=(
            SourceConfig(name="koconovel", paths=(str(shared_data / "koconovel" / "text" / "*.text.jsonl"),),
                         format="jsonl", field="text"),
            SourceConfig(name="kolaw", txt_mode="paragraph",
                         paths=(str(shared_data / "konlpy_corpus" / "kolaw" / "constitution.txt"),)),
        ),
        out=out, shards=2, eval_permille=20,
    )
    shard_corpus(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def expanded_tokenizer(tmp_path_factory: pytest.TempPathFactory, korean_shards: Path) -> Path:
    """A real kovocab tokenizer folder: Llama-2 + 1,024 Korean pieces learned from `korean_shards`."""
    from kovocab.tokenizer.expand import expand_vocab

    out = tmp_path_factory.mktemp("expanded")
    res = expand_vocab(base=LLAMA2_MODEL, corpus=korean_shards, out_dir=out, target_vocab_size=33024,
                       report=False)
    return res.tokenizer_dir
