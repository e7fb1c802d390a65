"""Atomic file writes shared by the data cache, the trainer and the benchmarks.

A reader of a file written here sees the old content or the new, never half of it:
the bytes go to a temporary file in the same folder, are flushed to disk, and the
temporary file is renamed over the destination (``os.replace``, atomic on POSIX).
Any error while writing (out of space, read-only folder) removes the temporary file
and propagates unchanged, so callers can tell an I/O failure from bad input.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes"]


def _default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, "w")`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()  # read once: changing the umask is process-wide and not thread-safe


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half.

    The file gets the permissions a plain ``open(path, "w")`` would give it (not the
    owner-only mode of the temporary file it is written through).

    Args:
        path: destination; its folder is created if needed.
        data: the bytes.

    Raises:
        OSError: the folder cannot be created or the file cannot be written (for
            example out of space); no temporary file is left behind.

    Example:
        >>> atomic_write_bytes("/tmp/x.json", b"{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
