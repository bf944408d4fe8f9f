"""Errors a user can act on.

Every message says what went wrong, where (file, line, config key) and what to do
next. `kovocab.cli.main` prints them as `kovocab: error: ...` and exits 1; anything
that is not a `KovocabError` is a bug in kovocab and keeps its traceback.
"""

from __future__ import annotations

from types import ModuleType


class KovocabError(Exception):
    """A mistake in the input, the config or the environment, explained for the user."""


class ConfigError(KovocabError):
    """One or more config problems, all reported at once."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} config problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(text)


class InputError(KovocabError):
    """Input data that cannot be read as asked (missing path, wrong column, bad file)."""


class TokenizerError(KovocabError):
    """A tokenizer file that cannot be loaded or does not fit the operation."""


class MissingDependencyError(KovocabError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed: "
            f"pip install 'kovocab[{extra}]'"
        )


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional module or raise MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, purpose) from exc


class OutputError(KovocabError):
    """An output folder kovocab must not write to: it holds files kovocab did not write, or another run."""
