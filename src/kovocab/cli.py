"""`kovocab <subcommand>`: parse arguments, call one stage function, print where outputs went.

The parser is built from the stage registry (`kovocab.stages`): each stage's own flags,
`--key-with-dashes` for every other plain key of its config and, in `--help`, every key
of its section with its default and meaning. Heavy libraries are imported inside the
stage modules, never here, so `kovocab --help` is instant. `main(argv)` returns an exit
code so tests call it directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from kovocab import __version__
from kovocab.config import describe
from kovocab.errors import KovocabError
from kovocab.stages import REGISTRY, Flag, Stage

log = logging.getLogger("kovocab")


def _common(p: argparse.ArgumentParser, recipe: bool = True) -> None:
    if recipe:
        p.add_argument("--recipe", type=Path, help="YAML recipe; command-line options override it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one recipe key (repeatable), value parsed as YAML")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _epilog(cls: type, section: str, nested: Sequence[tuple[type, str]] = ()) -> str:
    """Every key of the config section, default and meaning; then those of its list entries."""
    parts = [describe(cls, section)]
    hints = typing.get_type_hints(cls)
    for entry, where in nested:
        many = typing.get_origin(hints.get(where.rsplit(".", 1)[-1])) is tuple  # a list, or one mapping
        label = f"each entry of {where}" if many else f"keys of {where} (a mapping)"
        parts.append(f"{label}:\n" + "\n".join(describe(entry, where).splitlines()[1:]))
    return "\n\n".join(parts)


def _value_type(hint: Any) -> tuple[Any, bool]:
    """What one command-line value of a key is (Path, int, float, str, bool or a Literal) and
    whether the key repeats (a tuple); None for keys a command line cannot spell (mappings, entries)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    many = typing.get_origin(hint) is tuple
    if many:
        hint = typing.get_args(hint)[0]
    plain = hint in (Path, int, float, str, bool) or typing.get_origin(hint) is Literal
    return (hint if plain else None), many


def _argument(p: Any, flag: Flag, hints: dict[str, Any], docs: dict[str, str]) -> argparse.Action:
    """One flag, typed from its key: Path, int, float, Literal choices, bool --x/--no-x; tuples repeat."""
    tp = _value_type(hints[flag.key])[0] if flag.key else None
    kw: dict[str, Any] = {"help": flag.help if flag.help is not None else docs.get(flag.key or "", "")}
    if flag.type is not None:
        kw["type"] = flag.type
    elif typing.get_origin(tp) is Literal:
        kw["choices"] = list(typing.get_args(tp))
    elif tp is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif tp in (Path, int, float):
        kw["type"] = tp
    if not flag.name.startswith("-"):
        kw["nargs"] = "*"
    elif flag.many:
        kw.update(action="append", default=[])
        kw["help"] += "" if "repeatable" in kw["help"] else " (repeatable)"
    kw["help"] = kw["help"].replace("%", "%%") if kw["help"] != argparse.SUPPRESS else kw["help"]
    return p.add_argument(*flag.name.split(), **{**kw, **(flag.extra or {})})


def _add_stage(sub: Any, stage: Stage) -> None:
    """The stage's own flags, the common options, then `--key-with-dashes` for every other plain key."""
    p = sub.add_parser(stage.command, help=stage.help, description=stage.description,
                       epilog=_epilog(stage.cls, stage.name, stage.nested),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(stage.cls)
    fields = [f for f in dataclasses.fields(stage.cls) if f.init]
    docs = {f.name: f.metadata.get("doc", "") for f in fields}
    dest_flags = [(_argument(p, flag, hints, docs).dest, flag) for flag in stage.flags]
    _common(p)
    keys = p.add_argument_group(f"{stage.name} keys",
                                "every other key of the section as a flag, overriding the recipe "
                                "(what each key means: the list at the end)")
    for f in fields:
        name, (tp, many) = "--" + f.name.replace("_", "-"), _value_type(hints[f.name])
        taken = name in p._option_string_actions or f.name in {a.dest for a in p._actions}
        if tp is not None and not taken and f.name not in {flag.key for flag in stage.flags}:
            flag = Flag(name, f.name, many=many, help="")  # its doc is in the key list (epilog) once
            dest_flags.append((_argument(keys, flag, hints, docs).dest, flag))
    # config_section: the one section `--set` may change
    p.set_defaults(func=lambda args: _run_stage(stage, dest_flags, args), config_section=stage.name)


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


def _absolute(value: Any) -> Any:
    """Paths on the command line are relative to the working directory (a recipe's, to its folder)."""
    if isinstance(value, Path):
        return value.absolute()
    return tuple(_absolute(v) for v in value) if isinstance(value, tuple) else value


def _run_stage(stage: Stage, dest_flags: Sequence[tuple[str, Flag]], args: argparse.Namespace) -> int:
    """Recipe section + --set overrides + explicit flags -> the stage's config; run; print."""
    data = _recipe_data(args)
    section = dict(data.get(stage.name) or {})
    if stage.from_args is not None:
        section = stage.from_args(section, args)
    for dest, flag in dest_flags:
        value = getattr(args, dest) if flag.key else None
        if isinstance(value, list) and (flag.many or not flag.name.startswith("-")):
            value = tuple(value)  # repeated or positional; a list from a `type` (eval --tasks none) stays
        if value is not None and value != ():
            section[flag.key] = _absolute(value)
    cfg = stage.config(data, section)
    args.resolved_out = getattr(cfg, "out_dir", None) or getattr(cfg, "out", None)  # for disk errors
    lines = stage.run_command(cfg, args) if stage.run_command else stage.show(cfg, stage.run(cfg))
    for line in lines:
        print(line)
    return 0


def _add_run(sub: Any) -> None:
    from kovocab.run import STAGES, RunConfig

    p = sub.add_parser(
        "run", help="a whole recipe: shard, expand-vocab, init-model, resize, pretrain, report, eval",
        description=(
            "Run every stage of RECIPE in order, each the same function as its subcommand and\n"
            "configured by the recipe section of the same name, into one run folder. A stage\n"
            "whose outputs are complete for the same config and upstream outputs is skipped\n"
            "(see run.json), so a rerun after a failure continues where it stopped.\n"
            f"Stages: {', '.join(STAGES)}."
        ),
        epilog=_epilog(RunConfig, "run"), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", type=Path, help="YAML with a section per stage (e.g. recipes/tiny_cpu.yaml)")
    p.add_argument("--out", type=Path, help="run folder (run.out_dir)")
    p.add_argument("--stages", help="comma-separated subset of stages to run (run.stages)")
    p.add_argument("--force", action="store_true", default=None, help="re-run complete stages too")
    _common(p, recipe=False)
    p.set_defaults(func=_run_run, config_section="run")


def _run_run(args: argparse.Namespace) -> int:
    from kovocab.run import run_recipe

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    res = run_recipe(args.recipe, args.overrides, out_dir=args.out, stages=stages, force=args.force)
    for st in res.stages:
        state = "complete, skipped" if st.skipped else f"{st.seconds:.1f} s"
        print(f"  {st.name:<18} {state:<18} {st.out_dir}")
    print(f"run: {res.out_dir} ({res.run_json.name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kovocab",
        description=(
            "Teach an English-first LLM Korean: shard a Korean corpus, train Korean BPE, "
            "merge it into the base vocabulary (SentencePiece or byte-level BPE), resize embeddings, "
            "continue "
            "pretraining under DeepSpeed ZeRO-3, report tokenization efficiency and evaluate. "
            "`kovocab run RECIPE` runs every stage of a recipe."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kovocab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in REGISTRY:
        _add_stage(sub, stage)
    _add_run(sub)
    # Any command's section may sit in a recipe; anything else there is a typo.
    sections = sorted({p.get_default("config_section") for p in sub.choices.values()})
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
