"""`RoomStore` in SQLite: the room graph's events, statuses, state and extremities on disk.

Owns: `SqliteRoomStore`, the SQLite implementation of `core.room.RoomStore` for one room, so
that `RoomGraph` runs on a database without the room in memory. In memory it keeps only caches:
the last `CACHE_PDUS` events and admissions, the state maps of `stategroups.CACHE_GROUPS`
groups, the forward extremities, and the auth-chain index of the room's state events (see
`authchains`). Must not: run any receipt check (RoomGraph does) or commit part of an event.

One event, one transaction: `commit` writes the event row (canonical JSON, status, rejection
reason), its prev and auth edges, the groups of the state before and after it, the forward
extremities and the current state together; the in-memory caches change only after the COMMIT
returned, and a rollback clears them. With the store's WAL settings the event is then durable
against kill -9 (see `database`). Called inside an open transaction (`Store.transaction`, as
`NodeRooms.ingest` does for a batch), the event is a savepoint of it: the caches follow at once
(the next event of the batch reads them), and a rollback of the outer transaction, or of the
savepoint, clears them; the events are durable when the outer transaction commits.

State maps are handed out as `core.state_snapshot.StateSnapshot`s and recognised again by
identity when RoomGraph passes them back to `commit`, so a new group costs a delta of the keys
that changed. Contract relied on (RoomGraph keeps it): `state_after` is `state_before`, or
`state_before` with the event's own key set to the event; any other map is compared in full.

Design: DESIGN.md section 9; issue 4, items 1, 2 and 4. Spec: digest 6.1, 6.5, 8.3.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

from s2s_node.core.auth import AuthRule, StateKey
from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.canonical import parse_json_object
from s2s_node.core.events import Pdu, parse_pdu
from s2s_node.core.ids import EventId, RoomId
from s2s_node.core.room import Admission, EventStatus, ReceiptCheck
from s2s_node.core.rules import RoomVersionRules
from s2s_node.core.state_snapshot import StateSnapshot
from s2s_node.store.authchains import build_index_for, load_room_index
from s2s_node.store.database import Database
from s2s_node.store.stategroups import StateGroups

StateIds = Mapping[StateKey, EventId]

# Events (parsed) and admissions kept in memory per room. RoomGraph reads the auth events of
# every new event (create, power levels, join rules, members), which stay hot.
CACHE_PDUS = 4096

# (event_nid, before_group, after_group); None = the empty state.
_EventRow = tuple[int, int | None, int | None]

_STATUS_CODE = {EventStatus.ACCEPTED: 0, EventStatus.SOFT_FAILED: 1, EventStatus.REJECTED: 2}
_STATUS_OF_CODE = {code: status for status, code in _STATUS_CODE.items()}


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Lru(Generic[_K, _V]):
    """A bounded cache of about the `size` most recently used entries.

    Two generations instead of an ordered dict, because lookups are the hot path (millions
    during a state resolution): a hit in the young generation is one dict probe; a hit in the
    old one moves the entry to the young one; when the young one is full it becomes the old
    one, and the previous old one is dropped.
    """

    __slots__ = ("_old", "_size", "_young")

    def __init__(self, size: int) -> None:
        self._young: dict[_K, _V] = {}
        self._old: dict[_K, _V] = {}
        self._size = max(1, size // 2)

    def get(self, key: _K) -> _V | None:
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: _K, value: _V) -> None:
        young = self._young
        if len(young) >= self._size and key not in young:
            self._old = young
            self._young = young = {}
        young[key] = value

    def clear(self) -> None:
        self._young = {}
        self._old = {}


class SqliteRoomStore:
    """The `RoomStore` of one room in an SQLite database.

    Make it with `Store.room`. The writer's instance caches the forward extremities; an
    instance on a reader connection (`writer=False`) reads them on every call, since another
    connection changes them.
    """

    def __init__(
        self,
        db: Database,
        groups: StateGroups,
        *,
        room_nid: int,
        room_id: RoomId,
        rules: RoomVersionRules,
        writer: bool = True,
    ) -> None:
        self._db = db
        self._groups = groups
        self.room_nid = room_nid
        self.room_id = room_id
        self.rules = rules
        self._writer = writer
        self._pdus: _Lru[EventId, Pdu] = _Lru(CACHE_PDUS)
        self._admissions: _Lru[EventId, Admission] = _Lru(CACHE_PDUS)
        self._rows: _Lru[EventId, _EventRow] = _Lru(CACHE_PDUS)
        self._extremities: frozenset[EventId] | None = None
        self._current_group: int | None = None
        self._current_known = False
        self._auth_index: AuthChainIndex | None = None
        # Event IDs the writer looked up and this room does not have (a new event is looked up
        # several times before it is stored: the duplicate check, the graph's own). Only the
        # writer stores events, so an answer stays true until its `commit` of that event.
        self._absent: set[EventId] = set()

    # -- RoomStore: reads

    def get_pdu(self, event_id: EventId) -> Pdu | None:
        pdu = self._pdus.get(event_id)
        if pdu is not None:
            return pdu
        if event_id in self._absent:
            return None
        row = self._db.fetch_one(
            "SELECT json FROM events WHERE event_id = ? AND room_nid = ?",
            (event_id, self.room_nid),
        )
        if row is None:
            self._remember_absent(event_id)
            return None
        pdu = self._parse(event_id, row[0])
        self._pdus.put(event_id, pdu)
        return pdu

    def _parse(self, event_id: EventId, data: bytes) -> Pdu:
        # Trusted: these bytes passed every check before they were stored.
        obj = parse_json_object(bytes(data))
        return parse_pdu(obj, self.rules, event_id=event_id, check_counts=False, check_values=False)

    def get_admission(self, event_id: EventId) -> Admission | None:
        admission = self._admissions.get(event_id)
        if admission is not None:
            return admission
        if event_id in self._absent:
            return None
        row = self._db.fetch_one(
            "SELECT status, failed_check, rule, detail FROM events"
            " WHERE event_id = ? AND room_nid = ?",
            (event_id, self.room_nid),
        )
        if row is None:
            self._remember_absent(event_id)
            return None
        admission = _admission(event_id, row)
        self._admissions.put(event_id, admission)
        return admission

    def _remember_absent(self, event_id: EventId) -> None:
        if self._writer:
            if len(self._absent) >= CACHE_PDUS:
                self._absent.clear()
            self._absent.add(event_id)

    def get_state_before(self, event_id: EventId) -> StateSnapshot | None:
        return self._state_of(event_id, "before_group")

    def get_state_after(self, event_id: EventId) -> StateSnapshot | None:
        return self._state_of(event_id, "after_group")

    def _state_of(self, event_id: EventId, column: str) -> StateSnapshot | None:
        row = self._row(event_id)
        if row is None:
            return None
        return self._groups.load(row[1] if column == "before_group" else row[2])

    def _row(self, event_id: EventId) -> _EventRow | None:
        """`(event_nid, before_group, after_group)` of a stored event of this room."""
        row = self._rows.get(event_id)
        if row is not None:
            return row
        found = self._db.fetch_one(
            "SELECT event_nid, before_group, after_group FROM events"
            " WHERE event_id = ? AND room_nid = ?",
            (event_id, self.room_nid),
        )
        if found is None:
            return None
        row = (int(found[0]), found[1], found[2])
        self._rows.put(event_id, row)
        return row

    def _nids(
        self,
        conn: sqlite3.Connection,
        event_ids: Collection[EventId],
        known: Mapping[EventId, int] | None = None,
    ) -> dict[EventId, int]:
        """The event_nid of each stored one of `event_ids` (`known`, then the cache, then a
        query)."""
        found: dict[EventId, int] = {}
        for event_id in event_ids:
            if known is not None and event_id in known:
                found[event_id] = known[event_id]
                continue
            row = self._rows.get(event_id)
            if row is not None:
                found[event_id] = row[0]
                continue
            hit = conn.execute(
                "SELECT event_nid FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
            if hit is not None:
                found[event_id] = int(hit[0])
        return found

    def get_forward_extremities(self) -> frozenset[EventId]:
        if self._extremities is not None:
            return self._extremities
        rows = self._db.fetch_all(
            "SELECT e.event_id FROM forward_extremities AS f"
            " JOIN events AS e ON e.event_nid = f.event_nid WHERE f.room_nid = ?",
            (self.room_nid,),
        )
        extremities = frozenset(EventId(r[0]) for r in rows)
        if self._writer:
            self._extremities = extremities
        return extremities

    def get_current_state(self) -> StateSnapshot:
        if self._current_known:
            return self._groups.load(self._current_group)
        row = self._db.fetch_one(
            "SELECT current_group FROM rooms WHERE room_nid = ?", (self.room_nid,)
        )
        group = None if row is None else row[0]
        if self._writer:
            self._current_group, self._current_known = group, True
        return self._groups.load(group)

    @property
    def auth_chains(self) -> AuthChainIndex:
        """The index of the room's state events (see `authchains`), loaded on first use;
        `RoomGraph` adds new events to it. A rollback drops it (it is rebuilt from disk)."""
        index = self._auth_index
        if index is None:
            with self._db.reading() as conn:
                index = load_room_index(conn, self.room_nid)
            if self._writer:
                self._auth_index = index
        return index

    def auth_chains_for(self, event_ids: Iterable[EventId]) -> AuthChainIndex:
        """An index of just `event_ids` and their auth chains (a recursive query; nothing of
        it is kept)."""
        with self._db.reading() as conn:
            return build_index_for(conn, event_ids)

    # -- more reads (not in the protocol)

    def __len__(self) -> int:
        row = self._db.fetch_one("SELECT count(*) FROM events WHERE room_nid = ?", (self.room_nid,))
        return 0 if row is None else int(row[0])

    def event_ids(self) -> list[EventId]:
        """Every stored event of the room, in insertion order (parents first)."""
        rows = self._db.fetch_all(
            "SELECT event_id FROM events WHERE room_nid = ? ORDER BY event_nid",
            (self.room_nid,),
        )
        return [EventId(r[0]) for r in rows]

    def prev_event_ids(self, event_id: EventId) -> list[EventId]:
        """The stored prev-event edges of an event."""
        rows = self._db.fetch_all(
            "SELECT p.event_id FROM events AS e JOIN prev_edges AS x ON x.event_nid = e.event_nid"
            " JOIN events AS p ON p.event_nid = x.prev_nid WHERE e.event_id = ?"
            " ORDER BY p.event_id",
            (event_id,),
        )
        return [EventId(r[0]) for r in rows]

    def auth_event_ids(self, event_id: EventId) -> list[EventId]:
        """The stored auth-event edges of an event."""
        rows = self._db.fetch_all(
            "SELECT p.event_id FROM events AS e JOIN auth_edges AS x ON x.event_nid = e.event_nid"
            " JOIN events AS p ON p.event_nid = x.auth_nid WHERE e.event_id = ?"
            " ORDER BY p.event_id",
            (event_id,),
        )
        return [EventId(r[0]) for r in rows]

    def walk_prev_events(
        self,
        starts: Sequence[EventId],
        *,
        skip: Collection[EventId],
        limit: int,
        min_depth: int = 0,
    ) -> list[tuple[EventId, bytes]]:
        """Breadth-first over the stored prev_events edges from `starts` (included), not
        entering `skip` nor events below `min_depth`, up to `limit` events of this room: their
        IDs and stored canonical JSON, in the order of the walk: `starts` in their order, then
        level by level, each event's prev_events in the order they were stored (one recursive
        query, whose queue is first in, first out; what get_missing_events and backfill answer,
        digest 8.4). The CROSS JOINs keep SQLite's loops in that order."""
        if limit <= 0 or not starts:
            return []
        rows = self._db.fetch_all(
            "WITH RECURSIVE skip(nid) AS ("
            "  SELECT e.event_nid FROM json_each(?2) AS j JOIN events AS e ON e.event_id = j.value"
            "), walk(nid) AS ("
            "  SELECT e.event_nid FROM json_each(?1) AS j"
            "  CROSS JOIN events AS e ON e.event_id = j.value"
            "  WHERE e.room_nid = ?3 AND e.depth >= ?4 AND e.event_nid NOT IN skip"
            "  UNION"
            "  SELECT e.event_nid FROM walk CROSS JOIN prev_edges AS p ON p.event_nid = walk.nid"
            "  CROSS JOIN events AS e ON e.event_nid = p.prev_nid"
            "  WHERE e.room_nid = ?3 AND e.depth >= ?4 AND e.event_nid NOT IN skip"
            "  LIMIT ?5"
            ") SELECT e.event_id, e.json FROM walk CROSS JOIN events AS e"
            " ON e.event_nid = walk.nid",
            (
                json.dumps(list(dict.fromkeys(starts))),
                json.dumps(sorted(set(skip))),
                self.room_nid,
                min_depth,
                limit,
            ),
        )
        return [(EventId(event_id), bytes(data)) for event_id, data in rows]

    # -- RoomStore: the write

    def commit(
        self,
        *,
        pdu: Pdu,
        admission: Admission,
        state_before: StateIds,
        state_after: StateIds,
        forward_extremities: frozenset[EventId] | None,
        current_state: StateIds | None,
    ) -> None:
        event_id = pdu.event_id
        if pdu.room_id != self.room_id:
            raise ValueError(f"{event_id} is in {pdu.room_id}, not {self.room_id}")
        if admission.event_id != event_id:
            raise ValueError(f"the admission is for {admission.event_id}, not {event_id}")
        db, groups = self._db, self._groups
        with db.transaction() as conn:
            # First: RoomGraph changed the auth-chain index before calling us, and a rollback
            # (of this transaction or of an outer one) must not leave that behind.
            db.on_rollback(self.forget_caches)
            nid_of = self._nids(conn, {*pdu.prev_events, *pdu.auth_event_ids})
            unknown = [e for e in (*pdu.prev_events, *pdu.auth_event_ids) if e not in nid_of]
            if unknown:
                raise ValueError(f"{event_id} cites events that are not stored: {unknown}")

            # The state before is usually a map this store handed out (then its group is
            # known); otherwise (a merge) it is stored against a prev_event's group. The state
            # after differs only for an accepted state event, whose own row its group names.
            before_group = groups.cached_group(state_before)
            if before_group is None:
                base = self._after_group(conn, pdu.prev_events)
                before_group = groups.store(conn, self.room_nid, state_before, base)
            same_state = state_after is state_before
            try:
                cur = conn.execute(
                    "INSERT INTO events (event_id, room_nid, type, state_key, depth, json, status,"
                    " failed_check, rule, detail, before_group, after_group)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        event_id,
                        self.room_nid,
                        pdu.type,
                        pdu.state_key,
                        pdu.depth,
                        pdu.canonical_bytes(),
                        _STATUS_CODE[admission.status],
                        None if admission.failed_check is None else admission.failed_check.value,
                        None if admission.rule is None else admission.rule.value,
                        admission.detail,
                        before_group,
                        before_group if same_state else None,
                    ),
                )
            except sqlite3.IntegrityError:  # the UNIQUE event_id
                raise ValueError(f"{event_id} is already stored") from None
            event_nid = cur.lastrowid
            assert event_nid is not None
            nid_of[event_id] = event_nid
            conn.executemany(
                "INSERT OR IGNORE INTO prev_edges (event_nid, prev_nid) VALUES (?, ?)",
                [(event_nid, nid_of[p]) for p in pdu.prev_events],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO auth_edges (event_nid, auth_nid) VALUES (?, ?)",
                [(event_nid, nid_of[a]) for a in pdu.auth_event_ids],
            )
            if same_state:
                after_group = before_group
            else:
                after_group = groups.store(
                    conn,
                    self.room_nid,
                    state_after,
                    before_group,
                    delta=_own_delta(pdu, state_before, state_after),
                    nid_of=nid_of,
                )
                conn.execute(
                    "UPDATE events SET after_group = ? WHERE event_nid = ?",
                    (after_group, event_nid),
                )

            if forward_extremities is not None:
                old = self.get_forward_extremities_in(conn)
                gone = old - forward_extremities
                new = forward_extremities - old
                new_nids = self._nids(conn, new, nid_of)
                if len(new_nids) != len(new):
                    raise ValueError("a forward extremity is not stored")
                old_nids = self._nids(conn, gone, nid_of)
                conn.executemany(
                    "DELETE FROM forward_extremities WHERE room_nid = ? AND event_nid = ?",
                    [(self.room_nid, nid) for nid in old_nids.values()],
                )
                conn.executemany(
                    "INSERT INTO forward_extremities (room_nid, event_nid) VALUES (?, ?)",
                    [(self.room_nid, nid) for nid in new_nids.values()],
                )

            current_group: int | None = None
            if current_state is not None:
                if current_state is state_after:
                    current_group = after_group
                else:
                    current_group = groups.store(conn, self.room_nid, current_state, after_group)
                conn.execute(
                    "UPDATE rooms SET current_group = ? WHERE room_nid = ?",
                    (current_group, self.room_nid),
                )

        # Committed, or (inside an outer transaction, e.g. a batch of `NodeRooms.ingest`) the
        # savepoint released: later events of the batch read these caches, and a rollback of
        # the outer transaction drops them all (`forget_caches`, registered above).
        self._absent.discard(event_id)
        self._pdus.put(event_id, pdu)
        self._admissions.put(event_id, admission)
        self._rows.put(event_id, (event_nid, before_group, after_group))
        for group, state in (
            (before_group, state_before),
            (after_group, state_after),
            (current_group, current_state),
        ):
            if group is not None and state is not None:
                groups.remember(group, StateSnapshot.of(state))
        if forward_extremities is not None and self._writer:
            self._extremities = forward_extremities
        if current_state is not None and self._writer:
            self._current_group, self._current_known = current_group, True

    def get_forward_extremities_in(self, conn: sqlite3.Connection) -> frozenset[EventId]:
        """The forward extremities as the open transaction of `conn` sees them."""
        if self._extremities is not None:
            return self._extremities
        rows = conn.execute(
            "SELECT e.event_id FROM forward_extremities AS f"
            " JOIN events AS e ON e.event_nid = f.event_nid WHERE f.room_nid = ?",
            (self.room_nid,),
        ).fetchall()
        return frozenset(EventId(r[0]) for r in rows)

    def _after_group(
        self, conn: sqlite3.Connection, prev_events: Collection[EventId]
    ) -> int | None:
        for prev in sorted(prev_events):
            row = self._row(prev)
            if row is not None and row[2] is not None:
                return int(row[2])
        return None

    def forget_caches(self) -> None:
        """Drop every cache (after a rollback); the next reads go to the database."""
        self._pdus.clear()
        self._admissions.clear()
        self._rows.clear()
        self._extremities = None
        self._current_group, self._current_known = None, False
        self._auth_index = None
        self._absent.clear()
        self._groups.forget_all()


def _own_delta(
    pdu: Pdu, before: StateIds, after: StateIds
) -> dict[StateKey, EventId | None] | None:
    """The delta from `before` to `after` when `after` only sets the event's own key (the
    RoomGraph contract); None means "compare in full"."""
    key = pdu.state_tuple
    if key is None or after.get(key) != pdu.event_id:
        return None
    if len(after) != len(before) + (0 if key in before else 1):
        return None
    return {key: pdu.event_id}


def _admission(event_id: EventId, row: tuple[object, ...]) -> Admission:
    status, failed_check, rule, detail = row
    auth_rule: AuthRule | None = None
    if isinstance(rule, str):
        try:
            auth_rule = AuthRule(rule)
        except ValueError:
            auth_rule = None  # a rule this version no longer names; the detail keeps the text
    return Admission(
        event_id=event_id,
        status=_STATUS_OF_CODE[int(str(status))],
        failed_check=None if failed_check is None else ReceiptCheck(str(failed_check)),
        rule=auth_rule,
        detail=str(detail),
    )
