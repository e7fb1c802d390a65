"""The output folder of a run: an exclusive lock, no silent overwrite, writes that fail clearly.

A run folder holds one run. :class:`RunLock` keeps a second trainer out of it while
the first is running (``fcntl.flock`` on ``OUT/.lock``, which names the holder), and
:func:`claim_run_folder` refuses a folder that already holds a run unless the caller
asked to continue it (``--resume``) or to replace it (``--overwrite``).
Every file goes through :func:`write_output`: atomically (a temp file renamed over
the destination), and a failed write (out of space, read-only) becomes one
:class:`RunError` naming the file instead of a traceback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path

from mmscale.data import atomic_write_bytes

__all__ = [
    "LOCK_NAME",
    "RUN_ARTEFACTS",
    "RunError",
    "RunLock",
    "check_writable",
    "claim_run_folder",
    "run_artefacts",
    "save_figure",
    "write_output",
]

# The lock file inside a run folder (holds the holder's pid, host and start time).
LOCK_NAME = ".lock"
# What a run writes into its folder (glob patterns); ``--overwrite`` removes exactly these.
RUN_ARTEFACTS = ("metrics.json", "predictions.csv", "roc.png", "confusion.png", "learning_curve.png",
                 "attention", "fold[0-9]*")


class RunError(RuntimeError):
    """A run cannot start or go on (a busy folder, a failed write); the scripts print it as one line.

    Example:
        >>> str(RunError("out: busy"))
        'out: busy'
    """


def write_output(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: the destination (its folder is created).
        data: the bytes.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        RunError: the write failed (out of space, read-only, not a folder, ...);
            no temporary file is left behind and an older file at ``path`` is intact.

    Example:
        >>> import tempfile
        >>> write_output(Path(tempfile.mkdtemp()) / "a.txt", b"ok").read_bytes()
        b'ok'
    """
    path = Path(path)
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise RunError(f"cannot write {path}: {err.strerror or err}") from err
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render a matplotlib figure to PNG bytes and write them with :func:`write_output`.

    Raises:
        RunError: the write failed.

    Example:
        >>> import tempfile, matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig = plt.figure(); p = save_figure(fig, Path(tempfile.mkdtemp()) / "f.png"); plt.close(fig)
        >>> p.read_bytes()[:4]
        b'\\x89PNG'
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_output(path, buf.getvalue())


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` if needed and prove that a file can be written in it.

    Args:
        folder: the folder.
        what: the option it came from (named in the error), e.g. ``"out"``.

    Returns:
        The folder as an absolute :class:`~pathlib.Path`.

    Raises:
        ValueError: the folder cannot be created or written to.

    Example:
        >>> import tempfile
        >>> check_writable(tempfile.mkdtemp(), "out").is_dir()
        True
    """
    folder = Path(folder).expanduser().absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check.", suffix=".tmp") as f:
            f.write(b"ok")
            f.flush()
    except OSError as err:
        raise ValueError(f"{what}: cannot write to {folder}: {err.strerror or err}") from err
    return folder


class RunLock:
    """An exclusive lock on a run folder, held for the whole run.

    The lock is ``fcntl.flock`` on ``<folder>/.lock``: the operating system drops it
    when the holder exits, even after ``SIGKILL``, so a stale file never blocks. The
    file records the holder (pid, host, start time) for the refusal message.

    Args:
        folder: the run folder (created if needed).

    Raises:
        RunError: (from :meth:`acquire`) another process holds the lock.

    Example:
        >>> import tempfile
        >>> with RunLock(tempfile.mkdtemp()) as lock:
        ...     lock.held
        True
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise at once naming the holder (never waits)."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            warnings.warn(f"no file locking on this platform: nothing stops a second run from "
                          f"writing into {self.folder} at the same time", stacklevel=2)
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']}, started {info['started']}"
            except (ValueError, KeyError, TypeError):
                who = "a process that did not record itself"
            raise RunError(f"out: {self.folder} is in use by another run ({who}); wait for it "
                           f"to end or choose another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays, empty: it claims nothing)."""
        if self._fd is None:
            return
        import fcntl

        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_artefacts(folder: str | os.PathLike) -> list[Path]:
    """What an earlier run left in ``folder`` (the :data:`RUN_ARTEFACTS` that exist), sorted.

    Example:
        >>> import tempfile
        >>> run_artefacts(tempfile.mkdtemp())
        []
    """
    folder = Path(folder)
    found = {p for pattern in RUN_ARTEFACTS for p in folder.glob(pattern)}
    return sorted(p for p in found if p.name != LOCK_NAME)


def claim_run_folder(folder: str | os.PathLike, *, resume: bool, overwrite: bool) -> list[Path]:
    """Make ``folder`` ready for a run (the caller holds its :class:`RunLock`).

    An empty folder, or ``resume=True``, is used as it is. A folder holding an earlier
    run is refused unless ``overwrite=True``, which removes that run's files (and only
    those, :data:`RUN_ARTEFACTS`).

    Args:
        folder: the run folder.
        resume: the run continues the one in the folder.
        overwrite: the run replaces the one in the folder.

    Returns:
        The paths removed (empty unless ``overwrite``).

    Raises:
        ValueError: the folder holds a run and neither ``resume`` nor ``overwrite``
            is set, or both are set.

    Example:
        >>> import tempfile
        >>> claim_run_folder(tempfile.mkdtemp(), resume=False, overwrite=False)
        []
    """
    if resume and overwrite:
        raise ValueError("overwrite: --overwrite and --resume contradict each other (replace the "
                         "run, or continue it)")
    found = run_artefacts(folder)
    if not found or resume:
        return []
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
    if not overwrite:
        raise ValueError(f"out: {folder} already holds a run ({names}); pass --resume to continue "
                         f"it or --overwrite to replace it")
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return found
