"""The package layout itself: data-only recipe folders, the CLI entry points, CI = README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

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
