"""The negotiation events' content: typed values, strict parsing, and building content.

Owns: the six event types of the upgrade negotiation, their content schemas as frozen values
(`Proposal`, `Reply`, `Accept`, `Ack`, `Fail`, `VendorMessage`), `parse_message` and the
per-type `parse_*` functions (untrusted content in, typed value or `NegotiationContentError`
out), and `build_*_content` (the exact content this node sends). Must not: know about states,
roles or the choice rule (see `negotiation`, `upgrade_choice`).

Spec: DESIGN.md section 5 (the table of event types); MSC3348 "Upgrade negotiation";
the client-server API "Reference relations" (`m.relates_to` with `rel_type: m.reference`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

from s2s_node.core.ids import EventId, is_event_id
from s2s_node.core.upgrade_choice import MAX_RATING, MIN_RATING

PROPOSAL = "m.s2s.upgrade.proposal"
REPLY = "m.s2s.upgrade.reply"
ACCEPT = "m.s2s.upgrade.accept"
ACK = "m.s2s.upgrade.ack"
FAIL = "m.s2s.upgrade.fail"
VENDOR = "m.s2s.upgrade"

# The successor room must again be an s2s room (server users may only be in those, DESIGN §4).
S2S_ROOM_TYPES = frozenset({"m.s2s", "support.feline.s2s"})

# A versions map lists room versions a node supports; a dozen is plenty today. 32 bounds the
# work a hostile map can cause while leaving room for many future versions.
MAX_VERSIONS = 32
# Room version identifiers: [a-z0-9.-], at most 32 code points (spec, "Room versions").
_ROOM_VERSION = re.compile(r"[a-z0-9.\-]{1,32}")
# `reason` is free text for logs; 1000 characters is more than any explanation needs.
MAX_REASON_CHARS = 1000
# Vendor method names are namespaced (Java package style, like event types).
_METHOD = re.compile(r"[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)+")
MAX_METHOD_CHARS = 255
RELATES_TO = "m.relates_to"
REFERENCE = "m.reference"


class MessageKind(enum.Enum):
    """The input alphabet of the state machine: one member per negotiation event type."""

    PROPOSAL = PROPOSAL
    REPLY = REPLY
    ACCEPT = ACCEPT
    ACK = ACK
    FAIL = FAIL
    VENDOR = VENDOR


class Side(enum.Enum):
    """A party of one negotiation, by what it did (not by who we are)."""

    #: sent the opening event
    INITIATOR = "initiator"
    #: the other party
    RESPONDER = "responder"

    @property
    def other(self) -> Side:
        return Side.RESPONDER if self is Side.INITIATOR else Side.INITIATOR


class FailError(enum.Enum):
    """The `error` of `m.s2s.upgrade.fail` (DESIGN §5)."""

    NO_MATCH = "no match"
    INVALID_METHOD = "invalid method"
    TIMEOUT = "timeout"
    SUPERSEDED = "superseded"
    BAD_REQUEST = "bad request"


class ContentReason(enum.Enum):
    """Why negotiation content is malformed (the answer is fail "bad request")."""

    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    BAD_VERSIONS = "bad_versions"
    BAD_VERSION = "bad_version"
    BAD_RATING = "bad_rating"
    TOO_MANY_VERSIONS = "too_many_versions"
    EMPTY_VERSIONS = "empty_versions"
    BAD_ROOM_TYPE = "bad_room_type"
    BAD_RELATES_TO = "bad_relates_to"
    BAD_EVENT_ID = "bad_event_id"
    BAD_ERROR = "bad_error"
    BAD_REASON = "bad_reason"
    BAD_METHOD = "bad_method"
    # Well-formed alone, wrong in context (checked by the machine, same answer).
    WRONG_CHOICE = "wrong_choice"
    WRONG_ACCEPT_REF = "wrong_accept_ref"
    METHOD_MISMATCH = "method_mismatch"
    VENDOR_REJECTED = "vendor_rejected"


class NegotiationContentError(ValueError):
    """Negotiation content that does not follow its schema (or its context)."""

    def __init__(self, reason: ContentReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """`m.s2s.upgrade.proposal`: the initiator's ratings, and the successor's room type."""

    versions: Mapping[str, int]
    room_type: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """`m.s2s.upgrade.reply`: the responder's own ratings (may be empty)."""

    relates_to: EventId
    versions: Mapping[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """`m.s2s.upgrade.accept`: the version the deciding side chose."""

    relates_to: EventId
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """`m.s2s.upgrade.ack`: "I have seen the accept" (optionally naming it)."""

    relates_to: EventId
    accept: EventId | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fail:
    """`m.s2s.upgrade.fail`: the end of a negotiation without an upgrade."""

    relates_to: EventId
    error: FailError
    reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorMessage:
    """`m.s2s.upgrade`: a vendor method's opening (`relates_to` None) or continuation.

    `fields` is the content without `method` and `m.relates_to`; treat it as read-only.
    """

    method: str
    relates_to: EventId | None
    fields: Mapping[str, Any]


Message: TypeAlias = Proposal | Reply | Accept | Ack | Fail | VendorMessage


def _check_keys(content: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    for key in required:
        if key not in content:
            raise NegotiationContentError(ContentReason.MISSING_FIELD, f"{key!r} is required")
    for key in content:
        if key not in required and key not in optional:
            raise NegotiationContentError(ContentReason.UNKNOWN_FIELD, f"unknown field {key!r}")


def _event_id(value: object, what: str) -> EventId:
    if not is_event_id(value):
        raise NegotiationContentError(ContentReason.BAD_EVENT_ID, f"{what} is not an event ID")
    assert isinstance(value, str)
    return EventId(value)


def parse_relates_to(content: Mapping[str, Any]) -> EventId:
    """The opening event cited by `m.relates_to` (`rel_type: m.reference`, `event_id`)."""
    relation = content.get(RELATES_TO)
    if not isinstance(relation, Mapping):
        raise NegotiationContentError(
            ContentReason.BAD_RELATES_TO, "m.relates_to must be an object"
        )
    if set(relation) != {"rel_type", "event_id"} or relation["rel_type"] != REFERENCE:
        raise NegotiationContentError(
            ContentReason.BAD_RELATES_TO,
            "m.relates_to must be exactly {rel_type: m.reference, event_id}",
        )
    return _event_id(relation["event_id"], "m.relates_to.event_id")


def parse_versions(value: object, *, allow_empty: bool) -> Mapping[str, int]:
    """A `versions` map: {room version: integer rating 0..100}, at most `MAX_VERSIONS`."""
    if not isinstance(value, Mapping):
        raise NegotiationContentError(ContentReason.BAD_VERSIONS, "versions must be an object")
    if len(value) > MAX_VERSIONS:
        raise NegotiationContentError(
            ContentReason.TOO_MANY_VERSIONS, f"{len(value)} versions (at most {MAX_VERSIONS})"
        )
    if not value and not allow_empty:
        raise NegotiationContentError(ContentReason.EMPTY_VERSIONS, "versions is empty")
    versions: dict[str, int] = {}
    for version, rating in value.items():
        if not isinstance(version, str) or not _ROOM_VERSION.fullmatch(version):
            raise NegotiationContentError(
                ContentReason.BAD_VERSION, f"{version!r} is not a room version identifier"
            )
        # bool is an int in Python; JSON true is not a rating.
        if type(rating) is not int or not MIN_RATING <= rating <= MAX_RATING:
            raise NegotiationContentError(
                ContentReason.BAD_RATING,
                f"rating of {version!r} must be an integer {MIN_RATING}..{MAX_RATING}",
            )
        versions[version] = rating
    return MappingProxyType(versions)


def parse_proposal(content: Mapping[str, Any]) -> Proposal:
    _check_keys(content, {"versions"}, {"room_type"})
    room_type = content.get("room_type")
    # Type first: an unhashable value (a list, an object) in a set lookup is a TypeError.
    if room_type is not None and (
        not isinstance(room_type, str) or room_type not in S2S_ROOM_TYPES
    ):
        raise NegotiationContentError(
            ContentReason.BAD_ROOM_TYPE, "room_type must be m.s2s or support.feline.s2s"
        )
    return Proposal(
        versions=parse_versions(content["versions"], allow_empty=False), room_type=room_type
    )


def parse_reply(content: Mapping[str, Any]) -> Reply:
    _check_keys(content, {"versions", RELATES_TO}, set())
    return Reply(
        relates_to=parse_relates_to(content),
        versions=parse_versions(content["versions"], allow_empty=True),
    )


def parse_accept(content: Mapping[str, Any]) -> Accept:
    _check_keys(content, {"version", RELATES_TO}, set())
    version = content["version"]
    if not isinstance(version, str) or not _ROOM_VERSION.fullmatch(version):
        raise NegotiationContentError(
            ContentReason.BAD_VERSION, "version must be a room version identifier"
        )
    return Accept(relates_to=parse_relates_to(content), version=version)


def parse_ack(content: Mapping[str, Any]) -> Ack:
    _check_keys(content, {RELATES_TO}, {"accept"})
    accept = content.get("accept")
    return Ack(
        relates_to=parse_relates_to(content),
        accept=None if accept is None else _event_id(accept, "accept"),
    )


def parse_fail(content: Mapping[str, Any]) -> Fail:
    _check_keys(content, {"error", RELATES_TO}, {"reason"})
    try:
        error = FailError(content["error"])
    except (ValueError, TypeError):
        raise NegotiationContentError(
            ContentReason.BAD_ERROR, f"error {content['error']!r} is not a known fail error"
        ) from None
    reason = content.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise NegotiationContentError(
            ContentReason.BAD_REASON, f"reason must be a string of <= {MAX_REASON_CHARS} chars"
        )
    return Fail(relates_to=parse_relates_to(content), error=error, reason=reason)


def parse_vendor(content: Mapping[str, Any]) -> VendorMessage:
    method = content.get("method")
    if method is None:
        raise NegotiationContentError(ContentReason.MISSING_FIELD, "'method' is required")
    if (
        not isinstance(method, str)
        or len(method) > MAX_METHOD_CHARS
        or not _METHOD.fullmatch(method)
    ):
        raise NegotiationContentError(
            ContentReason.BAD_METHOD, "method must be a namespaced name such as org.example.m"
        )
    relates_to = parse_relates_to(content) if RELATES_TO in content else None
    fields = {k: v for k, v in content.items() if k not in ("method", RELATES_TO)}
    return VendorMessage(method=method, relates_to=relates_to, fields=MappingProxyType(fields))


_PARSERS: dict[MessageKind, Callable[[Mapping[str, Any]], Message]] = {
    MessageKind.PROPOSAL: parse_proposal,
    MessageKind.REPLY: parse_reply,
    MessageKind.ACCEPT: parse_accept,
    MessageKind.ACK: parse_ack,
    MessageKind.FAIL: parse_fail,
    MessageKind.VENDOR: parse_vendor,
}


def parse_kind(event_type: str) -> MessageKind | None:
    """The message kind of an event type, or None for a type outside the negotiation."""
    try:
        return MessageKind(event_type)
    except ValueError:
        return None


def parse_message(event_type: str, content: object) -> Message:
    """The typed content of a negotiation event. Raises `NegotiationContentError`."""
    kind = parse_kind(event_type)
    if kind is None:
        raise NegotiationContentError(ContentReason.UNKNOWN_TYPE, f"{event_type!r}")
    if not isinstance(content, Mapping):
        raise NegotiationContentError(ContentReason.MISSING_FIELD, "content is not an object")
    return _PARSERS[kind](content)


def is_opening(event_type: str, content: object) -> bool:
    """True for an event that opens a negotiation: a proposal, or a vendor start.

    Decided on the type and the mere presence of `m.relates_to`, so that a malformed opening
    still opens (and is then failed "bad request").
    """
    if event_type == PROPOSAL:
        return True
    return event_type == VENDOR and not (isinstance(content, Mapping) and RELATES_TO in content)


def relation_of(content: object) -> EventId | None:
    """The opening cited by an event's content, read leniently for routing; None if unreadable."""
    if not isinstance(content, Mapping):
        return None
    relation = content.get(RELATES_TO)
    if not isinstance(relation, Mapping):
        return None
    event_id = relation.get("event_id")
    return EventId(event_id) if isinstance(event_id, str) and is_event_id(event_id) else None


def _relation(opening: str) -> dict[str, str]:
    return {"rel_type": REFERENCE, "event_id": opening}


def build_proposal_content(versions: Mapping[str, int], room_type: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"versions": dict(versions)}
    if room_type is not None:
        content["room_type"] = room_type
    return content


def build_reply_content(opening: str, versions: Mapping[str, int]) -> dict[str, Any]:
    return {"versions": dict(versions), RELATES_TO: _relation(opening)}


def build_accept_content(opening: str, version: str) -> dict[str, Any]:
    return {"version": version, RELATES_TO: _relation(opening)}


def build_ack_content(opening: str, accept: str) -> dict[str, Any]:
    return {"accept": accept, RELATES_TO: _relation(opening)}


def build_fail_content(opening: str, error: FailError, reason: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"error": error.value, RELATES_TO: _relation(opening)}
    if reason is not None:
        content["reason"] = reason[:MAX_REASON_CHARS]
    return content


def build_vendor_content(
    method: str, fields: Mapping[str, Any], opening: str | None
) -> dict[str, Any]:
    content: dict[str, Any] = {**fields, "method": method}
    if opening is not None:
        content[RELATES_TO] = _relation(opening)
    return content
