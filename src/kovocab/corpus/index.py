"""Stage `shard`, engine `local`: the dedup index, kept so that a later batch can be
deduplicated against this corpus (`keep_index: true`, then `dedupe_against: [OUT]`).

The index is what the read tasks wrote for dedup, hard-linked out of `.work/` into
`OUT/dedup_index/` before it is removed: per read task its MinHash signatures (`.sig`),
record numbers (`.rec`), sorted band runs (`.bNNNN.npy`) and sorted digest runs
(`.xNNNN.npy`), plus `index.json`: the settings the hashes depend on, each part's id prefix,
and the run's fingerprint. A later run reads the same hash ranges of these runs in its own
dedup tasks, so memory per task stays bounded by the range, not by the earlier corpus.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab.artifacts import write_json
from kovocab.errors import InputError

INDEX = "dedup_index"
META = "index.json"
FORMAT = "kovocab-dedup-index"
VERSION = 1


def settings(cfg: Any) -> dict[str, Any]:
    """What the index's digests, signatures and band hashes depend on: a later batch must
    compute them the same way to be compared with them."""
    rule = cfg.near_rule
    return {"exact_dedupe": cfg.exact_dedupe, "near_dedupe": cfg.near_dedupe, "nfc": cfg.nfc,
            "remove_invisible": cfg.remove_invisible, "split_sentences": cfg.split_sentences,
            "minhash_perms": cfg.minhash_perms, "shingle_chars": cfg.shingle_chars,
            "near_bands": rule.bands, "near_rows": rule.rows, "near_min_equal": rule.min_equal,
            "hashes": "digest blake2b-128 of the cleaned text; minhash kovocab.corpus.dedup.MinHasher"}


def suffixes(cfg: Any, runs: int) -> list[str]:
    """The files of one read task that the index keeps (work/KEY + suffix)."""
    near = [".sig", ".rec", *(f".b{r:04d}.npy" for r in range(runs))] if cfg.near_dedupe else []
    return near + ([f".x{r:04d}.npy" for r in range(runs)] if cfg.exact_dedupe else [])


@dataclass(frozen=True)
class IndexPart:
    """One read task's files in an index: ids are prefix << RECORD_BITS | record."""

    key: str
    prefix: int
    part: int
    parts: int
    runs: int
    kept: int

    def path(self, folder: Path, suffix: str) -> Path:
        return folder / f"{self.key}{suffix}"


@dataclass(frozen=True)
class Earlier:
    """The dedup index of an earlier corpus (one entry of dedupe_against)."""

    folder: Path
    fingerprint: str
    documents: int
    parts: tuple[IndexPart, ...]


def index_folder(path: Path) -> Path:
    """An earlier shard output folder or its dedup_index folder -> the folder holding index.json."""
    for folder in (path / INDEX, path):
        if (folder / META).is_file():
            return folder
    if not path.exists():
        raise InputError(f"dedupe_against: {path} not found")
    raise InputError(f"dedupe_against: {path} holds no dedup index ({INDEX}/{META}): shard that corpus with "
                     "`keep_index: true` (--keep-index) first, then give its output folder")


def load_earlier(cfg: Any, check_files: bool = True) -> list[Earlier]:
    """Every index of cfg.dedupe_against, checked against this config's settings and (with
    check_files; the dedup tasks skip it) for every file the index lists."""
    out = Path(cfg.out).resolve()
    mine = settings(cfg)
    result = []
    for path in cfg.dedupe_against:
        folder = index_folder(Path(path))
        if folder.resolve() == out / INDEX or out in folder.resolve().parents:
            raise InputError(f"dedupe_against: {path} is this run's own output ({cfg.out}); give the output "
                             "folder of an earlier batch")
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"dedupe_against: {folder / META} is not readable JSON ({e}); shard that corpus "
                             "again with keep_index: true") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise InputError(f"dedupe_against: {folder / META} is not a version-{VERSION} kovocab dedup "
                             "index")
        theirs = meta.get("settings", {})
        differ = sorted(k for k in mine if theirs.get(k) != mine[k])
        if differ:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine[k]!r} here" for k in differ)
            raise InputError(f"dedupe_against: {folder} was built with other settings ({detail}); use the "
                             "same values as that run (its config.yaml) or rebuild its index")
        parts = tuple(IndexPart(**p) for p in meta["parts"])
        missing = [p.key for p in parts for s in suffixes(cfg, p.runs)
                   if check_files and not p.path(folder, s).is_file()]
        if missing:
            raise InputError(f"dedupe_against: {folder} is missing files of {len(missing)} part(s), e.g. "
                             f"{missing[0]}; copy the whole {INDEX} folder")
        result.append(Earlier(folder, str(meta["fingerprint"]), int(meta["documents"]), parts))
    return result


def write_index(cfg: Any, parts: list[Any], prefixes: list[int], work: Path, out: Path,
                fingerprint: str) -> Path:
    """Hard-link (or copy) the read tasks' dedup files into OUT/dedup_index and write index.json
    last; a killed call leaves no index.json, and a rerun starts the folder again."""
    folder = out / INDEX
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    entries = []
    for p, prefix in zip(parts, prefixes, strict=True):
        for suffix in suffixes(cfg, p.runs):
            src, dst = work / f"{p.key}{suffix}", folder / f"{p.key}{suffix}"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        entries.append({"key": p.key, "prefix": prefix, "part": p.part, "parts": p.parts, "runs": p.runs,
                        "kept": p.kept})
    write_json(folder / META, {"format": FORMAT, "version": VERSION, "settings": settings(cfg),
                               "fingerprint": fingerprint, "documents": sum(p.kept for p in parts),
                               "parts": entries})
    return folder
