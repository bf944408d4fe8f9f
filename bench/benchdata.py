"""Inputs the benches share: the real data in ../shared/data, read in place, never copied."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KOVOCAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


# The Korean-English news dev set (Park et al.) is a tarball: one file per language.
NEWS_TAR = DATA / "korean_english_news_park" / "korean-english-park.dev.tar.gz"


def news_lines(lang: str) -> list[str]:
    """The `lang` ("ko" or "en") side of the news dev set, a sentence per line."""
    import tarfile

    with tarfile.open(NEWS_TAR) as tf:
        member = next((m for m in tf.getmembers() if m.isfile() and m.name.endswith("." + lang)), None)
        f = tf.extractfile(member) if member is not None else None
        if f is None:
            raise FileNotFoundError(f"no .{lang} file in {NEWS_TAR}")
        return f.read().decode("utf-8").splitlines()


def news_file(lang: str, out_dir: Path) -> Path:
    """`news_lines(lang)` written to out_dir/news.LANG.txt, for APIs that read files."""
    path = out_dir / f"news.{lang}.txt"
    path.write_text("\n".join(news_lines(lang)) + "\n", encoding="utf-8")
    return path
