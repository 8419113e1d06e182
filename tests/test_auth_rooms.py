"""Every event of signed benchmark rooms passes the auth rules against the state of its branch.

Rooms: tests/vectors/rooms (perf-dag/1 files generated with Synapse 1.163.2, which accepted
every event against the state of its own branch; see that folder's README). Each event there has
exactly one prev_event, so the state before an event is the state after its parent.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import pytest

from s2s_node.core.auth import AuthError, StateKey, check_auth, check_auth_events
from s2s_node.core.events import Pdu, parse_pdu
from s2s_node.core.ids import EventId
from s2s_node.core.rules import rules_for

ROOMS = Path(__file__).resolve().parent / "vectors" / "rooms"
ROOM_FILES = ["v11-s100-c10-k2.json.gz", "v12-s100-c10-k2.json.gz"]


@functools.cache
def load_events(name: str) -> tuple[Pdu, ...]:
    with gzip.open(ROOMS / name, "rb") as f:
        dag = json.loads(f.read())
    rules = rules_for(dag["room_version"])
    events = tuple(parse_pdu(obj, rules) for obj in dag["events"])
    assert [pdu.event_id for pdu in events] == dag["event_ids"]
    return events


def states_before(events: tuple[Pdu, ...]) -> list[dict[StateKey, Pdu]]:
    """The state before each event, following its single prev_event."""
    after: dict[EventId, dict[StateKey, Pdu]] = {}
    result = []
    for pdu in events:
        assert len(pdu.prev_events) <= 1
        before = dict(after[pdu.prev_events[0]]) if pdu.prev_events else {}
        result.append(before)
        state = dict(before)
        if pdu.state_tuple is not None:
            state[pdu.state_tuple] = pdu
        after[pdu.event_id] = state
    return result


@pytest.mark.parametrize("name", ROOM_FILES)
def test_room_every_event_allowed(name: str) -> None:
    events = load_events(name)
    by_id = {pdu.event_id: pdu for pdu in events}
    for pdu, before in zip(events, states_before(events), strict=True):
        auth_map = check_auth_events(pdu, by_id, lambda _: False)
        check_auth(pdu, auth_map)
        check_auth(pdu, before)


@pytest.mark.parametrize("name", ROOM_FILES)
def test_room_events_rejected_against_a_bare_state(name: str) -> None:
    # With only the create event as state, nothing but the creator's first join is allowed.
    events = load_events(name)
    create = events[0]
    bare = {("m.room.create", ""): create}
    allowed = []
    for pdu in events[1:]:
        try:
            check_auth(pdu, bare)
        except AuthError:
            continue
        allowed.append(pdu)
    assert allowed == [events[1]]
    assert events[1].type == "m.room.member" and events[1].state_key == create.sender
