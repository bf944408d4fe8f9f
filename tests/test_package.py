"""The package layout itself: data-only recipe folders, the CLI entry points, CI = README."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import DATA, LLAMA2_MODEL, ROOT

from kovocab.cli import main


def test_tokenizers_folder_does_not_shadow_the_package() -> None:
    # tokenizers/ holds recipes; run from the repo root, `import tokenizers` must
    # still be Hugging Face's package.
    out = subprocess.run(
        [sys.executable, "-c", "import tokenizers; print(tokenizers.__file__)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert "site-packages" in out or "dist-packages" in out, out
    assert not Path(out).is_relative_to(ROOT / "tokenizers")


def test_recipe_folders_hold_no_code() -> None:
    for d in ("corpora", "tokenizers", "pretrain", "recipes"):
        assert not list((ROOT / d).rglob("*.py")), f"{d}/ must stay data-only"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = [line for line in ci.splitlines() if "pytest" in line]
    assert len(command) == 1
    assert command[0] in readme


def test_help_lists_commands_without_heavy_imports() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kovocab", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: kovocab" in out
    # --help must not import torch/transformers/deepspeed (~5 s together).
    mods = subprocess.run(
        [sys.executable, "-c", "import kovocab.cli, sys; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    for heavy in ("torch", "transformers", "deepspeed", "datasets"):
        assert f"'{heavy}'" not in mods


def test_main_returns_exit_codes(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--version"]) == 0
    assert main([]) == 2
    assert main(["no-such-command"]) == 2


def test_every_plain_config_key_is_a_flag(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`--key-with-dashes` sets `key_with_dashes` (typed from the key); the registry's own spellings stay."""
    import argparse
    import dataclasses
    import json

    from kovocab.cli import build_parser
    from kovocab.stages import REGISTRY

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for stage in REGISTRY:
        options = sub.choices[stage.command]._option_string_actions
        own = {f.key for f in stage.flags}
        for f in dataclasses.fields(stage.cls):
            flag = "--" + f.name.replace("_", "-")
            if f.name not in own and flag in options:
                assert options[flag].dest == f.name, (stage.command, flag)
    assert "--min-hangul-ratio" in sub.choices["shard"]._option_string_actions
    assert "--sources" not in sub.choices["shard"]._option_string_actions  # entries: recipe only
    args = parser.parse_args(["train-tokenizer", "c.txt", "--vocab-size", "300", "--no-split-digits"])
    assert (args.vocab_size, args.split_digits, args.corpus) == (300, False, [Path("c.txt")])
    assert parser.parse_args(["bpb", "--model", "a", "--model", "b"]).model == [Path("a"), Path("b")]
    assert main(["pretrain", "--precision", "fp64"]) == 2  # a Literal key: its choices
    assert "invalid choice" in capsys.readouterr().err
    assert main(["init-model", "--tokenizer", str(LLAMA2_MODEL), "--out", str(tmp_path / "m"),
                 "--hidden-size", "32", "--intermediate-size", "64", "--num-hidden-layers", "1",
                 "--num-attention-heads", "2", "--num-key-value-heads", "2", "--no-tie-word-embeddings",
                 "-q"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["hidden_size"], config["tie_word_embeddings"]) == (32, False)


# (command, its recipe section): every subcommand that reads a recipe
COMMANDS = [("shard", "shard"), ("import-gguf", "import_gguf"), ("train-tokenizer", "tokenizer_training"),
            ("merge-vocab", "vocab_merge"), ("expand-vocab", "expand_vocab"), ("init-model", "init_model"),
            ("resize-embeddings", "resize_embeddings"), ("bpb", "bpb"), ("report", "report"),
            ("pretrain", "pretrain"), ("chat-vector", "chat_vector"), ("eval", "eval")]


def test_every_command_refuses_unknown_sections(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # Issue 12.3: `--set shrad.shards=8`, `--set shards=8` and a `sharding:` section were ignored.
    from kovocab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {c for c, _ in COMMANDS} == set(sub.choices) - {"run"}  # type: ignore[arg-type]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sharding:\n  shards: 2\n", encoding="utf-8")
    for command, section in COMMANDS:
        code = main([command, "--recipe", str(recipe), "--set", f"{section}s.x=1", "--set", "x=1",
                     "--set", f"{'eval' if section != 'eval' else 'bpb'}.y=2"])
        err = capsys.readouterr().err
        assert code == 1, command
        assert err.startswith("kovocab: error: 4 config problems"), (command, err)
        assert f"{recipe}: unknown section 'sharding'; did you mean 'shard'?" in err, command
        assert f"--set '{section}s.x=1': unknown section '{section}s'; did you mean '{section}'?" in err
        assert f"--set 'x=1': expected SECTION.KEY=VALUE, e.g. --set {section}.x=1" in err, command
        assert f"(sections for this command: {section})" in err, command
    assert main(["run", str(recipe), "--set", "shards=8"]) == 1
    assert "kovocab: error: --set 'shards=8': expected SECTION.KEY=VALUE" in capsys.readouterr().err
    assert main(["run", str(recipe), "--out", str(tmp_path / "run")]) == 1
    assert "sharding: not a section of a run recipe; did you mean 'shard'?" in capsys.readouterr().err


def test_set_typo_in_a_section_runs_nothing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "in.txt"
    text.write_text("안녕하세요, 오늘은 날씨가 좋네요.\n", encoding="utf-8")
    for bad in ("shrad.shards=8", "shards=8"):
        assert main(["shard", str(text), "--out", str(tmp_path / "out"), "--set", bad]) == 1
        assert "kovocab: error: --set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_malformed_recipe_sections_are_config_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # Issue 12.6: `shard: [1, 2]` gave a TypeError traceback.
    recipe = tmp_path / "r.yaml"
    for command, section in [("shard", "shard"), ("merge-vocab", "vocab_merge"), ("eval", "eval")]:
        recipe.write_text(f"{section}: [1, 2]\n", encoding="utf-8")
        assert main([command, "--recipe", str(recipe)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"kovocab: error: {recipe}: section '{section}' must be a mapping"), err
    recipe.write_text("run: [1, 2]\n", encoding="utf-8")
    assert main(["run", str(recipe)]) == 1
    assert capsys.readouterr().err.startswith("kovocab: error: run: expected a mapping of keys")
    recipe.write_text("- shard\n", encoding="utf-8")
    assert main(["shard", "--recipe", str(recipe)]) == 1
    assert "a recipe must be a YAML mapping of sections, got list" in capsys.readouterr().err


def test_recipe_with_other_commands_sections_is_accepted(tmp_path: Path) -> None:
    from kovocab.cli import _recipe_data, build_parser

    recipe = ROOT / "tokenizers" / "llama2_ko_46k.yaml"
    args = build_parser().parse_args(["merge-vocab", "--recipe", str(recipe),
                                      "--set", "vocab_merge.target_vocab_size=33024"])
    data = _recipe_data(args)
    assert data["vocab_merge"]["target_vocab_size"] == 33024
    assert {"expand_vocab", "tokenizer_training"} <= set(data)


# --- a full disk and a read-only folder (issue 12.6): real small filesystems ---------------


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at `path` (mount needs root; the test is skipped where it is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


NOVELS = sorted((DATA / "koconovel" / "text").glob("*.jsonl"))


def test_full_disk_during_shard_is_one_line_and_resumes(tmp_path: Path) -> None:
    # Phase 1 fits in 2.6 MB, the merged shards do not: ENOSPC arrives inside pyarrow's writers,
    # which used to add `ValueError: write to closed file` tracebacks to the OSError's.
    def shard(out: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "kovocab", "shard", *map(str, NOVELS), "--format", "jsonl"]
        return subprocess.run([*argv, "--out", str(out), "-q"], capture_output=True, text=True, check=False)

    ref = shard(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    with tmpfs(tmp_path / "small", "size=2600k") as small:
        out = small / "out"
        done = shard(out)
        assert done.returncode == 1
        assert done.stderr == (f"kovocab: error: {out}: no space left on the device while writing; free "
                               "space or choose another --out, then rerun (this run did not finish: its "
                               "folder has no new manifest.json)\n")
        assert not (out / "manifest.json").exists()
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        again = shard(out)
        assert again.returncode == 0, again.stderr
        for f in sorted((tmp_path / "ref").glob("*-of-*")):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def _tokenizer_commands(tmp_path: Path) -> tuple[list[str], list[str]]:
    """train-tokenizer and merge-vocab command lines without --out (a Korean model trained here)."""
    train = ["train-tokenizer", *map(str, NOVELS[:6]), "--vocab-size", "2000"]
    assert main([*train, "--out", str(tmp_path / "k"), "-q"]) == 0
    korean = tmp_path / "k" / "korean_bpe.model"
    merge = ["merge-vocab", "--base", str(LLAMA2_MODEL), "--korean-model", str(korean),
             "--target-vocab-size", "33024"]
    return train, merge


def test_full_disk_in_tokenizer_stages(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    train, merge = _tokenizer_commands(tmp_path)
    with tmpfs(tmp_path / "small", "size=16k") as small:
        for argv, out in ((train, small / "k"), (merge, small / "t")):
            assert main([*argv, "--out", str(out), "-q"]) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"kovocab: error: {out}: no space left on the device while writing")
            assert "free space or choose another --out" in err
            assert not list(small.rglob("manifest.json")) and not list(small.rglob("*.model"))


def test_read_only_output_folders_are_clear_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    train, merge = _tokenizer_commands(tmp_path)
    shard = ["shard", str(NOVELS[0]), "--format", "jsonl"]
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        for argv, out in ((shard, ro / "s"), (train, ro), (merge, ro / "t")):
            assert main([*argv, "--out", str(out), "-q"]) == 1
            err = capsys.readouterr().err
            assert err.startswith("kovocab: error: ") and str(ro) in err and "Read-only file system" in err
            assert "choose" in err and "Traceback" not in err
    # A folder that turns out unwritable part-way (here shard's work folder) is the same one line.
    out = tmp_path / "out"
    with tmpfs(out / ".work", "ro,size=64k") as work:
        assert main(["shard", str(NOVELS[0]), "--format", "jsonl", "--out", str(out), "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"kovocab: error: {work}/") and err.rstrip().endswith(
            "cannot write (Read-only file system); make the folder writable or choose another --out")


# --- layering: lower packages never import higher ones, and no module imports itself back ------

# Lowest first. A module belongs to the longest prefix that names it; an import of a module
# whose layer is higher than the importer's fails, as does any cycle between modules.
LAYERS = [
    ("kovocab", "kovocab.errors", "kovocab.config", "kovocab.artifacts"),  # the root holds names only
    ("kovocab.corpus",),
    ("kovocab.tokenizer",),
    ("kovocab.report",),  # measures tokenizers: needs tokenizer.load, nothing above
    ("kovocab.model",),
    # expand_vocab = train + merge + measure, then the report and (with `model`) the resize:
    # the one tokenizer module that composes report and model, so it sits above both.
    ("kovocab.tokenizer.expand",),
    ("kovocab.evaluation",),  # bits per byte and KoBEST; pretraining scores held-out text with it
    ("kovocab.pretraining",),
    ("kovocab.stages",),
    ("kovocab.run",),
    ("kovocab.cli", "kovocab.__main__"),
]


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    assert rank >= 0, f"{module}: in no layer of LAYERS; add it where it belongs"
    return rank


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every kovocab module `path` imports, at module level or inside functions alike."""
    import ast

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            # `from kovocab.model import resize` imports the module kovocab.model.resize
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m == "kovocab" or m.startswith("kovocab.")}


def test_lower_layers_never_import_higher_ones_and_there_are_no_cycles() -> None:
    src = ROOT / "src"
    files = {_module_name(p, src): p for p in sorted((src / "kovocab").rglob("*.py"))}
    graph = {m: _imports(p, m, set(files)) - {m} for m, p in files.items()}
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in graph.items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)
    unknown = {t for targets in graph.values() for t in targets} - set(files)
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    # A cycle would need an import within one layer: search every module's imports for a way back.
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert not cycles, "\n".join(sorted(set(cycles)))
