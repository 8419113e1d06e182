"""State resolution on the reference scenarios (digest 6.6), built as real signed rooms.

The v2 scenarios come with a harness (tests/vectors/stateres/v2_scenarios.json, "harness"): the
test replays each scenario's DAG from CREATE forward, computes the state before and after every
event (resolving at merges) and checks the state after END. The v2.1 scenarios give the two state
sets to resolve directly.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.events import Pdu, build_event
from s2s_node.core.ids import EventId, room_id_from_create_event_id
from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.rules import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersionRules, StateResAlgorithm
from s2s_node.core.stateres import (
    StateKey,
    compute_conflicted_state,
    compute_lexicographic_topological_order,
    resolve,
)

VECTORS = Path(__file__).resolve().parent / "vectors" / "stateres"
V2 = json.loads((VECTORS / "v2_scenarios.json").read_text(encoding="utf-8"))
V2_1 = json.loads((VECTORS / "v2_1_scenarios.json").read_text(encoding="utf-8"))
SERVER = "example.com"
KEY: SigningKey = signing_key_from_seed(b"s2s-node state res scenarios".ljust(32, b"\0"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AblatedRules(RoomVersionRules):
    """Room version rules with the two v2.1 changes switched on or off one by one."""

    starts_empty: bool
    conflicted_subgraph: bool

    @property
    def state_res_starts_empty(self) -> bool:
        return self.starts_empty

    @property
    def state_res_conflicted_subgraph(self) -> bool:
        return self.conflicted_subgraph


def ablated(rules: RoomVersionRules, *, starts_empty: bool, subgraph: bool) -> AblatedRules:
    values = {f.name: getattr(rules, f.name) for f in dataclasses.fields(rules)}
    return AblatedRules(**values, starts_empty=starts_empty, conflicted_subgraph=subgraph)


class Room:
    """Events by name, their auth chains, and a `get_event` for `resolve`."""

    def __init__(self) -> None:
        self.by_name: dict[str, Pdu] = {}
        self.by_id: dict[EventId, Pdu] = {}
        self.index = AuthChainIndex()

    def add(self, name: str, pdu: Pdu) -> None:
        self.by_name[name] = pdu
        self.by_id[pdu.event_id] = pdu
        self.index.add(pdu.event_id, pdu.auth_event_ids)

    def id(self, name: str) -> EventId:
        return self.by_name[name].event_id

    def get_event(self, event_id: EventId) -> Pdu:
        return self.by_id[event_id]


# -- the v2 harness ------------------------------------------------------------------------------


def processing_order(prev_of: Mapping[str, set[str]]) -> list[str]:
    """Harness "processing_order": Kahn forward from CREATE, smallest ready name first."""
    graph = {node: sorted(prevs) for node, prevs in prev_of.items()}
    return compute_lexicographic_topological_order(graph, key=lambda node: node)


def harness_auth_keys(spec: Mapping[str, Any]) -> list[StateKey]:
    """Harness "auth_events": the keys the auth-events selection wants (create included)."""
    keys: list[StateKey] = [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", spec["sender"]),
    ]
    if spec["type"] == "m.room.member":
        keys.append(("m.room.member", spec["state_key"]))
        if spec["content"].get("membership") in ("join", "invite", "knock"):
            keys.append(("m.room.join_rules", ""))
    return keys


def run_v2_scenario(
    scenario: Mapping[str, Any], rules: RoomVersionRules
) -> tuple[dict[StateKey, EventId], dict[StateKey, EventId], Room]:
    """Replay a v2 scenario; returns (state after START, state after END, room)."""
    harness = V2["harness"]
    specs = {e["id"]: e for e in [*harness["initial_events"], *scenario["events"]]}
    prev_of: dict[str, set[str]] = {name: set() for name in specs}
    for chain in [*harness["initial_edges"], *scenario["edges"]]:
        for child, parent in itertools.pairwise(chain):
            prev_of[child].add(parent)
    room = Room()
    state_after: dict[str, dict[StateKey, EventId]] = {}
    depth: dict[str, int] = {}
    for ts, name in enumerate(processing_order(prev_of), start=1):
        spec = specs[name]
        prevs = sorted(prev_of[name])
        before = resolve(rules, [state_after[p] for p in prevs], room.index, room.get_event)
        auth_events = [before[k] for k in harness_auth_keys(spec) if k in before]
        depth[name] = 1 + max((depth[p] for p in prevs), default=0)
        pdu = build_event(
            rules=rules,
            room_id=harness["room_id"],
            sender=spec["sender"],
            event_type=spec["type"],
            content=spec["content"],
            prev_events=[room.id(p) for p in prevs],
            auth_events=auth_events,
            depth=depth[name],
            origin_server_ts=1_700_000_000_000 + ts,
            server_name=SERVER,
            signing_key=KEY,
            state_key=spec.get("state_key"),
        )
        room.add(name, pdu)
        after = dict(before)
        if pdu.state_tuple is not None:
            after[pdu.state_tuple] = pdu.event_id
        state_after[name] = after
    return state_after["START"], state_after["END"], room


def check_v2_outcome(
    scenario: Mapping[str, Any],
    start: Mapping[StateKey, EventId],
    end: Mapping[StateKey, EventId],
    room: Room,
) -> tuple[dict[StateKey, EventId], dict[StateKey, EventId]]:
    """Harness "check": (what END's state shows, what the scenario expects)."""
    expected: dict[StateKey, EventId] = {}
    for name in scenario["expected"]:
        key = room.by_name[name].state_tuple
        assert key is not None
        expected[key] = room.id(name)
    shown = {k: v for k, v in end.items() if k in expected or start.get(k) != v}
    return shown, expected


V2_NAMES = sorted(V2["scenarios"])


@pytest.mark.parametrize("rules", [ROOM_V10, ROOM_V11], ids=["v10", "v11"])
@pytest.mark.parametrize("name", V2_NAMES)
def test_v2_scenario(name: str, rules: RoomVersionRules) -> None:
    scenario = V2["scenarios"][name]
    start, end, room = run_v2_scenario(scenario, rules)
    shown, expected = check_v2_outcome(scenario, start, end, room)
    assert shown == expected


def test_v2_scenarios_are_all_there() -> None:
    assert len(V2_NAMES) == 7


def test_lexicographic_topological_sort_vector() -> None:
    vector = V2["lexicographical_topological_sort_vector"]
    graph = vector["graph_node_to_its_auth_or_prev_edges"]
    order = compute_lexicographic_topological_order(graph, key=lambda node: node)
    assert order == vector["expected_order"]


def test_topological_sort_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        compute_lexicographic_topological_order({"a": ["b"], "b": ["a"]}, key=lambda n: n)


# -- the v2.1 scenarios --------------------------------------------------------------------------


def build_v2_1_room(scenario: Mapping[str, Any]) -> Room:
    room = Room()
    room_id: str | None = None
    for position, spec in enumerate(scenario["events"], start=1):
        pdu = build_event(
            rules=ROOM_V12,
            room_id=room_id,
            sender=spec["sender"],
            event_type=spec["type"],
            content=spec["content"],
            prev_events=[room.id(p) for p in spec.get("prev_events", [])],
            auth_events=[room.id(a) for a in spec["auth_events"]],
            depth=position,
            origin_server_ts=1_700_000_000_000 + position,
            server_name=SERVER,
            signing_key=KEY,
            state_key=spec["state_key"],
        )
        if room_id is None:
            room_id = room_id_from_create_event_id(pdu.event_id)
        room.add(spec["name"], pdu)
    return room


def named_state(room: Room, encoded: Mapping[str, str]) -> dict[StateKey, EventId]:
    """'type|state_key' -> name (the file's encoding) into (type, state_key) -> event ID."""
    state: dict[StateKey, EventId] = {}
    for joined, name in encoded.items():
        event_type, state_key = joined.split("|", 1)
        state[(event_type, state_key)] = room.id(name)
    return state


def resolve_v2_1_scenario(
    name: str, rules: RoomVersionRules
) -> tuple[dict[StateKey, EventId], dict[StateKey, EventId]]:
    scenario = V2_1["scenarios"][name]
    room = build_v2_1_room(scenario)
    state_sets: Sequence[dict[StateKey, EventId]] = [
        named_state(room, s) for s in scenario["state_sets"]
    ]
    resolved = resolve(rules, state_sets, room.index, room.get_event)
    return resolved, named_state(room, scenario["expected"])


V2_1_NAMES = sorted(V2_1["scenarios"])


@pytest.mark.parametrize("name", V2_1_NAMES)
def test_v2_1_scenario(name: str) -> None:
    resolved, expected = resolve_v2_1_scenario(name, ROOM_V12)
    assert resolved == expected


def test_v2_1_scenarios_are_both_there() -> None:
    assert V2_1_NAMES == ["state_reset_replay_conflicted_subgraph", "state_reset_start_empty_set"]


@pytest.mark.parametrize("name", V2_1_NAMES)
def test_plain_v2_fails_the_v2_1_scenarios(name: str) -> None:
    plain_v2 = dataclasses.replace(ROOM_V12, state_res=StateResAlgorithm.V2)
    resolved, expected = resolve_v2_1_scenario(name, plain_v2)
    assert resolved != expected


@pytest.mark.parametrize(
    ("starts_empty", "subgraph", "fixed"),
    [
        (False, False, set()),
        (True, False, {"state_reset_start_empty_set"}),
        (False, True, {"state_reset_replay_conflicted_subgraph"}),
        (True, True, set(V2_1_NAMES)),
    ],
)
def test_v2_1_ablation(starts_empty: bool, subgraph: bool, fixed: set[str]) -> None:
    """Digest 6.4: each of the two v2.1 changes fixes exactly one of the scenarios."""
    rules = ablated(ROOM_V12, starts_empty=starts_empty, subgraph=subgraph)
    passing = set()
    for name in V2_1_NAMES:
        resolved, expected = resolve_v2_1_scenario(name, rules)
        if resolved == expected:
            passing.add(name)
    assert passing == fixed


def test_v2_1_create_event_is_not_in_the_difference_or_subgraph() -> None:
    """The replay scenario's "also_expected"."""
    scenario = V2_1["scenarios"]["state_reset_replay_conflicted_subgraph"]
    room = build_v2_1_room(scenario)
    state_sets = [named_state(room, s) for s in scenario["state_sets"]]
    conflicted = compute_conflicted_state(ROOM_V12, state_sets, room.index)
    create_id = room.id("e1_create")
    assert create_id not in conflicted.auth_difference | conflicted.conflicted_subgraph
    # Bob's promotion (e7) is seen by both sides, yet lies between two conflicted events.
    assert room.id("e7_power2") in conflicted.conflicted_subgraph
    assert room.id("e7_power2") not in conflicted.auth_difference
