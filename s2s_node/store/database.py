"""One SQLite connection with the store's settings, transactions and error translation.

Owns: opening a connection (WAL, synchronous level, busy timeout), the write transaction
(`BEGIN IMMEDIATE` ... `COMMIT`, savepoints when nested, hooks that run after the outermost
commit or rollback so in-memory caches follow the database), and read guards. Every
`sqlite3.Error` and `OSError` leaving this module is a `StoreError` naming the database file.
Must not: know any table.

Durability (decision). The store runs in WAL mode with `synchronous=NORMAL` by default
(`Durability.PROCESS_CRASH`): COMMIT returns after the transaction's pages are written to the
WAL file with write(2), without fsync. The data is then in the kernel's page cache, which
survives the death of the process (kill -9, a crash, an OOM kill), so an acknowledged event is
never lost to those; that is the contract of issue 4 and what the crash test checks. On power
loss or a kernel crash the last transactions before the latest fsync (at a WAL checkpoint) can
be lost, but the database stays consistent (WAL frames carry checksums and a partly written
transaction is ignored). `Durability.POWER_LOSS` sets `synchronous=FULL`: the WAL is fsynced at
every commit, so an acknowledged event survives power loss too, at about 10x the commit cost
(measured here: 24 us vs 244 us per small commit). Peers re-send what they did not get
acknowledged and events can be fetched again, so the default trades the power-loss case for
ingest speed; a node that wants the stronger promise sets `POWER_LOSS`.

Design: DESIGN.md section 9; issue 4, items 2, 4 and 5.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from s2s_node.store.errors import StoreClosedError, translate_errors

MEMORY = ":memory:"
# How long a connection waits for another connection's lock before SQLITE_BUSY. Only readers
# and the one writer of this process share the file, so waits are short.
BUSY_TIMEOUT_MS = 10_000


class Durability(enum.Enum):
    """What an acknowledged (committed) transaction survives; see the module docstring."""

    PROCESS_CRASH = "NORMAL"
    POWER_LOSS = "FULL"


class Database:
    """A connection and its path. The writer's is shared by threads under an internal lock."""

    __slots__ = (
        "_conn",
        "_depth",
        "_lock",
        "_on_commit",
        "_on_rollback",
        "path",
        "readonly",
    )

    def __init__(self, conn: sqlite3.Connection, path: str, *, readonly: bool) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0
        self._on_commit: list[Callable[[], None]] = []
        self._on_rollback: list[Callable[[], None]] = []

    @classmethod
    def open(
        cls,
        path: str,
        *,
        readonly: bool = False,
        durability: Durability = Durability.PROCESS_CRASH,
    ) -> Database:
        """Open (creating if needed, unless `readonly`) the database at `path` or `:memory:`."""
        with translate_errors(path):
            if readonly:
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    cached_statements=256,
                )
            else:
                conn = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False, cached_statements=256
                )
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                # Reading the schema is what detects a file that is no database.
                conn.execute("PRAGMA schema_version").fetchone()
                conn.execute(f"PRAGMA synchronous = {durability.value}")
                conn.execute("PRAGMA foreign_keys = OFF")
                conn.execute("PRAGMA temp_store = MEMORY")
            except BaseException:
                conn.close()
                raise
        return cls(conn, path, readonly=readonly)

    def enable_wal(self) -> None:
        """Switch the file to WAL mode (persistent; a no-op in memory). Call it only once the
        file is known to be ours: it rewrites the header."""
        if self.path == MEMORY or self.readonly:
            return
        with self._lock, translate_errors(self.path):
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode {mode})")

    def check_writable(self) -> None:
        """Write the header in a transaction, so that a read-only file, directory or file
        system fails now, at open, and not at the first event."""
        with self.transaction() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute(f"PRAGMA user_version = {int(version)}")

    @property
    def conn(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StoreClosedError(self.path, "the store is closed")
        return conn

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with translate_errors(self.path):
                    conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested ones are savepoints of the outer one.

        Hooks registered with `on_commit` run after the outermost COMMIT succeeded, those of
        `on_rollback` after it was rolled back (in both cases outside the lock-free window:
        still under this database's lock). When a savepoint is rolled back (the outer
        transaction goes on), the `on_commit` hooks registered inside it are dropped and its
        `on_rollback` hooks run at once (they stay registered for the outer transaction, so a
        rollback hook must be safe to run twice).
        """
        with self._lock, translate_errors(self.path):
            conn = self.conn
            depth = self._depth
            name = f"s{depth}"
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
            self._depth = depth + 1
            commit_mark, rollback_mark = len(self._on_commit), len(self._on_rollback)
            try:
                yield conn
            except BaseException:
                self._depth = depth
                if depth == 0:
                    self._finish_rollback(conn)
                else:
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
                    del self._on_commit[commit_mark:]
                    for hook in self._on_rollback[rollback_mark:]:
                        hook()
                raise
            self._depth = depth
            if depth > 0:
                conn.execute(f"RELEASE {name}")
                return
            try:
                conn.execute("COMMIT")
            except BaseException:
                self._finish_rollback(conn)
                raise
            hooks, self._on_commit = self._on_commit, []
            self._on_rollback = []
            for hook in hooks:
                hook()

    def _finish_rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            hooks, self._on_rollback = self._on_rollback, []
            self._on_commit = []
            for hook in hooks:
                hook()

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` once the current transaction commits (at once if there is none)."""
        if self._depth == 0:
            hook()
        else:
            self._on_commit.append(hook)

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Run `hook` if the current transaction is rolled back."""
        if self._depth > 0:
            self._on_rollback.append(hook)

    def fetch_one(self, sql: str, params: tuple[object, ...] = ()) -> tuple[Any, ...] | None:
        """One row of a single-statement read (a statement is its own snapshot)."""
        with self._lock, translate_errors(self.path):
            row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
            return row

    def fetch_all(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """All rows of a single-statement read."""
        with self._lock, translate_errors(self.path):
            return self.conn.execute(sql, params).fetchall()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Reads: one consistent snapshot for the block, unless inside a write transaction
        (which sees its own writes)."""
        with self._lock, translate_errors(self.path):
            conn = self.conn
            if self._depth > 0 or conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN DEFERRED")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
