"""Iterative auth checks kept up to date as their steps come, go and move.

Owns: `AuthCheckFold`, the fold at the heart of state resolution (digest 6.2, steps 2 and 4:
each event, in order, is checked against the partial state and, if allowed, goes into it) as an
incremental structure: it records which keys each check read and, when steps are inserted,
removed or the starting state changes, re-runs in order only the checks that read a key whose
value changed before them. Must not: order the events (the caller gives every step a float
position), or decide anything `stateres._iterative_auth_checks` would decide differently (the
incremental resolver's tests compare the two over whole rooms).

Spec: digest section 6.2, "Iterative auth checks"; used by `core.stateres_incremental`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from s2s_node.core.auth import StateKey, compute_auth_keys
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.stateres import is_allowed_in_partial_state

GetEvent = Callable[[EventId], Pdu]
IsRejected = Callable[[EventId], bool]
BaseLookup = Callable[[StateKey], EventId | None]
_INF = float("inf")
_UNSET: Any = object()


class AuthCheckFold:
    """Iterative auth checks (digest 6.2) over an ordered list of events, kept up to date.

    Each step is an event at a float position. The value of a key at a position is the last
    step before it that passed and sets that key, else the base. A step passes if
    `check_auth` allows it against the values of its auth keys at its position (with its own
    auth events filling missing or rejected ones, as `stateres._iterative_auth_checks` does).
    """

    def __init__(
        self,
        base: BaseLookup,
        get_event: GetEvent,
        is_rejected: IsRejected,
    ) -> None:
        self.base = base
        self._get_event = get_event
        self._is_rejected = is_rejected
        self.pos: dict[EventId, float] = {}
        self._events: dict[EventId, Pdu] = {}
        self._passed: dict[EventId, bool] = {}
        self._writers: dict[StateKey, list[tuple[float, EventId]]] = {}
        self._readers: dict[StateKey, list[tuple[float, EventId]]] = {}
        # The final value of every key some step sets, as of the end of the last update.
        self._finals: dict[StateKey, EventId | None] = {}

    def build(self, steps: Iterable[tuple[Pdu, float]]) -> None:
        """Fill an empty fold with steps in ascending position and run them once, in order
        (what `update(inserted=...)` would do, without its bookkeeping)."""
        assert not self.pos
        state: dict[StateKey, EventId] = {}
        base = self.base
        writers = self._writers
        readers = self._readers
        passed = self._passed

        if base is no_base:
            lookup: BaseLookup = state.get
        else:

            def lookup(key: StateKey) -> EventId | None:
                found = state.get(key)
                return base(key) if found is None else found

        for event, at in steps:
            event_id = event.event_id
            own_key = event.state_tuple
            assert own_key is not None
            self.pos[event_id] = at
            self._events[event_id] = event
            writers.setdefault(own_key, []).append((at, event_id))
            for key in compute_auth_keys(event):
                readers.setdefault(key, []).append((at, event_id))
            ok = passed[event_id] = self._check(event, lookup)
            if ok:
                state[own_key] = event_id
        self._finals = {key: self.final(key) for key in writers}

    def value_at(self, key: StateKey, at: float) -> EventId | None:
        writers = self._writers.get(key)
        if writers:
            passed = self._passed
            for i in range(bisect_left(writers, (at,)) - 1, -1, -1):
                event_id = writers[i][1]
                if passed[event_id]:
                    return event_id
        return self.base(key)

    def _value_before(self, at: float, key: StateKey) -> EventId | None:
        return self.value_at(key, at)

    def final(self, key: StateKey) -> EventId | None:
        return self.value_at(key, _INF)

    def remap(self, new_positions: Mapping[EventId, float]) -> None:
        """Move every step to a new position, in the same order."""
        self.pos = {event_id: new_positions[event_id] for event_id in self.pos}
        for table in (self._writers, self._readers):
            for key, entries in table.items():
                table[key] = [(new_positions[event_id], event_id) for _at, event_id in entries]

    def written_keys(self) -> Iterable[StateKey]:
        return self._writers.keys()

    def update(
        self,
        *,
        removed: Iterable[EventId] = (),
        inserted: Iterable[tuple[Pdu, float]] = (),
        base_changed: Iterable[StateKey] = (),
    ) -> set[StateKey]:
        """Apply the changes and re-run the affected checks; the keys whose final value
        changed (or whose base did) are returned."""
        if not removed and not inserted and not base_changed:
            return set()
        agenda: list[tuple[float, EventId]] = []
        touched: set[StateKey] = set()

        def changed_from(key: StateKey, at: float) -> None:
            # The value of `key` changed for positions after `at`, up to and including the
            # next step that passed and sets it (a step reads before it writes).
            touched.add(key)
            readers = self._readers.get(key)
            if not readers:
                return
            end = _INF
            writers = self._writers.get(key)
            if writers:
                for p, event_id in writers[bisect_left(writers, (at, "\U0010ffff")) :]:
                    if p > at and self._passed[event_id]:
                        end = p
                        break
            for item in readers[bisect_left(readers, (at, "\U0010ffff")) :]:
                if item[0] > end:
                    break
                if item[0] > at:
                    heapq.heappush(agenda, item)

        base_changed = list(base_changed)
        for key in base_changed:
            changed_from(key, -_INF)
        for event_id in removed:
            at = self.pos.pop(event_id)
            event = self._events.pop(event_id)
            passed = self._passed.pop(event_id)
            own_key = event.state_tuple
            assert own_key is not None
            _remove_sorted(self._writers[own_key], (at, event_id))
            for key in compute_auth_keys(event):
                _remove_sorted(self._readers[key], (at, event_id))
            if passed:
                changed_from(own_key, at)
        for event, at in inserted:
            event_id = event.event_id
            own_key = event.state_tuple
            assert own_key is not None
            self.pos[event_id] = at
            self._events[event_id] = event
            self._passed[event_id] = False
            insort(self._writers.setdefault(own_key, []), (at, event_id))
            for key in compute_auth_keys(event):
                insort(self._readers.setdefault(key, []), (at, event_id))
            heapq.heappush(agenda, (at, event_id))

        done: set[EventId] = set()
        while agenda:
            at, event_id = heapq.heappop(agenda)
            if event_id in done or self.pos.get(event_id) != at:
                continue
            done.add(event_id)
            event = self._events[event_id]
            now = self._check(event, partial(self._value_before, at))
            if now is not self._passed[event_id]:
                self._passed[event_id] = now
                own_key = event.state_tuple
                assert own_key is not None
                changed_from(own_key, at)
        # Only keys whose final value changed (or whose base did) are news for the caller.
        changed = set(base_changed)
        finals = self._finals
        for key in touched:
            if key in self._writers:
                value = self.final(key)
                if finals.get(key, _UNSET) != value:
                    finals[key] = value
                    changed.add(key)
            elif finals.pop(key, _UNSET) is not _UNSET:
                changed.add(key)
        return changed

    def _check(self, event: Pdu, lookup: BaseLookup) -> bool:
        return is_allowed_in_partial_state(event, lookup, self._get_event, self._is_rejected)


def no_base(_key: StateKey) -> None:
    return None


def _remove_sorted(entries: list[tuple[float, EventId]], entry: tuple[float, EventId]) -> None:
    i = bisect_left(entries, entry)
    assert entries[i] == entry
    del entries[i]


__all__ = ["AuthCheckFold", "BaseLookup", "no_base"]
