"""State resolution on signed benchmark rooms, against Synapse's answers, and its invariants.

Rooms: tests/vectors/rooms (perf-dag/1 files; `expected` = Synapse 1.163.2). Property tests
(Hypothesis, few examples) check that the result does not depend on the order of the state
sets or of their entries, and that a single state set comes back unchanged.
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.events import Pdu, parse_pdu
from s2s_node.core.ids import EventId
from s2s_node.core.rules import RoomVersionRules, rules_for
from s2s_node.core.stateres import StateKey, compute_conflicted_state, resolve

ROOMS = Path(__file__).resolve().parent / "vectors" / "rooms"
ROOM_FILES = sorted(p.name for p in ROOMS.glob("*.json.gz"))


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchRoom:
    rules: RoomVersionRules
    events: dict[EventId, Pdu]
    index: AuthChainIndex
    state_sets: list[dict[StateKey, EventId]]
    expected: dict[StateKey, EventId]
    expected_sizes: dict[str, int]

    def get_event(self, event_id: EventId) -> Pdu:
        return self.events[event_id]


@functools.cache
def load_room(name: str) -> BenchRoom:
    with gzip.open(ROOMS / name, "rb") as f:
        dag = json.loads(f.read())
    rules = rules_for(dag["room_version"])
    events: dict[EventId, Pdu] = {}
    index = AuthChainIndex()
    for obj, event_id in zip(dag["events"], dag["event_ids"], strict=True):
        pdu = parse_pdu(obj, rules)
        assert pdu.event_id == event_id
        events[pdu.event_id] = pdu
        if pdu.is_state:  # message events are never auth events nor state
            index.add(pdu.event_id, pdu.auth_event_ids)
    return BenchRoom(
        rules=rules,
        events=events,
        index=index,
        state_sets=[{(t, k): e for t, k, e in ss} for ss in dag["state_sets"]],
        expected={(t, k): e for t, k, e in dag["expected"]["resolved_state"]},
        expected_sizes={k: v for k, v in dag["expected"].items() if isinstance(v, int)},
    )


def test_the_four_rooms_are_there() -> None:
    assert ROOM_FILES == [
        "v11-s100-c10-k2.json.gz",
        "v11-s100-c100-k2.json.gz",
        "v12-s100-c10-k2.json.gz",
        "v12-s100-c100-k2.json.gz",
    ]


@pytest.mark.parametrize("name", ROOM_FILES)
def test_room_resolves_like_synapse(name: str) -> None:
    room = load_room(name)
    resolved = resolve(room.rules, room.state_sets, room.index, room.get_event)
    assert resolved == room.expected


@pytest.mark.parametrize("name", ROOM_FILES)
def test_conflicted_sets_have_synapse_sizes(name: str) -> None:
    room = load_room(name)
    sets = compute_conflicted_state(room.rules, room.state_sets, room.index)
    sizes = room.expected_sizes
    assert len(sets.auth_difference) == sizes["auth_difference"]
    assert len(sets.full_conflicted_set) == sizes["full_conflicted_set"]
    if "conflicted_subgraph" in sizes:
        assert len(sets.conflicted_subgraph) == sizes["conflicted_subgraph"]
    else:
        assert sets.conflicted_subgraph == frozenset()
    assert sets.full_conflicted_set == (
        sets.conflicted | sets.auth_difference | sets.conflicted_subgraph
    )


@settings(max_examples=12, deadline=None)
@given(data=st.data(), name=st.sampled_from(ROOM_FILES))
def test_result_is_independent_of_input_order(data: st.DataObject, name: str) -> None:
    room = load_room(name)
    # A third state set: the first one without some of its conflicted keys, so that
    # permutations of three sets are exercised.
    base = room.state_sets[0]
    conflicted_keys = sorted(k for k in base if room.state_sets[1].get(k) != base[k])
    dropped = data.draw(st.sets(st.sampled_from(conflicted_keys), max_size=5))
    sets = [*room.state_sets, {k: v for k, v in base.items() if k not in dropped}]
    reference = resolve(room.rules, sets, room.index, room.get_event)

    order = data.draw(st.permutations(range(len(sets))))
    shuffled = []
    for i in order:
        items = data.draw(st.permutations(sorted(sets[i].items())))
        shuffled.append(dict(items))
    assert resolve(room.rules, shuffled, room.index, room.get_event) == reference


@settings(max_examples=8, deadline=None)
@given(data=st.data(), name=st.sampled_from(ROOM_FILES))
def test_a_single_state_set_comes_back_unchanged(data: st.DataObject, name: str) -> None:
    room = load_room(name)
    which = data.draw(st.sampled_from(room.state_sets))
    keys = data.draw(st.sets(st.sampled_from(sorted(which))))
    state = {k: which[k] for k in keys}
    assert resolve(room.rules, [state], room.index, room.get_event) == state
    # The same set twice has no conflicts: it also comes back unchanged.
    assert resolve(room.rules, [state, dict(state)], room.index, room.get_event) == state
