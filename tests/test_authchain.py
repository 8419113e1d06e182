"""Tests of the auth-chain index's incremental helpers against its plain queries: the sparse
bit-by-bit `sparse_ids_of` against `ids_of`, and `replace_in_closure` against
`closure_mask` of the changed set (the index's basic queries are in test_stateres.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2s_node.core.authchain import AuthChainError, AuthChainIndex, AuthChainReason
from s2s_node.core.ids import EventId


def E(n: int) -> EventId:  # noqa: N802 - reads like a constructor
    return EventId(f"$e{n}")


@st.composite
def dags(draw: st.DrawFn) -> AuthChainIndex:
    """A random auth DAG of up to 60 events, each citing up to 3 earlier ones."""
    index = AuthChainIndex()
    size = draw(st.integers(1, 60))
    for n in range(size):
        parents = draw(st.lists(st.integers(0, n - 1), max_size=3)) if n else []
        index.add(E(n), [E(p) for p in parents])
    return index


@given(st.integers(0, 2**70 - 1), st.data())
def test_sparse_ids_of_is_ids_of(mask: int, data: st.DataObject) -> None:
    index = AuthChainIndex()
    for n in range(70):
        index.add(E(n), [])
    few = data.draw(st.sets(st.integers(0, 69), max_size=20))
    for m in (mask, sum(1 << p for p in few), 0):
        assert index.sparse_ids_of(m) == index.ids_of(m)


def test_sparse_ids_of_past_the_few_bits() -> None:
    index = AuthChainIndex()
    for n in range(40):
        index.add(E(n), [])
    for mask in ((1 << 40) - 1, (1 << 17) - 1, (1 << 16) - 1, 0b1011 << 30):
        assert index.sparse_ids_of(mask) == index.ids_of(mask)


@given(dags(), st.data())
def test_replace_in_closure_is_the_closure_after(
    index: AuthChainIndex, data: st.DataObject
) -> None:
    ids = list(index.event_ids())
    events = data.draw(st.sets(st.sampled_from(ids)))
    replaced = data.draw(st.sampled_from([None, *sorted(events)]))
    new = data.draw(st.sampled_from([None, *ids]))
    closure = index.closure_mask(events)
    after = (events - {replaced}) | ({new} if new is not None else set())
    got = index.replace_in_closure(closure, replaced, new)
    # None exactly when `replaced` may have to leave: it is not in the new event's chain.
    can_tell = replaced is None or (new is not None and replaced in index.auth_chain(new))
    assert (got is not None) is can_tell
    if got is not None:
        assert got == index.closure_mask(after)


def test_replace_in_closure_of_unknown_events() -> None:
    index = AuthChainIndex()
    index.add(E(0), [])
    for replaced, new in ((E(0), E(9)), (E(9), E(0)), (None, E(9))):
        with pytest.raises(AuthChainError) as info:
            index.replace_in_closure(1, replaced, new)
        assert info.value.reason is AuthChainReason.EVENT_UNKNOWN


@given(dags())
def test_views_are_the_index(index: AuthChainIndex) -> None:
    ids = index.event_ids()
    assert list(index.chain_masks) == [index.chain_mask_at(p) for p in range(len(ids))]
    assert dict(index.positions_by_id) == {e: index.position(e) for e in ids}
