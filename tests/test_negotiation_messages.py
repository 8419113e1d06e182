"""Negotiation content schemas (DESIGN §5 table): parse_* accept the design's content and refuse
malformed content with the reason enum."""

from __future__ import annotations

from typing import Any

import pytest
from negotiation_fixtures import event_id

from s2s_node.core.ids import EventId
from s2s_node.core.negotiation_messages import (
    ACCEPT,
    ACK,
    FAIL,
    MAX_VERSIONS,
    PROPOSAL,
    REPLY,
    VENDOR,
    Accept,
    Ack,
    ContentReason,
    Fail,
    FailError,
    NegotiationContentError,
    Proposal,
    Reply,
    VendorMessage,
    build_accept_content,
    build_ack_content,
    build_fail_content,
    build_proposal_content,
    build_reply_content,
    build_vendor_content,
    is_opening,
    parse_message,
    relation_of,
)

OPEN = EventId(event_id("opening"))
REL = {"rel_type": "m.reference", "event_id": OPEN}


def test_valid_content_of_every_type() -> None:
    proposal = parse_message(PROPOSAL, {"versions": {"12": 100, "11": 50}, "room_type": "m.s2s"})
    assert proposal == Proposal(versions={"12": 100, "11": 50}, room_type="m.s2s")
    assert parse_message(REPLY, {"versions": {}, "m.relates_to": REL}) == Reply(
        relates_to=OPEN, versions={}
    )
    assert parse_message(ACCEPT, {"version": "12", "m.relates_to": REL}) == Accept(
        relates_to=OPEN, version="12"
    )
    assert parse_message(ACK, {"m.relates_to": REL}) == Ack(relates_to=OPEN, accept=None)
    assert parse_message(ACK, {"accept": OPEN, "m.relates_to": REL}) == Ack(
        relates_to=OPEN, accept=OPEN
    )
    for error in FailError:
        fail = parse_message(FAIL, {"error": error.value, "reason": "r", "m.relates_to": REL})
        assert fail == Fail(relates_to=OPEN, error=error, reason="r")
    vendor = parse_message(VENDOR, {"method": "org.example.m", "x": [1]})
    assert isinstance(vendor, VendorMessage)
    assert (vendor.method, vendor.relates_to, dict(vendor.fields)) == (
        "org.example.m",
        None,
        {"x": [1]},
    )


def test_built_content_parses_back() -> None:
    built = [
        (PROPOSAL, build_proposal_content({"12": 1}, "support.feline.s2s")),
        (REPLY, build_reply_content(OPEN, {"11": 3})),
        (ACCEPT, build_accept_content(OPEN, "11")),
        (ACK, build_ack_content(OPEN, OPEN)),
        (FAIL, build_fail_content(OPEN, FailError.NO_MATCH, "x" * 5000)),
        (VENDOR, build_vendor_content("org.example.m", {"a": 1}, OPEN)),
    ]
    for event_type, content in built:
        parse_message(event_type, content)
        assert (relation_of(content) is None) == (event_type == PROPOSAL)


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


P = {"versions": {"12": 100}}
R = {"versions": {"12": 100}, "m.relates_to": REL}
A = {"version": "12", "m.relates_to": REL}
F = {"error": "no match", "m.relates_to": REL}

MALFORMED = [
    ("proposal: rating is a bool", PROPOSAL, {"versions": {"12": True}}, ContentReason.BAD_RATING),
    ("proposal: rating above 100", PROPOSAL, {"versions": {"12": 101}}, ContentReason.BAD_RATING),
    ("proposal: rating below 0", PROPOSAL, {"versions": {"12": -1}}, ContentReason.BAD_RATING),
    ("proposal: rating a string", PROPOSAL, {"versions": {"12": "9"}}, ContentReason.BAD_RATING),
    ("proposal: versions a list", PROPOSAL, {"versions": ["12"]}, ContentReason.BAD_VERSIONS),
    ("proposal: versions empty", PROPOSAL, {"versions": {}}, ContentReason.EMPTY_VERSIONS),
    ("proposal: version upper", PROPOSAL, {"versions": {"V12": 1}}, ContentReason.BAD_VERSION),
    ("proposal: version empty", PROPOSAL, {"versions": {"": 1}}, ContentReason.BAD_VERSION),
    (
        "proposal: too many versions",
        PROPOSAL,
        {"versions": {str(n): 1 for n in range(MAX_VERSIONS + 1)}},
        ContentReason.TOO_MANY_VERSIONS,
    ),
    ("proposal: no versions", PROPOSAL, {}, ContentReason.MISSING_FIELD),
    ("proposal: unknown field", PROPOSAL, _with(P, preferred="12"), ContentReason.UNKNOWN_FIELD),
    (
        "proposal: relates_to on an opening",
        PROPOSAL,
        _with(P, **{"m.relates_to": REL}),
        ContentReason.UNKNOWN_FIELD,
    ),
    (
        "proposal: non-s2s room type",
        PROPOSAL,
        _with(P, room_type="m.space"),
        ContentReason.BAD_ROOM_TYPE,
    ),
    ("reply: no relates_to", REPLY, {"versions": {}}, ContentReason.MISSING_FIELD),
    (
        "reply: relates_to not a reference",
        REPLY,
        _with(R, **{"m.relates_to": {"rel_type": "m.thread", "event_id": OPEN}}),
        ContentReason.BAD_RELATES_TO,
    ),
    (
        "reply: relates_to extra key",
        REPLY,
        _with(R, **{"m.relates_to": {**REL, "key": "x"}}),
        ContentReason.BAD_RELATES_TO,
    ),
    (
        "reply: relates_to a string",
        REPLY,
        _with(R, **{"m.relates_to": OPEN}),
        ContentReason.BAD_RELATES_TO,
    ),
    (
        "reply: relates_to bad event ID",
        REPLY,
        _with(R, **{"m.relates_to": {"rel_type": "m.reference", "event_id": "$short"}}),
        ContentReason.BAD_EVENT_ID,
    ),
    ("accept: version an int", ACCEPT, _with(A, version=12), ContentReason.BAD_VERSION),
    ("accept: no version", ACCEPT, {"m.relates_to": REL}, ContentReason.MISSING_FIELD),
    ("accept: unknown field", ACCEPT, _with(A, rating=3), ContentReason.UNKNOWN_FIELD),
    (
        "ack: bad accept ID",
        ACK,
        {"accept": "nope", "m.relates_to": REL},
        ContentReason.BAD_EVENT_ID,
    ),
    ("fail: unknown error", FAIL, _with(F, error="busy"), ContentReason.BAD_ERROR),
    ("fail: error not a string", FAIL, _with(F, error=3), ContentReason.BAD_ERROR),
    ("fail: reason too long", FAIL, _with(F, reason="x" * 1001), ContentReason.BAD_REASON),
    ("fail: reason not a string", FAIL, _with(F, reason=1), ContentReason.BAD_REASON),
    ("fail: no error", FAIL, {"m.relates_to": REL}, ContentReason.MISSING_FIELD),
    ("vendor: no method", VENDOR, {"x": 1}, ContentReason.MISSING_FIELD),
    ("vendor: method not namespaced", VENDOR, {"method": "pin"}, ContentReason.BAD_METHOD),
    ("vendor: method not a string", VENDOR, {"method": 7}, ContentReason.BAD_METHOD),
    (
        "vendor: bad relates_to",
        VENDOR,
        {"method": "org.example.m", "m.relates_to": {"event_id": OPEN}},
        ContentReason.BAD_RELATES_TO,
    ),
    ("unknown type", "m.s2s.upgrade.maybe", {}, ContentReason.UNKNOWN_TYPE),
]


@pytest.mark.parametrize(
    ("event_type", "content", "reason"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_content_is_refused_with_its_reason(
    event_type: str, content: dict[str, Any], reason: ContentReason
) -> None:
    with pytest.raises(NegotiationContentError) as caught:
        parse_message(event_type, content)
    assert caught.value.reason is reason


def test_openings_are_told_by_type_and_relation() -> None:
    assert is_opening(PROPOSAL, {"garbage": 1})
    assert is_opening(VENDOR, {"method": "org.example.m"})
    assert not is_opening(VENDOR, {"method": "org.example.m", "m.relates_to": REL})
    assert not is_opening(ACCEPT, A)
    assert relation_of({"m.relates_to": {"event_id": 5}}) is None
    assert relation_of("not content") is None
