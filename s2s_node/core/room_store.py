"""What the room graph stores and how: statuses, admissions, the storage protocol, a memory store.

Owns: the values `RoomGraph` records per event (`EventStatus`, `ReceiptCheck`, `Admission`),
its errors (`MissingEventsError`, `RoomMismatchError`), the storage protocol it works over
(`RoomStore`, which the SQLite store in `s2s_node.store` implements) and an in-memory store
(`MemoryRoomStore`). `core.room` re-exports all of them. Must not: run checks or resolve state
(`core.room` does), or do I/O.

Spec: server-server API "Checks performed on receipt of a PDU" (outcomes; digest 8.3).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from s2s_node.core.auth import AuthRule, StateKey
from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.state_snapshot import EMPTY_STATE, StateSnapshot

StateIds = Mapping[StateKey, EventId]


class EventStatus(enum.Enum):
    """What receipt made of an event that reached the graph (digest 8.3, "Outcomes")."""

    ACCEPTED = "accepted"
    SOFT_FAILED = "soft_failed"  # valid, kept, never an extremity, not applied to current state
    REJECTED = "rejected"  # kept as a DAG node, never applied to state, never a prev_event


class ReceiptCheck(enum.Enum):
    """The receipt check an event failed (digest 8.3)."""

    AUTH_EVENTS = "auth_events"  # step 4: against its own auth_events -> rejected
    STATE_BEFORE = "state_before"  # step 5: against the state before it -> rejected
    CURRENT_STATE = "current_state"  # step 6: against the current state -> soft-failed


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """The stored outcome of steps 4-6 for one event: its status and, if it failed, why."""

    event_id: EventId
    status: EventStatus
    failed_check: ReceiptCheck | None = None
    rule: AuthRule | None = None
    detail: str = ""


class MissingEventsError(LookupError):
    """The graph lacks some prev_events or auth_events of an event; fetch them and retry."""

    def __init__(self, event_id: EventId, missing: tuple[EventId, ...]) -> None:
        super().__init__(f"{event_id} cites {len(missing)} unknown events: {', '.join(missing)}")
        self.event_id = event_id
        self.missing = missing


class RoomMismatchError(ValueError):
    """An event does not belong to this room graph (other room ID or room version)."""


# ----------------------------------------------------------------------------------------------
# Storage


class RoomStore(Protocol):
    """What `RoomGraph` needs from storage, for one room. Synchronous; a SQLite store can
    implement it without holding the room in memory (state maps may be lazy `Mapping`s).

    `commit` writes one event with everything derived from it, atomically: nothing of it is
    visible if it raises.
    """

    def get_pdu(self, event_id: EventId) -> Pdu | None:
        """The stored event (the redacted copy if its hash did not match), or None."""

    def get_admission(self, event_id: EventId) -> Admission | None:
        """The event's status and, if it failed a check, the reason; None if unknown."""

    def get_state_before(self, event_id: EventId) -> StateIds | None: ...

    def get_state_after(self, event_id: EventId) -> StateIds | None:
        """State after the event; for a rejected event, the state before it."""

    def get_forward_extremities(self) -> frozenset[EventId]: ...

    def get_current_state(self) -> StateIds: ...

    @property
    def auth_chains(self) -> AuthChainIndex:
        """The room's auth-chain index.

        `RoomGraph` adds an event to it just before resolving the state after it and calling
        `commit` (an entry only restates the event's own auth_events, so the entry of an
        event whose commit failed is harmless); `commit` persists what the store needs.
        """

    def commit(
        self,
        *,
        pdu: Pdu,
        admission: Admission,
        state_before: StateIds,
        state_after: StateIds,
        forward_extremities: frozenset[EventId] | None,
        current_state: StateIds | None,
    ) -> None:
        """Store the event; `None` for extremities or current state means unchanged."""


class MemoryRoomStore:
    """A `RoomStore` in memory. State maps are `StateSnapshot`s shared between events."""

    def __init__(self) -> None:
        self._pdus: dict[EventId, Pdu] = {}
        self._admissions: dict[EventId, Admission] = {}
        self._state_before: dict[EventId, StateSnapshot] = {}
        self._state_after: dict[EventId, StateSnapshot] = {}
        self._extremities: frozenset[EventId] = frozenset()
        self._current: StateSnapshot = EMPTY_STATE
        # The room's auth-chain index (`RoomStore.auth_chains`): an attribute, never replaced
        # (read once per received state event; a property would add a call).
        self.auth_chains = AuthChainIndex()
        # The lookups of `RoomStore` are the dicts' own `get`: the room graph calls them several
        # times per received event (each auth event's PDU and admission), and a method would
        # add a Python call to each. Same answers (a test pins them against the maps).
        self.get_pdu: Callable[[EventId], Pdu | None] = self._pdus.get
        self.get_admission: Callable[[EventId], Admission | None] = self._admissions.get
        self.get_state_before: Callable[[EventId], StateSnapshot | None] = self._state_before.get
        self.get_state_after: Callable[[EventId], StateSnapshot | None] = self._state_after.get

    def __len__(self) -> int:
        return len(self._pdus)

    def get_forward_extremities(self) -> frozenset[EventId]:
        return self._extremities

    def get_current_state(self) -> StateSnapshot:
        return self._current

    def commit(
        self,
        *,
        pdu: Pdu,
        admission: Admission,
        state_before: StateIds,
        state_after: StateIds,
        forward_extremities: frozenset[EventId] | None,
        current_state: StateIds | None,
    ) -> None:
        event_id = pdu.event_id
        if event_id in self._pdus:
            raise ValueError(f"{event_id} is already stored")
        before = (
            state_before if type(state_before) is StateSnapshot else StateSnapshot.of(state_before)
        )
        after = before if state_after is state_before else StateSnapshot.of(state_after)
        current = (
            current_state
            if type(current_state) is StateSnapshot or current_state is None
            else StateSnapshot.of(current_state)
        )
        self._pdus[event_id] = pdu
        self._admissions[event_id] = admission
        self._state_before[event_id] = before
        self._state_after[event_id] = after
        if forward_extremities is not None:
            self._extremities = forward_extremities
        if current is not None:
            self._current = current


__all__ = [
    "Admission",
    "EventStatus",
    "MemoryRoomStore",
    "MissingEventsError",
    "ReceiptCheck",
    "RoomMismatchError",
    "RoomStore",
    "StateIds",
]
