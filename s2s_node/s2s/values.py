"""What the s2s layer tells its callers: upgrade outcomes, negotiation summaries, refusals.

Owns: `UpgradeOutcome` (what `node.propose_upgrade` returns), `NegotiationInfo` (one row of
`node.negotiations(room)`, built from the machine's `Negotiation`), and `UpgradeError` with its
reason enum. Must not: hold behaviour beyond building these values.

Design: DESIGN.md section 5; docs/design.md section 9.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from s2s_node.core.canonical import JsonDict
from s2s_node.core.ids import EventId, RoomId
from s2s_node.core.negotiation import Negotiation, NegotiationState
from s2s_node.core.negotiation_messages import Side


class UpgradeRefusal(enum.Enum):
    """Why this node will not start a negotiation (nothing was sent)."""

    NOT_S2S_ROOM = "not_s2s_room"
    NOT_JOINED = "not_joined"
    TOMBSTONED = "tombstoned"
    IN_PROGRESS = "in_progress"
    NOTHING_TO_PROPOSE = "nothing_to_propose"
    UNKNOWN_METHOD = "unknown_method"
    MALFORMED = "malformed"


class UpgradeError(Exception):
    """`propose_upgrade` refused before sending anything."""

    def __init__(self, reason: UpgradeRefusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeOutcome:
    """How a negotiation this node opened ended (or "pending" while it runs)."""

    #: "upgraded", "failed" or "pending"
    status: str
    negotiation_id: EventId
    version: str | None = None
    new_room_id: RoomId | None = None
    #: the fail event's error ("no match", "timeout", ...) or why performing the upgrade failed
    error: str | None = None

    def to_json(self) -> JsonDict:
        return {
            "status": self.status,
            "negotiation_id": self.negotiation_id,
            "version": self.version,
            "new_room_id": self.new_room_id,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiationInfo:
    """One negotiation of a room, as this node's machine sees it."""

    negotiation_id: EventId
    room_id: RoomId
    state: str
    #: "initiator" or "responder" (this node's side)
    role: str | None
    peer: str | None
    #: "standard" or the vendor method's name
    method: str
    proposed: dict[str, int] | None
    replied: dict[str, int] | None
    version: str | None
    room_type: str | None
    error: str | None
    reason: str | None
    #: "ours" or "theirs"
    failed_by: str | None
    superseded_by: EventId | None
    started_ts: int | None
    #: the successor room when this negotiation's upgrade was performed
    new_room_id: RoomId | None

    def to_json(self) -> JsonDict:
        return {
            "negotiation_id": self.negotiation_id,
            "room_id": self.room_id,
            "state": self.state,
            "role": self.role,
            "peer": self.peer,
            "method": self.method,
            "proposed": self.proposed,
            "replied": self.replied,
            "version": self.version,
            "room_type": self.room_type,
            "error": self.error,
            "reason": self.reason,
            "failed_by": self.failed_by,
            "superseded_by": self.superseded_by,
            "started_ts": self.started_ts,
            "new_room_id": self.new_room_id,
        }


def build_negotiation_info(
    room_id: RoomId, negotiation: Negotiation, new_room_id: RoomId | None
) -> NegotiationInfo:
    assert negotiation.opening is not None
    agreement = negotiation.agreement
    version = agreement.version if agreement is not None else None
    if version is None and negotiation.accept is not None:
        version = negotiation.accept.version
    if negotiation.vendor_opening is not None:
        method = negotiation.vendor_opening.method
        room_type = agreement.room_type if agreement is not None else None
    else:
        method = "standard"
        room_type = negotiation.proposal.room_type if negotiation.proposal else None
    failed_by = None
    if negotiation.failed_by is not None:
        failed_by = "ours" if negotiation.failed_by is negotiation.role else "theirs"
    fail = negotiation.fail
    return NegotiationInfo(
        negotiation_id=negotiation.opening,
        room_id=room_id,
        state=negotiation.state.value,
        role=_role(negotiation.role),
        peer=negotiation.peer,
        method=method,
        proposed=dict(negotiation.proposal.versions) if negotiation.proposal else None,
        replied=dict(negotiation.reply.versions) if negotiation.reply else None,
        version=version,
        room_type=room_type,
        error=fail.error.value if fail is not None else None,
        reason=fail.reason if fail is not None else None,
        failed_by=failed_by,
        superseded_by=negotiation.superseded_by,
        started_ts=negotiation.opening_ts,
        new_room_id=new_room_id if negotiation.state is NegotiationState.DONE else None,
    )


def _role(side: Side | None) -> str | None:
    if side is None:
        return None
    return "initiator" if side is Side.INITIATOR else "responder"
