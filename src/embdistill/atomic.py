"""One atomic file write, for every file a crash must never leave half-written.

Checkpoints, teacher banks (and the views of a fill in progress) and the cached test
embeddings all go through :func:`write_atomic`: the bytes go to a temporary file beside
the target (``.NAME.<random>.tmp``), which is flushed and fsynced, given the mode an
ordinary new file would have, and renamed over the target; then the folder is fsynced so
the rename itself survives a power cut. A reader sees the old file or the new one, never
a torn one. A write killed before its rename (SIGKILL) leaves only the temporary file,
which ``checkpoints.remove_partial_writes`` clears from a run directory.

This module imports nothing from embdistill.
"""
from __future__ import annotations

import os
import tempfile
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


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
