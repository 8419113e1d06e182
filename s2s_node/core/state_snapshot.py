"""State maps that share memory: `StateSnapshot`, an immutable `(type, state_key)` -> event ID
map, and `EMPTY_STATE`.

Owns: how the state before and after every event of a room is held without a full copy per
event (the reason a room of 10,000+ state events stays small). Must not: know about events,
authorisation or resolution (`core.room` and `core.stateres` do), or do I/O.

Spec: the state of a room at an event (digest 6.1); DESIGN.md section 5 (storage of state).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from math import isqrt
from typing import Any

from s2s_node.core.auth import StateKey
from s2s_node.core.ids import EventId


class StateSnapshot(Mapping[StateKey, EventId]):
    """An immutable state map (`(type, state_key)` -> event ID) that shares memory.

    A snapshot is a `base` dict shared by many snapshots plus a small `overlay` of the keys whose
    event differs from `base`. An event's child that changes one key copies only the overlay;
    when the overlay grows past about the square root of the base, a new base is made. Memory
    for E state events over S keys is then O(E * sqrt(S) + S * E / sqrt(S)) instead of O(E * S),
    and a lookup stays two dict probes. Neither dict is ever mutated after construction.
    """

    __slots__ = ("_base", "_len", "_overlay")

    def __init__(
        self,
        base: dict[StateKey, EventId] | None = None,
        overlay: dict[StateKey, EventId] | None = None,
        *,
        length: int | None = None,
    ) -> None:
        self._base: dict[StateKey, EventId] = {} if base is None else base
        if overlay and any(self._base.get(k) == v for k, v in overlay.items()):
            # Canonical: the overlay holds exactly the keys whose event differs from the base.
            overlay = {k: v for k, v in overlay.items() if self._base.get(k) != v}
        self._overlay: dict[StateKey, EventId] = {} if overlay is None else overlay
        if length is None:
            length = len(self._base) + sum(1 for k in self._overlay if k not in self._base)
        self._len = length

    @classmethod
    def of(cls, state: Mapping[StateKey, EventId]) -> StateSnapshot:
        """`state` as a snapshot (itself if it is one; else a private copy)."""
        return state if isinstance(state, StateSnapshot) else cls(dict(state))

    def with_entry(self, key: StateKey, event_id: EventId) -> StateSnapshot:
        """This map with `key` set to `event_id` (self if nothing changes)."""
        base = self._base
        current = self._overlay.get(key)
        if current is None:
            current = base.get(key)
        if current == event_id:
            return self
        overlay = dict(self._overlay)
        # Keep the overlay canonical: exactly the keys whose event differs from the base.
        if base.get(key) == event_id:
            del overlay[key]
        else:
            overlay[key] = event_id
        length = self._len if current is not None else self._len + 1
        if len(overlay) > _MIN_OVERLAY_LIMIT and len(overlay) > _overlay_limit(len(base)):
            base = dict(base)
            base.update(overlay)
            return _new_snapshot(base, {}, length)
        return _new_snapshot(base, overlay, length)

    def pick(self, keys: Iterable[StateKey]) -> dict[StateKey, EventId]:
        """The entries of `keys` this map has, as a plain dict (absent keys are left out)."""
        overlay_get = self._overlay.get
        base_get = self._base.get
        picked: dict[StateKey, EventId] = {}
        for key in keys:
            event_id = overlay_get(key)
            if event_id is None:
                event_id = base_get(key)
                if event_id is None:
                    continue
            picked[key] = event_id
        return picked

    def shares_base_with(self, other: StateSnapshot) -> bool:
        """Whether both maps are overlays of the same base (then `changed_keys` is cheap)."""
        return self._base is other._base

    def changed_keys(self, other: StateSnapshot) -> list[StateKey]:
        """The keys whose event differs between this map and `other` (absent on one side
        included), in no particular order.

        Two snapshots over the same base differ only in their overlays: that costs the size of
        the overlays, not of the maps.
        """
        if self is other:
            return []
        if self._base is other._base:
            # Each overlay holds exactly the keys whose event differs from the shared base, so
            # the maps differ exactly at the keys of the overlays' differing items.
            return list({key for key, _ in self._overlay.items() ^ other._overlay.items()})
        return list({key for key, _ in self.to_dict().items() ^ other.to_dict().items()})

    def to_dict(self) -> dict[StateKey, EventId]:
        """A fresh plain dict of this map (what state resolution is given)."""
        merged = dict(self._base)
        merged.update(self._overlay)
        return merged

    def __getitem__(self, key: StateKey) -> EventId:
        try:
            return self._overlay[key]
        except KeyError:
            return self._base[key]

    def get(self, key: StateKey, default: Any = None) -> Any:
        found = self._overlay.get(key)
        return self._base.get(key, default) if found is None else found

    def __contains__(self, key: object) -> bool:
        return key in self._overlay or key in self._base

    def __iter__(self) -> Iterator[StateKey]:
        yield from self._base
        for key in self._overlay:
            if key not in self._base:
                yield key

    def __len__(self) -> int:
        return self._len

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, StateSnapshot):
            if self._len != other._len:
                return False
            if self._base is other._base:
                return self._overlay == other._overlay
            # Different bases: the overlays (the latest changes) usually tell unequal maps
            # apart before the whole maps are compared.
            other_get = other.get
            for key, event_id in self._overlay.items():
                if other_get(key) != event_id:
                    return False
            get = self.get
            for key, event_id in other._overlay.items():
                if get(key) != event_id:
                    return False
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StateSnapshot({self._len} entries, overlay {len(self._overlay)})"


# The smallest overlay that makes a new base: small rooms do not rebase at every state event.
_MIN_OVERLAY_LIMIT = 32


def _overlay_limit(base_size: int) -> int:
    # About sqrt(2 * S) minimises overlay copies plus base copies.
    return max(_MIN_OVERLAY_LIMIT, isqrt(2 * base_size))


# `with_entry` runs once per state event received; `StateSnapshot(...)` costs a Python
# `__init__` with keyword arguments. `_new_snapshot` sets the three slots directly (values the
# caller computed: `length` is the number of distinct keys). A test pins that it equals a
# snapshot built by `StateSnapshot(...)`.
_new_object = object.__new__
_set_base = StateSnapshot.__dict__["_base"].__set__
_set_overlay = StateSnapshot.__dict__["_overlay"].__set__
_set_len = StateSnapshot.__dict__["_len"].__set__


def _new_snapshot(
    base: dict[StateKey, EventId], overlay: dict[StateKey, EventId], length: int
) -> StateSnapshot:
    snapshot: StateSnapshot = _new_object(StateSnapshot)
    _set_base(snapshot, base)
    _set_overlay(snapshot, overlay)
    _set_len(snapshot, length)
    return snapshot


EMPTY_STATE = StateSnapshot()


__all__ = ["EMPTY_STATE", "StateSnapshot"]
