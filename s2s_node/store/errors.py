"""Typed store errors, and turning SQLite's and the OS's exceptions into them.

Owns: `StoreError` and its subclasses (one per way a store can fail that a user can act on),
each naming the file it is about, and `translate_errors`, the one place where `sqlite3.Error`
and `OSError` become those. Must not: retry, repair or delete anything.

Design: DESIGN.md section 9; issue 4 ("Failure handling").
"""

from __future__ import annotations

import enum
import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StoreErrorReason(enum.Enum):
    """Why the store cannot go on."""

    LOCKED = "locked"  # another process holds the data directory's lock
    CORRUPT = "corrupt"  # not an SQLite database, or a damaged one
    FOREIGN = "foreign"  # an SQLite database of some other application or a newer schema
    FULL = "full"  # the disk (or the database's size limit) is full
    NOT_WRITABLE = "not_writable"  # read-only file, directory or file system
    IO = "io"  # any other I/O failure reported by SQLite or the OS
    CLOSED = "closed"  # the store was used after `close`


class StoreError(Exception):
    """The store failed; `path` names the file, `reason` says how."""

    reason: StoreErrorReason = StoreErrorReason.IO

    def __init__(self, path: str | Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = str(path)
        self.detail = detail


class StoreLockedError(StoreError):
    reason = StoreErrorReason.LOCKED


class StoreCorruptError(StoreError):
    reason = StoreErrorReason.CORRUPT


class StoreForeignError(StoreError):
    reason = StoreErrorReason.FOREIGN


class StoreFullError(StoreError):
    reason = StoreErrorReason.FULL


class StoreNotWritableError(StoreError):
    reason = StoreErrorReason.NOT_WRITABLE


class StoreIOError(StoreError):
    reason = StoreErrorReason.IO


class StoreClosedError(StoreError):
    reason = StoreErrorReason.CLOSED


# SQLite primary result codes (the low byte of an extended code), from sqlite3.h.
_SQLITE_PERM = 3
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_CLASS_OF_SQLITE_CODE: dict[int, type[StoreError]] = {
    _SQLITE_PERM: StoreNotWritableError,
    _SQLITE_READONLY: StoreNotWritableError,
    _SQLITE_CANTOPEN: StoreNotWritableError,
    _SQLITE_IOERR: StoreIOError,
    _SQLITE_CORRUPT: StoreCorruptError,
    _SQLITE_NOTADB: StoreCorruptError,
    _SQLITE_FULL: StoreFullError,
}

_CLASS_OF_ERRNO: dict[int, type[StoreError]] = {
    errno.EROFS: StoreNotWritableError,
    errno.EACCES: StoreNotWritableError,
    errno.EPERM: StoreNotWritableError,
    errno.ENOSPC: StoreFullError,
    errno.EDQUOT: StoreFullError,
}


def store_error_from_sqlite(path: str | Path, exc: sqlite3.Error) -> StoreError:
    """The typed error for an SQLite exception about `path`."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    cls = StoreIOError if code is None else _CLASS_OF_SQLITE_CODE.get(code & 0xFF, StoreIOError)
    if cls is StoreNotWritableError and code is not None and code & 0xFF == _SQLITE_CANTOPEN:
        detail = f"cannot open or create the database or its journal ({name}: {exc})"
    else:
        detail = f"{exc} ({name})"
    return cls(path, detail)


def store_error_from_os(path: str | Path, exc: OSError) -> StoreError:
    """The typed error for an OS error about `path`."""
    cls = _CLASS_OF_ERRNO.get(exc.errno or 0, StoreIOError)
    return cls(path, exc.strerror or str(exc))


@contextmanager
def translate_errors(path: str | Path) -> Iterator[None]:
    """Raise `StoreError`s instead of the `sqlite3.Error`s and `OSError`s of the block.

    Programming errors (`sqlite3.ProgrammingError`, `InterfaceError`, and `IntegrityError`,
    which means a caller broke a uniqueness rule) are not I/O failures and pass through.
    """
    try:
        yield
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.IntegrityError):
        raise
    except sqlite3.Error as exc:
        raise store_error_from_sqlite(path, exc) from exc
    except OSError as exc:
        raise store_error_from_os(path, exc) from exc
