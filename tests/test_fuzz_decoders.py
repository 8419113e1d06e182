"""Fuzzing of every decoder that takes network input, with Hypothesis (bounded, runs in CI).

Property of each: on any input it raises only its own typed error(s) — never KeyError,
TypeError, RecursionError, ... — and, where a builder exists, what is built parses back to the
same value. Inputs are shaped like the real thing (mutated signed events, header-like text,
TXT records made of plausible entries, contents with the schema's keys) so that the checks
past the first few are reached. Decoders already fuzzed elsewhere are not repeated here:
random bytes and mutated CBOR through `core.wire` (test_wire.py), X-Matrix header text
(test_xmatrix.py), raw TXT bytes in `parse_advert` (test_discovery_core.py), raw HTTP bytes at
the server (test_http_errors.py). The atheris harnesses for long campaigns are in
scripts/fuzz/ (see docs/reliability.md). The whole file stays under ~20 s.
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from room_fixtures import BOB, RoomFixture, server_key

from s2s_node.core.canonical import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJsonError,
    encode_canonical_json,
    parse_json,
)
from s2s_node.core.events import EventFormatError, Pdu, parse_pdu
from s2s_node.core.ids import EventId
from s2s_node.core.ingest import Verdict, ingest_create_event, ingest_pdu
from s2s_node.core.negotiation_messages import (
    Accept,
    Ack,
    ContentReason,
    Fail,
    FailError,
    MessageKind,
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
    parse_message,
)
from s2s_node.core.peers import (
    SERVICE_TYPE,
    AdvertError,
    KeyDocumentError,
    KeyDocumentReason,
    build_key_document,
    build_txt,
    check_key_document,
    parse_advert,
)
from s2s_node.core.policy import RULE_TYPES, RuleError, is_rule_match, parse_rule
from s2s_node.core.room import RoomGraph
from s2s_node.core.signing import add_hashes_and_signature, derived_keys, sign_json
from s2s_node.core.wire import CBOR_CONTENT_TYPE, JSON_CONTENT_TYPE, WireError, decode_body
from s2s_node.core.xmatrix import XMatrixError, check_request_auth, sign_request
from s2s_node.net.client_api_auth import parse_access_token, parse_json_object
from s2s_node.net.errors import HttpError
from s2s_node.net.http import Request, parse_query

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW_MS = 1_700_000_000_000

text = st.text(max_size=12)  # lone surrogates included: decoders must refuse, not crash
safe_ints = st.integers(MIN_SAFE_INTEGER, MAX_SAFE_INTEGER)
# Anything a careless decoder might pass through: floats, huge integers, bytes, tuples.
wild_scalars = (
    st.none()
    | st.booleans()
    | safe_ints
    | st.integers()
    | st.floats()
    | text
    | st.binary(max_size=4)
)
wild_values = st.recursive(
    wild_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4),
    max_leaves=12,
)
json_scalars = (
    st.none()
    | st.booleans()
    | safe_ints
    | st.text(max_size=12).filter(lambda s: not any(0xD800 <= ord(ch) <= 0xDFFF for ch in s))
)
json_values = st.recursive(
    json_scalars,
    lambda c: (
        st.lists(c, max_size=4)
        | st.dictionaries(json_scalars.filter(lambda k: isinstance(k, str)), c, max_size=4)
    ),
    max_leaves=12,
)


def set_path(obj: Any, path: list[str], value: Any) -> Any:
    """A copy of `obj` with `value` at `path` (dict keys; creating objects on the way)."""
    if not path:
        return value
    base = dict(obj) if isinstance(obj, dict) else {}
    base[path[0]] = set_path(base.get(path[0]), path[1:], value)
    return base


def delete_path(obj: Any, path: list[str]) -> Any:
    if not isinstance(obj, dict) or not path or path[0] not in obj:
        return obj
    base = dict(obj)
    if len(path) == 1:
        del base[path[0]]
    else:
        base[path[0]] = delete_path(base[path[0]], path[1:])
    return base


PDU_PATHS = [
    ["type"], ["sender"], ["room_id"], ["state_key"], ["content"], ["content", "membership"],
    ["content", "body"], ["content", "users"], ["content", "room_version"], ["prev_events"],
    ["auth_events"], ["depth"], ["origin_server_ts"], ["hashes"], ["hashes", "sha256"],
    ["signatures"], ["unsigned"], ["redacts"], ["origin"], ["event_id"], ["content", "join_rule"],
]  # fmt: skip


@st.composite
def mutations(draw: st.DrawFn, paths: list[list[str]]) -> list[tuple[str, list[str], Any]]:
    """A few edits: set a known path (or a new key) to a wild value, or delete a path."""
    path_strategy = st.sampled_from(paths) | st.lists(text, min_size=1, max_size=2)
    edit = st.tuples(st.sampled_from(["set", "delete"]), path_strategy, wild_values)
    return draw(st.lists(edit, min_size=1, max_size=3))


def apply(obj: Any, edits: list[tuple[str, list[str], Any]]) -> Any:
    for op, path, value in edits:
        obj = set_path(obj, path, value) if op == "set" else delete_path(obj, path)
    return obj


@functools.cache
def fixture_events(version: str) -> tuple[RoomFixture, tuple[Pdu, ...]]:
    room = RoomFixture(version, name="fuzz")
    extra = (
        room.message(BOB, "hello"),
        room.build("m.room.topic", BOB, {"topic": "t"}, state_key=""),
    )
    return room, (*room.events, *extra)


def fresh_graph(room: RoomFixture) -> RoomGraph:
    graph = RoomGraph(room.rules, room.create.room_id)
    for pdu in room.events:
        graph.add(pdu)
    return graph


versions = st.sampled_from(["10", "11", "12"])


# -- JSON ---------------------------------------------------------------------------------------

JSON_TOKENS = [
    "{", "}", "[", "]", ",", ":", " ", '"', "\\", '"a"', '"\\ud800"', '"\\udc00\\ud800"',
    '"\\u0000"', '"\\x"', "1", "-0", "01", "1e5", "1E+2", "1.0", "-", "NaN", "Infinity",
    "-Infinity", "true", "null", "nul", "9007199254740991", "9007199254740992", "\u00e9", "\ufeff",
]  # fmt: skip


def check_parse_json(data: bytes | str) -> None:
    try:
        value = parse_json(data)
    except CanonicalJsonError:
        return
    # Whatever the strict decoder lets in is canonical JSON, and survives a round trip.
    assert parse_json(encode_canonical_json(value)) == value


@FUZZ
@given(st.lists(st.sampled_from(JSON_TOKENS), max_size=30).map("".join))
def test_parse_json_on_token_soup(data: str) -> None:
    check_parse_json(data)
    check_parse_json(data.encode("utf-8", "surrogatepass"))


@FUZZ
@given(json_values, st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(JSON_TOKENS))))
def test_parse_json_on_edited_documents(value: Any, edits: list[tuple[int, str]]) -> None:
    data = json.dumps(value, ensure_ascii=False)
    for where, token in edits:
        at = where % (len(data) + 1)
        data = data[:at] + token + data[at + 1 :]
    check_parse_json(data.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.integers(1, 2000), st.sampled_from(["[", '{"a":', '[{"b":']))
def test_parse_json_deep_nesting_is_refused_not_a_recursion_error(depth: int, opener: str) -> None:
    closer = "".join({"[": "]", "{": "}"}[c] for c in opener if c in "[{")
    check_parse_json(opener * depth + "1" + closer[::-1] * depth)
    check_parse_json(opener * depth)  # unterminated


# -- CBOR: items outside the JSON subset ------------------------------------------------------

cbor_wild = st.recursive(
    wild_scalars
    | st.builds(cbor2.CBORTag, st.integers(0, 300), safe_ints)
    | st.sampled_from([cbor2.undefined, cbor2.CBORSimpleValue(99), float("nan")]),
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(text | safe_ints | st.booleans(), c, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(cbor_wild)
def test_cbor_decoder_admits_only_the_json_subset(value: Any) -> None:
    try:
        data = cbor2.dumps(value)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return
    try:
        decoded = decode_body(CBOR_CONTENT_TYPE, data)
    except WireError:
        return
    encode_canonical_json(decoded)  # accepted means: a Matrix JSON value


# -- PDUs ---------------------------------------------------------------------------------------


@FUZZ
@given(versions, st.integers(0, 7), mutations(PDU_PATHS))
def test_parse_pdu_on_mutated_events(version: str, which: int, edits: Any) -> None:
    room, pdus = fixture_events(version)
    original = pdus[which % len(pdus)]
    obj = apply(original.json, edits)
    try:
        pdu = parse_pdu(obj, room.rules)
    except EventFormatError:
        return
    assert parse_pdu(pdu.json, room.rules).json == pdu.json


@FUZZ
@given(versions, st.dictionaries(st.sampled_from([p[0] for p in PDU_PATHS]), wild_values))
def test_parse_pdu_on_arbitrary_objects(version: str, obj: dict[str, Any]) -> None:
    room, _ = fixture_events(version)
    with pytest.raises(EventFormatError):
        parse_pdu(obj, room.rules)  # no signatures/hashes of the right shape: never valid


@FUZZ
@given(versions)
def test_parse_pdu_round_trips_real_events(version: str) -> None:
    room, pdus = fixture_events(version)
    for pdu in pdus:
        again = parse_pdu(pdu.json, room.rules)
        assert (again.event_id, again.json) == (pdu.event_id, pdu.json)


@FUZZ
@given(versions, st.integers(0, 7), mutations(PDU_PATHS), st.booleans(), st.booleans())
def test_ingest_of_mutated_events_returns_a_verdict(
    version: str, which: int, edits: Any, resign: bool, strict: bool
) -> None:
    room, pdus = fixture_events(version)
    obj = apply(pdus[which % len(pdus)].json, edits)
    if resign and isinstance(obj, dict):
        key = server_key(1)  # bob's server: the senders' signature checks then pass
        unsigned = {k: v for k, v in obj.items() if k not in ("hashes", "signatures")}
        try:
            obj = add_hashes_and_signature(unsigned, room.rules, key.identifier, key)
        except (CanonicalJsonError, ValueError):
            return
    if strict:  # the federation path: bytes through the strict decoder first
        try:
            obj = decode_body(JSON_CONTENT_TYPE, json.dumps(obj, default=repr).encode())
        except (WireError, ValueError):
            return
    verdict = ingest_pdu(obj, fresh_graph(room), derived_keys, values_checked=strict)
    assert isinstance(verdict, Verdict)
    created, graph = ingest_create_event(obj, derived_keys)
    assert isinstance(created, Verdict)
    assert graph is None or graph.room_id == parse_pdu(obj, room.rules).room_id


# -- X-Matrix: the whole request check ------------------------------------------------------

ORIGIN = server_key(0)
DESTINATION = server_key(1).identifier
header_like = st.lists(
    st.sampled_from(['X-Matrix ', "origin=", "destination=", "key=", "sig=", '"', ",", "=",
                     "ed25519:1", DESTINATION, ORIGIN.identifier, "a", " ", "\\", "\u00ff"]),
    max_size=20,
).map("".join)  # fmt: skip


@FUZZ
@given(
    st.lists(header_like | text, max_size=3) | st.none() | header_like,
    st.sampled_from(["GET", "PUT", "post", ""]) | text,
    text,
    st.none() | wild_values,
)
def test_check_request_auth_raises_only_xmatrix_error(
    headers: Any, method: str, uri: str, content: Any
) -> None:
    with pytest.raises(XMatrixError):
        check_request_auth(headers, method, uri, content, DESTINATION, derived_keys)


@FUZZ
@given(text.filter(lambda s: s.isprintable()), json_values, text, st.none() | wild_values)
def test_signed_requests_verify_and_any_change_is_refused(
    uri: str, content: Any, other_uri: str, other_content: Any
) -> None:
    uri = "/" + uri.encode("utf-8", "replace").decode()
    header = sign_request(ORIGIN, method="PUT", uri=uri, destination=DESTINATION, content=content)
    assert check_request_auth(header, "PUT", uri, content, DESTINATION, derived_keys) == (
        ORIGIN.identifier
    )
    if (other_uri, other_content) != (uri, content):
        with pytest.raises(XMatrixError):
            check_request_auth(header, "PUT", other_uri, other_content, DESTINATION, derived_keys)


# -- mDNS adverts: TXT records made of plausible entries -----------------------------------


def txt_rdata(pairs: list[tuple[str, str | None]]) -> bytes:
    out = b""
    for key, value in pairs:
        entry = key.encode("utf-8", "surrogatepass")
        if value is not None:
            entry += b"=" + value.encode("utf-8", "surrogatepass")
        out += bytes([min(len(entry), 255)]) + entry[:255]
    return out


txt_entry = st.tuples(
    st.sampled_from(["v", "sn", "enc", "rv", "tls", "V", "SN", "", "x", "k\x00"]) | text,
    st.none() | st.sampled_from(["1", "0", "json", "cbor,json", "11,12", "", ","]) | text,
)


@FUZZ
@given(
    st.lists(txt_entry, max_size=8),
    st.booleans(),
    st.none() | st.integers(-1, 70_000),
    st.lists(st.sampled_from(["10.0.0.1", "::1", "0.0.0.0", "224.0.0.1", "fe80::1%eth0"]) | text),
)
def test_parse_advert_on_plausible_txt(
    entries: list[tuple[str, str | None]], own_sn: bool, port: int | None, addresses: list[str]
) -> None:
    identifier = ORIGIN.identifier
    if own_sn:
        entries = [("v", "1"), ("sn", identifier), *entries]
    with contextlib.suppress(AdvertError):
        parse_advert(
            f"{identifier}.{SERVICE_TYPE}", txt_rdata(entries), port, addresses, own_identifier="me"
        )


@FUZZ
@given(
    st.lists(st.sampled_from(["json", "cbor"]), min_size=1, unique=True),
    st.lists(st.sampled_from(["10", "11", "12", "org.example.v1"]), unique=True),
    st.booleans(),
    st.integers(1, 65535),
)
def test_advert_round_trip(encodings: list[str], versions: list[str], tls: bool, port: int) -> None:
    pairs = build_txt(ORIGIN.identifier, encodings=encodings, room_versions=versions, tls=tls)
    advert = parse_advert(
        f"{ORIGIN.identifier}.{SERVICE_TYPE}",
        txt_rdata(list(pairs.items())),
        port,
        ["10.0.0.7"],
        own_identifier="me",
    )
    assert (advert.identifier, advert.port, advert.tls) == (ORIGIN.identifier, port, tls)
    assert advert.encodings == frozenset(encodings)
    assert advert.room_versions == tuple(versions)


# -- key documents --------------------------------------------------------------------------

KEY_PATHS = [
    ["server_name"], ["verify_keys"], ["verify_keys", "ed25519:1"],
    ["verify_keys", "ed25519:1", "key"],
    ["old_verify_keys"], ["valid_until_ts"], ["signatures"], ["signatures", ORIGIN.identifier],
]  # fmt: skip


@FUZZ
@given(mutations(KEY_PATHS), st.booleans(), st.booleans())
def test_check_key_document_on_mutated_documents(edits: Any, resign: bool, expect: bool) -> None:
    document = apply(build_key_document(ORIGIN, valid_until_ts=NOW_MS + 1), edits)
    if resign and isinstance(document, dict):
        try:
            document = sign_json(
                {k: v for k, v in document.items() if k != "signatures"}, ORIGIN.identifier, ORIGIN
            )
        except CanonicalJsonError:
            return
    expected = ORIGIN.identifier if expect else None
    try:
        name = check_key_document(document, expected=expected, now_ms=NOW_MS)
    except KeyDocumentError:
        return
    assert name == ORIGIN.identifier


@FUZZ
@given(wild_values)
def test_check_key_document_on_arbitrary_values(document: Any) -> None:
    with pytest.raises(KeyDocumentError):
        check_key_document(document, expected=None, now_ms=NOW_MS)


def test_key_document_with_a_float_is_refused_with_key_document_error() -> None:
    # Found by the fuzzer: check_json_signature's CanonicalJsonError escaped (an injected
    # key fetcher need not use the strict decoder, and verify_endpoint catches only this).
    document = {**build_key_document(ORIGIN, valid_until_ts=NOW_MS + 1), "old_verify_keys": 0.0}
    with pytest.raises(KeyDocumentError) as info:
        check_key_document(document, expected=None, now_ms=NOW_MS)
    assert info.value.reason is KeyDocumentReason.BAD_SIGNATURE


def test_key_document_round_trip() -> None:
    document = build_key_document(ORIGIN, valid_until_ts=NOW_MS + 1)
    assert check_key_document(document, expected=ORIGIN.identifier, now_ms=NOW_MS) == (
        ORIGIN.identifier
    )


# -- negotiation content --------------------------------------------------------------------

OPENING = EventId("$" + "A" * 43)
NEGOTIATION_KEYS = ["versions", "room_type", "m.relates_to", "version", "accept", "error",
                    "reason", "method", "x"]  # fmt: skip
relates = st.fixed_dictionaries(
    {"rel_type": st.sampled_from(["m.reference", "m.annotation"]) | text,
     "event_id": st.sampled_from([OPENING, "$x", ""]) | wild_values}
)  # fmt: skip
negotiation_content = st.dictionaries(
    st.sampled_from(NEGOTIATION_KEYS),
    wild_values | relates | st.dictionaries(st.sampled_from(["11", "12", "X", ""]), wild_values),
    max_size=5,
)


@FUZZ
@given(
    st.sampled_from([k.value for k in MessageKind]) | text,
    negotiation_content | wild_values,
)
def test_parse_message_raises_only_content_error(event_type: str, content: Any) -> None:
    with contextlib.suppress(NegotiationContentError):
        parse_message(event_type, content)


@pytest.mark.parametrize("room_type", [[], {}, ["m.s2s"], 1, True])
def test_proposal_with_a_room_type_of_another_type_is_bad_room_type(room_type: Any) -> None:
    # Found by the fuzzer: a list or object as room_type raised TypeError (unhashable, in a
    # set lookup) out of parse_message, which the receive path does not catch.
    content = {"versions": {"11": 1}, "room_type": room_type}
    with pytest.raises(NegotiationContentError) as info:
        parse_message(MessageKind.PROPOSAL.value, content)
    assert info.value.reason is ContentReason.BAD_ROOM_TYPE


rating_maps = st.dictionaries(st.sampled_from(["10", "11", "12", "org.x.1"]), st.integers(1, 9))


@FUZZ
@given(rating_maps.filter(bool), rating_maps, st.none() | st.sampled_from(["m.s2s"]))
def test_negotiation_contents_round_trip(
    proposed: dict[str, int], replied: dict[str, int], room_type: str | None
) -> None:
    assert parse_message(
        MessageKind.PROPOSAL.value, build_proposal_content(proposed, room_type)
    ) == Proposal(versions=proposed, room_type=room_type)
    assert parse_message(MessageKind.REPLY.value, build_reply_content(OPENING, replied)) == Reply(
        relates_to=OPENING, versions=replied
    )
    chosen = next(iter(proposed))
    assert parse_message(MessageKind.ACCEPT.value, build_accept_content(OPENING, chosen)) == (
        Accept(relates_to=OPENING, version=chosen)
    )
    assert parse_message(MessageKind.ACK.value, build_ack_content(OPENING, OPENING)) == Ack(
        relates_to=OPENING, accept=OPENING
    )
    for error in FailError:
        assert parse_message(MessageKind.FAIL.value, build_fail_content(OPENING, error, "r")) == (
            Fail(relates_to=OPENING, error=error, reason="r")
        )
    vendor = parse_message(
        MessageKind.VENDOR.value, build_vendor_content("org.example.m", {"n": 1}, OPENING)
    )
    assert vendor == VendorMessage(method="org.example.m", relates_to=OPENING, fields={"n": 1})


# -- policy rules ---------------------------------------------------------------------------

globs = st.sampled_from(["*", "?", "@john:*", "*:example", "\\", "[a]", "**", ".*", ""]) | text
rule_content = st.fixed_dictionaries(
    {},
    optional={
        "entity": globs | wild_values,
        "recommendation": st.sampled_from(["m.ban", "m.mute"]) | wild_values,
        "reason": text | wild_values,
        "match": st.dictionaries(
            st.sampled_from(["sender", "type", "content.membership", "a..b", ".x", "a.b.c.d.e"])
            | text,
            globs | wild_values,
            max_size=9,
        )
        | wild_values,
    },
)
events_to_match = st.fixed_dictionaries(
    {"type": text, "sender": st.sampled_from(["@john:example", "@x:y", "nocolon"]) | text},
    optional={"state_key": text | wild_values, "content": wild_values},
)


@FUZZ
@given(st.sampled_from(sorted(RULE_TYPES)) | text, rule_content, events_to_match)
def test_parse_rule_raises_only_rule_error_and_matching_never_raises(
    rule_type: str, content: dict[str, Any], event: dict[str, Any]
) -> None:
    try:
        rule = parse_rule(rule_type, "k", "!r:x", content)
    except RuleError:
        return
    assert isinstance(is_rule_match(rule, event), bool)


# -- client-server API bodies -------------------------------------------------------------


@FUZZ
@given(
    st.sampled_from([JSON_CONTENT_TYPE, CBOR_CONTENT_TYPE, "text/plain", ""]),
    st.binary(max_size=80) | json_values.map(lambda v: json.dumps(v).encode()),
    st.booleans(),
    text,
    text,
)
def test_client_api_request_parsing(
    content_type: str, body: bytes, empty_ok: bool, query: str, authorization: str
) -> None:
    """`parse_json_object` as the client API's endpoints use it (HttpError or WireError
    only), `parse_query` (ValueError only), `parse_access_token` (never raises)."""
    try:
        pairs = parse_query(query)
    except ValueError:
        pairs = ()
    request = Request(
        method="POST",
        target="/_matrix/client/v3/rooms",
        path="/_matrix/client/v3/rooms",
        query=pairs,
        headers=(("content-type", content_type), ("authorization", authorization)),
        body=body,
    )
    token = parse_access_token(request)
    assert token is None or token.strip() == token
    try:
        value = parse_json_object(request, empty_ok=empty_ok)
    except (HttpError, WireError):
        return
    assert isinstance(value, dict)
    encode_canonical_json(value)
