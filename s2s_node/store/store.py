"""The node's store: the data directory's database, its lock, and the tables in it.

Owns: `Store`, opened on a data directory (`<data_dir>/node.db`, locked through
`<data_dir>/lock`) or in memory, which checks and migrates the schema and hands out the
tables: rooms (`room` -> `SqliteRoomStore`), `peers`, `outbound`, `received_txns`,
`negotiations`, `accounts`. It is synchronous; one thread writes at a time (the trio side goes
through `AsyncStore`). `open_reader` gives a read-only connection to the same file, for reads
that run beside the writer. Must not: know the rules of any table (the table modules do).

Design: DESIGN.md section 9; issue 4.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s2s_node.core.ids import RoomId
from s2s_node.core.rules import RoomVersionRules, UnsupportedRoomVersionError, rules_for
from s2s_node.store.accounts import AccountTable
from s2s_node.store.database import MEMORY, Database, Durability
from s2s_node.store.errors import StoreCorruptError, StoreError, StoreIOError, translate_errors
from s2s_node.store.federation import OutboundQueue, PeerTable, ReceivedTxns
from s2s_node.store.lock import DataDirLock
from s2s_node.store.negotiations import NegotiationTable
from s2s_node.store.rooms import SqliteRoomStore
from s2s_node.store.schema import check_header, migrate, read_header
from s2s_node.store.stategroups import StateGroups

DB_FILE = "node.db"


class Store:
    """The database of one node (or of a test), with every table."""

    def __init__(self, db: Database, lock: DataDirLock | None, *, writer: bool = True) -> None:
        self._db = db
        self._lock = lock
        self._writer = writer
        self._groups = StateGroups(db)
        self._rooms: dict[RoomId, SqliteRoomStore] = {}
        self._rooms_lock = threading.Lock()
        self.peers = PeerTable(db)
        self.outbound = OutboundQueue(db)
        self.received_txns = ReceivedTxns(db)
        self.negotiations = NegotiationTable(db)
        self.accounts = AccountTable(db)

    # -- opening and closing

    @classmethod
    def open(
        cls, data_dir: str | Path, *, durability: Durability = Durability.PROCESS_CRASH
    ) -> Store:
        """Lock `data_dir` (created if missing) and open `<data_dir>/node.db`, migrating it.

        Raises a `StoreError` subclass naming the file: `StoreLockedError` if another process
        has it open, `StoreCorruptError`, `StoreForeignError`, `StoreNotWritableError`,
        `StoreFullError`, `StoreIOError`.
        """
        data_dir = Path(data_dir)
        with translate_errors(data_dir):
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = DataDirLock.acquire(data_dir)
        try:
            path = data_dir / DB_FILE
            if path.exists() and not path.is_file():
                raise StoreCorruptError(path, "is not a regular file")
            db = Database.open(str(path), durability=durability)
            try:
                with translate_errors(path):
                    check_header(db.conn, path)  # before anything rewrites a foreign file
                db.enable_wal()
                with translate_errors(path):
                    migrate(db.conn, path)
                db.check_writable()
            except BaseException:
                db.close()
                raise
        except BaseException:
            lock.release()
            raise
        return cls(db, lock)

    @classmethod
    def open_memory(cls) -> Store:
        """A fresh store in memory (tests, tools): same schema, nothing survives `close`."""
        db = Database.open(MEMORY)
        with translate_errors(MEMORY):
            migrate(db.conn, MEMORY)
        return cls(db, None)

    def open_reader(self) -> Store:
        """A read-only store on its own connection to the same file, for concurrent reads.

        An in-memory store has no second connection: it returns itself (reads then take turns
        with the writer).
        """
        if self._db.path == MEMORY:
            return self
        reader = Database.open(self._db.path, readonly=True)
        return Store(reader, None, writer=False)

    @property
    def path(self) -> str:
        """The database file (`:memory:` for an in-memory store)."""
        return self._db.path

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        """Close the database and release the lock (idempotent)."""
        try:
            self._db.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes (of any tables) into one atomic transaction."""
        with self._db.transaction():
            yield

    def schema_version(self) -> int:
        with translate_errors(self._db.path):
            return read_header(self._db.conn)[1]

    # -- rooms

    def create_room(self, room_id: RoomId, rules: RoomVersionRules) -> SqliteRoomStore:
        """The store of a room, recording the room first if it is new.

        `ValueError` if the room is known with another room version.
        """
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO rooms (room_id, room_version) VALUES (?, ?)",
                    (room_id, rules.version),
                )
                # Inside an outer transaction that is rolled back, the room is gone again.
                self._db.on_rollback(lambda: self._forget_room(room_id))
            elif row[0] != rules.version:
                raise ValueError(
                    f"{room_id} is stored as room version {row[0]}, not {rules.version}"
                )
        room = self.room(room_id)
        assert room is not None
        return room

    def room(self, room_id: RoomId) -> SqliteRoomStore | None:
        """The store of a known room (one object per room and `Store`), or None."""
        with self._rooms_lock:
            room = self._rooms.get(room_id)
            if room is not None:
                return room
            row = self._db.fetch_one(
                "SELECT room_nid, room_version FROM rooms WHERE room_id = ?", (room_id,)
            )
            if row is None:
                return None
            try:
                rules = rules_for(row[1])
            except UnsupportedRoomVersionError:
                raise StoreIOError(
                    self._db.path, f"{room_id} has room version {row[1]!r}, which this node lacks"
                ) from None
            room = SqliteRoomStore(
                self._db,
                self._groups,
                room_nid=int(row[0]),
                room_id=room_id,
                rules=rules,
                writer=self._writer,
            )
            self._rooms[room_id] = room
            return room

    def _forget_room(self, room_id: RoomId) -> None:
        with self._rooms_lock:
            self._rooms.pop(room_id, None)

    def rooms(self) -> list[tuple[RoomId, str]]:
        """Every stored room and its room version."""
        rows = self._db.fetch_all("SELECT room_id, room_version FROM rooms ORDER BY room_id")
        return [(RoomId(r[0]), str(r[1])) for r in rows]


__all__ = ["DB_FILE", "Store", "StoreError"]
