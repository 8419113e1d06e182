"""Values of the upgrade negotiation: states, errors, settings, and what goes in and out.

Owns: `NegotiationState`, the typed errors (`LocalNegotiationError` for what we emit,
`RemoteNegotiationError` for what the DAG brings), `EventView` (what the machine reads of an
event), `NegotiationSettings`, `Outgoing`, `Receipt`, `Agreement`, `NegotiationSnapshot`. Must
not: hold transitions or logic (see `negotiation`, which re-exports all of these).

Spec: DESIGN.md section 5.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from s2s_node.core.canonical import JsonDict
from s2s_node.core.ids import EventId
from s2s_node.core.negotiation_messages import (
    Accept,
    ContentReason,
    Fail,
    Proposal,
    Reply,
    Side,
    VendorMessage,
)
from s2s_node.core.negotiation_vendor import VendorProgress
from s2s_node.core.upgrade_choice import UpgradeMode


class NegotiationState(enum.Enum):
    """Where one negotiation stands; the same on both nodes after the same events."""

    #: no opening event yet
    IDLE = "idle"
    #: the initiator's proposal is out; the responder owes an accept or a reply
    PROPOSED = "proposed"
    #: the responder's different map is out; the initiator owes an accept or fail "no match"
    REPLIED = "replied"
    #: maps were equal and the responder decided; the initiator owes an ack
    RESPONDER_ACCEPTED = "responder_accepted"
    #: the initiator decided after a reply; the responder owes an ack
    INITIATOR_ACCEPTED = "initiator_accepted"
    #: the initiator acked the responder's accept; the responder (decider) owes its ack back
    INITIATOR_ACKED = "initiator_acked"
    #: the responder acked the initiator's accept; the initiator (decider) owes its ack back
    RESPONDER_ACKED = "responder_acked"
    #: a vendor method runs (`m.s2s.upgrade`)
    VENDOR = "vendor"
    #: an event was malformed; the other side owes fail "bad request"
    BAD_REQUEST = "bad_request"
    #: lost to a concurrent opening that sorts first; the initiator owes fail "superseded"
    SUPERSEDED = "superseded"
    #: both sides acked (or the vendor method settled): the initiator performs the upgrade
    DONE = "done"
    #: a fail event ended it
    FAILED = "failed"


class Direction(enum.Enum):
    """Who sent an event, relative to this node (told by the sender's server name)."""

    OURS = "ours"
    THEIRS = "theirs"


class NegotiationRule(enum.Enum):
    """Why an event or a send is refused or ignored."""

    #: (state, kind, side) is not in `TRANSITIONS`
    NOT_ALLOWED = "not_allowed"
    NOT_NEGOTIATION_EVENT = "not_negotiation_event"
    #: negotiation events are sent by server users (`@:<server>`, MSC3348)
    NOT_SERVER_USER = "not_server_user"
    #: a third server spoke in a two-party negotiation
    NOT_PEER = "not_peer"
    #: `m.relates_to` cites another opening (or none)
    NOT_RELATED = "not_related"
    DUPLICATE = "duplicate"
    #: the negotiation is DONE or FAILED: the event is late
    ENDED = "ended"
    #: content breaks its schema or contradicts the record (answer: fail "bad request")
    MALFORMED = "malformed"
    #: a vendor continuation for a method this node has not registered
    NO_METHOD = "no_method"
    #: send(): the outgoing event belongs to another negotiation
    WRONG_NEGOTIATION = "wrong_negotiation"
    #: propose(): nothing left to list after the support and downgrade filters
    NOTHING_TO_PROPOSE = "nothing_to_propose"
    #: propose(): a negotiation is already running in this room
    IN_PROGRESS = "in_progress"
    #: start_vendor(): the method is not registered here
    UNKNOWN_METHOD = "unknown_method"


class NegotiationError(Exception):
    """Base of the machine's errors; use `LocalNegotiationError` or `RemoteNegotiationError`."""

    def __init__(
        self,
        reason: NegotiationRule,
        detail: str,
        content_reason: ContentReason | None = None,
    ) -> None:
        if type(self) is NegotiationError:
            raise TypeError("use LocalNegotiationError or RemoteNegotiationError")
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.content_reason = content_reason


class LocalNegotiationError(NegotiationError):
    """We tried (or our own echoed event tried) something the protocol does not allow."""


class RemoteNegotiationError(NegotiationError):
    """The peer's event is not allowed, malformed or late."""


class EventView(Protocol):
    """What the machine reads of a room event (`core.events.Pdu` satisfies it)."""

    @property
    def event_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def origin_server_ts(self) -> int: ...
    @property
    def content(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiationSettings:
    """This node's side of every negotiation (config `upgrade.*`)."""

    our_server: str
    #: our ratings {room version: 0..100}; filtered by support and the downgrade guard
    ratings: Mapping[str, int]
    mode: UpgradeMode = UpgradeMode.COMPATIBLE
    #: how long the initiator waits for the negotiation to finish (from the opening's ts)
    timeout_ms: int = 60_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """An event this node should send into the room. `content` is fresh; treat as read-only."""

    type: str
    content: JsonDict
    #: the opening event of the negotiation it belongs to; None when it opens one
    opening: EventId | None


class ReceiptStatus(enum.Enum):
    #: the table moved the state (possibly to the same state)
    APPLIED = "applied"
    #: malformed content: moved to BAD_REQUEST (or stayed there)
    MALFORMED = "malformed"
    #: not allowed now: state unchanged
    REFUSED = "refused"
    #: late (negotiation ended), duplicate or not routable: state unchanged, log it
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """What `receive` did with one event (for the driver's log)."""

    event_id: str
    status: ReceiptStatus
    before: NegotiationState | None
    after: NegotiationState | None
    error: NegotiationError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Agreement:
    """The outcome of a DONE negotiation: what the successor room will be."""

    opening: EventId
    version: str
    #: the successor's room type if the proposal named one; None keeps the current type
    room_type: str | None
    #: the vendor method that agreed, None for the standard flow
    method: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiationSnapshot:
    """Everything the machine knows, as one comparable value (rebuild and logging)."""

    state: NegotiationState
    role: Side | None
    opening: EventId | None
    peer: str | None
    proposal: Proposal | None
    reply: Reply | None
    accept: Accept | None
    accept_event: EventId | None
    acks: tuple[Side, ...]
    vendor_opening: VendorMessage | None
    vendor_progress: VendorProgress | None
    fail: Fail | None
    failed_by: Side | None
    bad_side: Side | None
    superseded_by: EventId | None
