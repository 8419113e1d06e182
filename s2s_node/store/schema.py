"""The database schema and its forward migrations.

Owns: the tables (as SQL), `APPLICATION_ID` and the schema version kept in SQLite's header
(`PRAGMA application_id`, `PRAGMA user_version`), and `migrate`, which tells our databases from
foreign ones and brings ours up to `SCHEMA_VERSION` one step at a time, each step in its own
transaction. Must not: ever go backwards, or touch a database that is not ours.

Layout notes (what the other store modules rely on):

- every event gets a dense integer `event_nid` in insertion order; since an event is stored only
  after its prev_events and auth_events, nid order is a topological order of both DAGs;
- `state_groups` hold state maps as deltas: a group with `prev_group` NULL is a full snapshot,
  any other lists only the keys whose event differs from its `prev_group` (`event_nid` NULL in
  `state_group_entries` = key removed). `chain_length` counts groups down to the snapshot;
- events point at the groups of the state before and after them; many events share a group
  (a message event changes no state), so state costs rows only when it changes.

Design: DESIGN.md section 9.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from s2s_node.store.errors import StoreCorruptError, StoreForeignError

# "s2sN" in ASCII: SQLite's header field for telling application file formats apart.
APPLICATION_ID = 0x7332734E

_V1_ROOMS_EVENTS_STATE = """
CREATE TABLE rooms (
    room_nid INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL UNIQUE,
    room_version TEXT NOT NULL,
    current_group INTEGER            -- state group of the current state; NULL = empty
);
CREATE TABLE events (
    event_nid INTEGER PRIMARY KEY,   -- insertion order: parents before children
    event_id TEXT NOT NULL UNIQUE,
    room_nid INTEGER NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    depth INTEGER NOT NULL,
    json BLOB NOT NULL,              -- canonical JSON of the stored (maybe redacted) copy
    status INTEGER NOT NULL,         -- 0 accepted, 1 soft-failed, 2 rejected
    failed_check TEXT,
    rule TEXT,
    detail TEXT NOT NULL DEFAULT '',
    before_group INTEGER,            -- NULL = empty state
    after_group INTEGER
);
CREATE INDEX events_room ON events (room_nid, event_nid);
CREATE TABLE prev_edges (
    event_nid INTEGER NOT NULL,
    prev_nid INTEGER NOT NULL,
    PRIMARY KEY (event_nid, prev_nid)
) WITHOUT ROWID;
CREATE INDEX prev_edges_prev ON prev_edges (prev_nid);
CREATE TABLE auth_edges (
    event_nid INTEGER NOT NULL,
    auth_nid INTEGER NOT NULL,
    PRIMARY KEY (event_nid, auth_nid)
) WITHOUT ROWID;
CREATE INDEX auth_edges_auth ON auth_edges (auth_nid);
CREATE TABLE forward_extremities (
    room_nid INTEGER NOT NULL,
    event_nid INTEGER NOT NULL,
    PRIMARY KEY (room_nid, event_nid)
) WITHOUT ROWID;
CREATE TABLE state_keys (
    key_nid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    UNIQUE (type, state_key)
);
CREATE TABLE state_groups (
    group_nid INTEGER PRIMARY KEY,
    room_nid INTEGER NOT NULL,
    prev_group INTEGER,              -- NULL = a full snapshot
    chain_length INTEGER NOT NULL,   -- groups from this one down to its snapshot, itself included
    chain_rows INTEGER NOT NULL,     -- delta rows along that chain (snapshot excluded)
    size INTEGER NOT NULL            -- entries of the full map
);
CREATE TABLE state_group_entries (
    group_nid INTEGER NOT NULL,
    key_nid INTEGER NOT NULL,
    event_nid INTEGER,               -- NULL = the key is absent from this group
    PRIMARY KEY (group_nid, key_nid)
) WITHOUT ROWID;
"""

_V2_FEDERATION_ACCOUNTS = """
CREATE TABLE peers (
    server_name TEXT PRIMARY KEY,
    address TEXT,
    last_seen_ms INTEGER,
    failures INTEGER NOT NULL DEFAULT 0,
    retry_at_ms INTEGER NOT NULL DEFAULT 0,
    info BLOB NOT NULL               -- canonical JSON object: what discovery learned
);
CREATE TABLE outbound (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    event_nid INTEGER,               -- a PDU, by reference
    edu BLOB,                        -- or an EDU, canonical JSON
    enqueued_ms INTEGER NOT NULL,
    CHECK ((event_nid IS NULL) <> (edu IS NULL))
);
CREATE INDEX outbound_destination ON outbound (destination, seq);
CREATE TABLE received_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    response BLOB NOT NULL,          -- canonical JSON of the answer, repeated for duplicates
    PRIMARY KEY (origin, txn_id)
) WITHOUT ROWID;
CREATE INDEX received_txns_time ON received_txns (received_ms);
CREATE TABLE negotiations (
    room_id TEXT NOT NULL,
    negotiation_id TEXT NOT NULL,    -- the opening event's ID
    phase TEXT NOT NULL,
    record BLOB NOT NULL,            -- canonical JSON of the machine's state
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (room_id, negotiation_id)
) WITHOUT ROWID;
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    profile BLOB NOT NULL            -- canonical JSON object
);
CREATE TABLE access_tokens (
    token_hash BLOB PRIMARY KEY,     -- SHA-256 of the token; the token itself is not stored
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX access_tokens_user ON access_tokens (user_id);
"""

# MIGRATIONS[i] takes the schema from version i to version i + 1. Append only.
MIGRATIONS: tuple[str, ...] = (_V1_ROOMS_EVENTS_STATE, _V2_FEDERATION_ACCOUNTS)
SCHEMA_VERSION = len(MIGRATIONS)


def read_header(conn: sqlite3.Connection) -> tuple[int, int]:
    """`(application_id, user_version)` of the open database."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    return int(application_id), int(user_version)


def _table_names(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {str(name) for (name,) in rows}


def check_header(conn: sqlite3.Connection, path: str | Path) -> int:
    """The schema version of our database (0 for a new, empty file). `StoreForeignError` if it
    belongs to another application or to a newer schema. Reads only."""
    application_id, version = read_header(conn)
    if application_id not in (0, APPLICATION_ID):
        raise StoreForeignError(
            path,
            f"not an s2s-node database (application_id {application_id:#x}); refusing to use it",
        )
    if application_id == 0:
        tables = _table_names(conn)
        if tables or version != 0:
            raise StoreForeignError(
                path,
                f"an SQLite database of another application (tables: {', '.join(sorted(tables))};"
                f" user_version {version}); refusing to use it",
            )
    if version > SCHEMA_VERSION:
        raise StoreForeignError(
            path,
            f"schema version {version} was written by a newer s2s-node (this one knows up to"
            f" {SCHEMA_VERSION}); refusing to downgrade it",
        )
    return version


def migrate(conn: sqlite3.Connection, path: str | Path, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the database of `conn` (autocommit mode) up to schema `target`; return the version
    it had. `StoreForeignError` if it belongs to another application or a newer schema.
    """
    version = check_header(conn, path)
    start = version
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another opener may have migrated meanwhile.
            _, version = read_header(conn)
            if version < target:
                for statement in _statements(MIGRATIONS[version]):
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if version >= 1 and not {"rooms", "events", "state_groups"} <= _table_names(conn):
        raise StoreCorruptError(path, f"schema version {version} but its tables are missing")
    return start


def _statements(script: str) -> list[str]:
    """The statements of a migration script (`executescript` would commit on its own)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line.split("--", 1)[0] + "\n" if "--" in line else line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete statement in a migration: {pending.strip()[:60]}")
    return statements
