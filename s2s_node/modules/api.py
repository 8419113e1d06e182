"""The module API: what a module is, what it is handed, and how it refuses an event.

Owns: `Module` (the base class a module subclasses; every hook has a do-nothing default),
`OutgoingEvent` (what a module sees of a local event before it is built), `ModuleVeto` (the
typed refusal a module raises, which reaches the local caller) and the `ModuleContext` protocol
(what a started module may do through the node). Must not: run modules (`host` does), load
them (`loader` does), or know any particular module.

Design: DESIGN.md sections 4 (module users: `@<name>:<identifier>`, invited into s2s rooms by
their node's server user) and 6 (policy); docs/design.md section 10.

Limits every module author must know:
- Each hook runs under a deadline (`[[modules]] deadline_s`, default 5 s; config.py). A hook
  that awaits past it is cancelled, logged and counted as a failure; a hook that raises is
  logged and counted. After `MAX_CONSECUTIVE_FAILURES` failures in a row the module is disabled
  until the node restarts. A failing `check_outgoing` lets the event through (fail open).
- Deadlines only cancel at `await` points. A hook that does blocking work (CPU, file or socket
  I/O without trio) stalls the whole node while it runs; do such work with
  `await context.run_sync(fn, *args)`, which runs it in a worker thread that the deadline
  abandons (the thread itself runs to completion in the background).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from s2s_node.core.auth import StateKey
from s2s_node.core.events import Pdu
from s2s_node.core.ids import RoomId, UserId
from s2s_node.core.negotiation_vendor import VendorMethod

_T = TypeVar("_T")

MAX_CONSECUTIVE_FAILURES = 5


class VetoReason(enum.Enum):
    """Why a module refused an event."""

    MODULE = "module"  # a module's own reason (see the message)
    POLICY_RULE = "policy_rule"  # a peer's drop rule matches (DESIGN.md section 6)


class ModuleVeto(Exception):  # noqa: N818 -- a veto, not a failure; PolicyRefusal is named by wave3
    """A module refused an event; nothing was built or stored.

    The client API answers it with 403 M_FORBIDDEN; `to_json()` gives extra body keys.
    """

    reason = VetoReason.MODULE

    def __init__(self, module: str, message: str) -> None:
        super().__init__(f"refused by module {module}: {message}")
        self.module = module
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """Extra keys for an error body (`{"module": name}` here; subclasses add more)."""
        return {"module": self.module}


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingEvent:
    """A local event about to be built: what modules may veto.

    `destinations` are the other servers it would be sent to (the room's joined servers, plus
    the target's server for a membership event). `s2s` says whether the room is an s2s room.
    """

    room_id: RoomId
    event_type: str
    sender: str
    state_key: str | None
    content: Mapping[str, Any]
    destinations: frozenset[str]
    s2s: bool

    def to_matchable(self) -> dict[str, Any]:
        """The event's fields as federation JSON has them (for `core.policy.is_rule_match`)."""
        fields: dict[str, Any] = {
            "room_id": self.room_id,
            "type": self.event_type,
            "sender": self.sender,
            "content": dict(self.content),
        }
        if self.state_key is not None:
            fields["state_key"] = self.state_key
        return fields


class ModuleContext(Protocol):
    """What a started module may do through the node (handed to `Module.start`)."""

    @property
    def identifier(self) -> str:
        """This node's identifier."""
        ...

    @property
    def user_id(self) -> UserId:
        """The module's own user, `@<name>:<identifier>`."""
        ...

    async def send_event(
        self,
        room: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
    ) -> Pdu:
        """Send as the module user into an s2s room (the server user invites it first and
        raises its power level when a state event needs it)."""
        ...

    async def room_state(self, room: str) -> dict[StateKey, Pdu]:
        """The room's current state."""
        ...

    async def s2s_rooms(self) -> list[RoomId]:
        """The live s2s rooms this node is in (joined, not replaced by an upgrade)."""
        ...

    async def s2s_room_with(self, peer: str) -> RoomId | None:
        """The live s2s room shared with `peer`, if any."""
        ...

    async def is_s2s_room(self, room: str) -> bool:
        """True if this node is in `room` and it is an s2s room."""
        ...

    async def run_sync(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking `fn(*args)` in a worker thread (abandoned, not killed, on deadline)."""
        ...


class Module:
    """Subclass and override what you need; every hook defaults to doing nothing.

    A module is constructed with its config table (`Module(config)`), then `start(context)` runs
    once when the node starts. `name` is the localpart of the module's user; `event_types` the
    accepted event types in s2s rooms it wants in `on_event` (`"*"` for all).
    """

    name: ClassVar[str] = ""
    event_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    async def start(self, context: ModuleContext) -> None:
        """Called once, after the node listens."""

    async def on_event(self, event: Pdu) -> None:
        """An accepted event of one of `event_types` in an s2s room (local or remote)."""

    async def check_outgoing(self, event: OutgoingEvent) -> None:
        """Raise `ModuleVeto` (or a subclass) to refuse a local event before it is built."""

    async def check_incoming(self, event: Pdu) -> None:
        """Raise `ModuleVeto` to refuse a remote event. Where refusing is safe (an invite
        over `/invite`) the peer gets 403; an event already in a shared DAG is withheld from
        local subscribers instead (docs/design.md section 10)."""

    def vendor_methods(self) -> Sequence[VendorMethod]:
        """Vendor upgrade methods this module adds to the negotiation (DESIGN.md section 5)."""
        return ()


__all__ = [
    "MAX_CONSECUTIVE_FAILURES",
    "Module",
    "ModuleContext",
    "ModuleVeto",
    "OutgoingEvent",
    "VetoReason",
]
