"""Shared fixtures: the real data in ../shared/data, read in place, never copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KOVOCAB_SHARED_DATA", ROOT.parent / "shared" / "data"))
LLAMA2_MODEL = DATA / "llama2_tokenizer" / "tokenizer.model"

# The golden sentence from the Llama-2-Ko model card; Llama-2 spends 30 pieces on it.
GOLDEN_KO = "안녕하세요, 오늘은 날씨가 좋네요."


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared data not found at {DATA}; set KOVOCAB_SHARED_DATA")
    return DATA
