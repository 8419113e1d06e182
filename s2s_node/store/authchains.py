"""Auth chains from the stored auth DAG, for state resolution.

Owns: building `core.authchain.AuthChainIndex` objects from the `auth_edges` table. Must not:
store masks (they are derived data) or decide anything about the events.

Choice. What is persisted is the auth DAG itself, `auth_edges (event_nid, auth_nid)`, written
in the same transaction as the event. Event nids are assigned in insertion order and an event
is stored only after its auth events, so nid order is a topological order of the auth DAG.
Two ways to get an index from it:

- `load_room_index`: the index of a room's *state events*, rebuilt on first use by adding them
  in nid order (one query for the events, one for their edges) with `RoomGraph`'s rule (a state
  event citing an event outside the index was rejected and stays out), then kept up to date by
  `RoomGraph`, which adds each new state event before it commits it. Message events are left
  out: they are never in a state map, and they are most of a room. This is what
  `RoomStore.auth_chains` returns. Memory: one bitmask per indexed event, at most
  k^2/8 bytes for k indexed events (about 12 MB for 10,000 state events); time: one `add` per
  indexed event, once per process.
- `build_index_for`: an index of just some events and their auth chains, found with a
  recursive CTE over `auth_edges`. A resolution needs only the state sets' events and their
  chains; this never holds more than that, at the price of a query per resolution.

Unlike a closure table (event, ancestor), whose size grows with the product of events and
chain lengths, the edges table grows with the number of auth events cited (<= 10 per event).

Design: DESIGN.md section 9 ("an auth-chain index fit for fast state resolution"); spec:
digest 6.2 (auth chain).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.ids import EventId


def load_room_index(conn: sqlite3.Connection, room_nid: int) -> AuthChainIndex:
    """The index of a room's state events, as `RoomGraph` builds it (see the module docstring):
    in insertion order, each state event whose auth events are all in the index already."""
    events = conn.execute(
        "SELECT event_nid, event_id FROM events WHERE room_nid = ? AND state_key IS NOT NULL"
        " ORDER BY event_nid",
        (room_nid,),
    ).fetchall()
    edges = conn.execute(
        "SELECT a.event_nid, ae.event_id FROM auth_edges AS a"
        " JOIN events AS e ON e.event_nid = a.event_nid"
        " JOIN events AS ae ON ae.event_nid = a.auth_nid"
        " WHERE e.room_nid = ? AND e.state_key IS NOT NULL",
        (room_nid,),
    ).fetchall()
    auth_of: dict[int, list[EventId]] = {}
    for event_nid, auth_id in edges:
        auth_of.setdefault(event_nid, []).append(EventId(auth_id))
    index = AuthChainIndex()
    for event_nid, event_id in events:
        auth = auth_of.get(event_nid, [])
        if all(a in index for a in auth):
            index.add(EventId(event_id), auth)
    return index


def build_index_for(conn: sqlite3.Connection, event_ids: Iterable[EventId]) -> AuthChainIndex:
    """An index of `event_ids` (the stored ones) and everything in their auth chains.

    Run it inside one read snapshot (`Database.reading`) so both queries see the same rows.
    """
    ids = json.dumps(sorted(set(event_ids)))
    closure = (
        "WITH RECURSIVE closure(nid) AS ("
        " SELECT e.event_nid FROM events AS e JOIN json_each(?) AS j ON e.event_id = j.value"
        " UNION SELECT a.auth_nid FROM auth_edges AS a JOIN closure ON a.event_nid = closure.nid)"
    )
    events = conn.execute(
        f"{closure} SELECT e.event_nid, e.event_id FROM closure"
        " JOIN events AS e ON e.event_nid = closure.nid ORDER BY e.event_nid",
        (ids,),
    ).fetchall()
    edges = conn.execute(
        f"{closure} SELECT a.event_nid, ae.event_id FROM closure"
        " JOIN auth_edges AS a ON a.event_nid = closure.nid"
        " JOIN events AS ae ON ae.event_nid = a.auth_nid",
        (ids,),
    ).fetchall()
    return _build(events, edges)


def _build(events: list[tuple[int, str]], edges: list[tuple[int, str]]) -> AuthChainIndex:
    auth_of: dict[int, list[EventId]] = {}
    for event_nid, auth_id in edges:
        auth_of.setdefault(event_nid, []).append(EventId(auth_id))
    index = AuthChainIndex()
    for event_nid, event_id in events:
        index.add(EventId(event_id), auth_of.get(event_nid, ()))
    return index
