"""Stage `shard`, split (optional): documents -> one sentence per line, with Kiwi.

Inputs: normalised texts. Outputs: each line split into sentences by Kiwi's morphological
splitter; existing line breaks stay boundaries. Reference: kiwipiepy Kiwi.split_into_sents.
"""

from __future__ import annotations

from typing import Any


class SentenceSplitter:
    """One Kiwi per process; `split` hands a whole batch to Kiwi's worker threads."""

    def __init__(self, num_workers: int = 1) -> None:
        from kiwipiepy import Kiwi

        # Kiwi only takes batches (an iterable) on its worker threads, so at least one.
        # Sentence boundaries need neither the typo nor the multi-word dictionary,
        # and skipping them makes splitting about a third faster.
        self.kiwi: Any = Kiwi(num_workers=max(1, num_workers), load_typo_dict=False, load_multi_dict=False)

    def split(self, texts: list[str]) -> list[str]:
        lines: list[str] = []
        counts: list[int] = []
        for text in texts:
            parts = text.split("\n")
            lines.extend(parts)
            counts.append(len(parts))
        sentences = self.kiwi.split_into_sents(lines, return_sub_sents=False)
        per_line = ["\n".join(s for s in (x.text.strip() for x in sents) if s) for sents in sentences]
        out: list[str] = []
        i = 0
        for text, n in zip(texts, counts, strict=True):
            split = "\n".join(p for p in per_line[i : i + n] if p)
            out.append(split or text)  # Kiwi drops nothing on purpose; never lose a document
            i += n
        return out
