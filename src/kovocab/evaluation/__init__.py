"""Evaluation stage: model folders -> bits per byte on text sets + KoBEST, as eval.json and eval.md.

Inputs: one or more Hugging Face model folders (two: base vs adapted, side by side), their
SentencePiece tokenizers, held-out text sets and the KoBEST TSVs. Outputs in `out_dir`:
eval.json, eval.md, items.jsonl (every item's log-likelihoods), config.yaml, manifest.json.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kovocab.artifacts import Owned, claims_output, exact
from kovocab.config import build, opt
from kovocab.errors import ConfigError

log = logging.getLogger(__name__)

OUTPUTS = Owned("eval", files=exact("eval.json", "eval.md", "items.jsonl"))  # what it writes in out_dir

Task = Literal["boolq", "copa", "hellaswag", "sentineg", "wic"]
ALL_TASKS: tuple[Task, ...] = ("boolq", "copa", "hellaswag", "sentineg", "wic")


@dataclass(frozen=True)
class TextSet:
    name: str = opt(doc="name shown in the tables, e.g. ko or en")
    path: Path = opt(doc=".txt (a document per line), .jsonl ('text'), or a shard folder (its eval split)")


@dataclass(frozen=True)
class EvalConfig:
    """Which models to judge on which text sets and KoBEST tasks (recipe section `eval:`)."""

    models: tuple[Path, ...] = opt(doc="model folders; two or more are compared with the first")
    out_dir: Path = opt(doc="output folder (eval.json, eval.md, items.jsonl)")
    names: tuple[str, ...] = opt((), "column names for the models (default: the folder names)")
    tokenizers: tuple[Path, ...] = opt((), "paired with models in order; the rest use their folder's "
                                                  "tokenizer.model, else tokenizer.json")
    bpb_texts: tuple[TextSet, ...] = opt((), "list of {name, path}: held-out text for bits per byte")
    max_documents: int = opt(1000, "bits per byte over at most this many documents per text set")
    stride: int | None = opt(None, "bits per byte: tokens the window advances (default half the window)")
    kobest_dir: Path | None = opt(None, "folder with BoolQ/ COPA/ HellaSwag/ SentiNeg/ WiC/ TSVs")
    tasks: tuple[Task, ...] = opt(ALL_TASKS, "KoBEST tasks; [] for none")
    shots: tuple[int, ...] = opt((0,), "few-shot counts, e.g. [0, 5, 10, 50] like the Llama-2-Ko card")
    kobest_split: Literal["test", "dev"] = opt("test", "split scored (few-shot examples come from train)")
    max_examples_per_task: int | None = opt(None, "first N items per task (the harness's --limit); null: all")
    seed: int = opt(1234, "few-shot sampling seed (lm_eval's default --fewshot_seed)")
    add_bos: bool | None = opt(
        None, "prepend BOS to prompts; null: as the model's Hugging Face tokenizer does (the harness's "
        "default); true/false: always/never (older harness versions sent none)")
    batch_size: int = opt(16, "(prompt, choice) pairs or documents per forward pass")
    share_contexts: bool = opt(True, "run an item's prompt once for all its choices (KV cache)")
    max_length: int | None = opt(None, "window in tokens; default the model's max_position_embeddings")
    dtype: Literal["auto", "float32", "bfloat16"] = opt("float32", "weights dtype while scoring")
    device: str = opt("auto", "cuda when available, else cpu; or any torch device")

    def check(self) -> list[str]:
        problems = []
        if not self.models:
            problems.append("models: give at least one model folder")
        if len(self.tokenizers) > len(self.models):
            problems.append(f"tokenizers: {len(self.tokenizers)} given for {len(self.models)} models")
        if self.names and len(self.names) != len(self.models):
            problems.append(f"names: {len(self.names)} given for {len(self.models)} models")
        names = self.model_names
        if len(set(names)) != len(names):
            problems.append(f"names: must be unique, got {', '.join(names)}; set eval.names")
        texts = [t.name for t in self.bpb_texts]
        if len(set(texts)) != len(texts):
            problems.append(f"bpb_texts: names must be unique, got {', '.join(texts)}")
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"tasks: listed twice: {', '.join(self.tasks)}")
        if self.tasks and self.kobest_dir is None:
            problems.append("kobest_dir: required for KoBEST tasks (e.g. ../shared/data/kobest); "
                            "or set tasks: [] for bits per byte only")
        if not self.tasks and not self.bpb_texts:
            problems.append("tasks, bpb_texts: nothing to evaluate; give KoBEST tasks or text sets")
        if any(k < 0 for k in self.shots) or not self.shots or len(set(self.shots)) != len(self.shots):
            problems.append(f"shots: distinct counts of 0 or more, got {list(self.shots)}")
        if self.max_examples_per_task is not None and self.max_examples_per_task < 1:
            problems.append("max_examples_per_task: must be 1 or more (or null for all)")
        if self.batch_size < 1 or self.max_documents < 1:
            problems.append("batch_size, max_documents: must be 1 or more")
        if self.max_length is not None and self.max_length < 2:
            problems.append("max_length: must be 2 or more")
        return problems

    @property
    def model_names(self) -> list[str]:
        return list(self.names) if self.names else [Path(m).name for m in self.models]


@dataclass(frozen=True)
class EvalResult:
    """Where the outputs went, and every figure (the content of eval.json)."""

    out_dir: Path
    figures: dict[str, Any]
    eval_json: Path
    eval_md: Path
    items: Path
    manifest: Path

    def score(self, task: str, shots: int, metric: str = "f1", model: str | None = None) -> float:
        """One KoBEST figure, e.g. score("copa", 0) for the first model's f1 (macro-averaged)."""
        name = model or self.figures["models"][0]["name"]
        return float(self.figures["kobest"][task][str(shots)][name][metric])


def summary_lines(cfg: EvalConfig, res: EvalResult) -> list[str]:
    """What `kovocab eval` prints: the headline figures and where the tables went."""
    from kovocab.evaluation.tables import render_summary

    return [render_summary(res.figures), f"eval: {res.eval_md}\n      {res.eval_json}"]


def evaluate(cfg: EvalConfig | None = None, *, progress: bool | None = None, **fields: Any) -> EvalResult:
    """Run the evaluation of `cfg`, or of an EvalConfig built from keyword `fields`."""
    if cfg is None:
        problems: list[str] = []
        raw = {k: ([{"name": n, "path": str(p)} for n, p in v.items()] if k == "bpb_texts" and
                   isinstance(v, dict) else v) for k, v in fields.items()}
        cfg = build(EvalConfig, raw, "eval", problems)
        if problems or cfg is None:
            raise ConfigError(problems)
    elif fields:
        raise TypeError("evaluate() takes a config or keyword fields, not both")
    return _run(cfg, progress)


@claims_output(OUTPUTS, "eval.out_dir")
def _run(cfg: EvalConfig, progress: bool | None) -> EvalResult:
    from kovocab.artifacts import atomic_write_text, write_config, write_json, write_manifest
    from kovocab.evaluation import kobest
    from kovocab.evaluation.bpb import read_documents
    from kovocab.evaluation.scoring import load_scorer
    from kovocab.evaluation.tables import HARNESS_NOTES, render_markdown
    from kovocab.model.safetensors_io import safetensors_problems

    start = time.perf_counter()
    problems = [f"eval.{p}" for p in cfg.check()]  # a config built in code skipped `build`
    problems += [f"eval.models: folder not found: {m}" for m in cfg.models if not Path(m).is_dir()]
    problems += [p for m in cfg.models if Path(m).is_dir() for p in safetensors_problems(m, "eval.models")]
    if cfg.tasks and cfg.kobest_dir is not None and not Path(cfg.kobest_dir).is_dir():
        problems.append(f"eval.kobest_dir: folder not found: {cfg.kobest_dir} (the KoBEST TSVs, "
                        "e.g. ../shared/data/kobest)")
    problems += [f"eval.bpb_texts.{t.name}: not found: {t.path}"
                 for t in cfg.bpb_texts if not t.path.exists()]
    if problems:
        raise ConfigError(problems)

    texts = {t.name: read_documents([t.path], cfg.max_documents, f"eval.bpb_texts.{t.name}")
             for t in cfg.bpb_texts}
    prompts = _kobest_prompts(cfg) if cfg.tasks else {}
    names = cfg.model_names
    tokenizers = list(cfg.tokenizers) + list(cfg.models[len(cfg.tokenizers) :])
    figures: dict[str, Any] = {"models": [], "bpb": {t: {} for t in texts}, "kobest": {}}
    items: list[dict[str, Any]] = []
    for name, model_dir, tok in zip(names, cfg.models, tokenizers, strict=True):
        scorer = load_scorer(model_dir, tok, cfg.dtype, cfg.device, cfg.max_length, cfg.add_bos,
                             what="eval.models")
        figures["models"].append({"name": name, "model": str(model_dir), "tokenizer": str(scorer.tokenizer),
                                  "pieces": scorer.sp.get_piece_size(), "window": scorer.window,
                                  "add_bos": scorer.add_bos})
        for text, documents in texts.items():
            tick = time.perf_counter()
            nll = _bpb(scorer, documents, cfg)
            figures["bpb"][text][name] = {**nll, "seconds": time.perf_counter() - tick}
        for (task, shots), (docs, contexts) in prompts.items():
            tick = time.perf_counter()
            lls = _score_task(scorer, docs, contexts, cfg, progress, f"{name} {task} {shots}-shot")
            per_model = figures["kobest"].setdefault(task, {}).setdefault(str(shots), {})
            per_model[name] = {**kobest.task_metrics(docs, lls, task), "seconds": time.perf_counter() - tick}
            items += [{"model": name, "task": task, "shots": shots, "index": i, "gold": d.gold,
                       "pred": max(range(len(ll)), key=ll.__getitem__), "loglikelihoods": ll}
                      for i, (d, ll) in enumerate(zip(docs, lls, strict=True))]
            log.info("%s %s %d-shot: acc %.4f, f1 (macro) %.4f", name, task, shots,
                     per_model[name]["acc"], per_model[name]["f1"])
        del scorer
    figures["settings"] = {"kobest_split": cfg.kobest_split, "tasks": list(cfg.tasks),
                           "shots": list(cfg.shots), "max_examples_per_task": cfg.max_examples_per_task,
                           "seed": cfg.seed,
                           "add_bos": cfg.add_bos, "device": _device_name(cfg.device), "dtype": cfg.dtype}
    figures["harness_notes"] = HARNESS_NOTES
    figures["seconds"] = time.perf_counter() - start

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", figures)
    atomic_write_text(out / "eval.md", render_markdown(figures))
    atomic_write_text(out / "items.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
    write_config(out, "eval", cfg)
    inputs = [str(m) for m in cfg.models] + [str(t.path) for t in cfg.bpb_texts]
    if cfg.tasks:
        inputs += [str(kobest.task_file(cfg.kobest_dir, t, s)) for t in cfg.tasks  # type: ignore[arg-type]
                   for s in (cfg.kobest_split, "train")]
    manifest = write_manifest(out, "eval", {"seconds": figures["seconds"]}, inputs=inputs)
    return EvalResult(out, figures, out / "eval.json", out / "eval.md", out / "items.jsonl", manifest)


def _kobest_prompts(cfg: EvalConfig) -> dict[tuple[str, int], tuple[list[Any], list[str]]]:
    """(task, shots) -> (docs, prompts); the same for every model, so built once."""
    from kovocab.evaluation import kobest

    assert cfg.kobest_dir is not None  # checked by EvalConfig.check
    out: dict[tuple[str, int], tuple[list[Any], list[str]]] = {}
    for task in cfg.tasks:
        docs = kobest.load_docs(cfg.kobest_dir, task, cfg.kobest_split)[: cfg.max_examples_per_task]
        pool = kobest.load_docs(cfg.kobest_dir, task, "train") if any(cfg.shots) else []
        for shots in cfg.shots:
            out[(task, shots)] = (docs, kobest.fewshot_contexts(docs, pool, shots, cfg.seed))
    return out


def _score_task(scorer: Any, docs: Sequence[Any], contexts: Sequence[str], cfg: EvalConfig,
                progress: bool | None, desc: str) -> list[list[float]]:
    """Every choice of every doc, scored in one batched pass; per-doc lists of log-likelihoods."""
    from kovocab.evaluation.kobest import TARGET_DELIMITER
    from kovocab.evaluation.loglikelihood import continuation_logprobs

    pairs, owner = [], []
    for i, (doc, ctx) in enumerate(zip(docs, contexts, strict=True)):
        for choice in doc.choices:
            pairs.append(scorer.encode_pair(ctx, TARGET_DELIMITER + choice))
            owner.append(i)
    scores = continuation_logprobs(scorer, pairs, cfg.batch_size, progress, desc, cfg.share_contexts)
    lls: list[list[float]] = [[] for _ in docs]
    for i, (ll, _greedy) in zip(owner, scores, strict=True):
        lls[i].append(ll)
    return lls


def _bpb(scorer: Any, docs: Sequence[str], cfg: EvalConfig) -> dict[str, Any]:
    import math

    from kovocab.evaluation.scoring import document_nll

    nats, tokens = document_nll(scorer, docs, cfg.stride, cfg.batch_size)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    bits = nats / math.log(2)
    return {"documents": len(docs), "bytes": nbytes, "tokens": tokens, "nll_bits": bits,
            "bits_per_byte": bits / nbytes, "bits_per_token": bits / tokens if tokens else math.nan}


def _device_name(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.cuda.get_device_name() if device.startswith("cuda") else device


__all__ = ["EvalConfig", "EvalResult", "TextSet", "evaluate"]
