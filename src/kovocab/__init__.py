"""kovocab: teach an English-first LLM Korean.

The pipeline, one function per stage (see the README):
shard a Korean corpus, train Korean BPE pieces, merge them into the base
SentencePiece vocabulary (`expand_vocab`), resize embeddings, continue
pretraining (`launch_pretrain`), add a chat vector (`chat_vector`), report tokenization
efficiency and evaluate;
`run_recipe` runs a whole recipe.

Heavy imports (torch, transformers, deepspeed) happen inside the stage functions,
so `import kovocab` and `kovocab --help` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public stage functions, imported lazily: name -> module.
_API = {
    "shard_corpus": "kovocab.corpus",
    "ShardConfig": "kovocab.corpus",
    "ShardResult": "kovocab.corpus",
    "train_tokenizer": "kovocab.tokenizer.train",
    "TokenizerTrainingConfig": "kovocab.tokenizer.train",
    "merge_vocab": "kovocab.tokenizer.merge",
    "MergeVocabConfig": "kovocab.tokenizer.merge",
    "expand_vocab": "kovocab.tokenizer.expand",
    "ExpandVocabConfig": "kovocab.tokenizer.expand",
    "ExpandResult": "kovocab.tokenizer.expand",
    "resize_embeddings": "kovocab.model.resize",
    "ResizeConfig": "kovocab.model.resize",
    "ResizeResult": "kovocab.model.resize",
    "efficiency_report": "kovocab.report.measure",
    "ReportConfig": "kovocab.report.measure",
    "ReportResult": "kovocab.report.measure",
    "pretrain": "kovocab.pretraining.loop",
    "launch_pretrain": "kovocab.pretraining.launch",
    "PretrainConfig": "kovocab.pretraining.config",
    "StageConfig": "kovocab.pretraining.config",
    "PretrainResult": "kovocab.pretraining.loop",
    "evaluate": "kovocab.evaluation",
    "EvalConfig": "kovocab.evaluation",
    "EvalResult": "kovocab.evaluation",
    "chat_vector": "kovocab.model.chat_vector",
    "ChatVectorConfig": "kovocab.model.chat_vector",
    "ChatVectorResult": "kovocab.model.chat_vector",
    "init_model": "kovocab.model.tiny",
    "InitModelConfig": "kovocab.model.tiny",
    "run_recipe": "kovocab.run",
    "plan_recipe": "kovocab.run",
    "RunConfig": "kovocab.run",
    "RunResult": "kovocab.run",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'kovocab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
