"""The store's contract, run on a temporary file and on `:memory:` (real SQLite, no mocks)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from room_fixtures import ALICE, BOB, CAROL, RoomFixture, load_bench_room

from s2s_node.core.events import Pdu, parse_pdu
from s2s_node.core.ids import EventId, RoomId
from s2s_node.core.ingest import Outcome, ingest_pdu
from s2s_node.core.room import Admission, EventStatus, MemoryRoomStore, ReceiptCheck, RoomGraph
from s2s_node.core.rules import rules_for
from s2s_node.core.signing import derived_keys
from s2s_node.store import DB_FILE, SqliteRoomStore, Store, StoreClosedError
from s2s_node.store.accounts import TokenOwner
from s2s_node.store.federation import PeerRecord
from s2s_node.store.negotiations import NegotiationRecord
from s2s_node.store.schema import APPLICATION_ID, SCHEMA_VERSION, migrate, read_header
from s2s_node.store.stategroups import MAX_CHAIN_LENGTH

SMALL_ROOM = "v12-s100-c10-k2.json.gz"


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "node") if request.param == "file" else Store.open_memory()
    yield s
    s.close()


def ingest_bench(store: Store, name: str) -> tuple[RoomGraph, SqliteRoomStore]:
    bench = load_bench_room(name)
    rules = rules_for(bench.room_version)
    create = parse_pdu(bench.events[0], rules)
    room = store.create_room(create.room_id, rules)
    graph = RoomGraph(rules, create.room_id, room)
    for obj in bench.events:
        assert ingest_pdu(obj, graph, derived_keys).outcome in {
            Outcome.ACCEPTED,
            Outcome.SOFT_FAILED,
        }
    return graph, room


# -- schema ------------------------------------------------------------------------------------


def test_a_new_file_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.path == str(tmp_path / DB_FILE)
    conn = sqlite3.connect(tmp_path / DB_FILE)
    assert read_header(conn) == (APPLICATION_ID, SCHEMA_VERSION)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_migrations_run_forward_one_step_at_a_time_keeping_data(tmp_path: Path) -> None:
    # A database left at schema 1 by an older node, holding a room.
    conn = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None)
    assert migrate(conn, "old", target=1) == 0
    conn.execute("INSERT INTO rooms (room_id, room_version) VALUES ('!r:x', '11')")
    assert read_header(conn) == (APPLICATION_ID, 1)
    assert "peers" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    with Store.open(tmp_path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.rooms() == [(RoomId("!r:x"), "11")]
        s.peers.put(PeerRecord(server_name="peer"))
        assert s.peers.get("peer") is not None


def test_memory_store_has_the_same_schema() -> None:
    with Store.open_memory() as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.path == ":memory:"


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        graph, room = ingest_bench(s, SMALL_ROOM)
        state = dict(graph.current_state())
        extremities = graph.forward_extremities
        s.peers.put(PeerRecord(server_name="p", address="127.0.0.1:1"))
        s.outbound.enqueue_pdus(["p"], [room.event_ids()[-1]], now_ms=5)
        s.accounts.create_user(ALICE, now_ms=1)
    with Store.open(tmp_path) as s:
        reopened = s.room(graph.room_id)
        assert reopened is not None
        again = RoomGraph(graph.rules, graph.room_id, reopened)
        assert dict(again.current_state()) == state
        assert again.forward_extremities == extremities
        assert s.peers.get("p") == PeerRecord(server_name="p", address="127.0.0.1:1", info={})
        assert s.outbound.pending_count("p") == 1
        assert s.accounts.users() == [ALICE]


def test_a_closed_store_raises_a_typed_error(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreClosedError) as info:
        s.peers.all()
    assert info.value.path == str(tmp_path / DB_FILE)


# -- rooms: RoomGraph over SQLite --------------------------------------------------------------


@pytest.mark.parametrize("name", [SMALL_ROOM, "v11-s100-c100-k2.json.gz"])
def test_a_bench_room_through_roomgraph_matches_the_memory_store(store: Store, name: str) -> None:
    bench = load_bench_room(name)
    graph, room = ingest_bench(store, name)
    assert dict(graph.current_state()) == bench.expected
    assert graph.forward_extremities == bench.tips

    rules = rules_for(bench.room_version)
    memory = RoomGraph(rules, graph.room_id, MemoryRoomStore())
    for obj in bench.events:
        ingest_pdu(obj, memory, derived_keys)
    assert room.event_ids() == list(bench.event_ids)
    assert len(room) == len(bench.events)
    room.forget_caches()  # marks, states and events below come from SQLite
    statuses = {room.get_admission(e).status for e in bench.event_ids}  # type: ignore[union-attr]
    if name == "v11-s100-c100-k2.json.gz":
        assert EventStatus.SOFT_FAILED in statuses  # this room has soft-failed events
    for event_id, obj in zip(bench.event_ids, bench.events, strict=True):
        assert room.get_admission(event_id) == memory.admission(event_id)
        assert room.get_state_before(event_id) == memory.state_before(event_id)
        assert room.get_state_after(event_id) == memory.state_after(event_id)
        pdu = room.get_pdu(event_id)
        assert pdu is not None and pdu.json == obj
        assert room.prev_event_ids(event_id) == sorted(pdu.prev_events)
        assert room.auth_event_ids(event_id) == sorted(pdu.auth_event_ids)


def test_fresh_store_objects_read_everything_back_from_disk(store: Store) -> None:
    graph, room = ingest_bench(store, SMALL_ROOM)
    room.forget_caches()  # every read below goes to SQLite
    fresh = SqliteRoomStore(
        store.database,
        type(store._groups)(store.database),
        room_nid=room.room_nid,
        room_id=room.room_id,
        rules=room.rules,
    )
    bench = load_bench_room(SMALL_ROOM)
    assert dict(fresh.get_current_state()) == bench.expected
    assert fresh.get_forward_extremities() == bench.tips
    tip = sorted(bench.tips)[0]
    assert fresh.get_state_after(tip) == graph.state_after(tip)


def test_state_is_stored_as_deltas_not_copies(store: Store) -> None:
    _graph, room = ingest_bench(store, "v11-s100-c100-k2.json.gz")
    conn = store.database.conn
    (rows,) = conn.execute("SELECT count(*) FROM state_group_entries").fetchone()
    full_copies = sum(len(room.get_state_after(e) or {}) for e in room.event_ids())
    assert rows * 5 < full_copies, (rows, full_copies)
    (longest,) = conn.execute("SELECT max(chain_length) FROM state_groups").fetchone()
    assert 1 < longest <= MAX_CHAIN_LENGTH
    # Message events share the group of the state before them.
    (shared,) = conn.execute(
        "SELECT count(*) FROM events WHERE state_key IS NULL AND before_group = after_group"
    ).fetchone()
    (messages,) = conn.execute("SELECT count(*) FROM events WHERE state_key IS NULL").fetchone()
    assert shared == messages > 0


def test_auth_chains_match_the_memory_index(store: Store) -> None:
    bench = load_bench_room("v11-s100-c100-k2.json.gz")
    graph, room = ingest_bench(store, bench.name)
    memory = MemoryRoomStore()
    memory_graph = RoomGraph(graph.rules, graph.room_id, memory)
    for obj in bench.events:
        ingest_pdu(obj, memory_graph, derived_keys)
    state_events = [e for e in bench.event_ids if (room.get_pdu(e) or _fail()).is_state]
    index = room.auth_chains
    assert len(index) == len(state_events)  # message events are left out
    for event_id in state_events:
        assert index.auth_chain(event_id) == memory.auth_chains.auth_chain(event_id)
    subset = state_events[-5:]
    partial = room.auth_chains_for(subset)
    for event_id in subset:
        assert partial.auth_chain(event_id) == memory.auth_chains.auth_chain(event_id)
    assert len(partial) < len(index)
    # Rebuilt from disk: the same chains.
    room.forget_caches()
    for event_id in state_events[::7]:
        assert room.auth_chains.auth_chain(event_id) == memory.auth_chains.auth_chain(event_id)


def _fail() -> Pdu:
    raise AssertionError("event missing")


def test_rejected_and_soft_failed_marks_are_stored_with_their_reason(store: Store) -> None:
    fixture = RoomFixture("11")
    built = [fixture.create]
    # Replay the fixture's own history, then an outsider's message (rejected at step 4).
    room = store.create_room(fixture.create.room_id, fixture.rules)
    graph = RoomGraph(fixture.rules, fixture.create.room_id, room)
    for event_id in _history(fixture):
        built.append(fixture.graph.get_event(event_id))
    for pdu in built:
        graph.add(pdu)
    outsider = fixture.message(CAROL, "let me in")
    admission = graph.add(outsider)
    assert admission.status is EventStatus.REJECTED
    assert admission.failed_check is ReceiptCheck.AUTH_EVENTS
    room.forget_caches()
    stored = room.get_admission(outsider.event_id)
    assert stored == admission and stored.rule is not None
    assert room.get_state_after(outsider.event_id) == room.get_state_before(outsider.event_id)
    assert outsider.event_id not in graph.forward_extremities


def _history(fixture: RoomFixture) -> list[EventId]:
    order: list[EventId] = []
    seen: set[EventId] = set()

    def visit(event_id: EventId) -> None:
        if event_id in seen:
            return
        seen.add(event_id)
        pdu = fixture.graph.get_event(event_id)
        for parent in (*pdu.auth_event_ids, *pdu.prev_events):
            visit(parent)
        order.append(event_id)

    for tip in sorted(fixture.graph.forward_extremities):
        visit(tip)
    return [e for e in order if e != fixture.create.event_id]


def test_a_failed_commit_stores_nothing_and_caches_stay_right(store: Store) -> None:
    graph, room = ingest_bench(store, SMALL_ROOM)
    before = dict(graph.current_state())
    fixture_pdu = load_bench_room(SMALL_ROOM).events[5]
    pdu = parse_pdu(fixture_pdu, graph.rules)
    bogus = parse_pdu(load_bench_room("v11-s100-c10-k2.json.gz").events[3], rules_for("11"))
    with pytest.raises(ValueError, match="already stored"):
        room.commit(
            pdu=pdu,
            admission=room.get_admission(pdu.event_id) or _fail_admission(),
            state_before={},
            state_after={},
            forward_extremities=None,
            current_state=None,
        )
    # A transaction that fails part-way leaves nothing behind.
    (count_before,) = store.database.conn.execute("SELECT count(*) FROM events").fetchone()
    with pytest.raises(LookupError), store.transaction():
        store.peers.put(PeerRecord(server_name="ghost"))
        store.database.conn.execute("UPDATE rooms SET current_group = NULL")
        raise LookupError("abort")
    assert store.peers.get("ghost") is None
    assert dict(graph.current_state()) == before
    (count_after,) = store.database.conn.execute("SELECT count(*) FROM events").fetchone()
    assert count_after == count_before
    assert bogus.room_id != graph.room_id
    with pytest.raises(ValueError, match="is in"):
        room.commit(
            pdu=bogus,
            admission=_fail_admission(),
            state_before={},
            state_after={},
            forward_extremities=None,
            current_state=None,
        )


def _fail_admission() -> Admission:
    return Admission(event_id=EventId("$x"), status=EventStatus.ACCEPTED)


def test_create_room_refuses_another_room_version(store: Store) -> None:
    store.create_room(RoomId("!a:x"), rules_for("11"))
    with pytest.raises(ValueError, match="room version"):
        store.create_room(RoomId("!a:x"), rules_for("10"))
    assert store.room(RoomId("!b:x")) is None
    assert store.rooms() == [(RoomId("!a:x"), "11")]


def test_ten_thousand_state_entries_read_back_exactly(store: Store) -> None:
    from s2s_node.store.stategroups import StateGroups

    room = store.create_room(RoomId("!big:x"), rules_for("11"))
    groups = StateGroups(store.database)
    conn = store.database.conn
    with store.database.transaction():
        conn.executemany(
            "INSERT INTO events (event_id, room_nid, type, state_key, depth, json, status)"
            " VALUES (?, ?, 'm.room.member', ?, 1, x'7b7d', 0)",
            [(f"$e{i}", room.room_nid, f"@u{i}:x") for i in range(10_000)],
        )
        state = {("m.room.member", f"@u{i}:x"): EventId(f"$e{i}") for i in range(10_000)}
        group = groups.store(conn, room.room_nid, state, None)
        changed = dict(state)
        changed[("m.room.member", "@u5:x")] = EventId("$e6")
        del changed[("m.room.member", "@u7:x")]
        child = groups.store(conn, room.room_nid, changed, group)
    assert child != group
    fresh = StateGroups(store.database)
    assert fresh.load(group) == state
    assert fresh.load(child) == changed
    (rows,) = conn.execute(
        "SELECT count(*) FROM state_group_entries WHERE group_nid = ?", (child,)
    ).fetchone()
    assert rows == 2


# -- federation bookkeeping --------------------------------------------------------------------


def test_peers(store: Store) -> None:
    assert store.peers.get("a") is None
    store.peers.put(PeerRecord(server_name="b", address="10.0.0.2:8448", info={"enc": "cbor"}))
    store.peers.put(PeerRecord(server_name="a", last_seen_ms=7))
    assert [p.server_name for p in store.peers.all()] == ["a", "b"]
    assert store.peers.record_failure("a", retry_at_ms=100) == 1
    assert store.peers.record_failure("a", retry_at_ms=300) == 2
    assert store.peers.record_failure("nobody", retry_at_ms=1) == 0
    a = store.peers.get("a")
    assert a is not None and (a.failures, a.retry_at_ms) == (2, 300)
    store.peers.record_success("a", now_ms=500)
    a = store.peers.get("a")
    assert a is not None and (a.failures, a.retry_at_ms, a.last_seen_ms) == (0, 0, 500)
    b = store.peers.get("b")
    assert b is not None and b.info == {"enc": "cbor"} and b.address == "10.0.0.2:8448"
    assert store.peers.delete("b") and not store.peers.delete("b")


def test_outbound_queues_are_per_peer_ordered_and_acked(store: Store) -> None:
    _graph, room = ingest_bench(store, SMALL_ROOM)
    ids = room.event_ids()[:60]
    assert store.outbound.next_batch("p") is None
    store.outbound.enqueue_pdus(["p", "q"], ids, now_ms=1)
    store.outbound.enqueue_edu("p", {"edu_type": "m.typing", "content": {}}, now_ms=2)
    assert store.outbound.destinations() == ["p", "q"]
    batch = store.outbound.next_batch("p")
    assert batch is not None
    assert [e for e, _ in batch.pdus] == ids[:50]  # at most 50 PDUs per transaction
    assert batch.edus == ()
    pdu = room.get_pdu(ids[0])
    assert pdu is not None and batch.pdus[0][1] == pdu.canonical_bytes()
    assert store.outbound.ack("p", batch.last_seq) == 50
    rest = store.outbound.next_batch("p")
    assert rest is not None
    assert [e for e, _ in rest.pdus] == ids[50:]
    assert rest.edus == ({"content": {}, "edu_type": "m.typing"},)
    store.outbound.ack("p", rest.last_seq)
    assert store.outbound.next_batch("p") is None
    assert store.outbound.pending_count("q") == 60
    with pytest.raises(KeyError):
        store.outbound.enqueue_pdus(["p"], [EventId("$not-stored")], now_ms=3)
    assert store.outbound.pending_count("p") == 0


def test_received_transactions_are_remembered_with_their_answer(store: Store) -> None:
    assert store.received_txns.get("origin", "t1") is None
    store.received_txns.record("origin", "t1", {"pdus": {"$a": {}}}, now_ms=10)
    store.received_txns.record("origin", "t2", {"pdus": {}}, now_ms=20)
    assert store.received_txns.get("origin", "t1") == {"pdus": {"$a": {}}}
    assert store.received_txns.get("other", "t1") is None
    assert store.received_txns.prune(older_than_ms=15) == 1
    assert store.received_txns.get("origin", "t1") is None
    assert store.received_txns.get("origin", "t2") == {"pdus": {}}


def test_negotiation_records(store: Store) -> None:
    record = NegotiationRecord(
        room_id="!r:x", negotiation_id="$open", phase="proposed", record={"v": 1}, updated_ms=1
    )
    store.negotiations.put(record)
    store.negotiations.put(
        NegotiationRecord(room_id="!r:x", negotiation_id="$b", phase="x", record={}, updated_ms=0)
    )
    assert store.negotiations.get("!r:x", "$open") == record
    done = NegotiationRecord(
        room_id="!r:x", negotiation_id="$open", phase="done", record={"v": 2}, updated_ms=3
    )
    store.negotiations.put(done)
    assert [n.negotiation_id for n in store.negotiations.in_room("!r:x")] == ["$b", "$open"]
    assert store.negotiations.get("!r:x", "$open") == done
    assert store.negotiations.get("!other:x", "$open") is None


def test_users_and_access_tokens(store: Store) -> None:
    assert store.accounts.create_user(ALICE, now_ms=1, profile={"displayname": "Alice"})
    assert not store.accounts.create_user(ALICE, now_ms=2)
    assert store.accounts.get_profile(ALICE) == {"displayname": "Alice"}
    store.accounts.set_profile(ALICE, {})
    assert store.accounts.get_profile(ALICE) == {}
    with pytest.raises(KeyError):
        store.accounts.set_profile(BOB, {})
    with pytest.raises(KeyError):
        store.accounts.add_token("tok", BOB, "DEV", now_ms=1)
    store.accounts.add_token("secret-token", ALICE, "DEV1", now_ms=3)
    assert store.accounts.owner_of("secret-token") == TokenOwner(user_id=ALICE, device_id="DEV1")
    assert store.accounts.owner_of("other") is None
    # Only a hash of the token is stored.
    conn = store.database.conn
    assert conn.execute(
        "SELECT count(*) FROM access_tokens WHERE token_hash = ?", (b"secret-token",)
    ).fetchone() == (0,)
    assert store.accounts.revoke_token("secret-token")
    assert store.accounts.owner_of("secret-token") is None
    assert not store.accounts.revoke_token("secret-token")


def test_a_transaction_groups_writes_of_several_tables(store: Store) -> None:
    with store.transaction():
        store.received_txns.record("o", "t", {}, now_ms=1)
        store.peers.put(PeerRecord(server_name="o"))
    assert store.peers.get("o") is not None
    with pytest.raises(RuntimeError), store.transaction():
        store.received_txns.record("o", "t2", {}, now_ms=1)
        store.peers.delete("o")
        raise RuntimeError("crash before commit")
    assert store.received_txns.get("o", "t2") is None
    assert store.peers.get("o") is not None
