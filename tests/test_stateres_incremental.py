"""The incremental resolver of a room's current state returns what `stateres.resolve` returns.

Every call the room graph makes is checked against a full resolution of the same inputs:
benchmark rooms delivered in file order (one fork after the other: hundreds of resolutions of
nearly the same states) and in random causal orders (extremities come and go, forks
interleave, merges), plus forks built here to reach the cases the files lack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from room_fixtures import ALICE, BOB, CAROL, RoomFixture, bench_room_names, user
from test_room import _cached_pdus, _topological_order

from s2s_node.core import stateres_conflicted, stateres_incremental, stateres_ordering
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.room import EventStatus, RoomGraph
from s2s_node.core.state_snapshot import StateSnapshot
from s2s_node.core.stateres import compute_conflicted_state, resolve
from s2s_node.core.stateres_incremental import IncrementalResolver

# "tight" makes the rare paths common: every move in the power ordering re-sorts it, and
# positions are renumbered as soon as two get within 20% of each other.
TIGHT = {
    (stateres_incremental, "_MAX_MOVING"): 0,
    (stateres_conflicted, "MAX_CHANGED_KEYS"): 40,
    (stateres_ordering, "MIN_GAP"): 0.2,
}


class Checked:
    """Counts the incremental resolutions and remembers any that differ from `resolve`."""

    def __init__(self) -> None:
        self.calls = 0
        self.mismatches: list[int] = []


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[Checked]:
    record = Checked()
    real = IncrementalResolver.resolve

    def checking(self: IncrementalResolver, state_sets: Any, get_event: Any) -> StateSnapshot:
        got = real(self, state_sets, get_event)
        want = resolve(
            self._rules,
            [dict(s) for s in state_sets],
            self._index,
            get_event,
            self._is_rejected,
        )
        if dict(got) != want:
            record.mismatches.append(record.calls)
        record.calls += 1
        return got

    monkeypatch.setattr(IncrementalResolver, "resolve", checking)
    yield record


@pytest.mark.parametrize("limits", ["normal", "tight"])
@pytest.mark.parametrize("name", bench_room_names())
def test_file_order_matches_full_resolution_at_every_event(
    name: str, limits: str, checked: Checked, monkeypatch: pytest.MonkeyPatch
) -> None:
    if limits == "tight":
        for (module, attribute), value in TIGHT.items():
            monkeypatch.setattr(module, attribute, value)
    pdus = _cached_pdus(name)
    graph = RoomGraph(pdus[0].rules, pdus[0].room_id)
    for pdu in pdus:
        graph.add(pdu)
    assert checked.calls > 0
    assert checked.mismatches == []
    resolver = graph._current_resolver
    assert resolver is not None and resolver.updates > resolver.rebuilds


@pytest.mark.parametrize("limits", ["normal", "tight"])
@pytest.mark.parametrize("name", bench_room_names())
@given(data=st.data())
@settings(max_examples=8, deadline=None, derandomize=True)
def test_random_causal_orders_match_full_resolution(
    name: str, limits: str, data: st.DataObject
) -> None:
    saved = {(module, attribute): getattr(module, attribute) for module, attribute in TIGHT}
    if limits == "tight":
        for (module, attribute), value in TIGHT.items():
            setattr(module, attribute, value)
    try:
        _deliver_and_check(name, data)
    finally:
        for (module, attribute), value in saved.items():
            setattr(module, attribute, value)


def _replay_with(
    checking: Callable[[IncrementalResolver, Any, Any], StateSnapshot],
    pdus: Sequence[Pdu],
    order: Iterable[Pdu],
) -> None:
    """Add `order` to a new graph with `checking` in place of `IncrementalResolver.resolve`.

    (Hypothesis runs a test body many times; a fixture would be shared by them.)
    """
    real = IncrementalResolver.resolve
    IncrementalResolver.resolve = checking  # type: ignore[method-assign, assignment]
    try:
        graph = RoomGraph(pdus[0].rules, pdus[0].room_id)
        for pdu in order:
            graph.add(pdu)
    finally:
        IncrementalResolver.resolve = real  # type: ignore[method-assign]


def _deliver_and_check(name: str, data: st.DataObject) -> None:
    pdus = _cached_pdus(name)
    order = data.draw(_topological_order(pdus))
    record = Checked()
    real = IncrementalResolver.resolve

    def checking(self: IncrementalResolver, state_sets: Any, get_event: Any) -> StateSnapshot:
        got = real(self, state_sets, get_event)
        want = resolve(
            self._rules, [dict(s) for s in state_sets], self._index, get_event, self._is_rejected
        )
        if dict(got) != want:
            record.mismatches.append(record.calls)
        record.calls += 1
        return got

    _replay_with(checking, pdus, order)
    assert record.mismatches == []


@pytest.mark.parametrize("name", [n for n in bench_room_names() if n.startswith("v12")])
@given(data=st.data())
@settings(max_examples=6, deadline=None, derandomize=True)
def test_the_kept_conflicted_subgraph_and_full_set_are_those_computed_afresh(
    name: str, data: st.DataObject
) -> None:
    """v2.1: after every update, the kept conflicted subgraph (updated only where it can
    change, with no reverse index of the chains) and full conflicted set are the ones
    `stateres` computes from the same inputs, in random causal orders."""
    pdus = _cached_pdus(name)
    order = data.draw(_topological_order(pdus))
    differing: list[int] = []
    calls = 0
    real = IncrementalResolver.resolve

    def checking(self: IncrementalResolver, state_sets: Any, get_event: Any) -> StateSnapshot:
        nonlocal calls
        got = real(self, state_sets, get_event)
        if len(state_sets) > 1:
            plain = [dict(s) for s in state_sets]
            want = compute_conflicted_state(self._rules, plain, self._index)
            index = self._index
            kept = self._conflicted
            if kept.subgraph != index.mask_of(
                want.conflicted_subgraph
            ) or kept.full != index.mask_of(want.full_conflicted_set):
                differing.append(calls)
            calls += 1
        return got

    _replay_with(checking, pdus, order)
    assert calls > 0
    assert differing == []


def _with_alice_power(version: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    # Before v12 the creator's power comes from the power levels like anyone's.
    if version != "12" and event_type == "m.room.power_levels":
        return {"users": {ALICE: 100, **content["users"]}}
    return content


DAVE = user("dave", 3)
ERIN = user("erin", 4)


@pytest.mark.parametrize("version", ["10", "11", "12"])
def test_forks_with_kicks_bans_power_changes_and_convergence(
    version: str, checked: Checked
) -> None:
    """Two forks that kick, ban, promote, rename and finally agree on a key again."""
    room = RoomFixture(version, power_users={BOB: 50})
    for who in (CAROL, DAVE, ERIN):
        room.add(room.build("m.room.member", who, {"membership": "join"}, state_key=who))
    fork = sorted(room.graph.forward_extremities)
    topic = room.add(
        room.build("m.room.topic", ALICE, {"topic": "x"}, state_key="", prev_events=fork)
    )
    a_tip = topic.event_id
    a_steps: list[tuple[str, str, dict[str, Any], str]] = [
        ("m.room.member", BOB, {"membership": "leave"}, CAROL),
        ("m.room.power_levels", ALICE, {"users": {BOB: 60}}, ""),
        ("m.room.name", BOB, {"name": "a"}, ""),
    ]
    b_steps: list[tuple[str, str, dict[str, Any], str]] = [
        ("m.room.member", ALICE, {"membership": "ban"}, DAVE),
        ("m.room.member", ERIN, {"membership": "join", "displayname": "E"}, ERIN),
        ("m.room.topic", ALICE, {"topic": "x"}, ""),
        ("m.room.power_levels", ALICE, {"users": {CAROL: 50, BOB: 50}}, ""),
        ("m.room.member", CAROL, {"membership": "leave"}, CAROL),
        ("m.room.join_rules", ALICE, {"join_rule": "invite"}, ""),
        ("m.room.member", BOB, {"membership": "ban"}, ERIN),
    ]
    for event_type, sender, given_content, state_key in a_steps:
        content = _with_alice_power(version, event_type, given_content)
        pdu = room.build(event_type, sender, content, state_key=state_key, prev_events=[a_tip])
        room.graph.add(pdu)
        a_tip = pdu.event_id
    b_tip = fork[0]
    for event_type, sender, given_content, state_key in b_steps:
        content = _with_alice_power(version, event_type, given_content)
        pdu = room.build(event_type, sender, content, state_key=state_key, prev_events=[b_tip])
        assert room.graph.add(pdu).status is not EventStatus.REJECTED
        b_tip = pdu.event_id
    merge = room.build("m.room.message", ALICE, {"msgtype": "m.text", "body": "m"})
    room.graph.add(merge)
    assert checked.calls >= len(b_steps)
    assert checked.mismatches == []


@pytest.mark.parametrize("version", ["10", "11", "12"])
def test_a_mainline_flipping_between_forks_is_rebuilt_and_emitted_exactly(
    version: str, checked: Checked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two forks that each replace the power levels in turn: the resolved power levels event
    jumps from one fork to the other (its mainline never extends the previous one), and
    the topics and names each fork sets pass under one fork's power levels only, so every
    flip changes keys that only the mainline ordering's checks decide."""
    rebuilt = 0
    real = IncrementalResolver._rebuild_mainline

    def counting(self: IncrementalResolver) -> None:
        nonlocal rebuilt
        rebuilt += 1
        real(self)

    monkeypatch.setattr(IncrementalResolver, "_rebuild_mainline", counting)
    room = RoomFixture(version, power_users={BOB: 50})
    for who in (CAROL, DAVE):
        room.add(room.build("m.room.member", who, {"membership": "join"}, state_key=who))
    tips = sorted(room.graph.forward_extremities)[:1] * 2
    # Fork 0 lets bob (50) set topics and names, fork 1 lets carol (0) and not bob.
    levels = [
        {"users": {BOB: 50}, "events": {"m.room.topic": 50, "m.room.name": 50}},
        {"users": {BOB: 50}, "events": {"m.room.topic": 0, "m.room.name": 60}},
    ]
    for round_ in range(4):
        for side in (0, 1):
            content = _with_alice_power(version, "m.room.power_levels", levels[side])
            for event_type, sender, body, key in [
                ("m.room.power_levels", ALICE, content, ""),
                ("m.room.topic", BOB if side == 0 else CAROL, {"topic": f"{side}{round_}"}, ""),
                ("m.room.name", BOB, {"name": f"{side}{round_}"}, ""),
                (
                    "m.room.member",
                    DAVE,
                    {"displayname": f"{side}{round_}", "membership": "join"},
                    DAVE,
                ),
            ]:
                pdu = room.build(event_type, sender, body, state_key=key, prev_events=[tips[side]])
                room.graph.add(pdu)
                tips[side] = pdu.event_id
    assert rebuilt >= 6  # beyond the first call: the flips
    assert checked.calls >= 20
    assert checked.mismatches == []


def test_no_input_or_one_input_resolves_to_itself_and_keeps_the_previous_work() -> None:
    pdus = _cached_pdus(bench_room_names()[0])
    graph = RoomGraph(pdus[0].rules, pdus[0].room_id)
    for pdu in pdus:
        graph.add(pdu)
    resolver = IncrementalResolver(graph.rules, graph.store.auth_chains, graph.is_rejected)
    assert dict(resolver.resolve([], graph.get_event)) == {}
    one = graph.current_state()
    assert dict(resolver.resolve([one], graph.get_event)) == dict(one)
    assert resolver.rebuilds == resolver.updates == 0


@settings(max_examples=60, deadline=None)
@given(
    initial=st.lists(st.integers(0, 9), max_size=12),
    operations=st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "place"]), st.integers(0, 40), st.integers(0, 9)
        ),
        max_size=60,
    ),
)
def test_blocked_keys_place_a_key_before_the_first_larger_one_as_a_list_does(
    initial: list[int], operations: list[tuple[str, int, int]]
) -> None:
    """The power ordering's key blocks (split at 4 keys here) answer as a plain list would:
    a placed key goes before the first larger key at or after the start (at the end if none
    is), and every answer after inserts, deletes and splits reads the blocks as they are."""
    model = [(value, 0, EventId("")) for value in initial]
    blocked = stateres_ordering.BlockedKeys(list(model), size=2)
    for operation, where, value in operations:
        i = where % (len(model) + 1)
        key = (value, 0, EventId(""))
        if operation == "insert":
            model.insert(i, key)
            blocked.insert(i, key)
        elif operation == "delete" and model:
            j = where % len(model)
            del model[j]
            blocked.delete(j)
        else:
            want = next((j for j in range(i, len(model)) if key < model[j]), len(model))
            assert blocked.insert_before_larger(i, key) == want
            model.insert(want, key)
    # The final contents, one placement past the largest key at each start.
    top = (10, 0, EventId(""))
    for i in range(len(model) + 1):
        assert blocked.insert_before_larger(i, top) == len(model)
        blocked.delete(len(model))


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 80),
    spot=st.integers(0, 79),
    squeezed=st.integers(1, 60),
    descending=st.booleans(),
)
def test_respace_spreads_a_crowded_window_and_keeps_the_order(
    size: int, spot: int, squeezed: int, descending: bool
) -> None:
    """Positions halved into one gap again and again are spread out around it: the window
    keeps the order, stays strictly between its outer neighbours and leaves the gap roomy;
    positions outside it do not move."""
    positions = [float(i) for i in range(size)]
    i = spot % size
    for _ in range(squeezed):  # insert again and again next to the same spot
        low = positions[i - 1] if i > 0 else None
        at = stateres_ordering.between(low, positions[i])
        if at is None:
            break
        positions.insert(i, at)
        if not descending:
            i += 1
    before = list(positions)
    lo, hi, low, high = stateres_ordering.respace(positions, i)
    assert lo <= i < hi
    assert all(a < b for a, b in pairwise(positions))
    assert positions[:lo] == before[:lo] and positions[hi:] == before[hi:]
    assert low == (before[lo - 1] if lo > 0 else None)
    assert high == (before[hi] if hi < len(before) else None)
    window = positions[lo:hi]
    assert all((low is None or low < at) and (high is None or at < high) for at in window)
    assert not stateres_ordering.crowded(positions, i)
