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

# [resize-embeddings]

# [report]


_COMMANDS: list[Any] = []  # _add_<name> functions, in pipeline order


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
