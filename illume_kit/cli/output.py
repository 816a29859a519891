"""Shared console and error reporting for the CLI (rich, imported on first use).

rich costs ~60 ms to import; `validate` and `--help` print plain text and never pay for it.
"""

from __future__ import annotations

import traceback
from typing import Any


class _LazyConsole:
    """A rich Console created on first attribute access."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs, self._console = kwargs, None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, **self._kwargs)
        return getattr(self._console, name)


console = _LazyConsole()
err_console = _LazyConsole(stderr=True)


def user_error(exc: BaseException, debug: bool = False) -> int | None:
    """Print a user-fixable error and return exit status 2, or None if ``exc`` is a bug."""
    from illume_kit.core.recipe import RecipeError
    from illume_kit.core.registry import RegistryError

    if not isinstance(exc, (RecipeError, RegistryError, FileNotFoundError, ValueError)):
        return None
    if debug:
        err_console.print(traceback.format_exc())
    text = str(exc)
    if isinstance(exc, RecipeError):
        head, *rest = text.splitlines()
        err_console.print(f"[bold red]error:[/] {head}")
        for line in rest:
            err_console.print(line, markup=False)
    else:
        err_console.print("[bold red]error:[/] ", end="")
        err_console.print(text, markup=False)
    return 2
