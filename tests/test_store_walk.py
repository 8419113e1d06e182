"""`SqliteRoomStore.walk_prev_events`, the one-query walk that get_missing_events and backfill
answer with, against a plain breadth-first walk over the parsed events (digest 8.4); and
`net.federation.build_events_response`, which puts the stored JSON into the answer as it is."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import pytest
from room_fixtures import RoomFixture, random_message_dag

from s2s_node.core.canonical import parse_json_object
from s2s_node.core.ids import EventId
from s2s_node.core.ingest import Outcome, ingest_batch
from s2s_node.core.room import RoomGraph
from s2s_node.core.signing import derived_keys
from s2s_node.core.wire import JSON_CONTENT_TYPE, decode_body, encode_body
from s2s_node.net.federation import build_events_response
from s2s_node.net.http import Request
from s2s_node.store import SqliteRoomStore, Store


def build_dag(n: int, seed: int) -> RoomFixture:
    return random_message_dag(n, seed, name=f"walk{seed}")


@pytest.fixture(params=["file", "memory"])
def room(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteRoomStore]:
    store = Store.open(tmp_path / "node") if request.param == "file" else Store.open_memory()
    fixture = build_dag(150, seed=3)
    room = store.create_room(fixture.create.room_id, fixture.rules)
    with store.transaction():
        verdicts = ingest_batch(
            [e.json for e in fixture.events],
            RoomGraph(fixture.rules, fixture.create.room_id, room),
            derived_keys,
        )
    assert all(v.outcome is Outcome.ACCEPTED for v in verdicts)
    yield room
    store.close()


def reference_walk(
    room: SqliteRoomStore,
    starts: Sequence[EventId],
    skip: Collection[EventId],
    limit: int,
    min_depth: int,
) -> list[EventId]:
    """Breadth-first, each event's prev_events in the order they were stored."""
    rank = {e: i for i, e in enumerate(room.event_ids())}
    seen = set(skip)
    queue = deque(starts)
    found: list[EventId] = []
    while queue and len(found) < limit:
        event_id = queue.popleft()
        if event_id in seen:
            continue
        seen.add(event_id)
        pdu = room.get_pdu(event_id)
        if pdu is None or pdu.depth < min_depth:
            continue
        found.append(event_id)
        queue.extend(sorted(pdu.prev_events, key=rank.__getitem__))
    return found


def test_the_walk_equals_a_breadth_first_walk(room: SqliteRoomStore) -> None:
    ids = room.event_ids()
    tips = sorted(room.get_forward_extremities())
    pdus = [p for p in map(room.get_pdu, ids) if p is not None]
    assert sum(len(p.prev_events) > 1 for p in pdus) > 50  # merges: order of prev_events
    rng = random.Random(7)
    depths = sorted({p.depth for p in pdus})
    cases: list[tuple[list[EventId], set[EventId], int, int]] = [
        (tips, set(), len(ids) + 5, 0),  # everything
        (tips, set(), 37, 0),
        ([ids[-1], ids[-1], ids[len(ids) // 2]], set(), 50, 0),  # a start twice
        (tips, {ids[len(ids) // 2]}, len(ids), 0),
        (tips, set(rng.sample(ids, 20)), 200, depths[len(depths) // 3]),
        ([EventId("$unknown"), *tips], {tips[0]}, 10, 0),
    ]
    for _ in range(10):
        cases.append(
            (
                rng.sample(ids, 3),
                set(rng.sample(ids, 5)),
                rng.randint(1, 120),
                rng.choice([0, *depths]),
            )
        )
    for starts, skip, limit, min_depth in cases:
        found = room.walk_prev_events(starts, skip=skip, limit=limit, min_depth=min_depth)
        assert [e for e, _ in found] == reference_walk(room, starts, skip, limit, min_depth)
        for event_id, data in found:
            pdu = room.get_pdu(event_id)
            assert pdu is not None
            assert data == pdu.canonical_bytes()
            assert parse_json_object(data) == pdu.json


def test_nothing_to_walk(room: SqliteRoomStore) -> None:
    tips = sorted(room.get_forward_extremities())
    assert room.walk_prev_events([], skip=(), limit=10) == []
    assert room.walk_prev_events(tips, skip=(), limit=0) == []
    assert room.walk_prev_events(tips, skip=tips, limit=10) == []
    assert room.walk_prev_events([EventId("$nope")], skip=(), limit=10) == []


@pytest.mark.parametrize("accept", [None, "application/json", "application/cbor"])
def test_the_answer_splices_the_stored_json_as_its_canonical_encoding(
    room: SqliteRoomStore, accept: str | None
) -> None:
    tips = sorted(room.get_forward_extremities())
    found = [data for _, data in room.walk_prev_events(tips, skip=(), limit=40)]
    headers = () if accept is None else (("accept", accept),)
    request = Request(method="GET", target="/", path="/", query=(), headers=headers, body=b"")
    expected_type = accept or JSON_CONTENT_TYPE
    for fields, key in (({}, "events"), ({"origin": "x", "origin_server_ts": 5}, "pdus")):
        response = build_events_response(request, fields, key, found)
        assert response.headers == (("content-type", expected_type),)
        value = {**fields, key: [parse_json_object(d) for d in found]}
        assert response.body == encode_body(value, expected_type)
        assert decode_body(expected_type, response.body) == value
    # A key that does not sort last is encoded the ordinary way (still canonical).
    response = build_events_response(request, {"zz": 1}, "events", found[:2])
    assert response.body == encode_body(
        {"zz": 1, "events": [parse_json_object(d) for d in found[:2]]}, expected_type
    )
