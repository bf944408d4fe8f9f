"""`kovocab <subcommand>`: parse arguments, call one stage function, print where outputs went.

Each subcommand is a pair: `_add_<name>(subparsers)` declares its arguments and
`_run_<name>(args) -> int` calls the stage. Heavy libraries are imported inside
the stage modules, never here, so `kovocab --help` is instant. `main(argv)`
returns an exit code so tests call it directly.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kovocab import __version__
from kovocab.errors import KovocabError

log = logging.getLogger("kovocab")


def _parser(sub: Any, name: str, config: tuple[type, str], help: str, description: str | None = None,
            more: str = "") -> argparse.ArgumentParser:
    """A subcommand whose --help ends with every key of its config section, default and meaning."""
    from kovocab.config import describe

    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, epilog=describe(*config) + more,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(config_section=config[1])  # the one section `--set` may change
    return parser


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one recipe key (repeatable), value parsed as YAML",
    )


def _common(p: argparse.ArgumentParser, recipe: bool = True) -> None:
    if recipe:
        p.add_argument("--recipe", type=Path, help="YAML recipe; command-line options override it")
        _overrides(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _recipe_data(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe (or an empty one) with `--set` overrides applied.

    A recipe may hold other commands' sections (tokenizers/*.yaml holds three), but every
    top-level key must be some command's section and a mapping; `--set` may change only
    this command's section. All problems are reported at once.
    """
    from kovocab.config import apply_overrides, read_recipe, section_problems
    from kovocab.errors import ConfigError

    data: dict[str, Any] = {}
    problems: list[str] = []
    if getattr(args, "recipe", None):
        data = read_recipe(args.recipe)
        problems = section_problems(data, args.recipe_sections, str(args.recipe))
    try:
        data = apply_overrides(data, getattr(args, "overrides", []), sections=(args.config_section,))
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return data


# --- subcommands (keep one _add_/_run_ pair per stage, in pipeline order) ------------------

# [shard]


def _add_shard(sub: Any) -> None:
    from kovocab.config import describe
    from kovocab.corpus.options import ShardConfig, SourceConfig

    sources = describe(SourceConfig, "shard.sources").splitlines()[1:]
    p = _parser(
        sub, "shard",
        help="Korean text files -> cleaned, deduplicated JSONL.gz + Parquet shards",
        description=(
            "Read, decode, normalise, filter, dedupe and shard a Korean corpus.\n"
            "Give INPUT paths (one source) or --recipe corpora/NAME.yaml (section shard:).\n"
            "A finished run is a no-op; a killed run resumes where it stopped.\n"
            "Cluster: run --task I --num-tasks N for every I in 0..N-1 (e.g. a SLURM array),\n"
            "then the same command without --task/--num-tasks to merge."
        ),
        config=(ShardConfig, "shard"), more="\n\neach entry of shard.sources:\n" + "\n".join(sources),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files, folders or globs (one source)")
    p.add_argument("--out", help="output folder (shard.out)")
    p.add_argument("--shards", type=int, help="number of train shards (shard.shards)")
    p.add_argument("--workers", type=int, default=1, help="processes for phase 1 (default 1)")
    p.add_argument("--task", type=int, help="run only phase-1 task I of --num-tasks (cluster array job)")
    p.add_argument("--num-tasks", type=int, help="number of array tasks sharing phase 1")
    g = p.add_argument_group("INPUT source (when INPUT paths are given)")
    g.add_argument("--name", default="inputs", help="source name (default: inputs)")
    g.add_argument("--format", help="auto, txt, jsonl, json, tsv, csv, parquet, arrow")
    g.add_argument("--field", help="JSON field or table column holding the text (default: text)")
    g.add_argument("--encoding", help="auto, utf-8, cp949, euc-kr")
    g.add_argument("--txt-mode", help="line or paragraph")
    g.add_argument("--use", help="train or eval")
    _common(p)
    p.set_defaults(func=_run_shard)


def _run_shard(args: argparse.Namespace) -> int:
    import os

    from kovocab.corpus import load_shard_config, shard_corpus, shard_tasks
    from kovocab.errors import ConfigError

    data = _recipe_data(args)
    section = dict(data.get("shard") or {})
    flags = {"format": args.format, "field": args.field, "encoding": args.encoding,
             "txt_mode": args.txt_mode, "use": args.use}
    if args.inputs:
        src = {"name": args.name, "paths": [os.path.abspath(p) for p in args.inputs]}
        src.update({k: v for k, v in flags.items() if v is not None})
        section["sources"] = [*(section.get("sources") or []), src]
    elif any(v is not None for v in flags.values()):
        raise ConfigError("--format/--field/--encoding/--txt-mode/--use describe INPUT paths; give some")
    elif not section.get("sources"):
        raise ConfigError("nothing to read: give INPUT paths or --recipe corpora/NAME.yaml (shard.sources)")
    if args.out:
        section["out"] = args.out
    if args.shards is not None:
        section["shards"] = args.shards
    cfg = load_shard_config({**data, "shard": section})
    args.resolved_out = cfg.out  # named by error messages about the disk
    if args.task is not None or args.num_tasks is not None:
        if args.task is None or args.num_tasks is None:
            raise ConfigError("--task and --num-tasks go together (task I of N, I in 0..N-1)")
        ran = shard_tasks(cfg, args.task, args.num_tasks, workers=args.workers)
        print(f"task {args.task}/{args.num_tasks}: ran {ran} phase-1 task(s) into {cfg.out}/.work")
        print("when every task has finished, run the same command without --task/--num-tasks to merge")
        return 0
    res = shard_corpus(cfg, workers=args.workers)
    state = "already complete, nothing changed" if res.already_done else "written"
    print(f"shards {state}: {res.out}")
    print(f"  documents: {res.docs_in} read, {res.kept} kept, {res.dropped} dropped, "
          f"{res.duplicates} duplicates")
    for split in ("train", "eval"):
        paths = res.splits[split]
        print(f"  {split}: {res.out / (split + '-*-of-' + paths[0].name.split('-of-')[1])} "
              f"({len(paths)} shard(s), and .parquet)")
    print(f"  quarantine: {res.quarantine}")
    print(f"  manifest: {res.manifest}")
    return 0

# [train-tokenizer / merge-vocab / expand-vocab]


def _stage_config(args: argparse.Namespace, cls: type, section: str, **flags: Any) -> Any:
    """Recipe section + --set overrides + explicit flags, relative recipe paths resolved.

    Paths in a recipe are relative to the recipe's folder; paths on the command line
    are relative to the working directory, so flags are made absolute first.
    """
    from kovocab.config import load_section, resolve_paths

    data = _recipe_data(args)
    section_data = dict(data.get(section) or {})
    for key, value in flags.items():
        if value is None or value == ():
            continue
        if isinstance(value, Path):
            value = value.absolute()
        elif isinstance(value, tuple):
            value = tuple(v.absolute() if isinstance(v, Path) else v for v in value)
        section_data[key] = value
    cfg: Any = resolve_paths(load_section(cls, {section: section_data}, section), data.get("_recipe_dir"))
    args.resolved_out = getattr(cfg, "out_dir", None) or getattr(cfg, "out", None)  # for disk errors
    return cfg


def _add_train_tokenizer(sub: Any) -> None:
    from kovocab.tokenizer.train import TokenizerTrainingConfig

    p = _parser(
        sub, "train-tokenizer",
        help="train Korean SentencePiece BPE pieces (plain or Kiwi morpheme-aware)",
        config=(TokenizerTrainingConfig, "tokenizer_training"),
    )
    p.add_argument("corpus", nargs="*", type=Path, help="shard folders, .txt or .jsonl files")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--method", choices=["bpe", "morpheme-bpe"])
    p.add_argument("--vocab-size", type=int)
    _common(p)
    p.set_defaults(func=_run_train_tokenizer)


def _run_train_tokenizer(args: argparse.Namespace) -> int:
    from kovocab.tokenizer.train import TokenizerTrainingConfig, train_tokenizer

    cfg = _stage_config(
        args, TokenizerTrainingConfig, "tokenizer_training",
        corpus=tuple(args.corpus), out_dir=args.out, method=args.method, vocab_size=args.vocab_size,
    )
    res = train_tokenizer(cfg)
    print(f"Korean BPE ({res.vocab_size} pieces, {res.sentences} sentences): {res.model_path}")
    return 0


def _add_merge_vocab(sub: Any) -> None:
    from kovocab.tokenizer.merge import MergeVocabConfig

    p = _parser(
        sub, "merge-vocab",
        help="append Korean pieces to a base SentencePiece BPE (Llama-2) vocabulary",
        config=(MergeVocabConfig, "vocab_merge"),
    )
    p.add_argument("--base", type=Path, help="base tokenizer.model or folder")
    p.add_argument("--korean-model", type=Path, help="korean_bpe.model from train-tokenizer")
    p.add_argument("--out", type=Path, help="output tokenizer folder")
    p.add_argument("--target-vocab-size", type=int)
    _common(p)
    p.set_defaults(func=_run_merge_vocab)


def _run_merge_vocab(args: argparse.Namespace) -> int:
    from kovocab.tokenizer.merge import MergeVocabConfig, merge_vocab

    cfg = _stage_config(
        args, MergeVocabConfig, "vocab_merge", base=args.base, korean_model=args.korean_model,
        out_dir=args.out, target_vocab_size=args.target_vocab_size,
    )
    res = merge_vocab(cfg)
    print(
        f"merged tokenizer ({res.base_size} + {res.new_pieces} = {res.vocab_size} pieces, "
        f"{res.replaced_unreachable} unreachable replaced): {res.out_dir}"
    )
    return 0


def _add_expand_vocab(sub: Any) -> None:
    from kovocab.tokenizer.expand import ExpandVocabConfig

    p = _parser(
        sub, "expand-vocab",
        help="train-tokenizer + merge-vocab (+ report, + resize with --model) in one step",
        config=(ExpandVocabConfig, "expand_vocab"),
    )
    p.add_argument("corpus", nargs="*", type=Path, help="shard folders, .txt or .jsonl files")
    p.add_argument("--base", type=Path, help="base tokenizer.model or folder")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--target-vocab-size", type=int)
    p.add_argument("--method", choices=["bpe", "morpheme-bpe"])
    p.add_argument("--eval-text", type=Path, action="append", default=[], help="held-out Korean")
    p.add_argument("--model", type=Path, help="Hugging Face Llama folder to resize as well")
    p.add_argument(
        "--sweep", type=_int_list, metavar="N,N,...",
        help="also cut the Korean model at these numbers of new pieces, e.g. 4096,8192,14336,23296,32768",
    )
    _common(p)
    p.set_defaults(func=_run_expand_vocab)


def _int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None


def _run_expand_vocab(args: argparse.Namespace) -> int:
    from kovocab.tokenizer.expand import ExpandVocabConfig, expand_vocab_from_config

    cfg = _stage_config(
        args, ExpandVocabConfig, "expand_vocab", corpus=tuple(args.corpus), base=args.base,
        out_dir=args.out, target_vocab_size=args.target_vocab_size, method=args.method,
        eval_texts=tuple(args.eval_text), model=args.model, sweep=args.sweep,
    )
    res = expand_vocab_from_config(cfg)
    s = res.stats
    print(f"tokenizer ({res.merge.vocab_size} pieces): {res.tokenizer_dir}")
    print(f"  '{s['golden_sentence']}': {s['golden_tokens_before']} -> {s['golden_tokens_after']} tokens")
    if "korean_chars_per_token_after" in s:
        print(
            f"  held-out Korean: {s['korean_tokens_per_sentence_before']:.1f} -> "
            f"{s['korean_tokens_per_sentence_after']:.1f} tokens/sentence, "
            f"{s['korean_chars_per_token_before']:.2f} -> {s['korean_chars_per_token_after']:.2f} chars/token"
        )
    for row in res.sweep:
        print(f"  sweep +{row['new_pieces']:,} ({row['vocab_size']:,} pieces): "
              f"{row['korean_tokens_per_sentence'] or float('nan'):.2f} tokens/sentence, "
              f"{row['korean_chars_per_token'] or float('nan'):.3f} chars/token, "
              f"golden {row['golden_tokens']}")
    if res.report_dir:
        print(f"report: {res.report_dir}")
    if res.model_dir:
        print(f"resized model: {res.model_dir}")
    return 0


_TOKENIZER_COMMANDS = [_add_train_tokenizer, _add_merge_vocab, _add_expand_vocab]

# [init-model]


def _add_init_model(sub: Any) -> None:
    from kovocab.model.tiny import InitModelConfig

    p = _parser(
        sub, "init-model",
        help="build a small Llama from config (random, seeded) with a base tokenizer, for smoke runs",
        description=(
            "Write a randomly initialised Hugging Face Llama (safetensors) whose vocabulary is the\n"
            "base tokenizer's, with that tokenizer beside it: the stand-in for a downloaded Llama\n"
            "in smoke runs and tests. Real runs start from a real checkpoint instead."
        ),
        config=(InitModelConfig, "init_model"),
    )
    p.add_argument("--tokenizer", type=Path, help="base tokenizer.model or a folder holding one")
    p.add_argument("--out", type=Path, help="output model folder")
    _common(p)
    p.set_defaults(func=_run_init_model)


def _run_init_model(args: argparse.Namespace) -> int:
    from kovocab.model.tiny import InitModelConfig, init_model

    cfg = _stage_config(args, InitModelConfig, "init_model", tokenizer=args.tokenizer, out_dir=args.out)
    res = init_model(cfg)
    print(f"model ({res.parameters:,} parameters, vocabulary {res.vocab_size}): {res.out_dir}")
    return 0


# [resize-embeddings]


def _add_resize_embeddings(sub: Any) -> None:
    from kovocab.model.resize import ResizeConfig

    p = _parser(
        sub, "resize-embeddings",
        help="grow a checkpoint's embeddings and LM head to an expanded tokenizer (mean-initialised)",
        description=(
            "Resize the input embeddings and LM head of a Hugging Face Llama checkpoint\n"
            "(safetensors) to the expanded tokenizer, reading and rewriting only those two\n"
            "tensors; the other shards are hardlinked. New rows: the mean of the base\n"
            "tokenizer's split of the piece (subword-mean) or of all rows (mean)."
        ),
        config=(ResizeConfig, "resize_embeddings"),
    )
    p.add_argument("--model", type=Path, help="Hugging Face model folder (resize_embeddings.model_dir)")
    p.add_argument("--tokenizer", type=Path, help="expanded tokenizer folder or tokenizer.model")
    p.add_argument("--out", type=Path, help="output model folder")
    p.add_argument("--init", choices=["subword-mean", "mean"])
    p.add_argument("--base-tokenizer", type=Path, help="default: the model folder's tokenizer.model")
    p.add_argument("--pad-to-multiple-of", type=int)
    _common(p)
    p.set_defaults(func=_run_resize_embeddings)


def _run_resize_embeddings(args: argparse.Namespace) -> int:
    from kovocab.model.resize import ResizeConfig, resize_embeddings_from_config

    cfg = _stage_config(
        args, ResizeConfig, "resize_embeddings", model_dir=args.model, tokenizer=args.tokenizer,
        out_dir=args.out, init=args.init, base_tokenizer=args.base_tokenizer,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    res = resize_embeddings_from_config(cfg)
    plan = res.plan
    print(
        f"resized model ({plan.base_rows} -> {plan.total_rows} rows: {plan.new_pieces} new pieces, "
        f"{plan.padding_rows} padding; {plan.init}, {'tied' if res.tied else 'untied'}): {res.out_dir}"
    )
    print(f"  shards: {len(res.rewritten)} rewritten, {len(res.linked)} hardlinked, "
          f"{len(res.copied)} copied; {res.seconds:.1f} s")
    print(f"  step-0 check: kovocab bpb --model {cfg.model_dir} --model {res.out_dir} --text HELD_OUT.txt")
    return 0


def _add_bpb(sub: Any) -> None:
    from kovocab.evaluation.bpb import BpbConfig

    p = _parser(
        sub, "bpb",
        help="bits per byte of held-out text under (model, tokenizer) pairs: the step-0 check",
        description=(
            "Score the same documents under each model with its tokenizer (default: the\n"
            "model folder's tokenizer.model). Give the base model and the resized one to see\n"
            "what the new rows cost before training; bits/byte does not depend on the tokenizer."
        ),
        config=(BpbConfig, "bpb"),
    )
    p.add_argument("--model", type=Path, action="append", default=[], help="model folder (repeatable)")
    p.add_argument("--tokenizer", type=Path, action="append", default=[],
                   help="paired with --model in order; default the model folder's tokenizer.model")
    p.add_argument("--text", type=Path, action="append", default=[], help=".txt, .jsonl or shard folder")
    p.add_argument("--max-documents", type=int)
    p.add_argument("--max-length", type=int, help="window in tokens")
    p.add_argument("--stride", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--out", type=Path, help="JSON file for the figures")
    _common(p)
    p.set_defaults(func=_run_bpb)


def _run_bpb(args: argparse.Namespace) -> int:
    from kovocab.evaluation.bpb import BpbConfig, compare_bits_per_byte

    cfg = _stage_config(
        args, BpbConfig, "bpb", models=tuple(args.model), tokenizers=tuple(args.tokenizer),
        texts=tuple(args.text), max_documents=args.max_documents, max_length=args.max_length,
        stride=args.stride, device=args.device, dtype=args.dtype, out=args.out,
    )
    results = compare_bits_per_byte(cfg)
    first = results[0]
    print(f"{first.documents} documents, {first.bytes} UTF-8 bytes")
    print(f"{'bits/byte':>10} {'vs first':>9} {'tokens':>9} {'bits/token':>10}  model + tokenizer")
    for r in results:
        delta = r.bits_per_byte - first.bits_per_byte
        print(f"{r.bits_per_byte:10.4f} {delta:+9.4f} {r.tokens:9d} {r.bits_per_token:10.4f}  "
              f"{r.model} + {r.tokenizer}")
    if cfg.out is not None:
        print(f"figures: {cfg.out}")
    return 0


_EMBEDDING_COMMANDS = [_add_init_model, _add_resize_embeddings, _add_bpb]


# [report]


def _add_report(sub: Any) -> None:
    from kovocab.report.measure import ReportConfig

    p = _parser(
        sub, "report",
        help="compare tokenizers on text sets: tokens/sentence, chars/token, fertility, pieces",
        description=(
            "Tokenization-efficiency report: every tokenizer on every text set, split into "
            "Korean, English and mixed lines. Writes report.json, report.md and report.html."
        ),
        config=(ReportConfig, "report"),
    )
    p.add_argument("--tokenizer", action="append", default=[], metavar="NAME=PATH",
                   help=".model, tokenizer.json, tokenizer folder or tiktoken ranks (repeatable)")
    p.add_argument("--text", action="append", default=[], metavar="NAME=PATH",
                   help="text/.jsonl/.json/.tsv file (PATH:FIELD for a field or column) or shard folder")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--base", help="tokenizer NAME the others are compared with (default: the first)")
    p.add_argument("--example", action="append", default=[], metavar="SENTENCE",
                   help="sentence shown piece by piece (repeatable)")
    p.add_argument("--max-lines", type=int, help="first N non-empty lines per text set")
    p.add_argument("--field", help="default JSONL/JSON field or TSV column (default: text)")
    p.add_argument("--split", choices=["train", "eval"], help="split read from shard folders (default: eval)")
    _common(p)
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from kovocab.report.html import render_summary
    from kovocab.report.measure import ReportConfig, config_from_flags, run_report

    cfg = _stage_config(
        args, ReportConfig, "report", tokenizers=config_from_flags(args.tokenizer, "tokenizer"),
        texts=config_from_flags(args.text, "text"), out_dir=args.out, base=args.base,
        examples=tuple(args.example), max_lines=args.max_lines, text_field=args.field,
        shard_split=args.split,
    )
    res = run_report(cfg)
    print(render_summary(res.figures))
    print(f"report: {res.report_md}\n        {res.report_html}\n        {res.report_json}")
    return 0


# [pretrain]


def _add_pretrain(sub: Any) -> None:
    from kovocab.config import describe
    from kovocab.pretraining.config import PretrainConfig, StageConfig

    stages = describe(StageConfig, "pretrain.stages").splitlines()[1:]
    p = _parser(
        sub, "pretrain",
        help="continued pretraining of the resized model under DeepSpeed ZeRO-3, in stages",
        description=(
            "Train the resized checkpoint in the recipe's stages (e.g. new embedding rows, then all)\n"
            "under the DeepSpeed ZeRO-3 JSON it names; export a Hugging Face checkpoint at the end.\n"
            "One node: --nproc-per-node N (re-launches through torch.distributed.run), or start it\n"
            "under torchrun / `deepspeed --module kovocab` / srun; see pretrain/README.md."
        ),
        config=(PretrainConfig, "pretrain"), more="\n\neach entry of pretrain.stages:\n"
        + "\n".join(stages),
    )
    p.add_argument("--config", dest="recipe", type=Path, help="pretrain/NAME.yaml (same as --recipe)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes on this node without a launcher")
    p.add_argument("--prepare-data-only", action="store_true",
                   help="build (or reuse) the token stores and exit (run once before a multi-node job)")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    _common(p)
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    import os

    from kovocab.errors import ConfigError
    from kovocab.pretraining.config import load_pretrain_config
    from kovocab.pretraining.launch import LAUNCHED, launch_pretrain

    if not args.recipe:
        raise ConfigError("pretrain: give --config pretrain/NAME.yaml (section pretrain:)")
    cfg = load_pretrain_config(_recipe_data(args))
    args.resolved_out = cfg.out_dir  # for disk errors
    if args.prepare_data_only:
        from kovocab.pretraining.config import check_paths
        from kovocab.pretraining.launch import prepare_data

        check_paths(cfg)
        train, _ = prepare_data(cfg)
        print(f"token store ({train.num_documents} documents, {train.num_tokens} tokens): {cfg.store_dir}")
        return 0
    res = launch_pretrain(cfg, args.nproc_per_node, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0 and LAUNCHED not in os.environ:
        loss = "n/a" if res.final_loss is None else f"{res.final_loss:.4f}"
        print(f"pretrained {res.steps} steps (final loss {loss}): {res.export_dir}")
        print(f"  metrics: {res.metrics}\n  checkpoints: {res.checkpoints}")
    return 0


_PRETRAIN_COMMANDS: list[Any] = [_add_pretrain]


# [eval]


def _add_eval(sub: Any) -> None:
    from kovocab.evaluation import EvalConfig

    p = _parser(
        sub, "eval",
        help="judge checkpoints: bits per byte on text sets + KoBEST (0/5/10/50-shot), side by side",
        description=(
            "Score one model, or several compared with the first (base vs adapted), on held-out\n"
            "text (bits per byte) and KoBEST BoolQ/COPA/HellaSwag/SentiNeg/WiC with\n"
            "lm-evaluation-harness's prompts and metrics (acc, macro-F1), from local TSVs.\n"
            "Writes eval.json, eval.md (tables like the Llama-2-Ko card) and items.jsonl."
        ),
        config=(EvalConfig, "eval"),
    )
    p.add_argument("--model", type=Path, action="append", default=[], help="model folder (repeatable)")
    p.add_argument("--name", action="append", default=[], help="column name per --model (repeatable)")
    p.add_argument("--tokenizer", type=Path, action="append", default=[],
                   help="paired with --model in order; default the model folder's tokenizer.model")
    p.add_argument("--text", action="append", default=[], metavar="NAME=PATH",
                   help="held-out text for bits per byte: .txt, .jsonl or shard folder (repeatable)")
    p.add_argument("--kobest-dir", type=Path, help="folder with the KoBEST task folders")
    p.add_argument("--tasks", help="comma-separated KoBEST tasks, or 'none' (default: all five)")
    p.add_argument("--shots", help="comma-separated few-shot counts, e.g. 0,5,10,50 (default: 0)")
    p.add_argument("--split", choices=["test", "dev"], help="KoBEST split scored (default: test)")
    p.add_argument("--limit", type=int, help="first N items per task (eval.max_examples_per_task)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--out", type=Path, help="output folder")
    _common(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from kovocab.evaluation import EvalConfig, evaluate
    from kovocab.report.measure import config_from_flags

    def split(value: str | None) -> list[str] | None:  # a list, so that [] ("none") is not skipped
        if value is None:
            return None
        return [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]

    shots = split(args.shots)
    cfg = _stage_config(
        args, EvalConfig, "eval", models=tuple(args.model), names=tuple(args.name),
        tokenizers=tuple(args.tokenizer), bpb_texts=config_from_flags(args.text, "text"),
        kobest_dir=args.kobest_dir, tasks=split(args.tasks), max_examples_per_task=args.limit,
        shots=None if shots is None else [int(s) if s.isdigit() else s for s in shots],
        kobest_split=args.split, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        out_dir=args.out,
    )
    res = evaluate(cfg)
    from kovocab.evaluation.tables import render_summary

    print(render_summary(res.figures))
    print(f"eval: {res.eval_md}\n      {res.eval_json}")
    return 0


_EVAL_COMMANDS: list[Any] = [_add_eval]


# [run]


def _add_run(sub: Any) -> None:
    from kovocab.run import STAGES, RunConfig

    p = _parser(
        sub, "run",
        help="a whole recipe: shard, expand-vocab, init-model, resize, pretrain, report, eval",
        description=(
            "Run every stage of RECIPE in order, each the same function as its subcommand and\n"
            "configured by the recipe section of the same name, into one run folder. A stage\n"
            "whose outputs are complete for the same config and upstream outputs is skipped\n"
            "(see run.json), so a rerun after a failure continues where it stopped.\n"
            f"Stages: {', '.join(STAGES)}."
        ),
        config=(RunConfig, "run"),
    )
    p.add_argument("recipe", type=Path, help="YAML with a section per stage (e.g. recipes/tiny_cpu.yaml)")
    p.add_argument("--out", type=Path, help="run folder (run.out_dir)")
    p.add_argument("--stages", help="comma-separated subset of stages to run (run.stages)")
    p.add_argument("--force", action="store_true", default=None, help="re-run complete stages too")
    _overrides(p)
    _common(p, recipe=False)
    p.set_defaults(func=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from kovocab.run import run_recipe

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    res = run_recipe(args.recipe, args.overrides, out_dir=args.out, stages=stages, force=args.force)
    for st in res.stages:
        state = "complete, skipped" if st.skipped else f"{st.seconds:.1f} s"
        print(f"  {st.name:<18} {state:<18} {st.out_dir}")
    print(f"run: {res.out_dir} ({res.run_json.name})")
    return 0


_RUN_COMMANDS: list[Any] = [_add_run]


# _add_<name> functions, in pipeline order
_COMMANDS: list[Any] = [_add_shard, *_TOKENIZER_COMMANDS, *_EMBEDDING_COMMANDS, *_PRETRAIN_COMMANDS,
                        _add_report, *_EVAL_COMMANDS, *_RUN_COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kovocab",
        description=(
            "Teach an English-first LLM Korean: shard a Korean corpus, train Korean BPE, "
            "merge it into the base SentencePiece vocabulary, resize embeddings, continue "
            "pretraining under DeepSpeed ZeRO-3, report tokenization efficiency and evaluate. "
            "`kovocab run RECIPE` runs every stage of a recipe."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kovocab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    # Any command's section may sit in a recipe; anything else there is a typo.
    sections = sorted({p.get_default("config_section") for p in sub.choices.values()} - {None})
    for p in sub.choices.values():
        p.set_defaults(recipe_sections=sections)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    elif getattr(args, "quiet", False):
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


_NO_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for the filesystem or the file size limit (ulimit -f)"}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _os_error_message(exc: OSError, args: argparse.Namespace) -> str | None:
    """One line for a full disk or a folder kovocab may not write, naming the path and the way out.

    Stages write under temporary names and rename at the end, so what such a failure leaves
    behind never looks finished; a rerun with room resumes where the stages support it.
    """
    out = getattr(args, "out", None) or getattr(args, "resolved_out", None)
    path = exc.filename or out
    where = f"{path}: " if path else ""
    if exc.errno in _NO_SPACE:
        return (f"{where}{_NO_SPACE[exc.errno]} while writing; free space or choose another --out, "
                "then rerun (this run did not finish: its folder has no new manifest.json)")
    if exc.errno in _NO_ACCESS:
        output = out is not None and path is not None and Path(path).absolute().is_relative_to(
            Path(out).absolute())
        reason = exc.strerror or "permission denied"
        if output or exc.errno == errno.EROFS:
            return f"{where}cannot write ({reason}); make the folder writable or choose another --out"
        return (f"{where}cannot open ({reason}); make it readable if it is an input, or writable or "
                "another --out if it is an output")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `kovocab` with `argv` (default: sys.argv[1:]) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _setup_logging(args)
    try:
        return int(args.func(args))
    except KovocabError as exc:
        print(f"kovocab: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        message = _os_error_message(exc, args)
        if message is None:  # not the disk or its permissions: a bug, keep the traceback
            raise
        print(f"kovocab: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kovocab: interrupted", file=sys.stderr)
        return 130
