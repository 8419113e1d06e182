"""Identifier grammar: server names, user IDs, room IDs and event IDs (digest section 9)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.canonical import encode_base64_urlsafe
from s2s_node.core.ids import (
    MAX_ID_BYTES,
    IdError,
    IdReason,
    create_event_id_from_room_id,
    is_event_id,
    is_server_user,
    is_valid_server_name,
    localpart_of,
    parse_event_id,
    parse_room_id,
    parse_server_name,
    parse_user_id,
    room_id_from_create_event_id,
    server_of,
    server_user,
)
from s2s_node.core.keys import identifier_from_verify_key

EVENT_ID = "$" + encode_base64_urlsafe(bytes(range(32)))
IDENTIFIER = identifier_from_verify_key(bytes(range(32)))

# ----------------------------------------------------------------------------------------------
# Server names

VALID_SERVER_NAMES = [
    # the spec's examples (digest 9.2)
    "matrix.org",
    "matrix.org:8888",
    "1.2.3.4",
    "1.2.3.4:1234",
    "[1234:5678::abcd]",
    "[1234:5678::abcd]:5678",
    # more
    "localhost",
    "a",
    "MATRIX.org",
    "my-server.example.com:1",
    "[::1]",
    "[::1]:65535",
    "[::ffff:1.2.3.4]",
    "255.255.255.255",
    IDENTIFIER,
    "x" * 255,
]

INVALID_SERVER_NAMES = [
    "",
    ":8080",
    "matrix.org:",
    "matrix.org:65536",
    "matrix.org:123456",
    "matrix.org:-1",
    "matrix.org:80a",
    "matrix org",
    "matrix_org",
    "mätrix.org",
    "matrix.org/path",
    "user@matrix.org",
    "1.2.3.256",
    "1234:5678::abcd",  # an IPv6 literal needs brackets
    "[1234:5678::abcd",
    "[1234:5678::abcd]:",
    "[1234:5678::abcd]x",
    "[::g]",
    "[]",
    "[1.2.3.4]",
    "[::1%eth0]",
    "\u0661.\u0662.\u0663.\u0664",  # Arabic-Indic digits are not DIGIT
    "matrix.org:\uff18\uff10",  # nor are fullwidth ones in a port
    "x" * 256,
]


@pytest.mark.parametrize("name", VALID_SERVER_NAMES)
def test_valid_server_names(name: str) -> None:
    assert is_valid_server_name(name)
    assert parse_server_name(name) == name


@pytest.mark.parametrize("name", INVALID_SERVER_NAMES)
def test_invalid_server_names(name: str) -> None:
    assert not is_valid_server_name(name)
    with pytest.raises(IdError) as exc_info:
        parse_server_name(name)
    assert exc_info.value.reason in {IdReason.BAD_SERVER_NAME, IdReason.TOO_LONG}


def test_server_name_must_be_a_string() -> None:
    with pytest.raises(IdError) as exc_info:
        parse_server_name(5)
    assert exc_info.value.reason is IdReason.NOT_A_STRING
    for value in (5, None, ["matrix.org"], {"a": 1}):
        assert not is_valid_server_name(value)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# User IDs


@pytest.mark.parametrize(
    "user_id",
    [
        "@alice:matrix.org",
        "@a.b_c=d-e/f+g:matrix.org:8448",
        "@:matrix.org",  # the empty localpart: the MSC3348 server user
        f"@:{IDENTIFIER}",
        "@Alice:matrix.org",  # historical: upper case
        "@ünïcödé 👍:example.com",  # historical: any code point but ':' and NUL
        "@alice:[::1]:8448",
        "@a:" + "x" * (MAX_ID_BYTES - 3),  # exactly 255 bytes
    ],
)
def test_historical_user_ids_are_accepted(user_id: str) -> None:
    assert parse_user_id(user_id) == user_id


@pytest.mark.parametrize(
    ("user_id", "reason"),
    [
        ("alice:matrix.org", IdReason.BAD_SIGIL),
        ("!alice:matrix.org", IdReason.BAD_SIGIL),
        ("@alice", IdReason.NO_SERVER),
        ("@alice:", IdReason.BAD_SERVER_NAME),
        ("@alice:bad_server", IdReason.BAD_SERVER_NAME),
        ("@al\x00ice:matrix.org", IdReason.BAD_LOCALPART),
        ("@al\ud800ice:matrix.org", IdReason.BAD_LOCALPART),
        ("@a:" + "x" * (MAX_ID_BYTES - 2), IdReason.TOO_LONG),  # 256 bytes
        ("@" + "é" * 126 + ":ab", IdReason.TOO_LONG),  # 130 characters, 256 bytes
    ],
)
def test_invalid_user_ids(user_id: str, reason: IdReason) -> None:
    with pytest.raises(IdError) as exc_info:
        parse_user_id(user_id)
    assert exc_info.value.reason is reason


def test_user_id_must_be_a_string() -> None:
    for value in (None, 5, b"@a:b", ["@a:b"]):
        with pytest.raises(IdError) as exc_info:
            parse_user_id(value)
        assert exc_info.value.reason is IdReason.NOT_A_STRING


@pytest.mark.parametrize(
    ("user_id", "ok"),
    [
        ("@alice:matrix.org", True),
        ("@a.b_c=d-e/f+g09:matrix.org", True),
        ("@:matrix.org", False),  # empty: invalid for new users
        ("@Alice:matrix.org", False),
        ("@ali ce:matrix.org", False),
        ("@alice!:matrix.org", False),
        ("@ünï:matrix.org", False),
    ],
)
def test_non_historical_rules(user_id: str, ok: bool) -> None:
    if ok:
        assert parse_user_id(user_id, historical=False) == user_id
        return
    with pytest.raises(IdError) as exc_info:
        parse_user_id(user_id, historical=False)
    assert exc_info.value.reason is IdReason.BAD_LOCALPART
    assert parse_user_id(user_id) == user_id  # still fine inside events


def test_server_user() -> None:
    assert server_user(IDENTIFIER) == f"@:{IDENTIFIER}"
    assert is_server_user(server_user(IDENTIFIER))
    assert is_server_user("@:matrix.org:8448")
    assert not is_server_user("@alice:matrix.org")
    assert not is_server_user("@a:")
    assert not is_server_user("!:matrix.org")


def test_server_and_localpart() -> None:
    assert server_of("@alice:matrix.org:8448") == "matrix.org:8448"
    assert server_of("@:[::1]:80") == "[::1]:80"
    assert server_of("!room:example.org") == "example.org"
    assert server_of("no-colon") == ""
    assert localpart_of("@alice:matrix.org") == "alice"
    assert localpart_of(server_user("matrix.org")) == ""


# ----------------------------------------------------------------------------------------------
# Room IDs and event IDs


@pytest.mark.parametrize(
    "room_id",
    [
        "!opaque:matrix.org",
        "!AbC123:matrix.org:8448",
        "!perf-s100-c10-k2:" + IDENTIFIER,
        "!:matrix.org",
        "!" + EVENT_ID[1:],  # v12: the create event's hash
    ],
)
def test_valid_room_ids(room_id: str) -> None:
    assert parse_room_id(room_id) == room_id


@pytest.mark.parametrize(
    ("room_id", "reason"),
    [
        ("opaque:matrix.org", IdReason.BAD_SIGIL),
        (EVENT_ID, IdReason.BAD_SIGIL),
        ("!op\x00aque:matrix.org", IdReason.BAD_LOCALPART),
        ("!op\udc00aque:matrix.org", IdReason.BAD_LOCALPART),
        ("!opaque:bad server", IdReason.BAD_SERVER_NAME),
        ("!opaque", IdReason.BAD_HASH),
        ("!" + EVENT_ID[1:-1], IdReason.BAD_HASH),  # 42 characters
        ("!" + EVENT_ID[1:] + "A", IdReason.BAD_HASH),  # 44 characters
        ("!" + EVENT_ID[1:-1] + "+", IdReason.BAD_HASH),  # standard alphabet
        ("!x:" + "a" * 253, IdReason.TOO_LONG),
    ],
)
def test_invalid_room_ids(room_id: str, reason: IdReason) -> None:
    with pytest.raises(IdError) as exc_info:
        parse_room_id(room_id)
    assert exc_info.value.reason is reason


def test_event_ids() -> None:
    assert parse_event_id(EVENT_ID) == EVENT_ID
    assert is_event_id(EVENT_ID)
    cases = [
        ("!" + EVENT_ID[1:], IdReason.BAD_SIGIL),
        ("x" + EVENT_ID[1:], IdReason.BAD_SIGIL),
        ("$abc:matrix.org", IdReason.BAD_HASH),  # a room-version-1/2 event ID
        ("$" + EVENT_ID[1:-1] + "/", IdReason.BAD_HASH),  # room version 3 alphabet
        (EVENT_ID[:-1], IdReason.BAD_HASH),
        (EVENT_ID + "A", IdReason.BAD_HASH),
        (None, IdReason.NOT_A_STRING),
    ]
    for value, reason in cases:
        assert not is_event_id(value)
        with pytest.raises(IdError) as exc_info:
            parse_event_id(value)
        assert exc_info.value.reason is reason


@settings(max_examples=100)
@given(digest=st.binary(min_size=32, max_size=32))
def test_v12_room_id_and_create_event_id(digest: bytes) -> None:
    event_id = parse_event_id("$" + encode_base64_urlsafe(digest))
    room_id = room_id_from_create_event_id(event_id)
    assert parse_room_id(room_id) == room_id
    assert room_id[1:] == event_id[1:]
    assert create_event_id_from_room_id(room_id) == event_id
