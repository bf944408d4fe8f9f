"""The one stage registry: name → config class, function, summary, CLI flags, run wiring.

`kovocab <command>` (cli.py) builds its parser from these entries and `kovocab run`
(run.py) walks the ones with wiring, in this order: a new stage is its module (config
class, function, `summary_lines` for what its command prints) plus one `Stage` here.
Every plain key of the config is a flag by itself (`--vocab-size` sets `vocab_size`), so
`flags` lists only positionals, spellings other than the key's, and the command's own
options. Wiring only names paths: stage N's output folder becomes stage N+1's input
unless the recipe says otherwise. Stage functions are imported when a stage runs, so
torch stays unloaded for `--help`.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kovocab import evaluation
from kovocab.config import absolutize_section, load_section, resolve_paths, to_dict
from kovocab.corpus import options as shard_options
from kovocab.errors import ConfigError
from kovocab.evaluation import bpb
from kovocab.model import chat_vector, gguf_import, resize, tiny
from kovocab.pretraining.config import LoraConfig, PretrainConfig, StageConfig
from kovocab.pretraining.config import outputs as pretrain_outputs
from kovocab.report import measure
from kovocab.tokenizer import expand, merge, train


@dataclass(frozen=True)
class Flag:
    """One command-line option (`--out`) or positional (`corpus`, any number) and the key it sets."""

    name: str  # several spellings separated by spaces: "--local_rank --local-rank"
    key: str | None = None  # the config key it sets; None: an option of the command itself (`command`)
    help: str | None = None  # default: the key's doc
    type: Callable[[str], Any] | None = None  # default: from the key's type (Path, int; Literal: choices)
    many: bool = False  # repeatable: --text A --text B
    extra: Mapping[str, Any] | None = None  # more argparse keywords (default, choices, metavar, action)


@dataclass(frozen=True)
class Stage:
    """A stage: its config, its function, its command line and how `kovocab run` connects it."""

    name: str  # recipe section (and `kovocab run` stage)
    command: str  # subcommand
    cls: type  # config class, built from section `name`
    function: str  # "module:function" called with the config
    help: str  # one line in `kovocab --help`
    flags: tuple[Flag, ...] = ()  # beyond the derived `--key-with-dashes` of every plain key
    description: str | None = None
    show: Callable[[Any, Any], Iterable[str]] = lambda cfg, res: ()  # (config, result) -> lines printed
    nested: tuple[tuple[type, str], ...] = ()  # (class, key) of list entries whose keys --help lists too
    build: Callable[[Mapping[str, Any], dict[str, Any]], Any] | None = None  # default: stage_section
    # the command's own options (key None) into the section, before the config is built
    from_args: Callable[[dict[str, Any], argparse.Namespace], dict[str, Any]] | None = None
    # the command line itself, when it is more than `function(config)`: (config, args) -> lines printed
    run_command: Callable[[Any, argparse.Namespace], Iterable[str]] | None = None
    # --- kovocab run (a stage without `wire` is a command only) ---
    wire: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None  # (run dir, outputs) -> keys
    outputs: Callable[[Any], dict[str, Any]] = lambda cfg: {}  # config -> the paths later stages read
    summary: Callable[[Any], dict[str, Any]] = lambda result: {}  # recorded in run.json
    out_dir: Callable[[Any], Path] = lambda cfg: Path(cfg.out_dir)
    done_file: Callable[[Any], Path] = lambda cfg: Path(cfg.out_dir) / "manifest.json"  # exists once complete
    # (section, folder) -> the section with its relative paths made absolute; default: by cls's types
    absolutize: Callable[[Mapping[str, Any], Any], dict[str, Any]] | None = None
    owned: Callable[[Any], Any] | None = None  # config -> the artifacts.Owned a rerun may remove
    # (config, nproc_per_node, continue a stopped run?) -> result; default: function(config)
    call: Callable[[Any, int, bool], Any] | None = None
    optional: bool = False  # kovocab run: runs only when the recipe has its section

    def config(self, data: Mapping[str, Any], section: dict[str, Any]) -> Any:
        if self.build is not None:
            return self.build(data, section)
        return stage_section(data, section, self.cls, self.name)

    def absolute(self, section: Mapping[str, Any], base_dir: Any) -> dict[str, Any]:
        if self.absolutize is not None:
            return self.absolutize(section, base_dir)
        return absolutize_section(self.cls, section, base_dir)

    def run(self, cfg: Any, nproc_per_node: int = 1, resume: bool = False) -> Any:
        if self.call is not None:
            return self.call(cfg, nproc_per_node, resume)
        module, _, function = self.function.partition(":")
        return getattr(importlib.import_module(module), function)(cfg)


def stage_section(data: Mapping[str, Any], section: Mapping[str, Any], cls: type, name: str) -> Any:
    """A stage config from its (wired) section, relative paths taken from the recipe's folder."""
    cfg: Any = load_section(cls, {name: dict(section)}, name)
    return resolve_paths(cfg, data.get("_recipe_dir"))


def _get(outputs: dict[str, Any], stage: str, key: str) -> Any:
    return (outputs.get(stage) or {}).get(key)


def _some(**items: Any) -> dict[str, Any]:
    """The wiring keys whose upstream value is known (a stage not run leaves its keys to the recipe)."""
    return {k: v for k, v in items.items() if v is not None}


def _listed(value: Any) -> list[Any] | None:
    return None if value is None else [value]


def _comma(value: str) -> list[str]:
    """`a,b` -> [a, b]; `none` -> [] (a list, so that "none" is not skipped as unset)."""
    return [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]


def _int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None


def _named(kind: str) -> Callable[[str], dict[str, str]]:
    def parse(value: str) -> dict[str, str]:
        return measure.config_from_flags([value], kind)[0]
    return parse


OUT, CORPUS = Flag("--out", "out_dir"), Flag("corpus", "corpus")
SWITCH = {"action": "store_true"}

# --- shard -----------------------------------------------------------------------------------


def _shard_build(data: Mapping[str, Any], section: dict[str, Any]) -> Any:
    return shard_options.load_shard_config({**data, "shard": section})


_SOURCE_FLAGS = ("format", "field", "encoding", "txt_mode", "use")


def _shard_section(section: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """INPUT paths and their --format/--field/... as one more source of the shard section."""
    given = {k: getattr(args, k) for k in _SOURCE_FLAGS if getattr(args, k) is not None}
    if args.inputs:
        src = {"name": args.name, "paths": [os.path.abspath(p) for p in args.inputs], **given}
        section["sources"] = [*(section.get("sources") or []), src]
    elif given:
        raise ConfigError("--format/--field/--encoding/--txt-mode/--use describe INPUT paths; give some")
    elif not section.get("sources"):
        raise ConfigError("nothing to read: give INPUT paths or --recipe corpora/NAME.yaml (shard.sources)")
    return section


def _shard_command(cfg: Any, args: argparse.Namespace) -> Iterable[str]:
    from kovocab.corpus.pipeline import shard_tasks, summary_lines

    if args.stage is not None and args.engine != "local":
        raise ConfigError("--stage runs one stage of --engine local: add --engine local")
    if args.tasks is not None and args.engine != "datatrove":
        raise ConfigError("--tasks sets the ranks of --engine datatrove: add --engine datatrove "
                          "(array jobs: --task I --num-tasks N)")
    if args.engine == "datatrove":
        if args.task is not None or args.num_tasks is not None:
            raise ConfigError("--engine datatrove runs every stage; on a cluster use its SLURM executor "
                              "(README: Beyond one machine) or --engine local with --stage/--task")
        from kovocab.corpus.on_datatrove import shard_datatrove

        return summary_lines(shard_datatrove(cfg, workers=args.workers, tasks=args.tasks))
    if args.task is not None or args.num_tasks is not None:
        if args.task is None or args.num_tasks is None:
            raise ConfigError("--task and --num-tasks go together (task I of N, I in 0..N-1)")
        if args.engine == "local":
            from kovocab.corpus.engine import shard_stage

            if args.stage is None:
                raise ConfigError("--engine local with --task: name the stage (--stage read, dedup or write)")
            ran = shard_stage(cfg, args.stage, args.task, args.num_tasks)
            return [f"stage {args.stage}, task {args.task}/{args.num_tasks}: ran {ran} task(s) in "
                    f"{cfg.out}/.work",
                    "when every task of every stage has finished, run the same command without "
                    "--stage/--task/--num-tasks to finish"]
        ran = shard_tasks(cfg, args.task, args.num_tasks, workers=args.workers)
        return [f"task {args.task}/{args.num_tasks}: ran {ran} phase-1 task(s) into {cfg.out}/.work",
                "when every task has finished, run the same command without --task/--num-tasks to merge"]
    from kovocab.corpus.engine import shard, shard_local

    # serial (the default): engine.shard, which takes the local engine for keep_index / dedupe_against
    return summary_lines((shard_local if args.engine == "local" else shard)(cfg, workers=args.workers))


SHARD = Stage(
    name="shard", command="shard", cls=shard_options.ShardConfig, function="kovocab.corpus.engine:shard",
    help="Korean text files -> cleaned, deduplicated JSONL.gz + Parquet shards",
    description=(
        "Read, decode, normalise, filter, dedupe and shard a Korean corpus.\n"
        "Give INPUT paths (one source) or --recipe corpora/NAME.yaml (section shard:).\n"
        "A finished run is a no-op; a killed run resumes where it stopped.\n"
        "Cluster: run --task I --num-tasks N for every I in 0..N-1 (e.g. a SLURM array),\n"
        "then the same command without --task/--num-tasks to merge. With --engine local:\n"
        "--stage read, then dedup, then write (each an array), then without --stage."),
    flags=(Flag("inputs", help="files, folders or globs (one source)", extra={"metavar": "INPUT"}),
           Flag("--out", "out", "output folder (shard.out)", type=str),
           Flag("--workers", help="processes for phase 1 (default 1); --engine local/datatrove: for "
                "every stage",
                type=int, extra={"default": 1}),
           Flag("--engine", help="serial (default): phase 1 in parallel, then one process dedupes and "
                "writes; local: every step as bounded tasks (memory flat in the corpus size); "
                "datatrove: local's tasks run by datatrove's LocalPipelineExecutor",
                extra={"default": "serial", "choices": ["serial", "local", "datatrove"]}),
           Flag("--tasks", help="--engine datatrove: ranks per stage (default --workers)", type=int),
           Flag("--stage", help="--engine local on a cluster: run only this stage's tasks "
                "(read, dedup, write; with --task/--num-tasks)",
                extra={"choices": ["read", "dedup", "write"]}),
           Flag("--task", help="run only phase-1 task I of --num-tasks (cluster array job)", type=int),
           Flag("--num-tasks", help="number of array tasks sharing phase 1", type=int),
           Flag("--name", help="INPUT source name (default: inputs)", extra={"default": "inputs"}),
           Flag("--format", help="INPUT format: auto, txt, jsonl, json, tsv, csv, parquet, arrow"),
           Flag("--field", help="JSON field or table column holding the text (default: text)"),
           Flag("--encoding", help="auto, utf-8, cp949, euc-kr"),
           Flag("--txt-mode", help="line or paragraph"), Flag("--use", help="train or eval")),
    nested=((shard_options.SourceConfig, "shard.sources"),), build=_shard_build, from_args=_shard_section,
    run_command=_shard_command,
    absolutize=shard_options.absolute_section, owned=lambda cfg: shard_options.OUTPUTS,
    wire=lambda run_dir, outputs: {"out": str(run_dir / "corpus")},
    out_dir=lambda cfg: Path(cfg.out), done_file=lambda cfg: Path(cfg.out) / "manifest.json",
    outputs=lambda cfg: {"corpus": cfg.out},
    summary=lambda res: {"read": res.docs_in, "kept": res.kept, "dropped": res.dropped,
                         "duplicates": res.duplicates},
)

# --- import-gguf: a llama.cpp .gguf model converted once (its tokenizer is expand-vocab's base) -

IMPORT_GGUF = Stage(
    name="import_gguf", command="import-gguf", cls=gguf_import.ImportGgufConfig,
    function="kovocab.model.gguf_import:import_gguf",
    help="convert a llama.cpp .gguf model into a Hugging Face safetensors folder (once)",
    description=(
        "De-quantise a GGUF model file (transformers' GGUF loader) and write a Hugging Face\n"
        "folder: config.json, model.safetensors, the tokenizer rebuilt from the file's metadata\n"
        "(with llama.cpp's pre-tokenizer where transformers' converter drops it) and a manifest\n"
        "with the GGUF's sha256. A folder already holding that conversion is reused.\n"
        "Every later stage (resize-embeddings, pretrain, eval) reads the folder."),
    flags=(Flag("--gguf", "gguf"), OUT),
    show=gguf_import.summary_lines, owned=lambda cfg: gguf_import.OUTPUTS, optional=True,
    wire=lambda run_dir, outputs: {"out_dir": str(run_dir / "base_model")},
    outputs=lambda cfg: {"model": cfg.out_dir, "tokenizer": cfg.out_dir},
    summary=lambda res: {**res.stats, "reused": res.reused},
)

# --- tokenizer: train-tokenizer, merge-vocab, expand-vocab (both + report, + resize) ---------

TRAIN_TOKENIZER = Stage(
    name="tokenizer_training", command="train-tokenizer", cls=train.TokenizerTrainingConfig,
    function="kovocab.tokenizer.train:train_tokenizer",
    help="train Korean SentencePiece BPE pieces (plain or Kiwi morpheme-aware)",
    flags=(CORPUS, OUT),
    show=train.summary_lines,
)

MERGE_VOCAB = Stage(
    name="vocab_merge", command="merge-vocab", cls=merge.MergeVocabConfig,
    function="kovocab.tokenizer.merge:merge_vocab",
    help="append Korean pieces to a base SentencePiece BPE (Llama-2) vocabulary",
    flags=(OUT,),
    show=merge.summary_lines,
)


def _weights(weights: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """source_weights as plain recipe data (None when there are none)."""
    return {name: to_dict(w) for name, w in (weights or {}).items()} or None


EXPAND_VOCAB = Stage(
    name="expand_vocab", command="expand-vocab", cls=expand.ExpandVocabConfig,
    function="kovocab.tokenizer.expand:expand_vocab_from_config",
    help="train Korean pieces and append them to the base (SentencePiece or byte-level BPE), "
         "+ report, + resize with --model, in one step",
    flags=(CORPUS, OUT, Flag("--eval-text", "eval_texts", many=True),
           Flag("--sweep", "sweep", "also cut the Korean model at these numbers of new pieces, e.g. "
                "4096,8192,14336,23296,32768", type=_int_list, extra={"metavar": "N,N,..."})),
    show=expand.summary_lines, owned=lambda cfg: expand.OUTPUTS,
    # report=False: the run's own report stage measures base vs expanded on the same held-out split.
    wire=lambda run_dir, outputs: _some(corpus=_listed(_get(outputs, "shard", "corpus")),
                                        base=_get(outputs, "import_gguf", "tokenizer"),
                                        out_dir=str(run_dir / "tokenizer"), report=False),
    done_file=lambda cfg: Path(cfg.out_dir) / "tokenizer" / "manifest.json",
    outputs=lambda cfg: {"tokenizer": Path(cfg.out_dir) / "tokenizer", "base": cfg.base,
                         "sweep": Path(cfg.out_dir) / "sweep" / "sweep.json" if cfg.sweep else None,
                         # pretrain samples its token store with the tokenizer's source weights
                         "source_weights": _weights(cfg.source_weights)},
    summary=lambda res: {**res.stats, **({"sweep": list(res.sweep)} if res.sweep else {})},
)

# --- model: init-model (a tiny Llama for smoke runs), resize-embeddings, bpb (the step-0 check) --

INIT_MODEL = Stage(
    name="init_model", command="init-model", cls=tiny.InitModelConfig,
    function="kovocab.model.tiny:init_model",
    help="build a small Llama from config (random, seeded) with a base tokenizer, for smoke runs",
    description=(
        "Write a randomly initialised Hugging Face Llama (safetensors) whose vocabulary is the\n"
        "base tokenizer's, with that tokenizer beside it: the stand-in for a downloaded Llama\n"
        "in smoke runs and tests. Real runs start from a real checkpoint instead."),
    flags=(OUT,),
    show=tiny.summary_lines,
    owned=lambda cfg: tiny.OUTPUTS, optional=True,
    wire=lambda run_dir, outputs: _some(out_dir=str(run_dir / "base_model"),
                                        tokenizer=_get(outputs, "expand_vocab", "base")),
    outputs=lambda cfg: {"model": cfg.out_dir},
    summary=lambda res: {"parameters": res.parameters, "vocab_size": res.vocab_size},
)


RESIZE = Stage(
    name="resize_embeddings", command="resize-embeddings", cls=resize.ResizeConfig,
    function="kovocab.model.resize:resize_embeddings_from_config",
    help="grow a checkpoint's embeddings and LM head to an expanded tokenizer (mean-initialised)",
    description=(
        "Resize the input embeddings and LM head of a Hugging Face Llama checkpoint\n"
        "(safetensors) to the expanded tokenizer, reading and rewriting only those two\n"
        "tensors; the other shards are hardlinked. New rows: the mean of the base\n"
        "tokenizer's split of the piece (subword-mean) or of all rows (mean)."),
    flags=(Flag("--model", "model_dir"), OUT),
    show=resize.summary_lines, owned=lambda cfg: resize.OUTPUTS,
    wire=lambda run_dir, outputs: _some(model_dir=_get(outputs, "init_model", "model")
                                        or _get(outputs, "import_gguf", "model"),
                                        tokenizer=_get(outputs, "expand_vocab", "tokenizer"),
                                        out_dir=str(run_dir / "model")),
    outputs=lambda cfg: {"model": cfg.out_dir, "base": cfg.model_dir},
    summary=lambda res: dict(res.stats),
)

MODEL_FLAGS = (Flag("--model", "models", many=True), Flag("--tokenizer", "tokenizers", many=True))


BPB = Stage(
    name="bpb", command="bpb", cls=bpb.BpbConfig, function="kovocab.evaluation.bpb:compare_bits_per_byte",
    help="bits per byte of held-out text under (model, tokenizer) pairs: the step-0 check",
    description=(
        "Score the same documents under each model with its tokenizer (default: the\n"
        "model folder's tokenizer.model, else its tokenizer.json). Give the base model and\n"
        "the resized one to see\n"
        "what the new rows cost before training; bits/byte does not depend on the tokenizer."),
    flags=(*MODEL_FLAGS, Flag("--text", "texts", many=True)),
    show=bpb.summary_lines,
)

# --- pretrain (DeepSpeed ZeRO-3; the ranks are started here unless a launcher started us) ------


def _pretrain_call(cfg: Any, nproc_per_node: int, resume: bool) -> Any:
    from kovocab.pretraining.checkpoint import latest_tag
    from kovocab.pretraining.launch import launch_pretrain

    # A run killed inside its first save leaves a step folder but no `latest`: start fresh then.
    resume = resume and latest_tag(Path(cfg.out_dir) / "checkpoints") is not None
    return launch_pretrain(cfg, nproc_per_node=nproc_per_node, resume=resume)


def _pretrain_command(cfg: Any, args: argparse.Namespace) -> Iterable[str]:
    from kovocab.pretraining.config import check_paths
    from kovocab.pretraining.launch import LAUNCHED, launch_pretrain, prepare_data, summary_lines

    if args.prepare_data_only:
        check_paths(cfg)
        train_store, _ = prepare_data(cfg)
        return [f"token store ({train_store.num_documents} documents, {train_store.num_tokens} tokens): "
                f"{cfg.store_dir}"]
    res = launch_pretrain(cfg, args.nproc_per_node, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0 or LAUNCHED in os.environ:
        return []
    return summary_lines(cfg, res)


def _pretrain_section(section: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if not args.recipe:
        raise ConfigError("pretrain: give --config pretrain/NAME.yaml (section pretrain:)")
    return section


def _pretrain_wire(run_dir: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    corpus = _listed(_get(outputs, "shard", "corpus"))
    return _some(model_dir=_get(outputs, "resize_embeddings", "model"), train_data=corpus,
                 eval_korean=corpus, out_dir=str(run_dir / "pretrain"),
                 source_weights=_get(outputs, "expand_vocab", "source_weights"))


PRETRAIN = Stage(
    name="pretrain", command="pretrain", cls=PretrainConfig,
    function="kovocab.pretraining.launch:launch_pretrain",
    help="continued pretraining of the resized model under DeepSpeed ZeRO-3, in stages",
    description=(
        "Train the resized checkpoint in the recipe's stages (e.g. new embedding rows, then all)\n"
        "under the DeepSpeed ZeRO-3 JSON it names; export a Hugging Face checkpoint at the end.\n"
        "One node: --nproc-per-node N (re-launches through torch.distributed.run), or start it\n"
        "under torchrun / `deepspeed --module kovocab` / srun; see pretrain/README.md."),
    flags=(Flag("--config", help="pretrain/NAME.yaml (same as --recipe)", type=Path,
                extra={"dest": "recipe"}),
           Flag("--resume", help="continue from out_dir/checkpoints/latest", extra=SWITCH),
           Flag("--nproc-per-node", help="processes on this node without a launcher", type=int,
                extra={"default": 1}),
           Flag("--prepare-data-only", help="build (or reuse) the token stores and exit (run once before a "
                "multi-node job)", extra=SWITCH),
           Flag("--local_rank --local-rank", help=argparse.SUPPRESS, type=int)),  # deepspeed's launcher
    nested=((StageConfig, "pretrain.stages"), (LoraConfig, "pretrain.lora")),
    from_args=_pretrain_section, run_command=_pretrain_command,
    wire=_pretrain_wire, call=_pretrain_call, owned=pretrain_outputs,
    done_file=lambda cfg: Path(cfg.out_dir) / "hf" / "manifest.json",
    outputs=lambda cfg: {"model": Path(cfg.out_dir) / "hf"},
    summary=lambda res: {"steps": res.steps, "final_loss": res.final_loss, "seconds": res.seconds},
)

# --- chat vector (C + s * (I - B): the instruct model's difference on the pretrained model) -----

CHAT_VECTOR = Stage(
    name="chat_vector", command="chat-vector", cls=chat_vector.ChatVectorConfig,
    function="kovocab.model.chat_vector:chat_vector",
    help="add an instruct model's difference (instruct - base) to the continued-pretrained model",
    description=(
        "Write C + scale * (I - B): B the base model, I its instruct model, C the continued-\n"
        "pretrained model (vocabulary possibly expanded). Embedding and LM-head rows of B's\n"
        "vocabulary get the difference; C's new rows are kept (or get the mean difference).\n"
        "Streamed over the safetensors shards in row chunks; C's config and tokenizer are kept,\n"
        "I's chat template is added. In `kovocab run`: after pretrain, on its exported model."),
    flags=(Flag("--base", "base_model"), Flag("--instruct", "instruct_model"), Flag("--model", "model_dir"),
           OUT),
    show=chat_vector.summary_lines, owned=lambda cfg: chat_vector.OUTPUTS, optional=True,
    wire=lambda run_dir, outputs: _some(model_dir=_get(outputs, "pretrain", "model"),
                                        base_model=_get(outputs, "resize_embeddings", "base"),
                                        out_dir=str(run_dir / "chat_vector")),
    outputs=lambda cfg: {"model": cfg.out_dir},
    summary=lambda res: dict(res.stats),
)

# --- report ----------------------------------------------------------------------------------


def _report_wire(run_dir: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    base, tokenizer = _get(outputs, "expand_vocab", "base"), _get(outputs, "expand_vocab", "tokenizer")
    corpus, sweep = _get(outputs, "shard", "corpus"), _get(outputs, "expand_vocab", "sweep")
    wired: dict[str, Any] = {"out_dir": str(run_dir / "report")}
    if base is not None and tokenizer is not None:
        wired["tokenizers"] = [{"name": "base", "path": base}, {"name": "kovocab", "path": tokenizer}]
    if corpus is not None:
        wired["texts"] = [{"name": "held-out", "path": corpus}]
    if sweep is not None:
        wired["sweep_file"] = sweep
    return wired


REPORT = Stage(
    name="report", command="report", cls=measure.ReportConfig, function="kovocab.report.measure:run_report",
    help="compare tokenizers on text sets: tokens/sentence, chars/token, fertility, pieces",
    description=("Tokenization-efficiency report: every tokenizer on every text set, split into "
                 "Korean, English and mixed lines. Writes report.json, report.md and report.html."),
    flags=(Flag("--tokenizer", "tokenizers", ".model, tokenizer.json, tokenizer folder or tiktoken ranks "
                "(repeatable)", type=_named("tokenizer"), many=True, extra={"metavar": "NAME=PATH"}),
           Flag("--text", "texts", "text/.jsonl/.json/.tsv file (PATH:FIELD for a field or column) or shard "
                "folder", type=_named("text"), many=True, extra={"metavar": "NAME=PATH"}),
           OUT, Flag("--example", "examples", many=True, extra={"metavar": "SENTENCE"}),
           Flag("--field", "text_field"), Flag("--split", "shard_split")),
    show=measure.summary_lines, owned=lambda cfg: measure.OUTPUTS, wire=_report_wire,
    done_file=lambda cfg: Path(cfg.out_dir) / "report.json",
    outputs=lambda cfg: {"report": Path(cfg.out_dir) / "report.md"},
)

# --- eval (bits per byte + KoBEST, the resized model before pretraining vs after) ------------


def _eval_wire(run_dir: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    before, after = _get(outputs, "resize_embeddings", "model"), _get(outputs, "pretrain", "model")
    base = _get(outputs, "import_gguf", "model")  # a real pretrained model: scored first, as it came
    corpus = _get(outputs, "shard", "corpus")
    wired: dict[str, Any] = {"out_dir": str(run_dir / "eval")}
    if before is not None or after is not None:
        named = (("base", base), ("resized", before), ("pretrained", after))
        pairs = [(n, m) for n, m in named if m is not None]
        wired.update(models=[m for _, m in pairs], names=[n for n, _ in pairs])
    if corpus is not None:
        wired["bpb_texts"] = [{"name": "korean held-out", "path": corpus}]
    return wired


EVAL = Stage(
    name="eval", command="eval", cls=evaluation.EvalConfig, function="kovocab.evaluation:evaluate",
    help="judge checkpoints: bits per byte on text sets + KoBEST (0/5/10/50-shot), side by side",
    description=(
        "Score one model, or several compared with the first (base vs adapted), on held-out\n"
        "text (bits per byte) and KoBEST BoolQ/COPA/HellaSwag/SentiNeg/WiC with\n"
        "lm-evaluation-harness's prompts and metric names (acc; acc_norm for HellaSwag; f1, macro),\n"
        "from local TSVs.\n"
        "Writes eval.json, eval.md (tables like the Llama-2-Ko card) and items.jsonl."),
    flags=(MODEL_FLAGS[0], Flag("--name", "names", many=True), MODEL_FLAGS[1],
           Flag("--text", "bpb_texts", "held-out text for bits per byte: .txt, .jsonl or shard folder "
                "(repeatable)", type=_named("text"), many=True, extra={"metavar": "NAME=PATH"}),
           Flag("--tasks", "tasks", "comma-separated KoBEST tasks, or 'none' (default: all five)",
                type=_comma),
           Flag("--shots", "shots", "comma-separated few-shot counts, e.g. 0,5,10,50 (default: 0)",
                type=lambda v: [int(s) if s.isdigit() else s for s in _comma(v)]),
           Flag("--split", "kobest_split"), Flag("--limit", "max_examples_per_task"), OUT),
    show=evaluation.summary_lines, owned=lambda cfg: evaluation.OUTPUTS, wire=_eval_wire,
    done_file=lambda cfg: Path(cfg.out_dir) / "eval.json",
    outputs=lambda cfg: {"eval": Path(cfg.out_dir) / "eval.json"},
)

REGISTRY = (SHARD, IMPORT_GGUF, TRAIN_TOKENIZER, MERGE_VOCAB, EXPAND_VOCAB, INIT_MODEL, RESIZE, BPB, PRETRAIN,
            CHAT_VECTOR, REPORT, EVAL)
STAGE_TABLE = tuple(s for s in REGISTRY if s.wire is not None)  # what `kovocab run` walks, in order
