"""Atomic folder and file writes: a crash never leaves a half-written result under its final name.

A folder is written into a hidden temporary folder beside its destination, every file fsynced, then
renamed into place with ``os.replace`` (an existing destination is moved aside first); a file is
written to a temporary file and renamed. Used by model checkpoints and by trainer checkpoints.

A writer killed mid-write leaves its temporary behind. Its name carries the writer's host and pid
(``.<name>.tmp-<pid>@<host>-<random>``, ``.<name>.old-...`` for a replaced folder being removed),
so ``remove_stale_temps`` can remove it when a run next starts in that folder, and never touches
the temporary of a writer that is still alive (or one written on another host, whose pids it
cannot check).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname().split(".")[0])[:64] or "host"


def _tag(name: str, kind: str) -> str:
    """The prefix of a temporary beside ``name``: who writes it, so a later start can tell if it is stale."""
    return f".{name}.{kind}-{os.getpid()}@{_host()}-"


# .<name>.tmp-<pid>@<host>-<mkdtemp/mkstemp suffix>
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid this module writes: leave the entry alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def stale_temps(folder: str | os.PathLike, depth: int = 3) -> list[Path]:
    """Temporaries under ``folder`` (``depth`` levels down) left by writers of this host that are gone."""
    root = Path(folder)
    found: list[Path] = []
    if not root.is_dir():
        return found
    host = _host()
    level = [root]
    for _ in range(max(1, depth)):
        nxt: list[Path] = []
        for d in level:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                m = _TEMP.match(e.name)
                if m is not None:
                    if m["host"] == host and not _pid_alive(int(m["pid"])):
                        found.append(Path(e.path))
                elif e.is_dir(follow_symlinks=False):
                    nxt.append(Path(e.path))
        level = nxt
    return sorted(found)


def remove_stale_temps(folder: str | os.PathLike, depth: int = 3) -> list[Path]:
    """Remove what ``stale_temps`` finds; returns the removed paths.

    A writer killed while swapping a folder (between moving the old one aside and renaming the new
    one in) leaves no folder under the final name: the old one, complete, is put back first.
    """
    removed = []
    for p in stale_temps(folder, depth):
        m = _TEMP.match(p.name)
        final = p.parent / m["name"]
        if m["kind"] == "old" and (p / m["name"]).is_dir() and not final.exists():
            with contextlib.suppress(OSError):
                os.replace(p / m["name"], final)
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            continue
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success fsync it and rename it to ``final`` (replacing it).

    On any exception the temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tag(final.name, "tmp"), dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a checkpoint should look like any folder
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
        _fsync_path(tmp)
        if final.exists():  # replace: move the old one aside first (os.replace needs an empty target)
            old = Path(tempfile.mkdtemp(prefix=_tag(final.name, "old"), dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(path, text, "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(path, data, "wb")


def _atomic_write(path: str | os.PathLike, data: str | bytes, mode: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_tag(path.name, "tmp"), dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
