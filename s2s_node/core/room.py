"""The event graph of one room: each event's status, the state before and after it, the
forward extremities and the current state.

Owns: `RoomGraph` (receipt checks 4 to 6 of a PDU that already passed format, signature and
hash checks, and building new events on top of the forward extremities). It re-exports the
statuses, admissions, storage protocol (`RoomStore`) and memory store of `core.room_store` and
the shared state maps of `core.state_snapshot`. Must not: check formats, signatures or hashes (see
`ingest`), fetch missing events (the shell does that after a `MissingEventsError`), or do I/O.

Spec: server-server API "Checks performed on receipt of a PDU" (steps 4-6; digest 8.3),
"Soft failure", state before/after an event (digest 6.1, 6.5), prev_events and depth (digest
3.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import fields
from typing import Any

from s2s_node.core.auth import (
    AuthError,
    StateKey,
    check_auth,
    check_auth_events,
    compute_auth_keys,
    select_auth_events,
)
from s2s_node.core.authchain import AuthChainError, AuthChainReason
from s2s_node.core.events import MAX_DEPTH, MAX_PREV_EVENTS, Pdu, build_event
from s2s_node.core.ids import EventId, RoomId
from s2s_node.core.keys import SigningKey
from s2s_node.core.room_store import (
    Admission,
    EventStatus,
    MemoryRoomStore,
    MissingEventsError,
    ReceiptCheck,
    RoomMismatchError,
    RoomStore,
    StateIds,
)
from s2s_node.core.rules import RoomVersionRules
from s2s_node.core.state_snapshot import EMPTY_STATE, StateSnapshot
from s2s_node.core.stateres import resolve
from s2s_node.core.stateres_incremental import IncrementalResolver

# ----------------------------------------------------------------------------------------------
# The graph


class RoomGraph:
    """One room's DAG: runs receipt steps 4-6 on each new event and keeps state up to date.

    Every event, local or remote, goes through `add`. Current state is the resolution of the
    states after the forward extremities; it is stored and recomputed only when the set of
    those states changes.
    """

    def __init__(
        self, rules: RoomVersionRules, room_id: RoomId, store: RoomStore | None = None
    ) -> None:
        self.rules = rules
        self.room_id = room_id
        self.store: RoomStore = MemoryRoomStore() if store is None else store
        # The current state's resolution, kept from one event to the next (forks that stand
        # for a while call for many resolutions of nearly the same states).
        self._current_resolver: IncrementalResolver | None = None

    # -- queries

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self.store.get_admission(EventId(event_id)) is not None

    def get_event(self, event_id: EventId) -> Pdu:
        """A known event; `KeyError` if the graph does not have it."""
        pdu = self.store.get_pdu(event_id)
        if pdu is None:
            raise KeyError(event_id)
        return pdu

    def status(self, event_id: EventId) -> EventStatus | None:
        admission = self.store.get_admission(event_id)
        return None if admission is None else admission.status

    def admission(self, event_id: EventId) -> Admission | None:
        return self.store.get_admission(event_id)

    def is_rejected(self, event_id: EventId) -> bool:
        admission = self.store.get_admission(event_id)
        return admission is not None and admission.status is _REJECTED

    def state_before(self, event_id: EventId) -> StateIds:
        state = self.store.get_state_before(event_id)
        if state is None:
            raise KeyError(event_id)
        return state

    def state_after(self, event_id: EventId) -> StateIds:
        state = self.store.get_state_after(event_id)
        if state is None:
            raise KeyError(event_id)
        return state

    def current_state(self) -> StateIds:
        return self.store.get_current_state()

    @property
    def forward_extremities(self) -> frozenset[EventId]:
        return self.store.get_forward_extremities()

    # -- receiving

    def add(self, pdu: Pdu) -> Admission:
        """Run receipt checks 4-6 on an event that passed checks 1-3, and store it.

        Raises `MissingEventsError` (nothing stored) when a prev_event or auth_event is
        unknown, and `RoomMismatchError` for an event of another room. Adding a known event
        again returns its stored admission and changes nothing.
        """
        store = self.store
        known = store.get_admission(pdu.event_id)
        if known is not None:
            return known
        if (
            pdu.room_id != self.room_id
            or pdu.rules is not self.rules
            or pdu.state_tuple == _CREATE_KEY
        ):
            self._check_room(pdu)
        get_pdu = store.get_pdu
        get_admission = store.get_admission
        auth_events: dict[EventId, Pdu] = {}
        # The rejected ones among the auth events: all that `check_auth_events` asks about.
        rejected: set[EventId] | None = None
        complete = True
        for event_id in pdu.prev_events:
            if get_pdu(event_id) is None:
                complete = False
        for event_id in pdu.auth_event_ids:
            auth_event = get_pdu(event_id)
            if auth_event is None:
                complete = False
                continue
            auth_events[event_id] = auth_event
            admission = get_admission(event_id)
            if admission is not None and admission.status is _REJECTED:
                if rejected is None:
                    rejected = set()
                rejected.add(event_id)
        if not complete:
            missing = [e for e in (*pdu.prev_events, *pdu.auth_event_ids) if get_pdu(e) is None]
            raise MissingEventsError(pdu.event_id, tuple(dict.fromkeys(missing)))

        # Step 4: the auth rules against the event's own auth_events.
        try:
            own_auth = check_auth_events(
                pdu, auth_events, _NONE_REJECTED if rejected is None else rejected.__contains__
            )
            check_auth(pdu, own_auth)
        except AuthError as exc:
            before = self._compute_state_before(pdu)
            failure = _failure(pdu, ReceiptCheck.AUTH_EVENTS, exc)
            return self._commit(pdu, before, failure, store.get_forward_extremities())

        # Step 5: the auth rules against the state before the event (resolved at merges).
        prev_events = pdu.prev_events
        # (`_compute_state_before` without its call in the usual case: one prev_event.)
        found = store.get_state_after(prev_events[0]) if len(prev_events) == 1 else None
        before = found if type(found) is StateSnapshot else self._compute_state_before(pdu)
        auth_keys = compute_auth_keys(pdu)
        before_auth = before.pick(auth_keys)
        # Whether the state before cites the same auth events (then step 4 decided already).
        same = len(before_auth) == len(own_auth)
        if same:
            get = before_auth.get
            for key, event in own_auth.items():
                if get(key) != event.event_id:
                    same = False
                    break
        if not same:
            try:
                check_auth(pdu, self._load(before_auth))
            except AuthError as exc:
                failure = _failure(pdu, ReceiptCheck.STATE_BEFORE, exc)
                return self._commit(pdu, before, failure, store.get_forward_extremities())

        # Step 6: the auth rules against the current state; failure means soft-fail.
        # When the event extends exactly the forward extremities, the current state is the
        # state before it, and step 5 decided already.
        extremities = store.get_forward_extremities()
        if (
            not (len(extremities) == 1 and prev_events[0] in extremities)
            if len(prev_events) == 1
            else frozenset(prev_events) != extremities
        ):
            current_auth = _pick(store.get_current_state(), auth_keys)
            if current_auth != before_auth:
                try:
                    check_auth(pdu, self._load(current_auth))
                except AuthError as exc:
                    failure = _failure(pdu, ReceiptCheck.CURRENT_STATE, exc)
                    return self._commit(pdu, before, failure, extremities)

        return self._commit(pdu, before, _accepted(pdu.event_id), extremities)

    def _check_room(self, pdu: Pdu) -> None:
        if pdu.room_id != self.room_id or (pdu.rules is not self.rules and pdu.rules != self.rules):
            raise RoomMismatchError(
                f"{pdu.event_id} is in {pdu.room_id} (v{pdu.rules.version}), "
                f"not {self.room_id} (v{self.rules.version})"
            )
        if pdu.state_tuple == ("m.room.create", "") and self.store.get_current_state().get(
            ("m.room.create", "")
        ) not in (None, pdu.event_id):
            # DEVIATION: the spec does not say what a second create event with the same room
            # ID means (possible before room version 12). It defines another room: refuse it
            # like an event of another room instead of letting it fork this one.
            raise RoomMismatchError(f"{pdu.event_id} is a second create event for {self.room_id}")

    def _compute_state_before(self, pdu: Pdu) -> StateSnapshot:
        """Digest 6.1: the resolution of the states after the prev_events."""
        prev_events = pdu.prev_events
        if len(prev_events) == 1:  # no merge: the state after the one prev_event
            state = self.store.get_state_after(prev_events[0])
            if type(state) is StateSnapshot:
                return state
            return StateSnapshot.of(self.state_after(prev_events[0]))
        return self._resolve([self.state_after(event_id) for event_id in prev_events])

    def _commit(
        self,
        pdu: Pdu,
        before: StateSnapshot,
        admission: Admission,
        old: frozenset[EventId],
    ) -> Admission:
        """Store `pdu` with its admission; `old` is the forward extremities before it."""
        status = admission.status
        store = self.store
        state_tuple = pdu.state_tuple
        # Only state events can be auth events or state. One citing unindexed auth events (a
        # message, an unindexed rejected event) was rejected at step 4 and is never state.
        if state_tuple is not None:
            try:
                store.auth_chains.add(pdu.event_id, pdu.auth_event_ids)
            except AuthChainError as exc:
                if exc.reason is not AuthChainReason.AUTH_EVENT_UNKNOWN:
                    raise
        after = before
        if status is not _REJECTED and state_tuple is not None:
            after = before.with_entry(state_tuple, pdu.event_id)
        extremities: frozenset[EventId] | None = None
        current: StateSnapshot | None = None
        if status is _ACCEPTED:
            prev_events = pdu.prev_events
            if len(prev_events) == 1 and prev_events[0] in old:
                # The usual case: the one prev_event was an extremity (so it was accepted, and
                # `_superseded_by` is just it).
                if len(old) == 1:  # the linear case: the event is the only extremity
                    extremities = frozenset((pdu.event_id,))
                    current = after  # (`_compute_current_state`'s answer, without its call)
                else:
                    kept = set(old)
                    kept.remove(prev_events[0])
                    kept.add(pdu.event_id)
                    extremities = frozenset(kept)
                    if after is not before:
                        current = self._compute_current_state(old, extremities, pdu, after, False)
                    # Else the set of states is unchanged: the event replaces its prev_event,
                    # an extremity, and its state after is the state after that prev_event.
            else:
                extremities = (old - self._superseded_by(pdu)) | {pdu.event_id}
                current = self._compute_current_state(old, extremities, pdu, after, after is before)
        store.commit(
            pdu=pdu,
            admission=admission,
            state_before=before,
            state_after=after,
            forward_extremities=extremities,
            current_state=current,
        )
        return admission

    def _superseded_by(self, pdu: Pdu) -> set[EventId]:
        """The events an accepted event takes off the forward extremities.

        Its prev_events, and, through prev_events that were soft-failed or rejected, their
        ancestors up to the first accepted ones: those now have a known accepted descendant,
        and leaving them would keep dangling extremities (Synapse does the same).
        """
        get_admission = self.store.get_admission
        prev_events = pdu.prev_events
        if len(prev_events) == 1:  # the usual case: one accepted prev_event
            admission = get_admission(prev_events[0])
            if admission is not None and admission.status is _ACCEPTED:
                return {prev_events[0]}
        elif all(
            (a := get_admission(e)) is not None and a.status is _ACCEPTED for e in prev_events
        ):
            return set(prev_events)  # nothing to look through
        superseded: set[EventId] = set()
        stack = list(pdu.prev_events)
        while stack:
            event_id = stack.pop()
            if event_id in superseded:
                continue
            superseded.add(event_id)
            if self.status(event_id) is not _ACCEPTED:
                stack.extend(self.get_event(event_id).prev_events)
        return superseded

    def _compute_current_state(
        self,
        old: frozenset[EventId],
        new: frozenset[EventId],
        pdu: Pdu,
        after: StateSnapshot,
        same_as_before: bool,
    ) -> StateSnapshot | None:
        """The resolution over the new extremities, or None if the set of states is unchanged.

        `same_as_before`: `after` is the state before the event (it changed no state).
        """
        if len(new) == 1:  # the linear case: the event is the only extremity
            return after
        state_after = self.state_after
        event_id = pdu.event_id
        if len(new) == 2:  # a fork of two (the event and one other extremity)
            others = [state_after(e) for e in new if e != event_id]
        else:
            others = _unique([state_after(e) for e in sorted(new) if e != event_id])
        if same_as_before:
            new_states = _unique([after, *others])
            old_states = _unique([state_after(e) for e in sorted(old)])
            if len(new_states) == len(old_states) and all(
                any(s is o or s == o for o in old_states) for s in new_states
            ):
                return None
        else:
            # An event that changed the state holds its own ID in `after`, which no state of
            # an earlier event does: `after` is a new state, unlike any other, so the set of
            # states changed.
            new_states = [after, *others]

        def get_event(event_id: EventId) -> Pdu:
            return pdu if event_id == pdu.event_id else self.get_event(event_id)

        index = self.store.auth_chains
        resolver = self._current_resolver
        if resolver is None or resolver.index is not index:
            # A store that rolled back drops its index (and may have dropped events the
            # resolver's work was built on): start from scratch with the new one.
            resolver = self._current_resolver = IncrementalResolver(
                self.rules, index, self.is_rejected
            )
        return resolver.resolve(new_states, get_event)

    def _resolve(
        self, states: list[StateIds], get_event: Callable[[EventId], Pdu] | None = None
    ) -> StateSnapshot:
        unique = _unique(states)
        if not unique:
            return EMPTY_STATE
        if len(unique) == 1:
            # One input (or identical inputs): nothing is conflicted.
            return StateSnapshot.of(unique[0])
        plain = [s.to_dict() if isinstance(s, StateSnapshot) else dict(s) for s in unique]
        resolved = resolve(
            self.rules,
            plain,
            self.store.auth_chains,
            self.get_event if get_event is None else get_event,
            self.is_rejected,
        )
        return StateSnapshot(dict(resolved))

    def _load(self, ids: Mapping[StateKey, EventId]) -> dict[StateKey, Pdu]:
        return {key: self.get_event(event_id) for key, event_id in ids.items()}

    # -- sending

    def build_event(
        self,
        *,
        event_type: str,
        content: Mapping[str, Any],
        sender: str,
        state_key: str | None = None,
        now_ms: int,
        server_name: str,
        signing_key: SigningKey,
        extra: Mapping[str, Any] | None = None,
    ) -> Pdu:
        """A new signed event on top of the forward extremities (digest 3.5, 5.2).

        prev_events: up to 20 forward extremities, deepest first, ties by event ID. auth_events:
        selected from the current state. The event is not added: pass it to `add`, so local
        events meet the same checks as remote ones. (The create event of a room version 12
        room names no room ID; build it with `events.build_event`.)
        """
        chosen = sorted(self.forward_extremities, key=lambda e: (-self.get_event(e).depth, e))[
            :MAX_PREV_EVENTS
        ]
        depth = 1 + max((self.get_event(e).depth for e in chosen), default=0)
        auth_events = select_auth_events(
            event_type, sender, state_key, content, self.rules, self.current_state()
        )
        return build_event(
            rules=self.rules,
            room_id=self.room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=chosen,
            auth_events=auth_events,
            depth=min(depth, MAX_DEPTH),
            origin_server_ts=now_ms,
            server_name=server_name,
            signing_key=signing_key,
            state_key=state_key,
            extra=extra,
        )


_CREATE_KEY = ("m.room.create", "")
# An enum member read from its class costs a call of the metaclass's attribute hook (about
# 15 times a global's load): the hot paths compare with these.
_ACCEPTED = EventStatus.ACCEPTED
_REJECTED = EventStatus.REJECTED
_NONE_REJECTED: Callable[[object], bool] = frozenset().__contains__

_STATUS_OF_CHECK = {
    ReceiptCheck.AUTH_EVENTS: EventStatus.REJECTED,
    ReceiptCheck.STATE_BEFORE: EventStatus.REJECTED,
    ReceiptCheck.CURRENT_STATE: EventStatus.SOFT_FAILED,
}


# One admission per event: `Admission(...)` sets its frozen fields through
# `object.__setattr__`; `_accepted` sets the same slots through their descriptors (about half
# the cost), as `ingest._new_verdict` does. A test pins that it equals `Admission(...)`.
_new_object = object.__new__
_ADMISSION_SLOTS = {f.name: getattr(Admission, f.name).__set__ for f in fields(Admission)}
_set_event_id = _ADMISSION_SLOTS["event_id"]
_set_status = _ADMISSION_SLOTS["status"]
_set_failed_check = _ADMISSION_SLOTS["failed_check"]
_set_rule = _ADMISSION_SLOTS["rule"]
_set_detail = _ADMISSION_SLOTS["detail"]


def _accepted(event_id: EventId) -> Admission:
    admission: Admission = _new_object(Admission)
    _set_event_id(admission, event_id)
    _set_status(admission, _ACCEPTED)
    _set_failed_check(admission, None)
    _set_rule(admission, None)
    _set_detail(admission, "")
    return admission


def _failure(pdu: Pdu, check: ReceiptCheck, exc: AuthError) -> Admission:
    return Admission(
        event_id=pdu.event_id,
        status=_STATUS_OF_CHECK[check],
        failed_check=check,
        rule=exc.rule,
        detail=str(exc),
    )


def _pick(state: StateIds, keys: AbstractSet[StateKey]) -> dict[StateKey, EventId]:
    if type(state) is StateSnapshot:
        return state.pick(keys)
    picked: dict[StateKey, EventId] = {}
    for key in keys:
        event_id = state.get(key)
        if event_id is not None:
            picked[key] = event_id
    return picked


def _unique(states: list[StateIds]) -> list[StateIds]:
    """The distinct maps of `states` (resolution over equal maps is the map itself)."""
    unique: list[StateIds] = []
    for state in states:
        if not any(state is u or state == u for u in unique):
            unique.append(state)
    return unique


__all__ = [
    "EMPTY_STATE",
    "Admission",
    "EventStatus",
    "MemoryRoomStore",
    "MissingEventsError",
    "ReceiptCheck",
    "RoomGraph",
    "RoomMismatchError",
    "RoomStore",
    "StateIds",
    "StateSnapshot",
]
