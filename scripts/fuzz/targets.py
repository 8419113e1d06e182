"""Fuzz harnesses: one per decoder that takes network input, each a function of raw bytes.

Owns: the harnesses (`TARGETS`), their seed inputs (`seeds`) and the property each checks.
Every harness feeds its bytes to one decoder the way the node does, lets the decoder's own
typed error(s) pass, and lets anything else escape: an escaping exception (KeyError,
TypeError, RecursionError, an AssertionError of a round trip, ...) is a finding. Where a round
trip exists it is asserted. Must not: need atheris (the harnesses are plain functions;
`fuzz.py` runs them under atheris, tests/test_fuzz_targets.py runs them on their seeds).

Inputs that carry several fields split them at NUL bytes (`_fields`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import cbor2

from s2s_node.core.canonical import CanonicalJsonError, encode_canonical_json, parse_json
from s2s_node.core.events import EventFormatError, Pdu, build_event, parse_pdu
from s2s_node.core.ingest import Verdict, ingest_create_event, ingest_pdu
from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.negotiation_messages import (
    FailError,
    MessageKind,
    NegotiationContentError,
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
    build_key_document,
    build_txt,
    check_key_document,
    parse_advert,
)
from s2s_node.core.policy import DROP_RULE, SERVER_RULE, USER_RULE, RuleError, is_rule_match
from s2s_node.core.policy import parse_rule as parse_policy_rule
from s2s_node.core.room import RoomGraph
from s2s_node.core.rules import RoomVersionRules, rules_for
from s2s_node.core.signing import add_hashes_and_signature, derived_keys
from s2s_node.core.wire import (
    CBOR_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    WireError,
    decode_body,
    decode_body_object,
    encode_body,
)
from s2s_node.core.xmatrix import XMatrixError, check_request_auth, sign_request
from s2s_node.net.errors import HttpError
from s2s_node.net.http import Request, parse_query

NOW_MS = 1_700_000_000_000
VERSIONS = ("10", "11", "12")


@functools.cache
def key(n: int) -> SigningKey:
    return signing_key_from_seed(hashlib.sha256(b"fuzz-targets:%d" % n).digest())


ALICE_KEY, BOB_KEY = key(0), key(1)
ALICE = f"@alice:{ALICE_KEY.identifier}"
BOB = f"@bob:{BOB_KEY.identifier}"
KEYS_BY_SERVER: dict[str, SigningKey] = {
    ALICE_KEY.identifier: ALICE_KEY,
    BOB_KEY.identifier: BOB_KEY,
}


def _fields(data: bytes, count: int) -> list[bytes]:
    """`data` split at NUL bytes into exactly `count` fields (the last keeps any further NULs)."""
    parts = data.split(b"\0", count - 1)
    return parts + [b""] * (count - len(parts))


def _json(data: bytes) -> Any:
    """The strict decoder, as the node reads bodies; None when it refuses."""
    try:
        return decode_body(JSON_CONTENT_TYPE, data)
    except WireError:
        return None


# -- 1. JSON and CBOR bodies -------------------------------------------------------------------


def fuzz_json(data: bytes) -> None:
    """`parse_json`: raises CanonicalJsonError only; what it accepts is canonical-JSON
    encodable and decodes back to itself."""
    try:
        value = parse_json(data)
    except CanonicalJsonError:
        return
    encoded = encode_canonical_json(value)
    assert parse_json(encoded) == value


def fuzz_cbor(data: bytes) -> None:
    """`decode_body` with application/cbor: raises WireError only; what it accepts is in the
    JSON subset (canonical-JSON encodable) and round-trips through our CBOR encoder."""
    try:
        value = decode_body(CBOR_CONTENT_TYPE, data)
    except WireError:
        return
    encode_canonical_json(value)
    assert decode_body(CBOR_CONTENT_TYPE, encode_body(value, CBOR_CONTENT_TYPE)) == value


# -- 2. PDUs ------------------------------------------------------------------------------------


@functools.cache
def room(version: str) -> tuple[RoomVersionRules, tuple[Pdu, ...]]:
    """A small room (alice creator, bob joined), built and signed once per version."""
    rules = rules_for(version)
    content: dict[str, Any] = {"room_version": version}
    if rules.creator_in_content:
        content["creator"] = ALICE
    create = build_event(
        rules=rules,
        room_id=None if rules.room_id_is_create_event_hash else f"!fuzz:{ALICE_KEY.identifier}",
        sender=ALICE,
        event_type="m.room.create",
        state_key="",
        content=content,
        prev_events=[],
        auth_events=[],
        depth=1,
        origin_server_ts=NOW_MS,
        server_name=ALICE_KEY.identifier,
        signing_key=ALICE_KEY,
    )
    graph = RoomGraph(rules, create.room_id)
    graph.add(create)
    pdus = [create]
    steps: list[tuple[str, str, dict[str, Any], str | None]] = [
        ("m.room.member", ALICE, {"membership": "join"}, ALICE),
        ("m.room.power_levels", ALICE, {"users": {} if version == "12" else {ALICE: 100}}, ""),
        ("m.room.join_rules", ALICE, {"join_rule": "public"}, ""),
        ("m.room.member", BOB, {"membership": "join"}, BOB),
        ("m.room.message", BOB, {"msgtype": "m.text", "body": "hello"}, None),
    ]
    for n, (event_type, sender, body, state_key) in enumerate(steps):
        signer = ALICE_KEY if sender == ALICE else BOB_KEY
        pdu = graph.build_event(
            event_type=event_type,
            content=body,
            sender=sender,
            state_key=state_key,
            now_ms=NOW_MS + 1000 * (n + 1),
            server_name=signer.identifier,
            signing_key=signer,
        )
        graph.add(pdu)
        pdus.append(pdu)
    return rules, tuple(pdus)


def _version(selector: bytes) -> str:
    return VERSIONS[selector[0] % len(VERSIONS)] if selector else "11"


def fuzz_pdu(data: bytes) -> None:
    """`parse_pdu` (format checks) on a decoded body: raises EventFormatError only; a PDU it
    accepts keeps its JSON (`pdu.json` parses to the same event)."""
    selector, body = _fields(data, 2)
    obj = _json(body)
    if obj is None:
        return
    rules = rules_for(_version(selector))
    try:
        pdu = parse_pdu(obj, rules, check_values=False)
    except EventFormatError:
        return
    assert parse_pdu(pdu.json, rules).json == pdu.json


def fuzz_ingest(data: bytes) -> None:
    """`ingest_pdu` into a fresh graph of the small room: returns a Verdict, never raises.

    The first byte chooses the room version and, when odd, re-signs the decoded object (new
    content hash, signature of the sender's server when it is one of ours) so that the checks
    after the signature check are reached too. With selector bit 1 the object goes to
    `ingest_create_event` instead.
    """
    selector, body = _fields(data, 2)
    obj = _json(body)
    if obj is None:
        return
    rules, pdus = room(_version(selector))
    flags = selector[0] if selector else 0
    if flags & 1 and isinstance(obj, dict):
        sender = obj.get("sender")
        server = sender.split(":", 1)[-1] if isinstance(sender, str) else ""
        signer = KEYS_BY_SERVER.get(server, BOB_KEY)
        unsigned = {k: v for k, v in obj.items() if k not in ("hashes", "signatures")}
        try:
            obj = add_hashes_and_signature(unsigned, rules, signer.identifier, signer)
        except (CanonicalJsonError, ValueError):
            return  # not signable: the object is refused before any signature check anyway
    if flags & 2:
        verdict, _ = ingest_create_event(obj, derived_keys, values_checked=True)
        assert isinstance(verdict, Verdict)
        return
    graph = RoomGraph(rules, pdus[0].room_id)
    for pdu in pdus[:-1]:  # the message is left out: seeds replay it
        graph.add(pdu)
    verdict = ingest_pdu(obj, graph, derived_keys, values_checked=True)
    assert isinstance(verdict, Verdict)


# -- 3. X-Matrix --------------------------------------------------------------------------------


def fuzz_xmatrix(data: bytes) -> None:
    """`check_request_auth` on headers (Latin-1, as the server decodes them), method, uri and
    body: raises XMatrixError only. Selector bit 0 replaces the first header by a correct
    signature of the request (then the fuzzed parts are the other headers, uri and body)."""
    selector, headers, method, uri, body = _fields(data, 5)
    content = _json(body) if body else None
    if body and content is None:
        return
    header_list = [h.decode("latin-1") for h in headers.split(b"\n")] if headers else []
    method_text, uri_text = method.decode("latin-1"), uri.decode("latin-1")
    destination = BOB_KEY.identifier
    if selector and selector[0] & 1:
        signed = sign_request(
            ALICE_KEY, method=method_text, uri=uri_text, destination=destination, content=content
        )
        header_list[:1] = [signed]
    try:
        origin = check_request_auth(
            header_list, method_text, uri_text, content, destination, derived_keys
        )
    except XMatrixError:
        return
    # Nobody but the harness signs with a key we hold: an accepted request is alice's.
    assert origin == ALICE_KEY.identifier


# -- 4. Discovery: mDNS adverts and key documents -------------------------------------------


def txt_rdata(pairs: dict[str, str]) -> bytes:
    """TXT RDATA (RFC 6763 section 6): each `key=value` behind its length byte."""
    out = b""
    for k, v in pairs.items():
        entry = f"{k}={v}".encode()
        out += bytes([len(entry)]) + entry
    return out


def fuzz_txt(data: bytes) -> None:
    """`parse_advert` on an instance name, TXT RDATA, port and addresses: raises AdvertError
    only; an accepted advert's fields round-trip through `build_txt`."""
    label, txt, port, addresses = _fields(data, 4)
    name = label.decode("utf-8", "replace") + "." + SERVICE_TYPE
    port_number = int.from_bytes(port[:3], "big") if port else None
    address_list = [a.decode("latin-1") for a in addresses.split(b",")] if addresses else []
    try:
        advert = parse_advert(name, txt, port_number, address_list, own_identifier="self")
    except AdvertError:
        return
    again = txt_rdata(
        build_txt(
            advert.identifier,
            encodings=sorted(advert.encodings),
            room_versions=advert.room_versions,
            tls=advert.tls,
        )
    )
    other = parse_advert(name, again, advert.port, list(advert.addresses), own_identifier="self")
    assert other == advert


def fuzz_key_document(data: bytes) -> None:
    """`check_key_document` on a decoded body: raises KeyDocumentError only. Selector bit 0
    re-signs the object with our key when it names our identifier."""
    selector, body = _fields(data, 2)
    document = _json(body)
    if document is None:
        return
    flags = selector[0] if selector else 0
    if flags & 1 and isinstance(document, dict):
        from s2s_node.core.signing import sign_json

        unsigned = {k: v for k, v in document.items() if k != "signatures"}
        try:
            document = sign_json(unsigned, ALICE_KEY.identifier, ALICE_KEY)
        except CanonicalJsonError:
            return
    expected = ALICE_KEY.identifier if flags & 2 else None
    try:
        name = check_key_document(document, expected=expected, now_ms=NOW_MS)
    except KeyDocumentError:
        return
    assert isinstance(document, dict) and name == document["server_name"]


# -- 5. Room content: negotiation messages and policy rules -----------------------------------


def fuzz_negotiation(data: bytes) -> None:
    """`parse_message` on an event type and decoded content: NegotiationContentError only."""
    event_type, body = _fields(data, 2)
    content = _json(body)
    if content is None:
        return
    try:
        parse_message(event_type.decode("utf-8", "replace"), content)
    except NegotiationContentError:
        return


POLICY_EVENT: dict[str, Any] = {
    "type": "m.room.member",
    "sender": "@john:example",
    "state_key": "@smith:example",
    "content": {"membership": "invite", "reason": "x", "nested": {"a": {"b": [1, "c"]}}},
}


def fuzz_policy(data: bytes) -> None:
    """`parse_rule` on a rule type and decoded content: RuleError only; an accepted rule is
    matched against a fixed event and against a fuzzed one without raising."""
    rule_type, body, event_body = _fields(data, 3)
    content = _json(body)
    if not isinstance(content, dict):
        return
    try:
        rule = parse_policy_rule(rule_type.decode("utf-8", "replace"), "k", "!r:x", content)
    except RuleError:
        return
    is_rule_match(rule, POLICY_EVENT)
    event = _json(event_body)
    if isinstance(event, dict):
        is_rule_match(rule, event)


# -- 6. Client-server API bodies ------------------------------------------------------------


def fuzz_client_body(data: bytes) -> None:
    """What the client API does with a request: the body through `client_api_auth`'s
    `parse_json_object` (HttpError or WireError only) or `decode_body_object` (WireError
    only), the query through `net.http.parse_query` (ValueError only) and the access token
    through `parse_access_token` (never raises)."""
    from s2s_node.net.client_api_auth import parse_access_token, parse_json_object

    selector, query, authorization, body = _fields(data, 4)
    content_type = CBOR_CONTENT_TYPE if selector and selector[0] & 1 else JSON_CONTENT_TYPE
    try:
        pairs = parse_query(query.decode("latin-1"))
    except ValueError:
        pairs = ()
    request = Request(
        method="POST",
        target="/_matrix/client/v3/x",
        path="/_matrix/client/v3/x",
        query=pairs,
        headers=(
            ("content-type", content_type),
            ("authorization", authorization.decode("latin-1")),
        ),
        body=body,
    )
    token = parse_access_token(request)
    assert token is None or isinstance(token, str)
    try:
        value = parse_json_object(request, empty_ok=bool(selector and selector[0] & 2))
    except (HttpError, WireError):
        value = None
    try:
        same = decode_body_object(content_type, body)
    except WireError:
        return
    assert value is None or value == same


TARGETS: dict[str, Callable[[bytes], None]] = {
    "json": fuzz_json,
    "cbor": fuzz_cbor,
    "pdu": fuzz_pdu,
    "ingest": fuzz_ingest,
    "xmatrix": fuzz_xmatrix,
    "txt": fuzz_txt,
    "key_document": fuzz_key_document,
    "negotiation": fuzz_negotiation,
    "policy": fuzz_policy,
    "client_body": fuzz_client_body,
}


# -- seeds ------------------------------------------------------------------------------------


def _j(value: Any) -> bytes:
    return encode_canonical_json(value)


def seeds(name: str) -> list[bytes]:
    """Valid inputs for `name` (the fuzzer mutates from these)."""
    if name == "json":
        return [_j(pdu.json) for pdu in room("11")[1]] + [b'{"a":[1,-2,"\\u00e9",null,true]}']
    if name == "cbor":
        return [cbor2.dumps(pdu.json) for pdu in room("12")[1]] + [cbor2.dumps({"a": [1, None]})]
    if name in ("pdu", "ingest"):
        out = []
        for n, version in enumerate(VERSIONS):
            for pdu in room(version)[1]:
                out.append(bytes([n]) + b"\0" + _j(pdu.json))
                out.append(bytes([n + 3]) + b"\0" + _j(pdu.json))
        return out
    if name == "xmatrix":
        header = sign_request(
            ALICE_KEY, method="PUT", uri="/_matrix/federation/v1/send/1",
            destination=BOB_KEY.identifier, content={"pdus": []},
        )  # fmt: skip
        parts = [header.encode("latin-1"), b"PUT", b"/_matrix/federation/v1/send/1", b'{"pdus":[]}']
        return [b"\0".join([b"\0", *parts]), b"\0".join([b"\1", b"", b"GET", b"/x", b""])]
    if name == "txt":
        txt = txt_rdata(build_txt(ALICE_KEY.identifier, room_versions=["11"]))
        return [
            b"\0".join([ALICE_KEY.identifier.encode(), txt, (8448).to_bytes(3, "big"), b"10.0.0.1"])
        ]
    if name == "key_document":
        document = build_key_document(ALICE_KEY, valid_until_ts=NOW_MS + 10**6)
        return [b"\2\0" + _j(document), b"\1\0" + _j(document)]
    if name == "negotiation":
        opening = room("11")[1][-1].event_id
        contents = {
            MessageKind.PROPOSAL: build_proposal_content({"11": 1, "12": 2}, "m.s2s"),
            MessageKind.REPLY: build_reply_content(opening, {"12": 1}),
            MessageKind.ACCEPT: build_accept_content(opening, "12"),
            MessageKind.ACK: build_ack_content(opening, opening),
            MessageKind.FAIL: build_fail_content(opening, FailError.NO_MATCH, "none"),
            MessageKind.VENDOR: build_vendor_content("org.example.m", {"x": 1}, opening),
        }
        return [kind.value.encode() + b"\0" + _j(c) for kind, c in contents.items()]
    if name == "policy":
        event = _j(POLICY_EVENT)
        return [
            USER_RULE.encode() + b"\0" + _j({"entity": "@john:*", "recommendation": "m.ban"})
            + b"\0" + event,
            SERVER_RULE.encode() + b"\0" + _j({"entity": "ex?mple", "recommendation": "m.ban"})
            + b"\0" + event,
            DROP_RULE.encode() + b"\0" + _j({"match": {"content.membership": "inv*"}})
            + b"\0" + event,
        ]  # fmt: skip
    if name == "client_body":
        return [
            b"\0a=1&b=%20\0Bearer abc\0" + _j({"invite": [BOB], "initial_state": []}),
            b"\1\0\0\0" + cbor2.dumps({"body": "x"}),
            b"\2\0access_token=t\0\0",
        ]
    raise KeyError(name)
