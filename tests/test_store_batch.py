"""Events committed as a batch: one SQL transaction around many `RoomGraph.add` calls.

`NodeRooms.ingest` wraps each chunk of received events in `Store.transaction()`, so each event's
`SqliteRoomStore.commit` is a savepoint of it. Pinned here: the room ends up exactly as when
every event commits alone, a reader sees nothing of the batch before its COMMIT, a rollback of
the batch (or of one savepoint) leaves no trace in the database or the writer's caches, an event
the writer looked up as absent is found once stored (the negative cache), and at the node
level an error part-way through a chunk acknowledges nothing of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from room_fixtures import load_bench_room

from s2s_node.core.events import parse_pdu
from s2s_node.core.ids import EventId, RoomId
from s2s_node.core.ingest import Outcome, ingest_batch, ingest_pdu
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.room import MemoryRoomStore, RoomGraph
from s2s_node.core.rules import rules_for
from s2s_node.core.signing import derived_keys
from s2s_node.rooms import NodeRooms
from s2s_node.store import SqliteRoomStore, Store, StoreError, open_async_store
from s2s_node.store import rooms as store_rooms
from s2s_node.store.federation import PeerRecord

ROOM = "v12-s100-c10-k2.json.gz"


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "node") if request.param == "file" else Store.open_memory()
    yield s
    s.close()


def _open_room(store: Store, name: str = ROOM) -> tuple[RoomGraph, SqliteRoomStore, list[object]]:
    bench = load_bench_room(name)
    rules = rules_for(bench.room_version)
    create = parse_pdu(bench.events[0], rules)
    room = store.create_room(create.room_id, rules)
    return RoomGraph(rules, create.room_id, room), room, list(bench.events)


def _memory_graph(name: str = ROOM) -> RoomGraph:
    bench = load_bench_room(name)
    rules = rules_for(bench.room_version)
    create = parse_pdu(bench.events[0], rules)
    graph = RoomGraph(rules, create.room_id, MemoryRoomStore())
    for obj in bench.events:
        ingest_pdu(obj, graph, derived_keys)
    return graph


def _snapshot(graph: RoomGraph, ids: list[EventId]) -> tuple[object, ...]:
    return (
        dict(graph.current_state()),
        graph.forward_extremities,
        [graph.status(e) for e in ids],
        [dict(graph.state_after(e)) for e in ids if graph.status(e) is not None],
    )


def _ids(graph: RoomGraph, events: list[object]) -> list[EventId]:
    return [parse_pdu(obj, graph.rules).event_id for obj in events]


def test_a_batch_in_one_transaction_equals_event_by_event(store: Store) -> None:
    graph, room, events = _open_room(store)
    with store.transaction():
        verdicts = ingest_batch(events, graph, derived_keys)
    assert all(v.outcome in {Outcome.ACCEPTED, Outcome.SOFT_FAILED} for v in verdicts)
    ids = _ids(graph, events)
    memory = _memory_graph()
    assert _snapshot(graph, ids) == _snapshot(memory, ids)
    # Fresh objects read back from disk agree with the writer's caches.
    fresh = RoomGraph(graph.rules, graph.room_id, Store(store.database, None).room(graph.room_id))
    assert _snapshot(fresh, ids) == _snapshot(memory, ids)
    assert len(room) == len(events)


def test_a_reader_sees_nothing_of_a_batch_before_its_commit(tmp_path: Path) -> None:
    with Store.open(tmp_path / "node") as store:
        graph, _, events = _open_room(store)
        reader = store.open_reader()
        try:
            reader_room = reader.room(graph.room_id)
            assert reader_room is not None
            with store.transaction():
                ingest_batch(events, graph, derived_keys)
                assert len(reader_room) == 0
                assert reader_room.get_forward_extremities() == frozenset()
            assert len(reader_room) == len(events)
            assert reader_room.get_forward_extremities() == graph.forward_extremities
        finally:
            reader.close()


def test_a_rolled_back_batch_leaves_no_trace_in_the_database_or_the_caches(store: Store) -> None:
    graph, room, events = _open_room(store)
    half = len(events) // 2
    ingest_batch(events[:half], graph, derived_keys)
    ids = _ids(graph, events)
    before = _snapshot(graph, ids)
    with pytest.raises(RuntimeError), store.transaction():
        verdicts = ingest_batch(events[half:], graph, derived_keys)
        assert all(v.outcome is not Outcome.DEFERRED for v in verdicts)
        assert graph.forward_extremities != before[1]  # the caches followed the batch
        raise RuntimeError("the batch fails after its last event")
    assert _snapshot(graph, ids) == before
    assert len(room) == half
    # The same events go in again, and the room ends as if nothing had failed.
    ingest_batch(events[half:], graph, derived_keys)
    assert _snapshot(graph, ids) == _snapshot(_memory_graph(), ids)


def test_a_rolled_back_savepoint_drops_its_commit_hooks_and_runs_its_rollback_hooks(
    store: Store,
) -> None:
    db = store.database
    calls: list[str] = []
    with db.transaction():
        db.on_commit(lambda: calls.append("outer commit"))
        with pytest.raises(LookupError), db.transaction():
            store.peers.put(PeerRecord(server_name="gone"))
            db.on_commit(lambda: calls.append("inner commit"))
            db.on_rollback(lambda: calls.append("inner rollback"))
            raise LookupError("the savepoint fails")
        assert calls == ["inner rollback"]
        store.peers.put(PeerRecord(server_name="kept"))
    assert calls == ["inner rollback", "outer commit"]
    assert store.peers.get("gone") is None
    assert store.peers.get("kept") is not None


def test_an_event_looked_up_as_absent_is_found_once_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny caches, so that the stored events' admissions and PDUs are evicted again.
    monkeypatch.setattr(store_rooms, "CACHE_PDUS", 4)
    graph, room, events = _open_room(store)
    ids = _ids(graph, events)
    assert [room.get_admission(e) for e in ids] == [None] * len(ids)
    assert room.get_pdu(ids[0]) is None
    with store.transaction():
        ingest_batch(events, graph, derived_keys)
    assert all(room.get_admission(e) is not None for e in ids)
    assert all(room.get_pdu(e) is not None for e in ids)


async def test_an_error_part_way_through_a_chunk_acknowledges_nothing_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_bench_room(ROOM)
    rules = rules_for(bench.room_version)
    room_id = parse_pdu(bench.events[0], rules).room_id
    events = list(bench.events)
    real_commit = SqliteRoomStore.commit
    fail_at = 10

    async with open_async_store(None) as astore:
        key = signing_key_from_seed(b"\x07" * 32)
        rooms = NodeRooms(astore, key, now_ms=lambda: 0)
        seen = rooms.subscribe(room_id)
        count = 0

        def failing_commit(self: SqliteRoomStore, **kwargs: object) -> None:
            nonlocal count
            count += 1
            if count == fail_at:
                raise OSError("disk gone")
            real_commit(self, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(SqliteRoomStore, "commit", failing_commit)
        with pytest.raises(StoreError):
            await rooms.ingest(room_id, events, rules=rules)
        monkeypatch.setattr(SqliteRoomStore, "commit", real_commit)
        assert await rooms.read(room_id, lambda g: len(g.store)) == 0  # type: ignore[arg-type]
        verdicts = await rooms.ingest(room_id, events, rules=rules)
        accepted = [v.event_id for v in verdicts if v.outcome is Outcome.ACCEPTED]
        assert len(accepted) > fail_at
        seen.close()
        published = [pdu.event_id async for pdu in seen]
        assert published == accepted  # nothing of the failed attempt
        stored = await rooms.read(room_id, lambda g: len(g.store))  # type: ignore[arg-type]
        assert stored == len(events)
        assert await rooms.room_ids() == [RoomId(room_id)]


def test_a_room_created_in_a_rolled_back_transaction_is_unknown_again(store: Store) -> None:
    room_id = RoomId("!gone:x")
    with pytest.raises(RuntimeError), store.transaction():
        assert store.create_room(room_id, rules_for("11")) is not None
        raise RuntimeError("rolled back")
    assert store.room(room_id) is None
    assert store.rooms() == []


def test_a_rolled_back_event_of_a_standing_fork_leaves_the_current_state_right(
    store: Store,
) -> None:
    # While forks stand the graph resolves the current state incrementally from its previous
    # resolution; a rollback drops the store's index and the rolled-back event: the next
    # resolution must not build on either.
    name = "v12-s100-c100-k2.json.gz"
    graph, _room, events = _open_room(store, name)
    half = len(events) - 20  # well into the second fork
    for obj in events[:half]:
        ingest_pdu(obj, graph, derived_keys)
    with pytest.raises(RuntimeError), store.transaction():
        for obj in events[half : half + 5]:
            ingest_pdu(obj, graph, derived_keys)
        raise RuntimeError("the disk is gone")
    for obj in events[half:]:
        assert ingest_pdu(obj, graph, derived_keys).outcome is not Outcome.DEFERRED
    reference = _memory_graph(name)
    assert dict(graph.current_state()) == dict(reference.current_state())
    assert graph.forward_extremities == reference.forward_extremities
