"""Shared console and error reporting for the CLI (rich)."""

from __future__ import annotations

import traceback

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


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
