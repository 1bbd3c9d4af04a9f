"""One atomic file write, for every file a crash must never leave half-written.

Checkpoints, teacher banks (and the views of a fill in progress) and the cached test
embeddings all go through :func:`write_atomic`: the bytes go to a temporary file beside
the target (``.NAME.<random>.tmp``, created with the mode an ordinary new file would have:
0o666 less the umask, which the kernel applies, so no thread ever changes the umask), which
is flushed and fsynced and renamed over the target; then the folder is fsynced so
the rename itself survives a power cut. A reader sees the old file or the new one, never
a torn one. A write killed before its rename (SIGKILL) leaves only the temporary file,
which ``checkpoints.remove_partial_writes`` clears from a run directory.

This module imports nothing from embdistill.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic"]


def write_atomic(path: str | Path, content: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``content`` (bytes, or a function that writes into the open binary file) to ``path`` atomically.

    The folder is created if missing. On any exception (a full disk, Ctrl-C) the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty ``.NAME.<random>.tmp`` beside ``path``, open for writing: mode 0o666 less the umask (unlike
    ``tempfile.mkstemp``'s owner-only 0o600, which would need the umask read, and reading it means setting it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
