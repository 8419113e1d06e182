"""Every event of the benchmark rooms verifies; tampered copies fail with the right reason.

Rooms: tests/vectors/rooms (perf-dag/1 files made and checked with Synapse 1.163.2). Keys: the
explicit `verify_key` of each server in the file, and separately the keys derived from the
server names (p2p names are node identifiers).
"""

from __future__ import annotations

import copy
import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from s2s_node.core.canonical import decode_base64, encode_base64
from s2s_node.core.events import parse_pdu
from s2s_node.core.ids import server_of
from s2s_node.core.keys import identifier_from_verify_key, signing_key_from_seed
from s2s_node.core.rules import rules_for
from s2s_node.core.signing import (
    KeyRing,
    SignatureError,
    SignatureReason,
    add_hashes_and_signature,
    check_event,
    derived_keys,
)

ROOMS = Path(__file__).parent / "vectors" / "rooms"
ROOM_FILES = sorted(p.name for p in ROOMS.glob("*.json.gz"))


@cache
def _load(name: str) -> dict[str, Any]:
    with gzip.open(ROOMS / name, "rt", encoding="utf-8") as f:
        room: dict[str, Any] = json.load(f)
    return room


def _explicit_keys(room: dict[str, Any]) -> KeyRing:
    return KeyRing(
        {
            name: {server["key_id"]: decode_base64(server["verify_key"])}
            for name, server in room["servers"].items()
        },
        derive=False,
    )


def _room(name: str) -> tuple[dict[str, Any], Any]:
    room = copy.deepcopy(_load(name))
    return room, rules_for(room["room_version"])


def _signature_reason(event: dict[str, Any], rules: Any, keys: Any) -> SignatureReason:
    with pytest.raises(SignatureError) as exc_info:
        check_event(event, rules, keys)
    return exc_info.value.reason


def test_the_rooms_are_there() -> None:
    assert {name[:3] for name in ROOM_FILES} == {"v11", "v12"}


@pytest.mark.parametrize("name", ROOM_FILES)
def test_every_event_verifies_with_the_explicit_keys(name: str) -> None:
    room, rules = _room(name)
    keys = _explicit_keys(room)
    assert len(room["events"]) == len(room["event_ids"]) > 100
    for event, expected_id in zip(room["events"], room["event_ids"], strict=True):
        checked = check_event(event, rules, keys)
        assert checked.event_id == expected_id
        assert checked.hash_ok, expected_id
        pdu = parse_pdu(event, rules, event_id=checked.event_id)
        assert pdu.room_id == room["room_id"]
        assert parse_pdu(event, rules).event_id == expected_id


@pytest.mark.parametrize("name", ROOM_FILES)
def test_every_event_verifies_with_derived_keys(name: str) -> None:
    room, rules = _room(name)
    for server_name, server in room["servers"].items():
        # p2p rooms: each server name is the identifier of its key
        assert identifier_from_verify_key(decode_base64(server["verify_key"])) == server_name
        assert server["key_id"] == "ed25519:1"
    for event, expected_id in zip(room["events"], room["event_ids"], strict=True):
        checked = check_event(event, rules, derived_keys)
        assert checked.event_id == expected_id
        assert checked.hash_ok


@pytest.mark.parametrize("name", ROOM_FILES)
def test_the_seeds_match_the_keys(name: str) -> None:
    room, _ = _room(name)
    for server_name, server in room["servers"].items():
        key = signing_key_from_seed(decode_base64(server["seed"]))
        assert key.identifier == server_name
        assert encode_base64(key.verify_key_bytes) == server["verify_key"]


def _first(room: dict[str, Any], event_type: str, **content: Any) -> int:
    for index, event in enumerate(room["events"]):
        if event["type"] == event_type and all(
            event["content"].get(k) == v for k, v in content.items()
        ):
            return index
    raise AssertionError(f"no {event_type} in the room")


@pytest.mark.parametrize("name", ROOM_FILES)
def test_changed_content_that_redaction_drops(name: str) -> None:
    # A message body or a display name: the content hash fails, but the signed (redacted) form
    # and so the event ID and the signature are unchanged.
    room, rules = _room(name)
    keys = _explicit_keys(room)
    for index in (_first(room, "m.room.message"), _first(room, "m.room.member")):
        event = room["events"][index]
        key = "body" if event["type"] == "m.room.message" else "displayname"
        event["content"][key] = str(event["content"].get(key)) + " (changed)"
        checked = check_event(event, rules, keys)
        assert not checked.hash_ok
        assert checked.event_id == room["event_ids"][index]


@pytest.mark.parametrize("name", ROOM_FILES)
def test_changed_content_that_redaction_keeps(name: str) -> None:
    # A membership or the power levels' users: the signature no longer verifies, and the event
    # ID computed from the changed event is another one.
    room, rules = _room(name)
    keys = _explicit_keys(room)
    member = room["events"][_first(room, "m.room.member", membership="join")]
    member["content"]["membership"] = "leave"
    power = room["events"][_first(room, "m.room.power_levels")]
    power["content"]["users"] = {**power["content"]["users"], "@mallory:x.example": 100}
    power["content"]["ban"] = 0
    for event in (member, power):
        assert _signature_reason(event, rules, keys) is SignatureReason.BAD_SIGNATURE
        event_id = parse_pdu(event, rules).event_id
        assert event_id not in room["event_ids"]


@pytest.mark.parametrize("name", ROOM_FILES)
def test_changed_signature_byte(name: str) -> None:
    room, rules = _room(name)
    keys = _explicit_keys(room)
    for index in (0, len(room["events"]) // 2, len(room["events"]) - 1):
        event = room["events"][index]
        server = server_of(event["sender"])
        signature = bytearray(decode_base64(event["signatures"][server]["ed25519:1"]))
        signature[index % 64] ^= 0x40
        event["signatures"][server]["ed25519:1"] = encode_base64(bytes(signature))
        assert _signature_reason(event, rules, keys) is SignatureReason.BAD_SIGNATURE
        assert _signature_reason(event, rules, derived_keys) is SignatureReason.BAD_SIGNATURE


@pytest.mark.parametrize("name", ROOM_FILES)
def test_dropped_signature(name: str) -> None:
    room, rules = _room(name)
    keys = _explicit_keys(room)
    event = room["events"][len(room["events"]) // 3]
    del event["signatures"][server_of(event["sender"])]
    assert _signature_reason(event, rules, keys) is SignatureReason.MISSING_SIGNATURE
    del event["signatures"]
    assert _signature_reason(event, rules, keys) is SignatureReason.NO_SIGNATURES


@pytest.mark.parametrize("name", ROOM_FILES)
def test_signed_with_another_key(name: str) -> None:
    room, rules = _room(name)
    keys = _explicit_keys(room)
    event = room["events"][len(room["events"]) // 4]
    sender_server = server_of(event["sender"])
    other = next(s for n, s in room["servers"].items() if n != sender_server)
    other_key = signing_key_from_seed(decode_base64(other["seed"]))
    del event["signatures"][sender_server]
    forged = add_hashes_and_signature(event, rules, sender_server, other_key)
    assert forged["hashes"] == event["hashes"]
    assert _signature_reason(forged, rules, keys) is SignatureReason.BAD_SIGNATURE
    assert _signature_reason(forged, rules, derived_keys) is SignatureReason.BAD_SIGNATURE
    # Re-signed with the right key, it verifies again with the same event ID.
    right_key = signing_key_from_seed(decode_base64(room["servers"][sender_server]["seed"]))
    resigned = add_hashes_and_signature(event, rules, sender_server, right_key)
    assert (
        check_event(resigned, rules, keys).event_id == room["event_ids"][len(room["events"]) // 4]
    )


@pytest.mark.parametrize("name", ROOM_FILES)
def test_unknown_server_key(name: str) -> None:
    room, rules = _room(name)
    event = room["events"][1]
    assert _signature_reason(event, rules, KeyRing(derive=False)) is SignatureReason.UNKNOWN_KEY
