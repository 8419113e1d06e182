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
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from s2s_node.core.auth import AuthError, StateKey, check_auth, compute_auth_keys
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.stateres import compute_own_auth_state

GetEvent = Callable[[EventId], Pdu]
IsRejected = Callable[[EventId], bool]
BaseLookup = Callable[[StateKey], EventId | None]
_INF = float("inf")
_UNSET: Any = object()
# The steps of one key: their positions (ascending) and their event IDs.
_Entries = tuple[list[float], list[EventId]]
# A step: its event, the key it sets and the keys its check reads.
_Step = tuple[Pdu, StateKey, tuple[StateKey, ...]]
_V = TypeVar("_V")


class Memo(dict[EventId, _V]):
    """A per-event cache that asks `load` on a miss (`__getitem__` is the cached lookup, in
    C on a hit)."""

    __slots__ = ("_load",)

    def __init__(self, load: Callable[[EventId], _V]) -> None:
        super().__init__()
        self._load = load

    def __missing__(self, event_id: EventId) -> _V:
        value = self[event_id] = self._load(event_id)
        return value


class CheckInputs:
    """The per-event facts the checks read, memoised (events and their rejection never
    change while they live): `auth_event[id]` is the event as an auth map holds it (None if
    rejected), `own_auth_state[id]` a step's own non-rejected auth events by key, `step[id]`
    a step's record (its event, the key it sets and the keys its check reads), kept for the
    steps that move within a fold or from one fold to the other."""

    __slots__ = ("auth_event", "own_auth_state", "step")

    def __init__(self, get_event: GetEvent, is_rejected: IsRejected) -> None:
        self.step: dict[EventId, _Step] = {}
        self.auth_event: dict[EventId, Pdu | None] = _AuthEvents(get_event, is_rejected)
        self.own_auth_state: dict[EventId, dict[StateKey, Pdu]] = _OwnAuthStates(
            get_event, is_rejected
        )


class _AuthEvents(dict[EventId, Pdu | None]):
    """`CheckInputs.auth_event`: a `Memo` whose load is written out (no loader call)."""

    __slots__ = ("_get_event", "_is_rejected")

    def __init__(self, get_event: GetEvent, is_rejected: IsRejected) -> None:
        super().__init__()
        self._get_event = get_event
        self._is_rejected = is_rejected

    def __missing__(self, event_id: EventId) -> Pdu | None:
        value = self[event_id] = None if self._is_rejected(event_id) else self._get_event(event_id)
        return value


class _OwnAuthStates(dict[EventId, dict[StateKey, Pdu]]):
    """`CheckInputs.own_auth_state`: a `Memo` whose load is written out (no loader call)."""

    __slots__ = ("_get_event", "_is_rejected")

    def __init__(self, get_event: GetEvent, is_rejected: IsRejected) -> None:
        super().__init__()
        self._get_event = get_event
        self._is_rejected = is_rejected

    def __missing__(self, event_id: EventId) -> dict[StateKey, Pdu]:
        get_event = self._get_event
        value = self[event_id] = compute_own_auth_state(
            get_event(event_id), get_event, self._is_rejected
        )
        return value


class _Finals(dict[StateKey, EventId | None]):
    """A fold's final values: those of the keys its steps set (as of the end of the last
    update), the fold's base answering for any other key (`__missing__`), so that the fold's
    `final`, which the other fold uses as its base, is a lookup in C for a key a step sets."""

    __slots__ = ("base",)

    def __init__(self, base: BaseLookup) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, key: StateKey) -> EventId | None:
        return self.base(key)


class AuthCheckFold:
    """Iterative auth checks (digest 6.2) over an ordered list of events, kept up to date.

    Each step is an event at a float position (positions are distinct). The value of a key at
    a position is the last step before it that passed and sets that key, else the base. A
    step passes if `check_auth` allows it against the values of its auth keys at its position
    (with its own auth events filling missing or rejected ones, as
    `stateres._iterative_auth_checks` does).

    Per key, the steps setting it (writers) and those reading it (readers) are kept as two
    parallel lists each, positions ascending, so that the value at a position is a bisection
    over floats and a short walk back to the last writer that passed.
    """

    def __init__(self, base: BaseLookup, inputs: CheckInputs) -> None:
        self._usable = inputs.auth_event
        self._step_memo = inputs.step
        self._own = inputs.own_auth_state
        self.pos: dict[EventId, float] = {}
        # Per step: the event, the key it sets and the keys its check reads.
        self._steps: dict[EventId, _Step] = {}
        self._passed: dict[EventId, bool] = {}
        self._writers: dict[StateKey, _Entries] = {}
        self._readers: dict[StateKey, _Entries] = {}
        # The final value of every key some step sets, as of the end of the last update
        # (a key no step that passed sets may be missing: its final value is the base's).
        self._finals = _Finals(base)
        # `final(key)`: the value of `key` after the last step (as of the end of the last
        # update); the finals' own lookup, in C when a step sets the key.
        self.final: Callable[[StateKey], EventId | None] = self._finals.__getitem__

    @property
    def base(self) -> BaseLookup:
        """What a key is worth before the first step (the fold's starting state)."""
        return self._finals.base

    @base.setter
    def base(self, base: BaseLookup) -> None:
        self._finals.base = base

    def build(
        self, steps: Iterable[tuple[Pdu, float]], base_state: Mapping[StateKey, EventId | None]
    ) -> None:
        """Fill an empty fold with steps in ascending position and run them once, in order
        (what `update(inserted=...)` would do, without its bookkeeping), as
        `stateres._iterative_auth_checks` does. `base_state` is what `base` answers, as a map
        (None for a key it lacks), read in C during the run."""
        assert not self.pos
        writers = self._writers
        readers = self._readers
        pos = self.pos
        records = self._steps
        memo = self._step_memo
        passed = self._passed
        usable = self._usable
        own = self._own
        # The partial state as the steps that pass update it (one pass: each step is
        # recorded, then checked).
        state = dict(base_state)
        for given, at in steps:
            event_id = given.event_id
            record = memo.get(event_id)
            if record is None:
                # (`_step_record`, in line.)
                state_key = given.state_tuple
                assert state_key is not None
                record = memo[event_id] = (given, state_key, tuple(compute_auth_keys(given)))
            event, own_key, auth_keys = record
            pos[event_id] = at
            records[event_id] = record
            entries = writers.get(own_key)
            if entries is None:
                entries = writers[own_key] = ([], [])
            entries[0].append(at)
            entries[1].append(event_id)
            # The step reads each auth key; the check's auth map holds for each the state's
            # event unless rejected, the step's own auth events filling the rest (as
            # `stateres.is_allowed_in_partial_state` builds it).
            auth_state: dict[StateKey, Pdu] = {}
            complete = True
            for key in auth_keys:
                entries = readers.get(key)
                if entries is None:
                    entries = readers[key] = ([], [])
                entries[0].append(at)
                entries[1].append(event_id)
                state_id = state.get(key)
                if state_id is not None:
                    auth_event = usable[state_id]
                    if auth_event is not None:
                        auth_state[key] = auth_event
                        continue
                complete = False
            if not complete:
                auth_state = own[event_id] | auth_state
            # (`stateres.is_allowed_by`, in line.)
            try:
                check_auth(event, auth_state)
            except AuthError:
                passed[event_id] = False
            else:
                passed[event_id] = True
                state[own_key] = event_id
        self._finals.update(zip(writers, map(state.get, writers), strict=True))

    def _value_at(self, key: StateKey, at: float) -> EventId | None:
        entries = self._writers.get(key)
        if entries is not None:
            passed = self._passed
            ids = entries[1]
            i = bisect_left(entries[0], at)
            while i:
                i -= 1
                event_id = ids[i]
                if passed[event_id]:
                    return event_id
        return self.base(key)

    def value_at(self, key: StateKey, at: float) -> EventId | None:
        """The value of `key` for a step at position `at` (what the steps before it set)."""
        return self._value_at(key, at)

    def final_state(
        self, base_state: Mapping[StateKey, EventId | None]
    ) -> dict[StateKey, EventId | None]:
        """`final` for every key as a map, `base_state` being what `base` answers as one
        (a key neither has: None)."""
        state = dict(base_state)
        state.update(self._finals)
        return state

    def remap(self, new_positions: Mapping[EventId, float]) -> None:
        """Move every step to a new position, in the same order."""
        self.pos = {event_id: new_positions[event_id] for event_id in self.pos}
        for table in (self._writers, self._readers):
            for entries in table.values():
                entries[0][:] = [new_positions[event_id] for event_id in entries[1]]

    def respace(
        self, low: float | None, high: float | None, new_positions: Mapping[EventId, float]
    ) -> None:
        """Move the steps strictly between positions `low` and `high` (None: no bound), all
        of which `new_positions` holds, to their new positions there, in the same order
        (it may hold events that are not steps)."""
        pos = self.pos
        records = self._steps
        keys: set[StateKey] = set()
        for event_id, at in new_positions.items():
            if event_id in pos:
                pos[event_id] = at
                _event, own_key, auth_keys = records[event_id]
                keys.add(own_key)
                keys.update(auth_keys)
        for table in (self._writers, self._readers):
            for key in keys:
                entries = table.get(key)
                if entries is None:
                    continue
                positions, ids = entries
                # The key's steps in the window are a slice (the others are outside it).
                start = 0 if low is None else bisect_right(positions, low)
                end = len(positions) if high is None else bisect_left(positions, high)
                positions[start:end] = [new_positions[e] for e in ids[start:end]]

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
        writers_of = self._writers
        readers_of = self._readers
        passed = self._passed
        pos = self.pos
        records = self._steps
        push = heapq.heappush

        def changed_from(key: StateKey, at: float) -> None:
            # The value of `key` changed for positions after `at`, up to and including the
            # next step that passed and sets it (a step reads before it writes).
            touched.add(key)
            readers = readers_of.get(key)
            if readers is None or not readers[0]:
                return
            end = _INF
            writers = writers_of.get(key)
            if writers is not None:
                ids = writers[1]
                for i in range(bisect_right(writers[0], at), len(ids)):
                    if passed[ids[i]]:
                        end = writers[0][i]
                        break
            reader_pos, reader_ids = readers
            stop = len(reader_pos) if end is _INF else bisect_right(reader_pos, end)
            for i in range(bisect_right(reader_pos, at), stop):
                push(agenda, (reader_pos[i], reader_ids[i]))

        base_changed = list(base_changed)
        for key in base_changed:
            changed_from(key, -_INF)
        for event_id in removed:
            at = pos.pop(event_id)
            _event, own_key, auth_keys = records.pop(event_id)
            was_passed = passed.pop(event_id)
            # Out of its key's writers and its auth keys' readers (found by position).
            positions, ids = writers_of[own_key]
            i = bisect_left(positions, at)
            assert ids[i] == event_id
            del positions[i], ids[i]
            for key in auth_keys:
                positions, ids = readers_of[key]
                i = bisect_left(positions, at)
                assert ids[i] == event_id
                del positions[i], ids[i]
            if was_passed:
                changed_from(own_key, at)
        memo = self._step_memo
        for event, at in inserted:
            event_id = event.event_id
            record = memo.get(event_id)
            if record is None:
                record = memo[event_id] = _step_record(event)
            _event, own_key, auth_keys = record
            pos[event_id] = at
            records[event_id] = record
            passed[event_id] = False
            entries = writers_of.get(own_key)
            if entries is None:
                entries = writers_of[own_key] = ([], [])
            positions, ids = entries
            i = bisect_left(positions, at)
            positions.insert(i, at)
            ids.insert(i, event_id)
            for key in auth_keys:
                entries = readers_of.get(key)
                if entries is None:
                    entries = readers_of[key] = ([], [])
                positions, ids = entries
                i = bisect_left(positions, at)
                positions.insert(i, at)
                ids.insert(i, event_id)
            push(agenda, (at, event_id))

        # Steps come off the agenda by position; a step is pushed again only before it is
        # checked (pushes while checking are after the step being checked), so a repeat
        # is the entry just checked.
        last = -_INF
        base = self.base
        usable = self._usable
        own = self._own
        while agenda:
            at, event_id = heapq.heappop(agenda)
            if at == last or pos.get(event_id) != at:
                continue
            last = at
            event, own_key, auth_keys = records[event_id]
            # The check's auth map (as in `build`), from the values at its position.
            # Kept in line in both loops on purpose: one shared function measured +5% of the
            # resolver's instructions on the c1000 rooms (a call and a list per check).
            auth_state: dict[StateKey, Pdu] = {}
            complete = True
            for key in auth_keys:
                # The value at its position (`_value_at`, in line): the last writer before
                # it that passed, else the base.
                state_id = None
                entries = writers_of.get(key)
                if entries is not None:
                    ids = entries[1]
                    i = bisect_left(entries[0], at)
                    while i:
                        i -= 1
                        if passed[ids[i]]:
                            state_id = ids[i]
                            break
                    else:
                        state_id = base(key)
                else:
                    state_id = base(key)
                if state_id is not None:
                    auth_event = usable[state_id]
                    if auth_event is not None:
                        auth_state[key] = auth_event
                        continue
                complete = False
            if not complete:
                auth_state = own[event_id] | auth_state
            # (`stateres.is_allowed_by`, in line.)
            try:
                check_auth(event, auth_state)
            except AuthError:
                now = False
            else:
                now = True
            if now is not passed[event_id]:
                passed[event_id] = now
                changed_from(own_key, at)
        # Only keys whose final value changed (or whose base did) are news for the caller.
        changed = set(base_changed)
        finals = self._finals
        for key in touched:
            entries = writers_of.get(key)
            if entries is not None:
                # The value after the last step (`_value_at`, in line): the last writer
                # that passed, else the base.
                value: EventId | None
                for event_id in reversed(entries[1]):
                    if passed[event_id]:
                        value = event_id
                        break
                else:
                    value = base(key)
                if finals.get(key, _UNSET) != value:
                    finals[key] = value
                    changed.add(key)
            elif finals.pop(key, _UNSET) is not _UNSET:
                changed.add(key)
        return changed


# A base that has no value for any key (an empty map's lookup: in C).
_NOTHING: dict[StateKey, EventId] = {}
no_base: BaseLookup = _NOTHING.get


def _step_record(event: Pdu) -> _Step:
    own_key = event.state_tuple
    assert own_key is not None
    return event, own_key, tuple(compute_auth_keys(event))


__all__ = ["AuthCheckFold", "BaseLookup", "CheckInputs", "Memo", "no_base"]
