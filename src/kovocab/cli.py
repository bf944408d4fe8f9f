"""`kovocab <subcommand>`: parse arguments, call one stage function, print where outputs went.

Each subcommand is a pair: `_add_<name>(subparsers)` declares its arguments and
`_run_<name>(args) -> int` calls the stage. Heavy libraries are imported inside
the stage modules, never here, so `kovocab --help` is instant. `main(argv)`
returns an exit code so tests call it directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kovocab import __version__
from kovocab.errors import KovocabError

log = logging.getLogger("kovocab")


def _common(p: argparse.ArgumentParser, recipe: bool = True) -> None:
    if recipe:
        p.add_argument("--recipe", type=Path, help="YAML recipe; command-line options override it")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one recipe key (repeatable), value parsed as YAML",
        )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _recipe_data(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe (or an empty one) with `--set` overrides applied."""
    from kovocab.config import apply_overrides, read_recipe

    data: dict[str, Any] = read_recipe(args.recipe) if getattr(args, "recipe", None) else {}
    return apply_overrides(data, getattr(args, "overrides", []))


# --- subcommands (keep one _add_/_run_ pair per stage, in pipeline order) ------------------

# [shard]

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
    cfg: Any = load_section(cls, {section: section_data}, section)
    return resolve_paths(cfg, data.get("_recipe_dir"))


def _add_train_tokenizer(sub: Any) -> None:
    from kovocab.config import describe
    from kovocab.tokenizer_training import TokenizerTrainingConfig

    p = sub.add_parser(
        "train-tokenizer",
        help="train Korean SentencePiece BPE pieces (plain or Kiwi morpheme-aware)",
        epilog=describe(TokenizerTrainingConfig, "tokenizer_training"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("corpus", nargs="*", type=Path, help="shard folders, .txt or .jsonl files")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--method", choices=["bpe", "morpheme-bpe"])
    p.add_argument("--vocab-size", type=int)
    _common(p)
    p.set_defaults(func=_run_train_tokenizer)


def _run_train_tokenizer(args: argparse.Namespace) -> int:
    from kovocab.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    cfg = _stage_config(
        args, TokenizerTrainingConfig, "tokenizer_training",
        corpus=tuple(args.corpus), out_dir=args.out, method=args.method, vocab_size=args.vocab_size,
    )
    res = train_tokenizer(cfg)
    print(f"Korean BPE ({res.vocab_size} pieces, {res.sentences} sentences): {res.model_path}")
    return 0


def _add_merge_vocab(sub: Any) -> None:
    from kovocab.config import describe
    from kovocab.vocab_merge import MergeVocabConfig

    p = sub.add_parser(
        "merge-vocab",
        help="append Korean pieces to a base SentencePiece BPE (Llama-2) vocabulary",
        epilog=describe(MergeVocabConfig, "vocab_merge"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", type=Path, help="base tokenizer.model or folder")
    p.add_argument("--korean-model", type=Path, help="korean_bpe.model from train-tokenizer")
    p.add_argument("--out", type=Path, help="output tokenizer folder")
    p.add_argument("--target-vocab-size", type=int)
    _common(p)
    p.set_defaults(func=_run_merge_vocab)


def _run_merge_vocab(args: argparse.Namespace) -> int:
    from kovocab.vocab_merge import MergeVocabConfig, merge_vocab

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
    from kovocab.config import describe
    from kovocab.expansion import ExpandVocabConfig

    p = sub.add_parser(
        "expand-vocab",
        help="train-tokenizer + merge-vocab (+ report, + resize with --model) in one step",
        epilog=describe(ExpandVocabConfig, "expand_vocab"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("corpus", nargs="*", type=Path, help="shard folders, .txt or .jsonl files")
    p.add_argument("--base", type=Path, help="base tokenizer.model or folder")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--target-vocab-size", type=int)
    p.add_argument("--method", choices=["bpe", "morpheme-bpe"])
    p.add_argument("--eval-text", type=Path, action="append", default=[], help="held-out Korean")
    p.add_argument("--model", type=Path, help="Hugging Face Llama folder to resize as well")
    _common(p)
    p.set_defaults(func=_run_expand_vocab)


def _run_expand_vocab(args: argparse.Namespace) -> int:
    from kovocab.expansion import ExpandVocabConfig, expand_vocab_from_config

    cfg = _stage_config(
        args, ExpandVocabConfig, "expand_vocab", corpus=tuple(args.corpus), base=args.base,
        out_dir=args.out, target_vocab_size=args.target_vocab_size, method=args.method,
        eval_texts=tuple(args.eval_text), model=args.model,
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
    if res.report_dir:
        print(f"report: {res.report_dir}")
    if res.model_dir:
        print(f"resized model: {res.model_dir}")
    return 0


_TOKENIZER_COMMANDS = [_add_train_tokenizer, _add_merge_vocab, _add_expand_vocab]

# [resize-embeddings]

# [report]


_COMMANDS: list[Any] = [*_TOKENIZER_COMMANDS]  # _add_<name> functions, in pipeline order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kovocab",
        description=(
            "Teach an English-first LLM Korean: shard a Korean corpus, train Korean BPE, "
            "merge it into the base SentencePiece vocabulary, resize embeddings, and report "
            "tokenization efficiency."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kovocab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    elif getattr(args, "quiet", False):
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


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
    except KeyboardInterrupt:
        print("kovocab: interrupted", file=sys.stderr)
        return 130
