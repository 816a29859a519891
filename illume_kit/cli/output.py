"""Shared console and error reporting for the CLI (rich, imported on first use).

rich costs ~60 ms to import; `validate` and `--help` print plain text and never pay for it.
"""

from __future__ import annotations

import errno
import os
import sys
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
# messages are not hard-wrapped: the terminal wraps them, and a path or key stays one piece to copy
err_console = _LazyConsole(stderr=True, soft_wrap=True)


# errno values that are about the machine or the paths a user gave, not about illume-kit's code
_USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP}
if hasattr(errno, "EDQUOT"):
    _USER_ERRNOS.add(errno.EDQUOT)
# what torch's CPU and CUDA allocators say when a build or a step needs more memory than there is
_ALLOCATOR_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "not enough memory", "CUDA out of memory")


def _is(exc: BaseException, module: str, name: str) -> bool:
    """``isinstance(exc, module.name)`` when ``module`` is imported; never imports it (the CLI stays
    torch-free until a verb needs torch, and an exception of a class never imported cannot occur)."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _oserror_text(exc: OSError) -> str | None:
    """One paragraph for an OSError about a path the user named (or the disk), else None."""
    path = exc.filename
    if path is None and exc.errno not in _USER_ERRNOS:
        return None
    where = f"{path}: " if path is not None else ""
    if isinstance(exc, IsADirectoryError):
        return f"{where}is a folder, where a file is expected: name a file (or a path that does not exist yet)"
    if isinstance(exc, NotADirectoryError):
        return (
            f"{where}a part of this path is a file, where a folder is expected: pick a path whose parents are folders"
        )
    if isinstance(exc, FileExistsError):
        return f"{where}already exists and is in the way (a file where a folder goes, or the reverse): pick another path or move it"
    if isinstance(exc, PermissionError):
        return f"{where}permission denied: pick a path this user may read (inputs) or write (outputs)"
    if exc.errno == errno.ENOSPC:
        return f"{where}no space left on the device: free some space, or write to another disk"
    return f"{where}{exc.strerror or exc}"


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or _is(exc, "torch", "OutOfMemoryError"):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _ALLOCATOR_FAILURES)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def expected_failure(exc: BaseException) -> str | None:
    """The message of a failure a user can fix (bad recipe, file, flag, too little memory, a
    training run that diverged), or None when ``exc`` is a bug."""
    from illume_kit.core.recipe import RecipeError
    from illume_kit.core.registry import RegistryError

    if isinstance(exc, (RecipeError, RegistryError)):
        return str(exc)
    if _is(exc, "illume_kit.core.extras", "MissingExtra"):
        return str(exc)
    if _is(exc, "illume_kit.train.trainer", "NonFiniteLoss"):
        return str(exc)
    if _is(exc, "PIL.Image", "DecompressionBombError"):
        return (
            f"{_first_line(exc)}: the image is larger than the pixel budget Pillow decodes; "
            "use a smaller image (downscale it first)"
        )
    if _is(exc, "PIL", "UnidentifiedImageError"):
        return f"{_first_line(exc)}: not an image Pillow can read (valid: png, jpg, webp, bmp)"
    if "YAMLError" in _names(exc):
        return f"the YAML cannot be read: {exc}"
    if _out_of_memory(exc):
        return (
            f"out of memory: {_first_line(exc)}. What was asked for needs more memory than this machine has: "
            "use smaller sizes (widths, layers, codebook sizes, image sizes) or a smaller batch_size, "
            "or run on a device with more memory (--device / run.device)"
        )
    if isinstance(exc, FileNotFoundError):
        return str(exc)
    if isinstance(exc, OSError):
        return _oserror_text(exc)
    if isinstance(exc, ValueError):
        return str(exc)
    return None


def debug_enabled(flag: bool = False) -> bool:
    """``--debug``, or ``ILLUME_KIT_DEBUG`` set to anything but empty/0/false/no."""
    env = os.environ.get("ILLUME_KIT_DEBUG", "").strip().lower()
    return flag or env not in ("", "0", "false", "no")


def user_error(exc: BaseException, debug: bool = False) -> int | None:
    """Print a user-fixable error and return exit status 2, or None if ``exc`` is a bug."""
    text = expected_failure(exc)
    if text is None:
        return None
    if debug:
        err_console.print("".join(traceback.format_exception(exc)), markup=False)
    head, *rest = text.splitlines() or [type(exc).__name__]
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(head, markup=False)
    for line in rest:
        err_console.print(line, markup=False)
    return 2


def report_failure(exc: BaseException, debug: bool = False) -> int:
    """Exit status 2 and one message for a user-fixable failure; for a bug, the traceback and a
    line asking to report it (exit status 1)."""
    code = user_error(exc, debug=debug)
    if code is not None:
        return code
    import illume_kit

    sys.stderr.write("".join(traceback.format_exception(exc)))
    sys.stderr.write(
        f"\nThis is a bug in illume-kit {illume_kit.__version__} (or in a plugin it runs): please report it, "
        "with the traceback above and the command line that caused it\n"
    )
    sys.stderr.flush()
    return 1


def warn(text: str) -> None:
    """A warning on stderr (yellow): the command goes on."""
    err_console.print("[bold yellow]warning:[/] ", end="")
    err_console.print(text, markup=False)
