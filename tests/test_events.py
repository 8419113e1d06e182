"""PDU format checks (every FormatReason), building events, and the v12 genesis vectors."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core import events as events_module
from s2s_node.core.canonical import (
    decode_base64,
    encode_base64_urlsafe,
    encode_canonical_json,
    parse_json,
)
from s2s_node.core.events import (
    MAX_AUTH_EVENTS,
    MAX_FIELD_BYTES,
    MAX_PDU_BYTES,
    MAX_PREV_EVENTS,
    EventFormatError,
    FormatReason,
    Pdu,
    build_event,
    check_event_format,
    parse_pdu,
)
from s2s_node.core.ids import parse_event_id
from s2s_node.core.keys import KEY_ID, signing_key_from_seed
from s2s_node.core.rules import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersionRules
from s2s_node.core.signing import (
    KeyRing,
    check_event,
    compute_event_id,
    derived_keys,
    encode_content_hash_bytes,
)

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "spec" / "vectors.json").read_text(encoding="utf-8")
)
SPEC_KEY = signing_key_from_seed(
    decode_base64(VECTORS["official_signing_key"]["seed_base64_as_written_in_spec"])
)
SPEC_KEYS = KeyRing({"domain": {KEY_ID: SPEC_KEY.verify_key_bytes}}, derive=False)
NODE_KEY = signing_key_from_seed(bytes(range(32)))
NODE = NODE_KEY.identifier
ALL_RULES = [ROOM_V10, ROOM_V11, ROOM_V12]


def _event_id(n: int) -> str:
    return "$" + encode_base64_urlsafe(n.to_bytes(32, "big"))


def _build(rules: RoomVersionRules, **overrides: Any) -> Pdu:
    """A member event built by NODE in a room of `rules`' version."""
    fields: dict[str, Any] = {
        "rules": rules,
        "room_id": "!" + _event_id(99)[1:] if rules.room_id_is_create_event_hash else f"!r:{NODE}",
        "sender": f"@alice:{NODE}",
        "event_type": "m.room.member",
        "state_key": f"@alice:{NODE}",
        "content": {"membership": "join", "displayname": "Alice"},
        "prev_events": [_event_id(1)],
        "auth_events": [_event_id(2), _event_id(3)],
        "depth": 5,
        "origin_server_ts": 1_700_000_000_000,
        "server_name": NODE,
        "signing_key": NODE_KEY,
    }
    fields.update(overrides)
    return build_event(**fields)


def _valid(rules: RoomVersionRules) -> dict[str, Any]:
    return copy.deepcopy(_build(rules).json)


def _reason(obj: object, rules: RoomVersionRules, **kwargs: Any) -> FormatReason:
    with pytest.raises(EventFormatError) as exc_info:
        parse_pdu(obj, rules, **kwargs)
    return exc_info.value.reason


def _padded_to(size: int, rules: RoomVersionRules, filler: str = "x") -> dict[str, Any]:
    """A valid event whose canonical JSON is exactly `size` bytes."""
    event = _valid(rules)
    event["content"]["pad"] = ""
    base = len(encode_canonical_json(event))
    per_char = len(filler.encode("utf-8"))
    missing = size - base
    assert missing % per_char == 0
    event["content"]["pad"] = filler * (missing // per_char)
    assert len(encode_canonical_json(event)) == size
    return event


# ----------------------------------------------------------------------------------------------
# Building and round trips


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_build_event_round_trip(rules: RoomVersionRules) -> None:
    pdu = _build(rules)
    assert pdu.event_id == compute_event_id(pdu.json, rules)
    assert pdu.type == "m.room.member"
    assert pdu.state_tuple == ("m.room.member", f"@alice:{NODE}")
    assert pdu.is_state
    assert pdu.membership == "join"
    assert pdu.depth == 5
    assert pdu.prev_events == (_event_id(1),)
    assert pdu.auth_events == (_event_id(2), _event_id(3))
    # Over the wire and back: the same event, the same ID, and it verifies with the key the
    # node identifier encodes.
    received = parse_pdu(parse_json(pdu.canonical_bytes()), rules)
    assert received == pdu
    assert received.json == pdu.json
    checked = check_event(received.json, rules, derived_keys)
    assert checked.event_id == pdu.event_id
    assert checked.hash_ok
    assert set(pdu.json) >= {"hashes", "signatures"}
    assert "event_id" not in pdu.json


def test_v12_auth_event_ids_include_the_create_event() -> None:
    pdu = _build(ROOM_V12)
    create_id = "$" + pdu.room_id[1:]
    assert pdu.auth_events == (_event_id(2), _event_id(3))
    assert pdu.auth_event_ids == (create_id, _event_id(2), _event_id(3))
    assert _build(ROOM_V11).auth_event_ids == (_event_id(2), _event_id(3))


@pytest.mark.parametrize("name", ["create", "creator_join", "power_levels"])
def test_v12_genesis_vectors_through_build_event(name: str) -> None:
    vector = VECTORS["derived_v12_genesis"][name]
    unsigned = vector["unsigned_input"]
    pdu = build_event(
        rules=ROOM_V12,
        room_id=unsigned.get("room_id"),
        sender=unsigned["sender"],
        event_type=unsigned["type"],
        content=unsigned["content"],
        prev_events=unsigned["prev_events"],
        auth_events=unsigned["auth_events"],
        depth=unsigned["depth"],
        origin_server_ts=unsigned["origin_server_ts"],
        server_name="domain",
        signing_key=SPEC_KEY,
        state_key=unsigned.get("state_key"),
    )
    assert pdu.json == vector["signed"]
    assert pdu.event_id == vector["event_id"]
    genesis_room = VECTORS["derived_v12_genesis"]["create"]["room_id"]
    assert pdu.room_id == genesis_room
    received = parse_pdu(vector["signed"], ROOM_V12)
    assert received.event_id == vector["event_id"]
    assert received.room_id == genesis_room
    assert check_event(vector["signed"], ROOM_V12, SPEC_KEYS).event_id == vector["event_id"]


def test_v12_create_event_room_id_is_derived() -> None:
    create = _build(
        ROOM_V12,
        room_id=None,
        event_type="m.room.create",
        state_key="",
        content={"room_version": "12"},
        prev_events=[],
        auth_events=[],
        depth=1,
    )
    assert "room_id" not in create.json
    assert create.room_id == "!" + create.event_id[1:]
    assert create.auth_event_ids == ()


def test_redacted_pdu_keeps_its_event_id() -> None:
    for rules in ALL_RULES:
        pdu = _build(rules)
        redacted = pdu.redacted()
        assert redacted.event_id == pdu.event_id
        assert redacted.content == {"membership": "join"}
        assert redacted.redacted() == redacted


def test_redacts_property() -> None:
    target = _event_id(7)
    v10 = _build(
        ROOM_V10,
        event_type="m.room.redaction",
        state_key=None,
        content={"reason": "spam"},
        extra={"redacts": target},
    )
    assert v10.redacts == target
    assert not v10.is_state
    assert v10.state_tuple is None
    v11 = _build(
        ROOM_V11, event_type="m.room.redaction", state_key=None, content={"redacts": target}
    )
    assert v11.redacts == target
    assert _build(ROOM_V11).redacts is None


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_build_event_rejects_what_a_receiver_would(rules: RoomVersionRules) -> None:
    with pytest.raises(EventFormatError) as exc_info:
        _build(rules, content={"membership": "join", "weight": 0.5})
    assert exc_info.value.reason is FormatReason.NOT_CANONICAL
    with pytest.raises(EventFormatError) as exc_info:
        _build(rules, sender="alice")
    assert exc_info.value.reason is FormatReason.BAD_ID
    with pytest.raises(EventFormatError) as exc_info:
        _build(rules, prev_events=[_event_id(n) for n in range(MAX_PREV_EVENTS + 1)])
    assert exc_info.value.reason is FormatReason.TOO_MANY_PREV_EVENTS
    with pytest.raises(EventFormatError) as exc_info:
        _build(rules, content={"body": "x" * MAX_PDU_BYTES})
    assert exc_info.value.reason is FormatReason.TOO_LARGE


@settings(max_examples=40)
@given(
    content=st.dictionaries(
        st.text(max_size=8),
        st.text(max_size=20) | st.integers(-(2**53) + 1, 2**53 - 1) | st.booleans(),
        max_size=5,
    ),
    rules=st.sampled_from(ALL_RULES),
)
def test_build_event_round_trip_for_any_content(
    content: dict[str, Any], rules: RoomVersionRules
) -> None:
    pdu = _build(rules, event_type="m.room.message", state_key=None, content=content)
    assert pdu.content == content
    assert parse_pdu(parse_json(pdu.canonical_bytes()), rules) == pdu
    assert check_event(pdu.json, rules, derived_keys).hash_ok


# ----------------------------------------------------------------------------------------------
# Format checks: one reason at a time


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_not_object(rules: RoomVersionRules) -> None:
    obj: object
    for obj in ([], "event", None, 5):
        assert _reason(obj, rules) is FormatReason.NOT_OBJECT


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_not_canonical(rules: RoomVersionRules) -> None:
    for value in (1.5, 2**53, -(2**53), float("nan"), {1: 2}, b"x", "\ud800"):
        event = _valid(rules)
        event["content"]["bad"] = value
        assert _reason(event, rules) is FormatReason.NOT_CANONICAL


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize("filler", ["x", "é", "\U0001f600", "\n", "\x01"])
def test_size_limit_counts_encoded_bytes(rules: RoomVersionRules, filler: str) -> None:
    # Multi-byte characters and escapes: the limit is on canonical JSON bytes, not characters.
    per_filler = len(encode_canonical_json(filler)) - 2
    event = _valid(rules)
    event["content"]["pad"] = ""
    base = len(encode_canonical_json(event))
    count = (MAX_PDU_BYTES - base) // per_filler
    event["content"]["pad"] = filler * count
    assert MAX_PDU_BYTES - per_filler < len(encode_canonical_json(event)) <= MAX_PDU_BYTES
    parse_pdu(event, rules)
    parse_pdu(event, rules, check_values=False)
    event["content"]["pad"] += filler
    assert _reason(event, rules) is FormatReason.TOO_LARGE
    assert _reason(event, rules, check_values=False) is FormatReason.TOO_LARGE


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_size_limit_boundary(rules: RoomVersionRules) -> None:
    exact = _padded_to(MAX_PDU_BYTES, rules)
    parse_pdu(exact, rules)
    over = _padded_to(MAX_PDU_BYTES + 1, rules)
    assert _reason(over, rules) is FormatReason.TOO_LARGE
    assert _reason(over, rules, check_values=False) is FormatReason.TOO_LARGE
    # The limit counts signatures and unsigned too.
    exact["unsigned"] = {"age": 1}
    assert _reason(exact, rules) is FormatReason.TOO_LARGE


REQUIRED = ["type", "sender", "content", "origin_server_ts", "depth", "prev_events", "auth_events"]


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize("field", [*REQUIRED, "room_id"])
def test_missing_field(rules: RoomVersionRules, field: str) -> None:
    event = _valid(rules)
    del event[field]
    assert _reason(event, rules) is FormatReason.MISSING_FIELD


WRONG_TYPES: list[tuple[str, Any]] = [
    ("type", 5),
    ("type", None),
    ("type", ["m.room.member"]),
    ("sender", 5),
    ("sender", None),
    ("room_id", 5),
    ("room_id", None),
    ("state_key", 5),
    ("state_key", None),
    ("state_key", False),
    ("content", "x"),
    ("content", None),
    ("content", []),
    ("origin_server_ts", "1"),
    ("origin_server_ts", True),
    ("origin_server_ts", None),
    ("depth", "5"),
    ("depth", True),
    ("prev_events", "x"),
    ("prev_events", {}),
    ("auth_events", None),
    ("unsigned", []),
    ("unsigned", None),
]


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
def test_bad_field_type(rules: RoomVersionRules, field: str, value: Any) -> None:
    event = _valid(rules)
    event[field] = value
    assert _reason(event, rules) is FormatReason.BAD_FIELD_TYPE


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize("field", ["type", "state_key"])
def test_field_too_long(rules: RoomVersionRules, field: str) -> None:
    event = _valid(rules)
    event[field] = "x" * MAX_FIELD_BYTES
    parse_pdu(event, rules)
    event[field] = "x" * (MAX_FIELD_BYTES + 1)
    assert _reason(event, rules) is FormatReason.FIELD_TOO_LONG
    event[field] = "é" * 128  # 128 characters, 256 bytes
    assert _reason(event, rules) is FormatReason.FIELD_TOO_LONG
    event[field] = "é" * 127 + "x"  # 255 bytes
    parse_pdu(event, rules)


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sender", "alice"),
        ("sender", "@alice"),
        ("sender", "@alice:bad server"),
        ("sender", "@" + "a" * 250 + ":b.example"),
        ("room_id", "room"),
        ("room_id", "!r:bad server"),
        ("prev_events", ["$abc:domain"]),
        ("prev_events", [5]),
        ("prev_events", [None]),
        ("auth_events", ["!" + "A" * 43]),
        ("auth_events", ["$" + "A" * 42 + "+"]),
    ],
)
def test_bad_id(rules: RoomVersionRules, field: str, value: Any) -> None:
    event = _valid(rules)
    event[field] = value
    assert _reason(event, rules) is FormatReason.BAD_ID


def test_room_id_form_depends_on_the_version() -> None:
    v11 = _valid(ROOM_V11)
    v11["room_id"] = "!" + _event_id(5)[1:]  # a v12 form in a v11 room
    assert _reason(v11, ROOM_V11) is FormatReason.BAD_ID
    v12 = _valid(ROOM_V12)
    v12["room_id"] = f"!r:{NODE}"  # a v11 form in a v12 room
    assert _reason(v12, ROOM_V12) is FormatReason.BAD_ID


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_event_counts(rules: RoomVersionRules) -> None:
    event = _valid(rules)
    event["prev_events"] = [_event_id(n) for n in range(MAX_PREV_EVENTS)]
    event["auth_events"] = [_event_id(100 + n) for n in range(MAX_AUTH_EVENTS)]
    parse_pdu(event, rules)
    event["prev_events"].append(_event_id(50))
    assert _reason(event, rules) is FormatReason.TOO_MANY_PREV_EVENTS
    parse_pdu(event, rules, check_counts=False)  # backfill is not held to the counts
    event["prev_events"].pop()
    event["auth_events"].append(_event_id(150))
    assert _reason(event, rules) is FormatReason.TOO_MANY_AUTH_EVENTS
    assert len(parse_pdu(event, rules, check_counts=False).auth_events) == MAX_AUTH_EVENTS + 1


def test_v12_create_must_not_have_a_room_id() -> None:
    create = copy.deepcopy(VECTORS["derived_v12_genesis"]["create"]["signed"])
    assert (
        parse_pdu(create, ROOM_V12).room_id == VECTORS["derived_v12_genesis"]["create"]["room_id"]
    )
    create["room_id"] = VECTORS["derived_v12_genesis"]["create"]["room_id"]
    assert _reason(create, ROOM_V12) is FormatReason.CREATE_HAS_ROOM_ID
    # In v11 the same event simply needs a room ID of the other form.
    assert _reason(create, ROOM_V11) is FormatReason.BAD_ID


def test_v12_auth_events_must_not_list_the_create_event() -> None:
    event = _valid(ROOM_V12)
    event["auth_events"].append("$" + event["room_id"][1:])
    assert _reason(event, ROOM_V12) is FormatReason.CREATE_IN_AUTH_EVENTS


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_bad_depth(rules: RoomVersionRules) -> None:
    event = _valid(rules)
    event["depth"] = -1
    assert _reason(event, rules) is FormatReason.BAD_DEPTH
    event["depth"] = 0
    assert parse_pdu(event, rules).depth == 0
    event["depth"] = 2**53 - 1
    assert parse_pdu(event, rules).depth == 2**53 - 1


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize("hashes", [None, "x", {}, {"sha256": 5}, {"sha512": "x"}, "missing"])
def test_bad_hashes(rules: RoomVersionRules, hashes: Any) -> None:
    event = _valid(rules)
    if hashes == "missing":
        del event["hashes"]
    else:
        event["hashes"] = hashes
    assert _reason(event, rules) is FormatReason.BAD_HASHES


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize("signatures", [None, "x", [], {"domain": "x"}, {"d": []}, "missing"])
def test_bad_signatures(rules: RoomVersionRules, signatures: Any) -> None:
    event = _valid(rules)
    if signatures == "missing":
        del event["signatures"]
    else:
        event["signatures"] = signatures
    assert _reason(event, rules) is FormatReason.BAD_SIGNATURES


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_room_mismatch(rules: RoomVersionRules) -> None:
    event = _valid(rules)
    assert parse_pdu(event, rules, expected_room_id=event["room_id"]).room_id == event["room_id"]
    other = "!" + _event_id(98)[1:] if rules.room_id_is_create_event_hash else "!other:domain"
    assert _reason(event, rules, expected_room_id=other) is FormatReason.ROOM_MISMATCH


def test_every_format_reason_is_tested() -> None:
    # Each reason appears in an assertion of this module.
    source = Path(__file__).read_text(encoding="utf-8")
    for reason in FormatReason:
        assert f"FormatReason.{reason.name}" in source, reason


def test_check_event_format_returns_the_object() -> None:
    event = _valid(ROOM_V11)
    assert check_event_format(event, ROOM_V11) is event


def test_parse_pdu_uses_the_given_event_id() -> None:
    event = _valid(ROOM_V11)
    assert parse_pdu(event, ROOM_V11, event_id=parse_event_id(_event_id(4))).event_id == _event_id(
        4
    )
    assert parse_pdu(event, ROOM_V11).event_id == compute_event_id(event, ROOM_V11)


def test_parse_pdu_with_a_measured_size() -> None:
    # `encoded_size` (as `check_event` measures it) replaces encoding the event again.
    event = _valid(ROOM_V11)
    size = len(encode_canonical_json(event))
    assert check_event(event, ROOM_V11, derived_keys).size == size
    assert parse_pdu(event, ROOM_V11, check_values=False, encoded_size=size).json is event
    assert (
        _reason(event, ROOM_V11, check_values=False, encoded_size=MAX_PDU_BYTES + 1)
        is FormatReason.TOO_LARGE
    )
    # The value walk still runs when asked for.
    event["content"]["bad"] = 1.5
    assert _reason(event, ROOM_V11, encoded_size=size) is FormatReason.NOT_CANONICAL


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_pdus_have_every_field_set(rules: RoomVersionRules) -> None:
    # Checked events are made without the dataclass `__init__`: the same value as `Pdu(...)`.
    for pdu in (_build(rules), parse_pdu(_valid(rules), rules), _build(rules).redacted()):
        rebuilt = Pdu(**{f.name: getattr(pdu, f.name) for f in dataclasses.fields(Pdu) if f.init})
        assert rebuilt == pdu
        assert pdu.auth_keys_memo is None  # filled on first use by auth.compute_auth_keys
        assert pdu.state_tuple == rebuilt.state_tuple
        assert pdu.state_tuple == (None if pdu.state_key is None else (pdu.type, pdu.state_key))
        assert rebuilt.json is pdu.json
        with pytest.raises(dataclasses.FrozenInstanceError):
            pdu.depth = 1  # type: ignore[misc]


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize("filler", ["x", "é", "\U0001f600", "\n", "\x01"])
@pytest.mark.parametrize("state_key", [f"@alice:{NODE}", "\x01" * 20])
def test_build_event_size_limit_is_exact(
    rules: RoomVersionRules, filler: str, state_key: str
) -> None:
    # The bound that saves measuring must never let an event over the limit through.
    base = len(_build(rules, state_key=state_key, content={"pad": ""}).canonical_bytes())
    per_filler = len(encode_canonical_json(filler)) - 2
    count = (MAX_PDU_BYTES - base) // per_filler
    fits = _build(rules, state_key=state_key, content={"pad": filler * count})
    assert MAX_PDU_BYTES - per_filler < len(fits.canonical_bytes()) <= MAX_PDU_BYTES
    with pytest.raises(EventFormatError) as exc_info:
        _build(rules, state_key=state_key, content={"pad": filler * (count + 1)})
    assert exc_info.value.reason is FormatReason.TOO_LARGE


# Parameters of `build_event` that break one rule each, and the reason a receiver gives.
BUILD_FAULTS: list[tuple[dict[str, Any], FormatReason]] = [
    ({"event_type": "x" * (MAX_FIELD_BYTES + 1)}, FormatReason.FIELD_TOO_LONG),
    ({"event_type": "é" * 128}, FormatReason.FIELD_TOO_LONG),
    ({"state_key": "x" * (MAX_FIELD_BYTES + 1)}, FormatReason.FIELD_TOO_LONG),
    ({"event_type": "\ud800"}, FormatReason.NOT_CANONICAL),
    ({"state_key": "a\udfff"}, FormatReason.NOT_CANONICAL),
    ({"sender": "@\ud800:x.example"}, FormatReason.NOT_CANONICAL),
    ({"depth": 2**53}, FormatReason.NOT_CANONICAL),
    ({"origin_server_ts": -(2**53)}, FormatReason.NOT_CANONICAL),
    ({"depth": -1}, FormatReason.BAD_DEPTH),
    ({"depth": "5"}, FormatReason.BAD_FIELD_TYPE),
    ({"depth": True}, FormatReason.BAD_FIELD_TYPE),
    ({"origin_server_ts": None}, FormatReason.BAD_FIELD_TYPE),
    ({"event_type": 5}, FormatReason.BAD_FIELD_TYPE),
    ({"state_key": 5}, FormatReason.BAD_FIELD_TYPE),
    ({"sender": "alice"}, FormatReason.BAD_ID),
    ({"sender": None}, FormatReason.BAD_FIELD_TYPE),
    ({"prev_events": ["$abc:domain"]}, FormatReason.BAD_ID),
    ({"prev_events": [5]}, FormatReason.BAD_ID),
    ({"prev_events": [1.5]}, FormatReason.NOT_CANONICAL),
    (
        {"auth_events": [_event_id(n) for n in range(MAX_AUTH_EVENTS + 1)]},
        FormatReason.TOO_MANY_AUTH_EVENTS,
    ),
    ({"content": {"a": [[[]]]}, "event_type": "x" * 300}, FormatReason.FIELD_TOO_LONG),
    ({"depth": 2**53, "sender": "alice"}, FormatReason.NOT_CANONICAL),
    ({"depth": -1, "sender": "alice"}, FormatReason.BAD_ID),
]


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize(("fault", "reason"), BUILD_FAULTS)
def test_build_event_gives_the_receivers_reason(
    rules: RoomVersionRules, fault: dict[str, Any], reason: FormatReason
) -> None:
    with pytest.raises(EventFormatError) as exc_info:
        _build(rules, **fault)
    assert exc_info.value.reason is reason


def test_build_event_room_rules() -> None:
    with pytest.raises(EventFormatError) as exc_info:
        _build(ROOM_V11, room_id="!" + _event_id(5)[1:])
    assert exc_info.value.reason is FormatReason.BAD_ID
    with pytest.raises(EventFormatError) as exc_info:
        _build(ROOM_V11, room_id=None)
    assert exc_info.value.reason is FormatReason.MISSING_FIELD
    room_id = "!" + _event_id(99)[1:]
    with pytest.raises(EventFormatError) as exc_info:
        _build(ROOM_V12, room_id=room_id, auth_events=["$" + room_id[1:]])
    assert exc_info.value.reason is FormatReason.CREATE_IN_AUTH_EVENTS
    with pytest.raises(EventFormatError) as exc_info:
        _build(ROOM_V12, event_type="m.room.create", state_key="", content={})
    assert exc_info.value.reason is FormatReason.CREATE_HAS_ROOM_ID


@settings(max_examples=60)
@given(
    event_type=st.text(max_size=300),
    state_key=st.none() | st.text(max_size=300),
    depth=st.integers(-5, 2**54),
    rules=st.sampled_from(ALL_RULES),
)
def test_build_event_agrees_with_parse_pdu(
    event_type: str, state_key: str | None, depth: int, rules: RoomVersionRules
) -> None:
    # Built from typed parameters or parsed from the signed object: the same verdict.
    try:
        pdu = _build(rules, event_type=event_type, state_key=state_key, depth=depth)
    except EventFormatError as exc:
        reason = exc.reason
        obj = _valid(rules)
        obj.update(type=event_type, depth=depth)
        obj.pop("state_key")
        if state_key is not None:
            obj["state_key"] = state_key
        assert _reason(obj, rules) is reason
    else:
        assert parse_pdu(parse_json(pdu.canonical_bytes()), rules) == pdu


# ----------------------------------------------------------------------------------------------
# The plain-event path of `parse_pdu` (`content_hash_size`): the fields first, then only the
# values they did not cover. Each case must end exactly as the ordered checks do.


class _KeyLike:
    """A key that is not a string but equals one (the walk refuses it: BAD_TYPE)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __hash__(self) -> int:
        return hash(self.text)

    def __eq__(self, other: object) -> bool:
        return other == self.text


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def _set_in(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target = event
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _signatures_of(event: dict[str, Any]) -> dict[str, Any]:
    by_server: dict[str, Any] = next(iter(event["signatures"].values()))
    return by_server


_PLAIN_PATH_CASES: list[tuple[str, Any]] = [
    ("valid", lambda e: None),
    ("float in content", lambda e: _set_in(e, ("content", "x"), 1.5)),
    ("integral float", lambda e: _set_in(e, ("content", "x"), 2.0)),
    ("big int in content", lambda e: _set_in(e, ("content", "x"), 2**53)),
    ("nested big int", lambda e: _set_in(e, ("content", "x"), {"y": [-(2**60)]})),
    ("nested float", lambda e: _set_in(e, ("content", "x"), [{"y": 0.5}])),
    ("safe int in content", lambda e: _set_in(e, ("content", "x"), 2**53 - 1)),
    ("nested content", lambda e: _set_in(e, ("content", "x"), {"y": [1, True, None, "z"]})),
    ("ts too big", lambda e: _set_in(e, ("origin_server_ts",), 2**53)),
    ("ts too small", lambda e: _set_in(e, ("origin_server_ts",), -(2**53))),
    ("ts a float", lambda e: _set_in(e, ("origin_server_ts",), 1.0)),
    ("depth too big", lambda e: _set_in(e, ("depth",), 2**53)),
    ("surrogate in type", lambda e: _set_in(e, ("type",), "m.\ud800")),
    ("surrogate in state_key", lambda e: _set_in(e, ("state_key",), "\udfff")),
    ("surrogate in a content value", lambda e: _set_in(e, ("content", "x"), "a\ud800b")),
    ("surrogate in a content key", lambda e: _set_in(e, ("content", "\ud800"), "x")),
    ("pair across strings", lambda e: _set_in(e, ("content", "\ud83d"), "\ude00")),
    ("non-ASCII content", lambda e: _set_in(e, ("content", "é"), "\U0001f600")),
    ("surrogate in hashes", lambda e: _set_in(e, ("hashes", "sha256"), "\ud800")),
    ("second hash", lambda e: _set_in(e, ("hashes", "sha512"), "x")),
    ("float hash", lambda e: _set_in(e, ("hashes", "sha512"), 0.5)),
    ("surrogate in a signature", lambda e: _set_in(e, ("signatures", NODE, KEY_ID), "\ud800")),
    ("surrogate in a key ID", lambda e: _signatures_of(e).update({"ed25519:\ud800": "x"})),
    ("surrogate in a server", lambda e: _set_in(e, ("signatures", "s\ud800"), {})),
    ("int signature", lambda e: _set_in(e, ("signatures", NODE, KEY_ID), 5)),
    ("float signature", lambda e: _set_in(e, ("signatures", NODE, KEY_ID), 5.5)),
    ("int key ID", lambda e: _set_in(e, ("signatures", NODE, 7), "x")),
    ("only an int key ID", lambda e: _set_in(e, ("signatures", NODE), {7: "x"})),
    ("int server", lambda e: _set_in(e, ("signatures", 7), {})),
    ("empty server", lambda e: _set_in(e, ("signatures", "x"), {})),
    ("signatures of a list", lambda e: _set_in(e, ("signatures", "x"), [])),
    ("int content key", lambda e: _set_in(e, ("content", 1), "x")),
    ("only an int content key", lambda e: _set_in(e, ("content",), {1: "x"})),
    ("None content key", lambda e: _set_in(e, ("content",), {None: "x"})),
    ("int top-level key", lambda e: _set_in(e, (1,), "x")),
    ("key equal to a string", lambda e: e.update({_KeyLike("origin"): "x"})),
    ("key-like member name", lambda e: e.update({_KeyLike("type"): e.pop("type")})),
    ("deep content", lambda e: _set_in(e, ("content", "x"), _deep(62))),
    ("too deep content", lambda e: _set_in(e, ("content", "x"), _deep(63))),
    ("tuple in content", lambda e: _set_in(e, ("content", "x"), ("a", 1))),
    ("set in content", lambda e: _set_in(e, ("content", "x"), {"a"})),
    ("bytes in content", lambda e: _set_in(e, ("content", "x"), b"a")),
    ("unsigned", lambda e: _set_in(e, ("unsigned",), {"age": 5})),
    ("unsigned float", lambda e: _set_in(e, ("unsigned",), {"age": 5.5})),
    ("unsigned not an object", lambda e: _set_in(e, ("unsigned",), [])),
    ("unknown member", lambda e: _set_in(e, ("origin",), "x")),
    ("unknown member float", lambda e: _set_in(e, ("origin",), 0.5)),
    ("bad sender and a float", lambda e: e.update(sender="alice", content={"x": 0.5})),
    ("bad sender", lambda e: _set_in(e, ("sender",), "alice")),
    ("bad prev event and a big int", lambda e: e.update(prev_events=["$x"], depth=2**60)),
    ("content a list", lambda e: _set_in(e, ("content",), [])),
    ("no hashes", lambda e: e.pop("hashes")),
    ("signatures a list", lambda e: _set_in(e, ("signatures",), [])),
    ("content a dict subclass", lambda e: _set_in(e, ("content",), _Dict(e["content"]))),
    ("str subclass", lambda e: _set_in(e, ("content", "x"), _Str("y"))),
    ("too large", lambda e: _set_in(e, ("content", "x"), "y" * MAX_PDU_BYTES)),
    ("too large, escaped", lambda e: _set_in(e, ("content", "x"), "\x01" * 11_000)),
    ("too large, multibyte", lambda e: _set_in(e, ("content", "x"), "\U0001f600" * 16_400)),
    ("large signatures", lambda e: _set_in(e, ("signatures", "x" * 200), {"k": "\x01" * 10_900})),
    ("many servers", lambda e: e["signatures"].update({f"s{i}": {} for i in range(4_000)})),
]


class _Dict(dict[str, Any]):
    pass


class _Str(str):
    pass


def _outcome(run: Any) -> object:
    try:
        return run()
    except EventFormatError as exc:
        return (exc.reason, str(exc))
    except Exception as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
@pytest.mark.parametrize(
    ("name", "change"), _PLAIN_PATH_CASES, ids=[c[0] for c in _PLAIN_PATH_CASES]
)
def test_the_plain_path_decides_as_the_ordered_checks(
    rules: RoomVersionRules, name: str, change: Any
) -> None:
    event = _valid(rules)
    change(event)
    event_id = parse_event_id(_event_id(7))
    try:
        size = len(encode_content_hash_bytes(event))
    except (TypeError, ValueError):
        size = 1_000  # (ingest passes none: any size will do)
    ordered = _outcome(lambda: parse_pdu(event, rules, event_id=event_id))
    plain = _outcome(lambda: parse_pdu(event, rules, event_id=event_id, content_hash_size=size))
    assert plain == ordered
    if name == "valid":
        assert isinstance(plain, Pdu)


def test_the_plain_path_is_taken() -> None:
    # A usual event is not walked: the walk is not even called.
    event = _valid(ROOM_V11)
    event_id = parse_event_id(_event_id(7))
    size = len(encode_content_hash_bytes(event))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events_module, "check_canonical_value_bound", _no_walk)
        assert parse_pdu(event, ROOM_V11, event_id=event_id, content_hash_size=size).json is event
        with pytest.raises(AssertionError):
            parse_pdu(event, ROOM_V11, event_id=event_id)


def _no_walk(value: object, **kwargs: Any) -> int:
    raise AssertionError("walked")
