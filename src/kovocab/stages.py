"""The stage table `kovocab run` walks: for each stage, its config, default wiring and call.

Wiring only names paths: stage N's output folder becomes stage N+1's input unless the
recipe says otherwise. Every call is the public stage function of the subcommand with
the same name, so `kovocab run` and the subcommands cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kovocab import evaluation
from kovocab.corpus.options import OUTPUTS as shard_outputs
from kovocab.corpus.options import ShardConfig
from kovocab.evaluation import EvalConfig
from kovocab.model import resize, tiny
from kovocab.model.resize import ResizeConfig
from kovocab.model.tiny import InitModelConfig
from kovocab.pretraining.config import PretrainConfig
from kovocab.pretraining.config import outputs as pretrain_outputs
from kovocab.report import measure
from kovocab.report.measure import ReportConfig
from kovocab.run import RunConfig, _Stage
from kovocab.tokenizer import expand
from kovocab.tokenizer.expand import ExpandVocabConfig


def _get(outputs: dict[str, Any], stage: str, key: str) -> Any:
    return (outputs.get(stage) or {}).get(key)


def _some(**items: Any) -> dict[str, Any]:
    """The wiring keys whose upstream value is known (a stage not run leaves its keys to the recipe)."""
    return {k: v for k, v in items.items() if v is not None}


def _calling(module: str, function: str) -> Any:
    """call(): the stage's public function, imported when the stage runs (torch stays unloaded)."""

    def call(cfg: Any, run: RunConfig, resume: bool) -> Any:
        import importlib

        return getattr(importlib.import_module(module), function)(cfg)

    return call


# --- shard ---------------------------------------------------------------------------------


def _shard_build(data: Mapping[str, Any], section: dict[str, Any]) -> Any:
    from kovocab.corpus import load_shard_config

    return load_shard_config({**data, "shard": section})


def _shard_absolute(section: Mapping[str, Any], base_dir: Any) -> dict[str, Any]:
    """Source paths are globs (strings), so the type-driven absolutize misses them."""
    from kovocab.config import absolutize_section, resolve_path

    out = absolutize_section(ShardConfig, section, base_dir)
    sources = out.get("sources")
    if isinstance(sources, list | tuple):
        out["sources"] = [
            {**src, "paths": [str(resolve_path(p, base_dir)) for p in _as_list(src.get("paths"))]}
            if isinstance(src, Mapping) and "paths" in src else src
            for src in sources
        ]
    return out


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value or [])


SHARD = _Stage(
    name="shard", cls=ShardConfig, build=_shard_build, absolutize=_shard_absolute,
    owned=lambda cfg: shard_outputs,
    wire=lambda run_dir, outputs: {"out": str(run_dir / "corpus")},
    call=_calling("kovocab.corpus", "shard_corpus"),
    out_dir=lambda cfg: Path(cfg.out), done_file=lambda cfg: Path(cfg.out) / "manifest.json",
    outputs=lambda cfg: {"corpus": cfg.out},
    summary=lambda res: {"read": res.docs_in, "kept": res.kept, "dropped": res.dropped,
                         "duplicates": res.duplicates},
)


# --- expand_vocab (train-tokenizer + merge-vocab) ------------------------------------------


def _listed(value: Any) -> list[Any] | None:
    return None if value is None else [value]


def _weights(weights: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """source_weights as plain recipe data (None when there are none)."""
    from kovocab.config import to_dict

    return {name: to_dict(w) for name, w in (weights or {}).items()} or None


EXPAND_VOCAB = _Stage(
    name="expand_vocab", cls=ExpandVocabConfig, owned=lambda cfg: expand.OUTPUTS,
    # report=False: the run's own report stage measures base vs expanded on the same held-out split.
    wire=lambda run_dir, outputs: _some(corpus=_listed(_get(outputs, "shard", "corpus")),
                                        out_dir=str(run_dir / "tokenizer"), report=False),
    call=_calling("kovocab.tokenizer.expand", "expand_vocab_from_config"),
    done_file=lambda cfg: Path(cfg.out_dir) / "tokenizer" / "manifest.json",
    outputs=lambda cfg: {"tokenizer": Path(cfg.out_dir) / "tokenizer", "base": cfg.base,
                         "sweep": Path(cfg.out_dir) / "sweep" / "sweep.json" if cfg.sweep else None,
                         # pretrain samples its token store with the tokenizer's source weights
                         "source_weights": _weights(cfg.source_weights)},
    summary=lambda res: {**res.stats, **({"sweep": list(res.sweep)} if res.sweep else {})},
)


# --- init_model (a tiny Llama from config; real runs point resize_embeddings at a checkpoint) ----


INIT_MODEL = _Stage(
    name="init_model", cls=InitModelConfig, owned=lambda cfg: tiny.OUTPUTS,
    wire=lambda run_dir, outputs: _some(out_dir=str(run_dir / "base_model"),
                                        tokenizer=_get(outputs, "expand_vocab", "base")),
    call=_calling("kovocab.model.tiny", "init_model"),
    outputs=lambda cfg: {"model": cfg.out_dir},
    summary=lambda res: {"parameters": res.parameters, "vocab_size": res.vocab_size},
)


# --- resize_embeddings ---------------------------------------------------------------------


RESIZE = _Stage(
    name="resize_embeddings", cls=ResizeConfig, owned=lambda cfg: resize.OUTPUTS,
    wire=lambda run_dir, outputs: _some(model_dir=_get(outputs, "init_model", "model"),
                                        tokenizer=_get(outputs, "expand_vocab", "tokenizer"),
                                        out_dir=str(run_dir / "model")),
    call=_calling("kovocab.model.resize", "resize_embeddings_from_config"),
    outputs=lambda cfg: {"model": cfg.out_dir},
    summary=lambda res: dict(res.stats),
)


# --- pretrain (DeepSpeed ZeRO-3; the ranks are started here unless a launcher started us) ------


def _pretrain_call(cfg: Any, run: RunConfig, resume: bool) -> Any:
    from kovocab.pretraining.launch import launch_pretrain

    checkpoints = Path(cfg.out_dir) / "checkpoints"
    resume = resume and checkpoints.is_dir() and any(checkpoints.iterdir())
    return launch_pretrain(cfg, nproc_per_node=run.nproc_per_node, resume=resume)


def _pretrain_wire(run_dir: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    corpus = _listed(_get(outputs, "shard", "corpus"))
    return _some(model_dir=_get(outputs, "resize_embeddings", "model"), train_data=corpus,
                 eval_korean=corpus, out_dir=str(run_dir / "pretrain"),
                 source_weights=_get(outputs, "expand_vocab", "source_weights"))


PRETRAIN = _Stage(
    name="pretrain", cls=PretrainConfig, wire=_pretrain_wire, call=_pretrain_call, owned=pretrain_outputs,
    done_file=lambda cfg: Path(cfg.out_dir) / "hf" / "manifest.json",
    outputs=lambda cfg: {"model": Path(cfg.out_dir) / "hf"},
    summary=lambda res: {"steps": res.steps, "final_loss": res.final_loss, "seconds": res.seconds},
)


# --- report --------------------------------------------------------------------------------


def _report_wire(run_dir: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    base, tokenizer = _get(outputs, "expand_vocab", "base"), _get(outputs, "expand_vocab", "tokenizer")
    corpus = _get(outputs, "shard", "corpus")
    wired: dict[str, Any] = {"out_dir": str(run_dir / "report")}
    if base is not None and tokenizer is not None:
        wired["tokenizers"] = [{"name": "base", "path": base}, {"name": "kovocab", "path": tokenizer}]
    if corpus is not None:
        wired["texts"] = [{"name": "held-out", "path": corpus}]
    sweep = _get(outputs, "expand_vocab", "sweep")
    if sweep is not None:
        wired["sweep_file"] = sweep
    return wired


REPORT = _Stage(
    name="report", cls=ReportConfig, wire=_report_wire, call=_calling("kovocab.report.measure", "run_report"),
    owned=lambda cfg: measure.OUTPUTS,
    done_file=lambda cfg: Path(cfg.out_dir) / "report.json",
    outputs=lambda cfg: {"report": Path(cfg.out_dir) / "report.md"},
)


# --- eval (bits per byte + KoBEST, the resized model before pretraining vs after) ------------


def _eval_wire(run_dir: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    before, after = _get(outputs, "resize_embeddings", "model"), _get(outputs, "pretrain", "model")
    models = [m for m in (before, after) if m is not None]
    names = [n for n, m in (("resized", before), ("pretrained", after)) if m is not None]
    corpus = _get(outputs, "shard", "corpus")
    wired: dict[str, Any] = {"out_dir": str(run_dir / "eval")}
    if models:
        wired.update(models=models, names=names)
    if corpus is not None:
        wired["bpb_texts"] = [{"name": "korean held-out", "path": corpus}]
    return wired


EVAL = _Stage(
    name="eval", cls=EvalConfig, wire=_eval_wire, call=_calling("kovocab.evaluation", "evaluate"),
    owned=lambda cfg: evaluation.OUTPUTS,
    done_file=lambda cfg: Path(cfg.out_dir) / "eval.json",
    outputs=lambda cfg: {"eval": Path(cfg.out_dir) / "eval.json"},
)

STAGE_TABLE = (SHARD, EXPAND_VOCAB, INIT_MODEL, RESIZE, PRETRAIN, REPORT, EVAL)
