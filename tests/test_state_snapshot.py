"""`StateSnapshot`: what `with_entry` makes, and the keys two snapshots differ in.

(The dict behaviour and the memory sharing are pinned in test_room.py.)
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.ids import EventId
from s2s_node.core.state_snapshot import EMPTY_STATE, StateSnapshot

StateKey = tuple[str, str]


def _history(ops: list[tuple[int, int]]) -> list[StateSnapshot]:
    snapshot = EMPTY_STATE
    history = [snapshot]
    for key_n, value_n in ops:
        snapshot = snapshot.with_entry(("t", str(key_n)), EventId(f"${value_n}"))
        history.append(snapshot)
    return history


def _differing(a: dict[StateKey, EventId], b: dict[StateKey, EventId]) -> set[StateKey]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


OPS = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=200)


@given(OPS)
@settings(max_examples=50, deadline=None)
def test_with_entry_makes_the_snapshot_the_constructor_makes(ops: list[tuple[int, int]]) -> None:
    # `with_entry` sets the slots itself instead of calling `StateSnapshot(...)`.
    for snapshot in _history(ops):
        plain = snapshot.to_dict()
        rebuilt = StateSnapshot(dict(plain))
        assert len(snapshot) == len(rebuilt) == len(plain)
        assert snapshot == rebuilt and dict(snapshot) == plain
        # The overlay holds exactly the keys whose event differs from the base.
        assert all(snapshot._base.get(k) != v for k, v in snapshot._overlay.items())


@given(OPS, st.data())
@settings(max_examples=50, deadline=None)
def test_changed_keys_are_the_keys_whose_event_differs(
    ops: list[tuple[int, int]], data: st.DataObject
) -> None:
    history = _history(ops)
    for _ in range(10):
        a = data.draw(st.sampled_from(history))
        b = data.draw(st.sampled_from(history))
        changed = a.changed_keys(b)
        assert len(changed) == len(set(changed))
        assert set(changed) == _differing(a.to_dict(), b.to_dict())
        assert set(b.changed_keys(a)) == set(changed)
        # Against a snapshot of another base (a plain copy), the same keys.
        assert set(a.changed_keys(StateSnapshot(b.to_dict()))) == set(changed)
    assert history[-1].changed_keys(history[-1]) == []


def test_changed_keys_of_snapshots_that_share_a_base_look_at_their_overlays() -> None:
    base = EMPTY_STATE.with_entry(("t", "a"), EventId("$1")).with_entry(("t", "b"), EventId("$2"))
    one = base.with_entry(("t", "c"), EventId("$3"))
    two = base.with_entry(("t", "a"), EventId("$9"))
    assert one._base is two._base
    assert sorted(one.changed_keys(two)) == [("t", "a"), ("t", "c")]


def test_an_overlay_given_to_the_constructor_keeps_only_what_differs_from_the_base() -> None:
    base = {("t", "a"): EventId("$1"), ("t", "b"): EventId("$2")}
    same_and_new = {("t", "a"): EventId("$1"), ("t", "c"): EventId("$3")}
    snapshot = StateSnapshot(base, same_and_new)
    assert snapshot._overlay == {("t", "c"): EventId("$3")}
    other = StateSnapshot(base, {("t", "b"): EventId("$2")})
    assert snapshot.changed_keys(other) == [("t", "c")]
    assert len(snapshot) == 3 and len(other) == 2


def test_snapshots_made_from_one_another_share_their_base_until_it_is_rebuilt() -> None:
    key = ("m.room.topic", "")
    first = StateSnapshot({key: EventId("$a")})
    second = first.with_entry(("m.room.name", ""), EventId("$b"))
    assert second.shares_base_with(first) and first.shares_base_with(second)
    assert not StateSnapshot({key: EventId("$a")}).shares_base_with(first)
    grown = first
    for i in range(100):  # past the overlay limit: a new base
        grown = grown.with_entry(("m.room.member", f"@u{i}:x"), EventId(f"$m{i}"))
    assert not grown.shares_base_with(first)


@given(OPS, OPS, st.data())
@settings(max_examples=50, deadline=None)
def test_equality_is_the_equality_of_the_maps(
    ops: list[tuple[int, int]], other_ops: list[tuple[int, int]], data: st.DataObject
) -> None:
    # Two histories: snapshots over different bases, some equal as maps, most not.
    history = _history(ops) + _history(other_ops) + _history(ops[: len(ops) // 2])
    for _ in range(20):
        a = data.draw(st.sampled_from(history))
        b = data.draw(st.sampled_from(history))
        assert (a == b) == (a.to_dict() == b.to_dict())
        assert (a == b) == (b == a)
        assert (a == b.to_dict()) == (a.to_dict() == b.to_dict())


@given(OPS, st.lists(st.integers(0, 60), max_size=8))
@settings(max_examples=50, deadline=None)
def test_pick_takes_the_entries_of_the_keys_the_map_has(
    ops: list[tuple[int, int]], key_ns: list[int]
) -> None:
    keys = [("t", str(n)) for n in key_ns]
    for snapshot in _history(ops):
        expected = {key: snapshot[key] for key in keys if key in snapshot}
        assert snapshot.pick(keys) == expected
