"""Unit tests of state resolution's parts: the auth-chain index, splitting state, power events,
rejected events, and that only the conflicted part of a room is looked at."""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from s2s_node.core.authchain import AuthChainError, AuthChainIndex, AuthChainReason
from s2s_node.core.events import Pdu, build_event, parse_pdu
from s2s_node.core.ids import EventId
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.rules import ROOM_V11, rules_for
from s2s_node.core.stateres import (
    StateKey,
    compute_conflicted_state,
    is_power_event,
    resolve,
    split_state,
)

ROOMS = Path(__file__).resolve().parent / "vectors" / "rooms"
KEY = signing_key_from_seed(b"s2s-node state res unit tests".ljust(32, b"\0"))
ALICE = "@alice:example.com"
BOB = "@bob:example.com"


def E(name: str) -> EventId:  # noqa: N802 - reads like a constructor in the tables below
    return EventId(f"${name}")


# -- AuthChainIndex ------------------------------------------------------------------------------


def small_index() -> AuthChainIndex:
    #   a <- b <- d
    #   a <- c <- d
    index = AuthChainIndex()
    index.add(E("a"), [])
    index.add(E("b"), [E("a")])
    index.add(E("c"), [E("a")])
    index.add(E("d"), [E("b"), E("c")])
    return index


def test_index_gives_auth_chains_without_the_event_itself() -> None:
    index = small_index()
    assert index.auth_chain(E("a")) == frozenset()
    assert index.auth_chain(E("b")) == {E("a")}
    assert index.auth_chain(E("d")) == {E("a"), E("b"), E("c")}
    assert E("d") in index
    assert E("x") not in index
    assert len(index) == 4


def test_index_masks_are_bits_by_position() -> None:
    index = small_index()
    assert [index.position(E(n)) for n in "abcd"] == [0, 1, 2, 3]
    assert index.chain_mask(E("d")) == 0b0111
    assert index.closure_mask([E("b")]) == 0b0011
    assert index.mask_of([E("a"), E("d")]) == 0b1001
    assert index.ids_of(0b1010) == [E("b"), E("d")]
    assert index.auth_positions(E("d")) == (1, 2)
    assert index.id_at(2) == E("c")
    assert index.event_ids() == (E("a"), E("b"), E("c"), E("d"))


def test_index_needs_parents_first() -> None:
    index = AuthChainIndex()
    with pytest.raises(AuthChainError) as info:
        index.add(E("b"), [E("a")])
    assert info.value.reason is AuthChainReason.AUTH_EVENT_UNKNOWN
    assert E("b") not in index


def test_index_add_is_idempotent_but_refuses_changed_auth_events() -> None:
    index = small_index()
    index.add(E("d"), [E("c"), E("b")])
    assert len(index) == 4
    with pytest.raises(AuthChainError) as info:
        index.add(E("d"), [E("b")])
    assert info.value.reason is AuthChainReason.AUTH_EVENTS_CHANGED


def test_index_refuses_unknown_events() -> None:
    index = small_index()
    for query in (index.chain_mask, index.position, index.auth_chain):
        with pytest.raises(AuthChainError) as info:
            query(E("x"))
        assert info.value.reason is AuthChainReason.EVENT_UNKNOWN
    with pytest.raises(AuthChainError):
        index.closure_mask([E("x")])


def load_bench_room(name: str) -> tuple[dict[str, Any], dict[EventId, Pdu]]:
    with gzip.open(ROOMS / name, "rb") as f:
        dag: dict[str, Any] = json.loads(f.read())
    rules = rules_for(dag["room_version"])
    events = {}
    for obj in dag["events"]:
        pdu = parse_pdu(obj, rules)
        events[pdu.event_id] = pdu
    return dag, events


@pytest.mark.parametrize("name", ["v11-s100-c100-k2.json.gz", "v12-s100-c100-k2.json.gz"])
def test_index_agrees_with_a_plain_walk(name: str) -> None:
    _dag, events = load_bench_room(name)
    index = AuthChainIndex()
    for pdu in events.values():
        index.add(pdu.event_id, pdu.auth_event_ids)

    def walk(event_id: EventId) -> set[EventId]:
        seen: set[EventId] = set()
        stack = list(events[event_id].auth_event_ids)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(events[current].auth_event_ids)
        return seen

    for event_id in events:
        assert index.auth_chain(event_id) == walk(event_id)


# -- splitting state, power events ---------------------------------------------------------------


def test_split_state() -> None:
    topic, name, member = ("m.room.topic", ""), ("m.room.name", ""), ("m.room.member", ALICE)
    sets: list[Mapping[StateKey, EventId]] = [
        {topic: E("t1"), name: E("n"), member: E("m")},
        {topic: E("t2"), name: E("n")},
        {topic: E("t1"), name: E("n"), member: E("m")},
    ]
    unconflicted, conflicted = split_state(sets)
    assert unconflicted == {name: E("n")}
    # A key missing from one set is conflicted; only events that exist are listed.
    assert conflicted == {E("t1"), E("t2"), E("m")}


def test_no_state_sets_resolve_to_nothing() -> None:
    assert resolve(ROOM_V11, [], AuthChainIndex(), lambda e: pytest.fail("no lookups")) == {}


def make(event_type: str, sender: str, state_key: str | None, content: dict[str, Any]) -> Pdu:
    return build_event(
        rules=ROOM_V11,
        room_id="!r:example.com",
        sender=sender,
        event_type=event_type,
        content=content,
        prev_events=[],
        auth_events=[],
        depth=1,
        origin_server_ts=1,
        server_name="example.com",
        signing_key=KEY,
        state_key=state_key,
    )


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (make("m.room.power_levels", ALICE, "", {}), True),
        (make("m.room.join_rules", ALICE, "", {"join_rule": "public"}), True),
        (make("m.room.create", ALICE, "", {}), True),
        (make("m.room.member", ALICE, BOB, {"membership": "leave"}), True),  # kick
        (make("m.room.member", ALICE, BOB, {"membership": "ban"}), True),
        (make("m.room.member", BOB, BOB, {"membership": "leave"}), False),  # leaving
        (make("m.room.member", ALICE, BOB, {"membership": "invite"}), False),
        (make("m.room.topic", ALICE, "", {"topic": "x"}), False),
        (make("m.room.power_levels", ALICE, "x", {}), False),
        (make("m.room.power_levels", ALICE, None, {}), False),
    ],
)
def test_power_events(event: Pdu, expected: bool) -> None:
    assert is_power_event(event) is expected


# -- rejected events and what is looked at -------------------------------------------------------


class TinyRoom:
    """create, Alice's join, power levels (Alice 100), and two conflicting topics by Alice."""

    def __init__(self) -> None:
        self.events: dict[EventId, Pdu] = {}
        self.index = AuthChainIndex()
        self.create = self.add("m.room.create", "", {"room_version": "11"}, [])
        self.join = self.add("m.room.member", ALICE, {"membership": "join"}, [self.create])
        self.power = self.add(
            "m.room.power_levels", "", {"users": {ALICE: 100}}, [self.create, self.join]
        )
        auth = [self.create, self.join, self.power]
        self.topic1 = self.add("m.room.topic", "", {"topic": "one"}, auth)
        self.topic2 = self.add("m.room.topic", "", {"topic": "two"}, auth)
        base = {
            ("m.room.create", ""): self.create,
            ("m.room.member", ALICE): self.join,
            ("m.room.power_levels", ""): self.power,
        }
        self.state_sets = [
            {**base, ("m.room.topic", ""): self.topic1},
            {**base, ("m.room.topic", ""): self.topic2},
        ]

    def add(
        self, event_type: str, state_key: str, content: dict[str, Any], auth: list[EventId]
    ) -> EventId:
        pdu = build_event(
            rules=ROOM_V11,
            room_id="!tiny:example.com",
            sender=ALICE,
            event_type=event_type,
            content=content,
            prev_events=auth[-1:],
            auth_events=auth,
            depth=len(self.events) + 1,
            origin_server_ts=1_000 + len(self.events),
            server_name="example.com",
            signing_key=KEY,
            state_key=state_key,
        )
        self.events[pdu.event_id] = pdu
        self.index.add(pdu.event_id, pdu.auth_event_ids)
        return pdu.event_id

    def resolve(self, rejected: set[EventId]) -> dict[StateKey, EventId]:
        return resolve(
            ROOM_V11, self.state_sets, self.index, self.events.__getitem__, rejected.__contains__
        )


def test_later_topic_wins_without_rejections() -> None:
    room = TinyRoom()
    assert room.resolve(set())[("m.room.topic", "")] == room.topic2


def test_a_rejected_event_is_rechecked_like_any_other() -> None:
    """Spec "Rejected events": rejected against the state at the event is no bar to winning.

    (Synapse never admits a previously rejected event; the spec does.)
    """
    room = TinyRoom()
    assert room.resolve({room.topic2})[("m.room.topic", "")] == room.topic2


def test_a_rejected_auth_event_is_never_used() -> None:
    """With Alice's join rejected, neither her own auth events nor the state may vouch for her
    membership: both topics fail the auth checks and the key stays unresolved."""
    room = TinyRoom()
    resolved = room.resolve({room.join})
    assert ("m.room.topic", "") not in resolved
    # The unconflicted state is still re-applied at the end (step 5).
    assert resolved[("m.room.member", ALICE)] == room.join


@pytest.mark.parametrize("name", ["v11-s100-c100-k2.json.gz", "v12-s100-c100-k2.json.gz"])
def test_only_the_conflicted_part_is_looked_at(name: str) -> None:
    dag, events = load_bench_room(name)
    rules = rules_for(dag["room_version"])
    index = AuthChainIndex()
    for pdu in events.values():
        if pdu.is_state:
            index.add(pdu.event_id, pdu.auth_event_ids)
    state_sets = [{(t, k): e for t, k, e in ss} for ss in dag["state_sets"]]
    asked: set[EventId] = set()

    def get_event(event_id: EventId) -> Pdu:
        asked.add(event_id)
        return events[event_id]

    resolve(rules, state_sets, index, get_event)
    sets = compute_conflicted_state(rules, state_sets, index)
    full = sets.full_conflicted_set
    allowed = set(full) | set(sets.unconflicted.values())
    for event_id in full:
        allowed.update(events[event_id].auth_event_ids)
    # Beyond those, only older power-levels events (walking mainlines) are looked up.
    assert {e for e in asked - allowed if events[e].type != "m.room.power_levels"} == set()
    state_events = sum(1 for e in events.values() if e.is_state)
    assert len(asked) < state_events
