"""The data directory's lock: one node process per directory.

Owns: `DataDirLock`, an exclusive `flock` on `<data_dir>/lock`. The kernel drops the lock when
the holder's file descriptor closes, including when the process dies by `kill -9`, so a crash
never leaves a stale lock behind. The file holds the holder's PID, for the error message only.
Must not: delete the lock file (unlinking it would let two processes lock two different files).

Design: DESIGN.md section 9; issue 4, item 3.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from s2s_node.store.errors import StoreLockedError, store_error_from_os

LOCK_FILE = "lock"


class DataDirLock:
    """An exclusive lock on a data directory, held until `release` (or process death)."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Lock `data_dir`; `StoreLockedError` if another open store holds it."""
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise store_error_from_os(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(
                path,
                f"the data directory is in use by another s2s-node process{holder}; stop it"
                " first or choose another --data-dir",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise store_error_from_os(path, exc) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise store_error_from_os(path, exc) from None
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays, empty."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # the lock goes away with the descriptor anyway
            os.ftruncate(fd, 0)
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
