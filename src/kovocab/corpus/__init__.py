"""Stage `shard`: Korean text files -> cleaned, deduplicated, deterministic corpus shards.

Modules follow the data: inputs -> reader/tables -> decoding -> normalizer -> filters ->
dedup -> near -> sentences -> tasks (phase 1) -> merge + shards (phase 2) -> pipeline;
engine: the same steps as bounded tasks (--engine local); on_datatrove: those tasks on
datatrove's executors (--engine datatrove).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kovocab.corpus.engine import shard_local
    from kovocab.corpus.options import ShardConfig, SourceConfig, load_shard_config
    from kovocab.corpus.pipeline import ShardResult, shard_corpus, shard_tasks
    from kovocab.corpus.shards import iter_shard_texts, shard_files

# Imported on first use, so `kovocab --help` does not load numpy and friends.
_API = {
    "ShardConfig": "kovocab.corpus.options",
    "SourceConfig": "kovocab.corpus.options",
    "load_shard_config": "kovocab.corpus.options",
    "ShardResult": "kovocab.corpus.pipeline",
    "shard_corpus": "kovocab.corpus.pipeline",
    "shard_tasks": "kovocab.corpus.pipeline",
    "shard_local": "kovocab.corpus.engine",
    "iter_shard_texts": "kovocab.corpus.shards",
    "shard_files": "kovocab.corpus.shards",
}

__all__ = [
    "ShardConfig",
    "ShardResult",
    "SourceConfig",
    "iter_shard_texts",
    "load_shard_config",
    "shard_corpus",
    "shard_files",
    "shard_local",
    "shard_tasks",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'kovocab.corpus' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
