"""The main job on a fresh machine: recipes read only files inside the repository (examples/data)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT

# Keys that may name files outside the repository: drawn when present, skipped when not.
OPTIONAL = {("report", "reference_tokenizers")}
# Recipes for a real model read it in place from ../shared/data (SmolLM2's 100 MB GGUF is
# not copied into the repository); only that key may reach outside.
REAL_MODEL = {"smollm2_ko.yaml": {("import_gguf", "gguf")}}


def _repo_files() -> list[str]:
    """What a clone holds: tracked files plus untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def _paths(value: Any) -> list[Path]:
    """Every Path inside a stage config (dataclasses, tuples, mappings), and shard sources' globs."""
    import dataclasses

    if isinstance(value, Path):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        found: list[Path] = []
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "paths" and isinstance(item, tuple):  # shard sources: strings (globs)
                found += [Path(p) for p in item]
            else:
                found += _paths(item)
        return found
    if isinstance(value, tuple | list):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    return []


def test_no_recipe_reaches_outside_the_repository(tmp_path: Path) -> None:
    import dataclasses

    from kovocab.run import plan_recipe

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        out = tmp_path / recipe.stem
        for stage, cfg in plan_recipe(recipe, out_dir=out):
            for f in dataclasses.fields(cfg):
                if (stage, f.name) in OPTIONAL | REAL_MODEL.get(recipe.name, set()):
                    continue
                for p in _paths(getattr(cfg, f.name)):
                    resolved = Path(str(p).split("*")[0]).resolve()
                    inside = resolved.is_relative_to(ROOT) or resolved.is_relative_to(out.resolve())
                    assert inside, f"{recipe.name}: {stage}.{f.name} reads {p}, outside the repository"


def test_tiny_cpu_inputs_are_shipped_and_listed(tmp_path: Path) -> None:
    """Every file the main job reads is in the repository, listed in examples/README.md with its sha256."""
    readme = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"\| `(data/[^`]+)` \|[^\n]*\| `([0-9a-f]{64})` \|", readme))
    shipped = sorted(p for p in (ROOT / "examples" / "data").rglob("*") if p.is_file())
    assert {str(p.relative_to(ROOT / "examples")) for p in shipped} == set(listed)
    total = 0
    for p in shipped:
        size = p.stat().st_size
        total += size
        assert size <= 5 * 2**20, f"{p} is over 5 MB"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == listed[str(p.relative_to(ROOT / "examples"))]
    assert total <= 15 * 2**20
    tracked = set(_repo_files())
    assert all(str(p.relative_to(ROOT)) in tracked for p in shipped)  # none git-ignored


def test_main_job_first_stages_run_in_a_bare_clone(tmp_path: Path) -> None:
    """A copy of the repository with no ../shared beside it runs shard and expand_vocab."""
    clone = tmp_path / "clone"
    for rel in _repo_files():
        dest = clone / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    assert not (tmp_path / "shared").exists() and not (clone.parent.parent / "shared" / "data").is_dir()
    cmd = [sys.executable, "-m", "kovocab", "run", "recipes/tiny_cpu.yaml", "--stages", "shard,expand_vocab",
           "--set", "expand_vocab.sweep=[]", "--set", "expand_vocab.max_sentences=20000",
           "--set", "expand_vocab.target_vocab_size=34048"]
    env = {"PYTHONPATH": str(clone / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokenizer = clone / "runs" / "tiny_cpu" / "tokenizer" / "tokenizer" / "tokenizer.model"
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    assert sp.get_piece_size() == 34048
    assert len(sp.encode("안녕하세요, 오늘은 날씨가 좋네요.")) < 30
