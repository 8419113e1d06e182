"""State maps on disk as deltas, with a small cache of the maps in use.

Owns: `StateGroups`, which stores a state map (`(type, state_key)` -> event ID) as a *state
group*: a delta against a base group, or a full snapshot when the chain of deltas below it
got long, and loads a group back as a `StateSnapshot`. Only changed keys cost rows, so a room
with S state keys and E state changes needs about E + S * E / MAX_CHAIN_LENGTH rows instead of
the E * S of a full copy per event, and loading a group reads at most its snapshot and
MAX_CHAIN_LENGTH - 1 deltas. Must not: decide what the state of an event is (`RoomGraph` does)
or hold whole rooms: at most `CACHE_GROUPS` maps stay in memory, and maps loaded by applying a
delta to a cached map share that map's dict (`StateSnapshot.with_entry`).

Design: DESIGN.md section 9; issue 4, item 1 ("state snapshots stored as deltas").
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from s2s_node.core.auth import StateKey
from s2s_node.core.ids import EventId
from s2s_node.core.state_snapshot import EMPTY_STATE, StateSnapshot
from s2s_node.store.database import Database

StateIds = Mapping[StateKey, EventId]

# Longest chain of groups from any group down to its snapshot (a cold read: one query per
# group of the chain).
MAX_CHAIN_LENGTH = 128
# A delta chain also ends when its rows exceed this share of the map's size (plus a floor), so
# that big deltas (merges of long forks) do not make reads slow.
MAX_CHAIN_ROWS_FLOOR = 256
# Maps kept in memory; RoomGraph touches a few per event (prev_events, current state).
CACHE_GROUPS = 64
# Deltas larger than this are applied by copying the map instead of overlay by overlay.
_OVERLAY_APPLY_LIMIT = 32


@dataclass(frozen=True, slots=True)
class _GroupRow:
    prev_group: int | None
    chain_length: int
    chain_rows: int
    size: int


class StateGroups:
    """The state groups of one database, shared by its rooms."""

    __slots__ = ("_cache", "_db", "_group_of_map", "_key_nids", "_types")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: OrderedDict[int, StateSnapshot] = OrderedDict()
        self._group_of_map: dict[int, int] = {}  # id(map) -> group, for the cached maps
        self._key_nids: dict[StateKey, int] = {}
        self._types: dict[str, str] = {}  # interned event types

    # -- cache

    def cached_group(self, state: StateIds) -> int | None:
        """The group of `state` if it is one of the cached map objects."""
        group = self._group_of_map.get(id(state))
        if group is not None and self._cache.get(group) is state:
            return group
        return None

    def remember(self, group: int, state: StateSnapshot) -> None:
        """Cache `state` as the map of `group` (call after the group was committed)."""
        old = self._cache.pop(group, None)
        if old is not None:
            self._group_of_map.pop(id(old), None)
        self._cache[group] = state
        self._group_of_map[id(state)] = group
        while len(self._cache) > CACHE_GROUPS:
            _, evicted = self._cache.popitem(last=False)
            self._group_of_map.pop(id(evicted), None)

    def forget_all(self) -> None:
        """Drop the cache (after a rollback, nothing cached may name a group that is gone)."""
        self._cache.clear()
        self._group_of_map.clear()
        self._key_nids.clear()

    # -- reading

    def load(self, group: int | None) -> StateSnapshot:
        """The map of a group (None: the empty state)."""
        if group is None:
            return EMPTY_STATE
        cached = self._cache.get(group)
        if cached is not None:
            self._cache.move_to_end(group)
            return cached
        with self._db.reading() as conn:
            state = self._load(conn, group)
        self.remember(group, state)
        return state

    def _load(self, conn: sqlite3.Connection, group: int) -> StateSnapshot:
        # The chain down to the snapshot (one query), cut at the first cached group.
        rows = conn.execute(
            "WITH RECURSIVE chain(g) AS (SELECT ? UNION ALL"
            " SELECT s.prev_group FROM state_groups AS s JOIN chain ON s.group_nid = chain.g"
            " WHERE s.prev_group IS NOT NULL) SELECT g FROM chain",
            (group,),
        ).fetchall()
        chain: list[int] = []
        base: StateSnapshot | None = None
        for (g,) in rows:
            cached = self._cache.get(g)
            if cached is not None:
                base = cached
                break
            chain.append(g)
        if base is None and not self._exists(conn, chain[-1]):
            raise LookupError(f"state group {chain[-1]} is missing")
        # Apply the groups' rows from the oldest (the snapshot, unless a cached base) up.
        state = EMPTY_STATE if base is None else base
        for g in reversed(chain):
            entries = self._entries(conn, g)
            if base is None and g == chain[-1]:
                state = StateSnapshot({k: e for k, e in entries if e is not None})
                continue
            state = _apply(state, entries)
        return state

    def _exists(self, conn: sqlite3.Connection, group: int) -> bool:
        row = conn.execute("SELECT 1 FROM state_groups WHERE group_nid = ?", (group,)).fetchone()
        return row is not None

    def _entries(
        self, conn: sqlite3.Connection, group: int
    ) -> list[tuple[StateKey, EventId | None]]:
        types = self._types
        rows = conn.execute(
            "SELECT k.type, k.state_key, e.event_id FROM state_group_entries AS s"
            " JOIN state_keys AS k ON k.key_nid = s.key_nid"
            " LEFT JOIN events AS e ON e.event_nid = s.event_nid"
            " WHERE s.group_nid = ?",
            (group,),
        ).fetchall()
        out: list[tuple[StateKey, EventId | None]] = []
        for event_type, state_key, event_id in rows:
            interned = types.setdefault(event_type, event_type)
            out.append(((interned, state_key), event_id))
        return out

    # -- writing

    def store(
        self,
        conn: sqlite3.Connection,
        room_nid: int,
        state: StateIds,
        base: int | None,
        *,
        delta: Mapping[StateKey, EventId | None] | None = None,
        nid_of: Mapping[EventId, int] | None = None,
    ) -> int | None:
        """The group for `state`, written in the open transaction of `conn` if new.

        `base` is the group to write a delta against. `delta`, when the caller knows it (the
        keys whose event differs from `base`'s map, None = removed), saves the full comparison.
        Returns `base` itself when nothing differs; None only for the empty state.
        """
        known = self.cached_group(state)
        if known is not None:
            return known
        if delta is None:
            base_map = self.load_in(conn, base)
            delta = _diff(base_map, state)
        if not delta:
            return base
        if base is None and not state:
            return None
        base_row = None if base is None else self._group_row(conn, base)
        size = len(state)
        snapshot = (
            base_row is None
            or base_row.chain_length >= MAX_CHAIN_LENGTH
            or base_row.chain_rows + len(delta) > max(MAX_CHAIN_ROWS_FLOOR, size // 2)
        )
        if snapshot:
            rows: Mapping[StateKey, EventId | None] = state
            cur = conn.execute(
                "INSERT INTO state_groups (room_nid, prev_group, chain_length, chain_rows, size)"
                " VALUES (?, NULL, 1, 0, ?)",
                (room_nid, size),
            )
        else:
            assert base_row is not None
            rows = delta
            cur = conn.execute(
                "INSERT INTO state_groups (room_nid, prev_group, chain_length, chain_rows, size)"
                " VALUES (?, ?, ?, ?, ?)",
                (room_nid, base, base_row.chain_length + 1, base_row.chain_rows + len(delta), size),
            )
        group = cur.lastrowid
        assert group is not None
        conn.executemany(
            "INSERT INTO state_group_entries (group_nid, key_nid, event_nid) VALUES (?, ?, ?)",
            [
                (
                    group,
                    self._key_nid(conn, key),
                    None if event_id is None else _event_nid(conn, event_id, nid_of),
                )
                for key, event_id in rows.items()
            ],
        )
        return group

    def load_in(self, conn: sqlite3.Connection, group: int | None) -> StateSnapshot:
        """`load` within an open transaction of `conn` (sees its uncommitted groups)."""
        if group is None:
            return EMPTY_STATE
        cached = self._cache.get(group)
        if cached is not None:
            return cached
        return self._load(conn, group)

    def _group_row(self, conn: sqlite3.Connection, group: int) -> _GroupRow:
        row = conn.execute(
            "SELECT prev_group, chain_length, chain_rows, size FROM state_groups"
            " WHERE group_nid = ?",
            (group,),
        ).fetchone()
        if row is None:
            raise LookupError(f"state group {group} is missing")
        return _GroupRow(row[0], int(row[1]), int(row[2]), int(row[3]))

    def _key_nid(self, conn: sqlite3.Connection, key: StateKey) -> int:
        nid = self._key_nids.get(key)
        if nid is not None:
            return nid
        row = conn.execute(
            "SELECT key_nid FROM state_keys WHERE type = ? AND state_key = ?", key
        ).fetchone()
        if row is None:
            cur = conn.execute("INSERT INTO state_keys (type, state_key) VALUES (?, ?)", key)
            nid = cur.lastrowid
            assert nid is not None
        else:
            nid = int(row[0])
        # Only committed keys may be cached: a rollback calls `forget_all`.
        self._key_nids[key] = nid
        return nid


def _event_nid(
    conn: sqlite3.Connection, event_id: EventId, nid_of: Mapping[EventId, int] | None
) -> int:
    if nid_of is not None:
        nid = nid_of.get(event_id)
        if nid is not None:
            return nid
    row = conn.execute("SELECT event_nid FROM events WHERE event_id = ?", (event_id,)).fetchone()
    if row is None:
        raise LookupError(f"the state names {event_id}, which is not stored")
    return int(row[0])


def _diff(base: StateIds, state: StateIds) -> dict[StateKey, EventId | None]:
    delta: dict[StateKey, EventId | None] = {}
    for key, event_id in state.items():
        if base.get(key) != event_id:
            delta[key] = event_id
    added = sum(1 for key in delta if key not in base)
    if len(base) + added != len(state):
        # Some keys of the base are absent from the new map.
        for key in base:
            if key not in state:
                delta[key] = None
    return delta


def _apply(state: StateSnapshot, entries: list[tuple[StateKey, EventId | None]]) -> StateSnapshot:
    if len(entries) <= _OVERLAY_APPLY_LIMIT and all(e is not None for _, e in entries):
        for key, event_id in entries:
            assert event_id is not None
            state = state.with_entry(key, event_id)
        return state
    merged = state.to_dict()
    for key, event_id in entries:
        if event_id is None:
            merged.pop(key, None)
        else:
            merged[key] = event_id
    return StateSnapshot(merged)
