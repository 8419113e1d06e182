"""Signing JSON and events, content and reference hashes, redaction: vectors and invariants."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import nacl.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.canonical import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJsonError,
    decode_base64,
    encode_base64,
    encode_canonical_json,
)
from s2s_node.core.keys import KEY_ID, SigningKey, signing_key_from_seed
from s2s_node.core.redaction import redact
from s2s_node.core.rules import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersionRules
from s2s_node.core.signing import (
    KeyRing,
    SignatureError,
    SignatureReason,
    add_hashes_and_signature,
    build_signed_event,
    check_event,
    check_event_signatures,
    check_json_signature,
    compute_content_hash,
    compute_event_id,
    compute_event_size,
    compute_event_size_bound,
    compute_reference_hash,
    derived_keys,
    encode_content_hash_bytes,
    encode_signing_and_content_hash_bytes,
    encode_signing_bytes,
    is_content_hash_valid,
    required_signers,
    sign_json,
)

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "spec" / "vectors.json").read_text(encoding="utf-8")
)
SPEC_KEY = signing_key_from_seed(
    decode_base64(VECTORS["official_signing_key"]["seed_base64_as_written_in_spec"])
)
SPEC_KEYS = KeyRing({"domain": {KEY_ID: SPEC_KEY.verify_key_bytes}}, derive=False)
OTHER_KEY = signing_key_from_seed(bytes(range(32)))
ALL_RULES = [ROOM_V10, ROOM_V11, ROOM_V12]

# ----------------------------------------------------------------------------------------------
# Strategies

safe_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
safe_ints = st.integers(min_value=MIN_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
json_values = st.recursive(
    st.none() | st.booleans() | safe_ints | safe_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(safe_text, children, max_size=3)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(safe_text, json_values, min_size=1, max_size=5)

SPECIAL_TYPES = [
    "m.room.member",
    "m.room.create",
    "m.room.join_rules",
    "m.room.power_levels",
    "m.room.history_visibility",
    "m.room.redaction",
    "m.room.message",
    "m.room.topic",
]
SPECIAL_CONTENT_KEYS = [
    "membership",
    "join_authorised_via_users_server",
    "creator",
    "room_version",
    "join_rule",
    "allow",
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
    "invite",
    "notifications",
    "history_visibility",
    "redacts",
    "body",
    "third_party_invite",
]
TOP_LEVEL_EXTRAS = ["origin", "membership", "prev_state", "redacts", "unsigned", "event_id", "x"]

third_party_invites = (
    st.fixed_dictionaries({"signed": json_values}, optional={"display_name": safe_text})
    | st.dictionaries(safe_text, json_values, max_size=2)
    | json_values
)
contents = st.dictionaries(
    st.sampled_from(SPECIAL_CONTENT_KEYS) | safe_text,
    json_values,
    max_size=6,
).flatmap(
    lambda content: st.one_of(
        st.just(content),
        third_party_invites.map(lambda invite: {**content, "third_party_invite": invite}),
    )
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(SPECIAL_TYPES) | safe_text),
        "sender": "@alice:domain",
        "room_id": "!room:domain",
        "origin_server_ts": draw(st.integers(0, 2**41)),
        "depth": draw(st.integers(1, 1000)),
        "prev_events": [],
        "auth_events": [],
        "content": draw(contents | json_values),
    }
    if draw(st.booleans()):
        event["state_key"] = draw(st.sampled_from(["", "@bob:domain"]) | safe_text)
    for key in draw(st.lists(st.sampled_from(TOP_LEVEL_EXTRAS), unique=True)):
        event[key] = draw(json_values)
    return event


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `value` (containers included)."""
    found: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, item in items:
        found.append((*prefix, key))
        found.extend(_paths(item, (*prefix, key)))
    return found


def _changed(value: Any) -> Any:
    """A different JSON value."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value - 1 if value > 0 else value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, None]
    return {**value, "".join(value) + "!": None}  # a key longer than any present


def _set_path(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _get_path(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _signature_error(run: Any) -> SignatureReason:
    with pytest.raises(SignatureError) as exc_info:
        run()
    return exc_info.value.reason


# ----------------------------------------------------------------------------------------------
# Official vectors


@pytest.mark.parametrize("case", VECTORS["official_json_signing"], ids=["empty", "one-two"])
def test_official_json_signing(case: dict[str, Any]) -> None:
    signed = sign_json(case["input"], "domain", SPEC_KEY)
    assert signed == case["expected_signed"]
    check_json_signature(case["expected_signed"], "domain", SPEC_KEYS)
    assert case["input"] == {k: v for k, v in signed.items() if k != "signatures"}


@pytest.mark.parametrize(
    "case", VECTORS["official_event_signing"], ids=lambda c: c["name"].replace(" ", "-")
)
def test_official_event_signing(case: dict[str, Any]) -> None:
    # The official vectors redact with the room v1-v10 key list (digest warning): ROOM_V10.
    signed = add_hashes_and_signature(case["input"], ROOM_V10, "domain", SPEC_KEY)
    assert signed == case["expected_signed"]
    checked = check_event(case["expected_signed"], ROOM_V10, SPEC_KEYS)
    assert checked.hash_ok
    assert checked.event_id == compute_event_id(case["expected_signed"], ROOM_V10)
    assert (
        encode_base64(compute_content_hash(case["input"]))
        == (case["expected_signed"]["hashes"]["sha256"])
    )


def test_official_event_vectors_fail_under_v11_redaction() -> None:
    for case in VECTORS["official_event_signing"]:
        reason = _signature_error(
            lambda c=case: check_event(c["expected_signed"], ROOM_V11, SPEC_KEYS)
        )
        assert reason is SignatureReason.BAD_SIGNATURE


def test_appendix_event_under_v11_redaction() -> None:
    vector = VECTORS["derived_appendix_minimal_event_under_v11_redaction"]
    for rules in (ROOM_V11, ROOM_V12):
        signed = add_hashes_and_signature(vector["input"], rules, "domain", SPEC_KEY)
        assert signed["hashes"]["sha256"] == vector["expected_hashes_sha256"]
        assert signed["signatures"] == {
            "domain": {KEY_ID: vector["expected_signature_v11_v12_redaction"]}
        }
        assert (
            compute_event_id(signed, rules)
            == (vector["reference_hash_event_id_if_treated_as_v11_event"])
        )
        assert encode_canonical_json(redact(signed, rules)) == (
            vector["redacted_form_v11_canonical"].encode("utf-8")
        )
        assert check_event(signed, rules, SPEC_KEYS).hash_ok
    signed_v10 = add_hashes_and_signature(vector["input"], ROOM_V10, "domain", SPEC_KEY)
    assert (
        signed_v10["signatures"]["domain"][KEY_ID]
        == (vector["expected_signature_v1_to_v10_redaction"])
    )
    assert (
        compute_event_id(signed_v10, ROOM_V10)
        == (vector["reference_hash_event_id_if_treated_as_v4_to_v10_event"])
    )


@pytest.mark.parametrize("name", ["create", "creator_join", "power_levels"])
def test_v12_genesis_vectors(name: str) -> None:
    vector = VECTORS["derived_v12_genesis"][name]
    signed = build_signed_event(vector["unsigned_input"], ROOM_V12, "domain", SPEC_KEY)
    assert signed.json == vector["signed"]
    assert signed.event_id == vector["event_id"]
    checked = check_event(vector["signed"], ROOM_V12, SPEC_KEYS)
    assert checked.event_id == vector["event_id"]
    assert checked.hash_ok
    if name == "create":
        assert vector["content_hash"] == signed.json["hashes"]["sha256"]
        assert encode_signing_bytes(vector["signed"], ROOM_V12) == (
            vector["reference_hash_input_canonical"].encode("utf-8")
        )
        assert vector["room_id"] == "!" + signed.event_id[1:]


@pytest.mark.parametrize("name", sorted(VECTORS["derived_redaction_examples"]["cases"]))
def test_redaction_examples(name: str) -> None:
    case = VECTORS["derived_redaction_examples"]["cases"][name]
    before = copy.deepcopy(case["input"])
    assert redact(case["input"], ROOM_V10) == case["redacted_v10"]
    assert redact(case["input"], ROOM_V11) == case["redacted_v11_v12"]
    assert redact(case["input"], ROOM_V12) == case["redacted_v11_v12"]
    assert case["input"] == before  # the input is not changed


def test_server_key_response_signature() -> None:
    response = VECTORS["derived_server_key_response"]["response"]
    published = {
        key_id: decode_base64(entry["key"]) for key_id, entry in response["verify_keys"].items()
    }
    assert published == {KEY_ID: SPEC_KEY.verify_key_bytes}
    check_json_signature(response, "domain", KeyRing({"domain": published}, derive=False))
    unsigned = {k: v for k, v in response.items() if k != "signatures"}
    assert sign_json(unsigned, "domain", SPEC_KEY) == response
    tampered = {**response, "valid_until_ts": response["valid_until_ts"] + 1}
    assert _signature_error(lambda: check_json_signature(tampered, "domain", SPEC_KEYS)) is (
        SignatureReason.BAD_SIGNATURE
    )


@pytest.mark.parametrize("name", ["get_version", "put_send"])
def test_x_matrix_request_signature(name: str) -> None:
    vector = VECTORS["derived_x_matrix"][name]
    request: dict[str, Any] = {
        "method": vector["method"],
        "uri": vector["uri"],
        "origin": vector["origin"],
        "destination": vector["destination"],
    }
    if "content" in vector:
        request["content"] = vector["content"]
    assert encode_canonical_json(request) == (
        vector["signed_json_without_signatures_canonical"].encode("utf-8")
    )
    signed = sign_json(request, vector["origin"], SPEC_KEY)
    assert signed["signatures"] == {"domain": {KEY_ID: vector["sig"]}}
    assert f'sig="{vector["sig"]}"' in vector["authorization_header"]
    check_json_signature(signed, "domain", SPEC_KEYS)


def test_reference_implementation_event_id() -> None:
    vector = VECTORS["reference_impl_event_id_vectors"]
    event = vector["event"]
    assert is_content_hash_valid(event)
    # Room version 5 redacts like v10 (top-level origin/prev_state kept, create keeps creator).
    assert (
        compute_event_id(event, ROOM_V10)
        == vector["expected_event_id_room_v4_to_v10_url_safe_base64"]
    )
    assert (
        "$" + encode_base64(compute_reference_hash(event, ROOM_V10))
        == (vector["expected_event_id_room_v3_standard_base64"])
    )


# ----------------------------------------------------------------------------------------------
# Signing properties


@settings(max_examples=100)
@given(obj=json_objects, data=st.data())
def test_sign_then_verify_and_any_change_breaks_it(
    obj: dict[str, Any], data: st.DataObject
) -> None:
    obj.pop("signatures", None)
    obj.pop("unsigned", None)
    signed = sign_json(obj, "domain", SPEC_KEY)
    check_json_signature(signed, "domain", SPEC_KEYS)
    assert obj == {k: v for k, v in signed.items() if k != "signatures"}  # input unchanged

    paths = [p for p in _paths(obj)]
    if paths:  # (an object of only `signatures` and `unsigned` has nothing signed to change)
        tampered = copy.deepcopy(signed)
        path = data.draw(st.sampled_from(paths))
        _set_path(tampered, path, _changed(_get_path(obj, path)))
        assert _signature_error(lambda: check_json_signature(tampered, "domain", SPEC_KEYS)) is (
            SignatureReason.BAD_SIGNATURE
        )
    added = {**signed, data.draw(safe_text.filter(lambda k: k not in signed)): None}
    assert _signature_error(lambda: check_json_signature(added, "domain", SPEC_KEYS)) is (
        SignatureReason.BAD_SIGNATURE
    )
    # `unsigned` and other servers' signatures are outside what is signed.
    extended = sign_json({**signed, "unsigned": {"age": 5}}, "other.example", OTHER_KEY)
    check_json_signature(extended, "domain", SPEC_KEYS)
    check_json_signature(
        extended, "other.example", KeyRing({"other.example": {KEY_ID: OTHER_KEY.verify_key_bytes}})
    )


def test_signature_failures_have_reasons() -> None:
    signed = sign_json({"a": 1}, "domain", SPEC_KEY)
    signature = signed["signatures"]["domain"][KEY_ID]
    raw = bytearray(decode_base64(signature))
    raw[10] ^= 1

    def reason(obj: dict[str, Any], keys: Any = SPEC_KEYS) -> SignatureReason:
        return _signature_error(lambda: check_json_signature(obj, "domain", keys))

    assert reason({"a": 1}) is SignatureReason.NO_SIGNATURES
    assert reason({"a": 1, "signatures": []}) is SignatureReason.NO_SIGNATURES
    assert reason({"a": 1, "signatures": {"other": {KEY_ID: signature}}}) is (
        SignatureReason.MISSING_SIGNATURE
    )
    assert reason({"a": 1, "signatures": {"domain": {}}}) is SignatureReason.MISSING_SIGNATURE
    assert reason({"a": 1, "signatures": {"domain": {"ed25519:2": signature}}}) is (
        SignatureReason.UNKNOWN_KEY
    )
    assert reason({"a": 1, "signatures": {"domain": {"rsa:1": signature}}}) is (
        SignatureReason.UNKNOWN_KEY
    )
    for bad in ("!!!", signature[:-4], 5, None):
        assert reason({"a": 1, "signatures": {"domain": {KEY_ID: bad}}}) is (
            SignatureReason.BAD_ENCODING
        )
    assert reason({"a": 1, "signatures": {"domain": {KEY_ID: encode_base64(bytes(raw))}}}) is (
        SignatureReason.BAD_SIGNATURE
    )
    other = sign_json({"a": 1}, "domain", OTHER_KEY)
    assert reason(other) is SignatureReason.BAD_SIGNATURE
    # Unknown algorithms are skipped beside a valid ed25519 signature.
    mixed = {**signed, "signatures": {"domain": {KEY_ID: signature, "curve:1": "x"}}}
    check_json_signature(mixed, "domain", SPEC_KEYS)


def test_keyring_explicit_and_derived() -> None:
    identifier = OTHER_KEY.identifier
    assert derived_keys(identifier, KEY_ID) == OTHER_KEY.verify_key
    assert derived_keys(identifier, "ed25519:2") is None
    assert derived_keys("domain", KEY_ID) is None
    explicit_only = KeyRing({"domain": {KEY_ID: SPEC_KEY.verify_key_bytes}}, derive=False)
    assert explicit_only(identifier, KEY_ID) is None
    assert explicit_only("domain", KEY_ID) == SPEC_KEY.verify_key
    # An explicit key wins over the derived one.
    override = KeyRing({identifier: {KEY_ID: SPEC_KEY.verify_key_bytes}})
    assert override(identifier, KEY_ID) == SPEC_KEY.verify_key
    signed = sign_json({"a": 1}, identifier, OTHER_KEY)
    check_json_signature(signed, identifier, derived_keys)
    assert _signature_error(lambda: check_json_signature(signed, identifier, override)) is (
        SignatureReason.BAD_SIGNATURE
    )


def test_sign_json_keeps_other_signatures_and_does_not_mutate() -> None:
    obj = {"a": 1, "signatures": {"x.example": {"ed25519:9": "sig"}}, "unsigned": {"u": 1}}
    before = copy.deepcopy(obj)
    signed = sign_json(obj, "domain", SPEC_KEY)
    assert obj == before
    assert signed["signatures"]["x.example"] == {"ed25519:9": "sig"}
    assert signed["unsigned"] == {"u": 1}
    assert (
        sign_json({"a": 1}, "domain", SPEC_KEY)["signatures"]["domain"]
        == (signed["signatures"]["domain"])
    )


# ----------------------------------------------------------------------------------------------
# Events: hashes, event IDs, redaction


def _signed_event(
    rules: RoomVersionRules, key: SigningKey = SPEC_KEY, **fields: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "m.room.message",
        "sender": "@alice:domain",
        "room_id": "!room:domain",
        "origin_server_ts": 1,
        "depth": 2,
        "prev_events": [],
        "auth_events": [],
        "content": {"body": "hello", "msgtype": "m.text"},
    }
    event.update(fields)
    return add_hashes_and_signature(event, rules, "domain", key)


@pytest.mark.parametrize("rules", ALL_RULES, ids=lambda r: r.version)
def test_event_tampering(rules: RoomVersionRules) -> None:
    event = _signed_event(rules)
    checked = check_event(event, rules, SPEC_KEYS)
    assert checked.hash_ok

    # A content key redaction drops: the hash fails, the signature and the event ID hold.
    changed_body = copy.deepcopy(event)
    changed_body["content"]["body"] = "HELLO"
    result = check_event(changed_body, rules, SPEC_KEYS)
    assert not result.hash_ok
    assert result.event_id == checked.event_id

    # A key redaction keeps: the signature fails.
    for field, value in [("depth", 3), ("sender", "@mallory:domain"), ("hashes", {"sha256": "x"})]:
        changed = {**event, field: value}
        assert _signature_error(lambda c=changed: check_event(c, rules, SPEC_KEYS)) in {
            SignatureReason.BAD_SIGNATURE,
            SignatureReason.MISSING_SIGNATURE,
        }
    # `unsigned` is outside hash and signature.
    assert check_event({**event, "unsigned": {"age": 1}}, rules, SPEC_KEYS) == checked


def test_event_hash_mismatch_is_reported_not_raised() -> None:
    event = _signed_event(ROOM_V11)
    for hashes in ({"sha256": "AAAA"}, {"sha256": "!!"}, {"sha256": 5}, {}, "x"):
        tampered = {**event, "hashes": hashes}
        assert not is_content_hash_valid(tampered)
    assert is_content_hash_valid(event)


def test_required_signers() -> None:
    event = _signed_event(ROOM_V11)
    assert required_signers(event) == ["domain"]
    join: dict[str, Any] = {
        "type": "m.room.member",
        "sender": "@bob:b.example",
        "content": {"membership": "join", "join_authorised_via_users_server": "@a:a.example"},
    }
    assert required_signers(join) == ["b.example", "a.example"]
    same = {
        **join,
        "content": {**join["content"], "join_authorised_via_users_server": "@c:b.example"},
    }
    assert required_signers(same) == ["b.example"]
    message = {**join, "type": "m.room.message"}
    assert required_signers(message) == ["b.example"]


def test_restricted_join_needs_both_signatures() -> None:
    join = _signed_event(
        ROOM_V11,
        type="m.room.member",
        state_key="@alice:domain",
        content={"membership": "join", "join_authorised_via_users_server": "@a:other.example"},
    )
    assert _signature_error(lambda: check_event(join, ROOM_V11, SPEC_KEYS)) is (
        SignatureReason.MISSING_SIGNATURE
    )
    both = add_hashes_and_signature(join, ROOM_V11, "other.example", OTHER_KEY)
    keys = KeyRing(
        {
            "domain": {KEY_ID: SPEC_KEY.verify_key_bytes},
            "other.example": {KEY_ID: OTHER_KEY.verify_key_bytes},
        },
        derive=False,
    )
    assert both["signatures"]["domain"] == join["signatures"]["domain"]
    assert check_event(both, ROOM_V11, keys).hash_ok
    assert check_event(join, ROOM_V11, SPEC_KEYS, signers=[]).hash_ok  # explicit signer list


def _loop_outcome(event: dict[str, Any], keys: Any) -> SignatureReason | None:
    """What checking each of `required_signers` in turn gives (the general path)."""
    message = encode_signing_bytes(event, ROOM_V11)
    try:
        for server in required_signers(event):
            check_json_signature(event, server, keys, message=message)
    except SignatureError as exc:
        return exc.reason
    return None


def _fused_outcome(event: dict[str, Any], keys: Any) -> SignatureReason | None:
    try:
        check_event_signatures(event, keys, message=encode_signing_bytes(event, ROOM_V11))
    except SignatureError as exc:
        return exc.reason
    return None


def test_check_event_signatures_is_the_loop_over_required_signers() -> None:
    # The fused check (no list of signers for the usual event) gives the loop's outcome, on
    # good and bad events alike.
    keys = KeyRing(
        {
            "domain": {KEY_ID: SPEC_KEY.verify_key_bytes},
            "other.example": {KEY_ID: OTHER_KEY.verify_key_bytes},
        },
        derive=False,
    )
    message = _signed_event(ROOM_V11)
    join = _signed_event(
        ROOM_V11,
        type="m.room.member",
        state_key="@alice:domain",
        content={"membership": "join", "join_authorised_via_users_server": "@a:other.example"},
    )
    both = add_hashes_and_signature(join, ROOM_V11, "other.example", OTHER_KEY)
    plain_join = _signed_event(
        ROOM_V11, type="m.room.member", state_key="@alice:domain", content={"membership": "join"}
    )
    tampered = {**message, "origin_server_ts": 2}  # a signed member
    join_missing = SignatureReason.MISSING_SIGNATURE
    cases: list[tuple[dict[str, Any], SignatureReason | None]] = [
        (message, None),
        (plain_join, None),
        (both, None),
        (join, SignatureReason.MISSING_SIGNATURE),  # the authoriser's server did not sign
        (tampered, SignatureReason.BAD_SIGNATURE),
        ({**message, "sender": "@alice:nowhere"}, SignatureReason.MISSING_SIGNATURE),
        ({**message, "signatures": {"domain": {"ed25519:9": "x"}}}, SignatureReason.UNKNOWN_KEY),
        ({**message, "signatures": {"domain": {KEY_ID: "!!"}}}, SignatureReason.BAD_ENCODING),
        ({**message, "signatures": []}, SignatureReason.NO_SIGNATURES),
        ({**plain_join, "content": []}, SignatureReason.BAD_SIGNATURE),  # content not an object
        ({**both, "signatures": {"domain": both["signatures"]["domain"]}}, join_missing),
        ({**message, "sender": 5}, None),  # no signer (the format check drops it first)
    ]
    for event, expected in cases:
        assert _loop_outcome(event, keys) is expected, event
        assert _fused_outcome(event, keys) is expected, event


def test_a_bad_signature_fails_as_verify_key_verify_does() -> None:
    # `check_json_signature` calls libsodium's `crypto_sign_open` (the function behind
    # `VerifyKey.verify`) directly, with no output buffer: both accept and refuse the same
    # signatures.
    signed = sign_json({"a": 1}, "domain", SPEC_KEY)
    message = encode_canonical_json({"a": 1})
    signature = decode_base64(signed["signatures"]["domain"][KEY_ID])
    SPEC_KEY.verify_key.verify(message, signature)
    check_json_signature(signed, "domain", SPEC_KEYS, message=message)
    for flipped in (0, 31, 63):
        raw = bytearray(signature)
        raw[flipped] ^= 0x40
        bad = {**signed, "signatures": {"domain": {KEY_ID: encode_base64(bytes(raw))}}}
        with pytest.raises(nacl.exceptions.BadSignatureError):
            SPEC_KEY.verify_key.verify(message, bytes(raw))
        assert _signature_error(
            lambda bad=bad: check_json_signature(bad, "domain", SPEC_KEYS, message=message)
        ) is (SignatureReason.BAD_SIGNATURE)


@settings(max_examples=150)
@given(event=events())
def test_redaction_is_idempotent_and_keeps_the_event_id(event: dict[str, Any]) -> None:
    for rules in ALL_RULES:
        redacted = redact(event, rules)
        assert redact(redacted, rules) == redacted
        assert compute_event_id(redacted, rules) == compute_event_id(event, rules)
        assert set(redacted) <= set(event)
        assert "unsigned" not in redacted


@settings(max_examples=60)
@given(event=events())
def test_signed_event_ids_and_hashes(event: dict[str, Any]) -> None:
    for rules in ALL_RULES:
        signed = build_signed_event(event, rules, "domain", SPEC_KEY)
        assert signed.event_id == compute_event_id(signed.json, rules)
        checked = check_event(signed.json, rules, SPEC_KEYS)
        assert checked.event_id == signed.event_id
        assert checked.hash_ok
        # The redacted copy still verifies: signatures cover the redacted form.
        redacted = redact(signed.json, rules)
        assert check_event(redacted, rules, SPEC_KEYS).event_id == signed.event_id


def test_third_party_invite_redaction_edge_cases() -> None:
    base: dict[str, Any] = {"type": "m.room.member", "content": {"membership": "invite"}}
    cases = [
        ({"signed": {"a": 1}, "display_name": "x"}, {"signed": {"a": 1}}),
        ({"display_name": "x"}, {}),  # UNCONFIRMED in the spec; as Synapse
    ]
    for invite, expected in cases:
        event = {**base, "content": {**base["content"], "third_party_invite": invite}}
        assert redact(event, ROOM_V11)["content"] == {
            "membership": "invite",
            "third_party_invite": expected,
        }
        assert redact(event, ROOM_V10)["content"] == {"membership": "invite"}
    not_object = {**base, "content": {**base["content"], "third_party_invite": "x"}}
    assert redact(not_object, ROOM_V12)["content"] == {"membership": "invite"}


def test_redaction_of_odd_content() -> None:
    assert redact({"type": "m.room.message", "content": "x"}, ROOM_V11) == {
        "type": "m.room.message",
        "content": {},
    }
    assert redact({"type": "m.room.message"}, ROOM_V11) == {"type": "m.room.message"}
    assert redact({"type": 5, "content": {"membership": "join"}}, ROOM_V11) == {
        "type": 5,
        "content": {},
    }


def test_redaction_follows_each_flag() -> None:
    # A room version that keeps `redacts` but not power levels' `invite`.
    rules = dataclasses.replace(ROOM_V11, redaction_keeps_power_levels_invite=False)
    power_levels = {"type": "m.room.power_levels", "content": {"invite": 0, "ban": 50}}
    assert redact(power_levels, rules)["content"] == {"ban": 50}
    assert redact(power_levels, ROOM_V11)["content"] == {"ban": 50, "invite": 0}
    redaction = {"type": "m.room.redaction", "content": {"redacts": "$x", "reason": "r"}}
    assert redact(redaction, rules)["content"] == {"redacts": "$x"}
    rules = dataclasses.replace(ROOM_V11, redaction_keeps_redacts=False)
    assert redact(redaction, rules)["content"] == {}
    assert redact(power_levels, rules)["content"] == {"ban": 50, "invite": 0}


def test_build_signed_event_rejects_non_canonical_values() -> None:
    event = {"type": "x", "content": {"n": 1.5}}
    with pytest.raises(CanonicalJsonError):
        build_signed_event(event, ROOM_V11, "domain", SPEC_KEY)
    with pytest.raises(CanonicalJsonError):
        add_hashes_and_signature(
            {"type": "x", "content": {"n": 2**60}}, ROOM_V11, "domain", SPEC_KEY
        )


# ----------------------------------------------------------------------------------------------
# The encoded size from the bytes of the content hash

odd_text = st.sampled_from(['"', "\\", "\x7f", "\n", "é", "😀", "ed25519:1", ""]) | safe_text
left_out_members = st.fixed_dictionaries(
    {},
    optional={
        "hashes": st.dictionaries(odd_text, odd_text, max_size=2) | json_values,
        "signatures": st.dictionaries(
            odd_text, st.dictionaries(odd_text, odd_text, max_size=2) | json_values, max_size=2
        )
        | json_values,
        "unsigned": json_values,
    },
)


@settings(max_examples=300)
@given(
    event=events() | st.dictionaries(safe_text, json_values, max_size=3),
    left_out=left_out_members,
)
def test_event_size_is_exact(event: dict[str, Any], left_out: dict[str, Any]) -> None:
    # Any members, and an empty content-hash form too: always the length of the encoding.
    for whole in ({**event, **left_out}, left_out):
        size = compute_event_size(whole, encode_content_hash_bytes(whole))
        assert size == len(encode_canonical_json(whole))


@settings(max_examples=300)
@given(
    event=events() | st.dictionaries(safe_text, json_values, max_size=3),
    left_out=left_out_members,
)
def test_event_size_bound_is_at_least_the_size(
    event: dict[str, Any], left_out: dict[str, Any]
) -> None:
    for whole in ({**event, **left_out}, left_out):
        hashed = encode_content_hash_bytes(whole)
        bound = compute_event_size_bound(whole, len(hashed))
        assert bound >= compute_event_size(whole, hashed) == len(encode_canonical_json(whole))


@settings(max_examples=100)
@given(event=events(), unsigned=json_values)
def test_check_event_reports_the_exact_size(event: dict[str, Any], unsigned: Any) -> None:
    rules = ROOM_V11
    signed = add_hashes_and_signature(event, rules, "domain", SPEC_KEY)
    signed["unsigned"] = unsigned
    checked = check_event(signed, rules, SPEC_KEYS)
    assert checked.size == len(encode_canonical_json(signed))
    assert checked.hash_ok
    # The size is a measurement, not part of the verdict.
    assert dataclasses.replace(checked, size=None) == checked


def test_event_size_bound_of_string_members_is_a_bound_and_refuses_what_the_check_does() -> None:
    # `hashes` and `signatures` of ASCII strings are bounded in one loop; anything else (other
    # text, other values) by `check_canonical_value_bound`, which refuses non-canonical values.
    from s2s_node.core.canonical import check_canonical_value_bound
    from s2s_node.core.signing import _bound_of_string_objects

    sig = "A" * 86
    in_one_loop: list[Any] = [
        {"sha256": "A" * 43},
        {"domain": {KEY_ID: sig}, "other": {KEY_ID: sig, "ed25519:2": '"\\\n\x7f'}},
        {},
        {"domain": {}},
    ]
    general: list[Any] = [
        {"domain": {KEY_ID: "é"}},  # not ASCII
        {"domain": {KEY_ID: 5}},
        {"domain": [sig]},
        ["x"],
        "x",
    ]
    for shape in in_one_loop + general:
        assert (_bound_of_string_objects(shape) >= 0) is (shape in in_one_loop)
        for key in ("hashes", "signatures", "unsigned"):
            event = {"type": "x", key: shape}
            hashed = encode_content_hash_bytes(event)
            bound = compute_event_size_bound(event, len(hashed))
            assert bound >= compute_event_size(event, hashed) == len(encode_canonical_json(event))
    for bad in (
        {"domain": {KEY_ID: "\ud800"}},  # a lone surrogate
        {"domain": {KEY_ID: 2**60}},
        {"domain": {KEY_ID: 1.5}},
        {"sha256": "\udfff"},
        {5: "x"},
    ):
        with pytest.raises(CanonicalJsonError):
            check_canonical_value_bound(bad)
        with pytest.raises(CanonicalJsonError):
            compute_event_size_bound({"type": "x", "signatures": bad}, 12)


# ----------------------------------------------------------------------------------------------
# Both encodings of the receive path from one


# Members that look like the ones whose offsets the content-hash form is cut at.
confusing_members = st.fixed_dictionaries(
    {},
    optional={
        "depth": st.integers(0, 99) | json_values,
        "hashes": st.fixed_dictionaries({"sha256": odd_text}) | json_values,
        "content": json_values,
        "auth_events": json_values,
    },
)
decoy_contents = st.fixed_dictionaries(
    {},
    optional={
        "creator": st.just('x","depth":1,"hashes":{"sha256":"abc"}'),
        "events": confusing_members,
        "users": confusing_members,
        "body": confusing_members,
        "membership": odd_text,
        "third_party_invite": st.just({"signed": {"depth": 1}}),
    },
)


@st.composite
def received_events(draw: st.DrawFn) -> dict[str, Any]:
    """Events shaped as received ones (mostly: the one-encoding path), with members chosen to
    mislead a cut at wrong offsets."""
    event = draw(events())
    for key in TOP_LEVEL_EXTRAS:
        if draw(st.integers(0, 9)) > 0:  # usually none: those take the two-encoding path
            event.pop(key, None)
    event["content"] = draw(decoy_contents | contents)
    event["hashes"] = {"sha256": draw(odd_text | st.just("A" * 43))}
    event["auth_events"] = draw(st.lists(st.just("$" + "a" * 43) | odd_text, max_size=3))
    event["signatures"] = {"domain": {KEY_ID: "sig"}}
    if draw(st.booleans()):
        event["depth"] = draw(safe_ints)
    if draw(st.integers(0, 4)) == 0:  # sometimes a member off the usual shape
        key = draw(st.sampled_from(["depth", "hashes", "auth_events", "content"]))
        if draw(st.booleans()):
            del event[key]
        else:
            event[key] = draw(confusing_members | json_values)
    return event


@settings(max_examples=400)
@given(event=received_events())
def test_signing_and_content_hash_bytes_match_the_two_encodings(event: dict[str, Any]) -> None:
    for rules in ALL_RULES:
        assert encode_signing_and_content_hash_bytes(event, rules) == (
            encode_signing_bytes(event, rules),
            encode_content_hash_bytes(event),
        )


def test_signing_and_content_hash_bytes_of_decoys_and_real_events() -> None:
    sha = "Ab+/" * 10 + "Ab0"
    base = {
        "auth_events": ["$" + "a" * 43],
        "depth": 12,
        "hashes": {"sha256": sha},
        "origin_server_ts": 5,
        "prev_events": ["$" + "b" * 43],
        "room_id": "!r:domain",
        "sender": "@a:domain",
        "signatures": {"domain": {KEY_ID: "sig"}},
        "unsigned": {"age": 1},
    }
    decoy = f',"depth":12,"hashes":{{"sha256":"{sha}"}}'
    contents: list[Any] = [
        {"membership": "join", "displayname": decoy},  # in a string: escaped
        {"events": {"depth": 12, "hashes": {"sha256": sha}}, "users": {}},  # kept, nested
        {"creator": "@a:domain", "depth": 12, "hashes": {"sha256": sha}},  # v11 keeps all
        {"membership": "join", "third_party_invite": {"signed": {"depth": 12}, "x": 1}},
        {},
        # The signed form is cut from the content-hash form: decoys for the end of the content
        # and the redacted content written directly.
        {"depth": 12, "membership": "join"},  # a member like the one after the content
        {"depth": 1, "membership": "join", "x": "y"},  # a prefix of the real one
        {"membership": 'jo"in', "displayname": "d"},  # not written as it is
        {"membership": "jöin", "displayname": "d"},
        {"membership": "join\u0001", "displayname": "d"},
        {"membership": 5, "displayname": "d"},
        {"membership": "join", "join_authorised_via_users_server": "@b:domain", "x": "y"},
        {"body": "b", "msgtype": "m.text"},
    ]
    for event_type in ("m.room.member", "m.room.power_levels", "m.room.create", "m.room.message"):
        for content in contents:
            event = {**base, "type": event_type, "state_key": "", "content": content}
            for rules in ALL_RULES:
                assert encode_signing_and_content_hash_bytes(event, rules) == (
                    encode_signing_bytes(event, rules),
                    encode_content_hash_bytes(event),
                )
    # Signed events of every version.
    for rules in ALL_RULES:
        for content in contents:
            signed = add_hashes_and_signature(
                {**base, "type": "m.room.member", "content": content}, rules, "domain", SPEC_KEY
            )
            message, hashed = encode_signing_and_content_hash_bytes(signed, rules)
            assert message == encode_signing_bytes(signed, rules)
            assert is_content_hash_valid(signed, content_hash_bytes=hashed)


def _outcome(run: Any) -> SignatureReason | None:
    try:
        run()
    except SignatureError as exc:
        return exc.reason
    return None


def test_a_key_ring_decides_as_a_plain_lookup_of_the_same_keys() -> None:
    # `check_json_signature` reads a `KeyRing`'s raw keys and decodes the usual 86-character
    # signature in line; a plain callable takes the general path. Both must decide alike, for
    # every spelling of the signature.
    signed = sign_json({"a": 1}, "domain", SPEC_KEY)
    good = signed["signatures"]["domain"][KEY_ID]
    assert len(good) == 86

    def plain(server: str, key_id: str) -> Any:
        return SPEC_KEY.verify_key if (server, key_id) == ("domain", KEY_ID) else None

    flipped = ("B" if good[0] == "A" else "A") + good[1:]
    spellings: list[object] = [
        good,
        good + "==",  # padded
        good[:-1] + "=",  # 86 characters ending in padding
        good[:-2] + "==",  # the same, 63 bytes
        good[:40] + "!" + good[41:],  # not the alphabet
        good[:40] + "é" + good[41:],  # not ASCII
        good[:40] + "=" + good[41:],  # padding inside
        good[:-1],  # 85 characters
        good + "A",  # 87 characters
        good + "AA",  # 88 characters, 66 bytes
        flipped,  # decodes, does not verify
        5,
        None,
    ]
    outcomes = []
    for spelling in spellings:
        obj = {"a": 1, "signatures": {"domain": {KEY_ID: spelling, "ed25519:other": good}}}
        ring = _outcome(lambda obj=obj: check_json_signature(obj, "domain", SPEC_KEYS))
        lookup = _outcome(lambda obj=obj: check_json_signature(obj, "domain", plain))
        assert ring is lookup, spelling
        outcomes.append(ring)
    assert outcomes[0] is None
    assert outcomes[1] is None
    assert outcomes[2:10] == [SignatureReason.BAD_ENCODING] * 8
    assert outcomes[10] is SignatureReason.BAD_SIGNATURE
    # A ring asked first through the call, then through its raw keys: the same key.
    explicit = KeyRing({"domain": {KEY_ID: SPEC_KEY.verify_key_bytes}}, derive=False)
    assert explicit("domain", KEY_ID) == SPEC_KEY.verify_key
    check_json_signature(signed, "domain", explicit)
    assert _outcome(lambda: check_json_signature(signed, "other", explicit)) is (
        SignatureReason.MISSING_SIGNATURE
    )


def test_a_derived_key_is_read_from_the_ring_after_the_first_signature() -> None:
    identifier = OTHER_KEY.identifier
    signed = sign_json({"b": 2}, identifier, OTHER_KEY)
    ring = KeyRing()
    check_json_signature(signed, identifier, ring)  # derives and keeps the key
    check_json_signature(signed, identifier, ring)  # reads the kept raw key
    tampered = {**signed, "b": 3}
    assert _outcome(lambda: check_json_signature(tampered, identifier, ring)) is (
        SignatureReason.BAD_SIGNATURE
    )
    assert _outcome(lambda: check_json_signature(signed, "not-an-identifier", ring)) is (
        SignatureReason.MISSING_SIGNATURE
    )


def test_signatures_over_other_messages_and_keys_fail_as_verify_key_verify_does() -> None:
    keys = KeyRing(
        {
            "domain": {KEY_ID: SPEC_KEY.verify_key_bytes},
            "other": {KEY_ID: OTHER_KEY.verify_key_bytes},
        },
        derive=False,
    )
    for size in (0, 1, 63, 64, 65, 1000, 70000):
        obj = {"a": "x" * size}
        signed = sign_json(obj, "domain", SPEC_KEY)
        signature_b64 = signed["signatures"]["domain"][KEY_ID]
        signature = decode_base64(signature_b64)
        message = encode_canonical_json(obj)
        check_json_signature(signed, "domain", keys)
        for key, server in ((SPEC_KEY, "domain"), (OTHER_KEY, "other")):
            claimed = {**signed, "signatures": {server: {KEY_ID: signature_b64}}}
            try:
                key.verify_key.verify(message, signature)
                verified = True
            except nacl.exceptions.BadSignatureError:
                verified = False
            assert verified is (key is SPEC_KEY)
            outcome = _outcome(
                lambda claimed=claimed, server=server: check_json_signature(claimed, server, keys)
            )
            assert outcome is (None if verified else SignatureReason.BAD_SIGNATURE)
        changed = {**signed, "a": "y" + "x" * size}
        with pytest.raises(nacl.exceptions.BadSignatureError):
            SPEC_KEY.verify_key.verify(encode_canonical_json({"a": changed["a"]}), signature)
        assert _outcome(lambda changed=changed: check_json_signature(changed, "domain", keys)) is (
            SignatureReason.BAD_SIGNATURE
        )
