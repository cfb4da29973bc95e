"""The single-writer lock on `<data_dir>/worker.lock`, shared by the worker and the CLI."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from etl.errors import WriterBusy

LOCK_NAME = "worker.lock"


class WriterLock:
    """An held `fcntl` lock; release() (or leaving the `with` block) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Free the lock; safe to call twice."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_holder(data_dir: Path) -> str:
    """The PID written by the current holder, or '?' when unreadable."""
    try:
        return (Path(data_dir) / LOCK_NAME).read_text().strip() or "?"
    except OSError:
        return "?"


def acquire_writer_lock(data_dir: Path) -> WriterLock:
    """Take the writer lock without waiting; raise WriterBusy naming the holder otherwise."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WriterBusy(
            f"`{path}` is held by PID {lock_holder(data_dir)} (the worker or another ETL/KPI "
            "command), which owns the warehouse. Stop that process first, or use "
            "`python -m etl status`, which reads the published snapshot instead.") from None
    # The PID is written only after the lock is ours, so a reader never sees a loser's PID.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    return WriterLock(path, fd)
