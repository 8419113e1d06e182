"""`ConflictedState` kept up to date against `stateres.compute_conflicted_state` from scratch:
random auth DAGs, random state maps over them (keys some inputs lack included), then random
changes of one key of one input (the usual update), of several, and reorderings of the inputs;
after every step the unconflicted state, the full conflicted set and the v2.1 subgraph must be
those computed from scratch, and `update`'s report must name exactly what changed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.auth import StateKey
from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.ids import EventId
from s2s_node.core.rules import ROOM_V11, ROOM_V12, RoomVersionRules
from s2s_node.core.state_snapshot import StateSnapshot
from s2s_node.core.stateres import compute_conflicted_state
from s2s_node.core.stateres_conflicted import ConflictedState

KEYS = 6  # few keys, so that inputs often agree and often differ


def key_of(n: int) -> StateKey:
    return ("m.room.member", f"@u{n % KEYS}:example.com")


@st.composite
def rooms(draw: st.DrawFn) -> tuple[AuthChainIndex, list[EventId]]:
    """An auth DAG of events; event n has the key `key_of(n)` (its own key only)."""
    index = AuthChainIndex()
    ids: list[EventId] = []
    for n in range(draw(st.integers(KEYS, 40))):
        parents = draw(st.lists(st.sampled_from(ids), max_size=3)) if ids else []
        ids.append(EventId(f"$e{n}"))
        index.add(ids[-1], parents)
    return index, ids


def state_of(data: st.DataObject, ids: list[EventId]) -> StateSnapshot:
    chosen = data.draw(st.lists(st.sampled_from(range(len(ids))), max_size=KEYS))
    return StateSnapshot({key_of(n): ids[n] for n in chosen})


def check_state(
    rules: RoomVersionRules,
    conflicted: ConflictedState,
    index: AuthChainIndex,
    sets: list[StateSnapshot],
) -> None:
    expected = compute_conflicted_state(rules, [s.to_dict() for s in sets], index)
    assert conflicted.unconflicted == expected.unconflicted
    assert set(index.ids_of(conflicted.full)) == expected.full_conflicted_set
    assert set(index.ids_of(conflicted.subgraph)) == expected.conflicted_subgraph


@settings(max_examples=60, deadline=None)
@given(rooms(), st.sampled_from([ROOM_V11, ROOM_V12]), st.data())
def test_updates_match_the_conflicted_state_from_scratch(
    room: tuple[AuthChainIndex, list[EventId]], rules: RoomVersionRules, data: st.DataObject
) -> None:
    index, ids = room
    sets = [state_of(data, ids) for _ in range(data.draw(st.integers(2, 4)))]
    conflicted = ConflictedState(rules, index)
    conflicted.build(sets)
    check_state(rules, conflicted, index, sets)
    for _ in range(data.draw(st.integers(1, 12))):
        new_sets = list(sets)
        how = data.draw(st.sampled_from(["one key", "keys", "reorder", "new input"]))
        if how == "reorder":
            new_sets = data.draw(st.permutations(new_sets))
        elif how == "new input":
            new_sets[data.draw(st.integers(0, len(sets) - 1))] = state_of(data, ids)
        else:
            for _ in range(1 if how == "one key" else data.draw(st.integers(2, 4))):
                i = data.draw(st.integers(0, len(sets) - 1))
                n = data.draw(st.integers(0, len(ids) - 1))
                new_sets[i] = new_sets[i].with_entry(key_of(n), ids[n])
        old_unconflicted = dict(conflicted.unconflicted)
        old_full = conflicted.full
        changes = conflicted.changes(new_sets)
        if changes is None:
            conflicted.build(new_sets)
        else:
            changed, entered, left = conflicted.update(new_sets, changes)
            new_unconflicted = conflicted.unconflicted
            assert set(changed) == {
                k
                for k in old_unconflicted.keys() | new_unconflicted.keys()
                if old_unconflicted.get(k) != new_unconflicted.get(k)
            }
            assert entered == index.ids_of(conflicted.full & ~old_full)
            assert left == index.ids_of(old_full & ~conflicted.full)
        sets = new_sets
        check_state(rules, conflicted, index, sets)
