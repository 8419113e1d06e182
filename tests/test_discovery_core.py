"""core.peers: TXT and advertisement parsing, key documents, and the peer table state machine."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2s_node.core.canonical import encode_base64
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.peers import (
    MAX_ADDRESSES,
    MAX_TXT_BYTES,
    SERVICE_TYPE,
    AdvertError,
    AdvertReason,
    ChangeKind,
    KeyDocumentError,
    KeyDocumentReason,
    Liveness,
    PeerAdvert,
    PeerTable,
    build_instance_name,
    build_key_document,
    build_txt,
    check_key_document,
    format_peer,
    parse_advert,
    parse_txt,
)
from s2s_node.core.signing import sign_json

KEY_A = signing_key_from_seed(bytes([1]) * 32)
KEY_B = signing_key_from_seed(bytes([2]) * 32)
KEY_C = signing_key_from_seed(bytes([3]) * 32)
A, B, C = KEY_A.identifier, KEY_B.identifier, KEY_C.identifier
NOW = 1_700_000_000_000


def encode_txt(pairs: dict[str, str] | list[bytes]) -> bytes:
    """TXT RDATA: length-prefixed strings (RFC 6763 section 6)."""
    entries = [f"{k}={v}".encode() for k, v in pairs.items()] if isinstance(pairs, dict) else pairs
    return b"".join(bytes([len(e)]) + e for e in entries)


def good_txt(identifier: str = B, **overrides: str) -> bytes:
    return encode_txt({**build_txt(identifier), **overrides})


def parse(
    name: str | None = None,
    txt: bytes | None = None,
    port: int | None = 8448,
    addresses: tuple[str, ...] = ("10.0.0.2",),
) -> PeerAdvert:
    return parse_advert(
        build_instance_name(B) if name is None else name,
        good_txt() if txt is None else txt,
        port,
        addresses,
        own_identifier=A,
    )


# ----------------------------------------------------------------------------------------------
# TXT and advertisements


def test_our_txt_round_trips_and_is_small() -> None:
    txt = good_txt()
    assert len(txt) < 150
    assert parse_txt(txt) == build_txt(B)
    advert = parse(txt=txt)
    assert advert == PeerAdvert(
        identifier=B,
        addresses=("10.0.0.2",),
        port=8448,
        encodings=frozenset({"json", "cbor"}),
        room_versions=("10", "11", "12"),
        tls=True,
    )
    assert advert.endpoints == (("10.0.0.2", 8448),)


def test_txt_keys_are_case_insensitive_first_wins_bare_keys_none() -> None:
    txt = encode_txt([b"V=1", b"v=2", b"", b"flag", b"Sn=x"])
    assert parse_txt(txt) == {"v": "1", "flag": None, "sn": "x"}


@pytest.mark.parametrize(
    ("txt", "reason"),
    [
        (b"\x05ab", AdvertReason.TXT_MALFORMED),  # length runs past the end
        (encode_txt([b"=value"]), AdvertReason.TXT_MALFORMED),  # empty key
        (encode_txt([b"k\x01y=1"]), AdvertReason.TXT_MALFORMED),  # non-printable key
        (encode_txt([b"sn=\xff\xfe"]), AdvertReason.TXT_MALFORMED),  # value not UTF-8
        (encode_txt([b"x=" + b"a" * 250] * 3), AdvertReason.TXT_TOO_LARGE),
    ],
)
def test_malformed_txt(txt: bytes, reason: AdvertReason) -> None:
    with pytest.raises(AdvertError) as info:
        parse_txt(txt)
    assert info.value.reason is reason
    with pytest.raises(AdvertError) as info:
        parse(txt=txt)
    assert info.value.reason is reason


def test_txt_size_limit_is_inclusive() -> None:
    assert parse_txt(b"\x00" * MAX_TXT_BYTES) == {}
    with pytest.raises(AdvertError) as info:
        parse_txt(b"\x00" * (MAX_TXT_BYTES + 1))
    assert info.value.reason is AdvertReason.TXT_TOO_LARGE


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"name": f"{B}._matrix-s2s._tcp.local."}, AdvertReason.WRONG_SERVICE_TYPE),
        ({"name": f"hello.{SERVICE_TYPE}"}, AdvertReason.INSTANCE_NOT_IDENTIFIER),
        ({"name": f"{B[:-1]}b.{SERVICE_TYPE}"}, AdvertReason.INSTANCE_NOT_IDENTIFIER),  # spare bits
        ({"name": build_instance_name(A)}, AdvertReason.OWN_IDENTIFIER),
        ({"txt": good_txt(v="2")}, AdvertReason.UNSUPPORTED_VERSION),
        ({"txt": encode_txt({"sn": B})}, AdvertReason.UNSUPPORTED_VERSION),
        ({"txt": encode_txt({"v": "1"})}, AdvertReason.MISSING_SERVER_NAME),
        ({"txt": good_txt(sn="example.org")}, AdvertReason.SERVER_NAME_NOT_IDENTIFIER),
        ({"txt": good_txt(sn=B.upper())}, AdvertReason.SERVER_NAME_NOT_IDENTIFIER),
        ({"txt": good_txt(sn=C)}, AdvertReason.SERVER_NAME_MISMATCH),
        ({"txt": good_txt(sn=A)}, AdvertReason.SERVER_NAME_MISMATCH),
        ({"txt": good_txt(enc="xml")}, AdvertReason.BAD_FIELD),
        ({"txt": good_txt(rv="10,<script>")}, AdvertReason.BAD_FIELD),
        ({"txt": good_txt(rv=",".join(["1"] * 17))}, AdvertReason.BAD_FIELD),
        ({"txt": good_txt(tls="yes")}, AdvertReason.BAD_FIELD),
        ({"txt": encode_txt([b"v=1", b"sn=" + B.encode(), b"enc"])}, AdvertReason.BAD_FIELD),
        ({"port": 0}, AdvertReason.BAD_PORT),
        ({"port": 70000}, AdvertReason.BAD_PORT),
        ({"port": None}, AdvertReason.BAD_PORT),
        ({"addresses": ()}, AdvertReason.NO_ADDRESS),
        ({"addresses": ("0.0.0.0", "224.0.0.251", "not-an-ip")}, AdvertReason.NO_ADDRESS),
    ],
)
def test_lying_or_malformed_adverts_are_refused_with_a_reason(
    kwargs: dict[str, object], reason: AdvertReason
) -> None:
    with pytest.raises(AdvertError) as info:
        parse(**kwargs)  # type: ignore[arg-type]
    assert info.value.reason is reason


def test_advert_defaults_and_tolerance() -> None:
    # Upper-case instance label: DNS is case-insensitive; the identifier is the lower-case one.
    advert = parse(name=build_instance_name(B).upper().replace(".LOCAL.", ".local."))
    assert advert.identifier == B
    minimal = parse(txt=encode_txt({"v": "1", "sn": B}))
    assert minimal.encodings == frozenset({"json"})
    assert minimal.room_versions == ()
    assert minimal.tls is False
    newer = parse(txt=good_txt(enc="zstd,cbor", extra="whatever"))
    assert newer.encodings == frozenset({"cbor"})


def test_addresses_are_deduplicated_and_capped() -> None:
    many = tuple(f"10.0.0.{i}" for i in range(1, 20))
    advert = parse(addresses=("10.0.0.1", "10.0.0.1", *many))
    assert len(advert.addresses) == MAX_ADDRESSES
    assert advert.addresses[:2] == ("10.0.0.1", "10.0.0.2")


@given(st.binary(max_size=700), st.text(max_size=80), st.integers(-5, 70000))
def test_parse_advert_raises_only_advert_error(txt: bytes, label: str, port: int) -> None:
    for name in (f"{label}.{SERVICE_TYPE}", build_instance_name(B)):
        try:
            parsed = parse(name=name, txt=txt, port=port)
        except AdvertError as exc:
            assert isinstance(exc.reason, AdvertReason)
        else:  # only a TXT that says exactly who it is gets through
            assert parsed.identifier == B and 0 < parsed.port < 65536
            assert parse_txt(txt)["sn"] == B


# ----------------------------------------------------------------------------------------------
# Key documents


def test_key_document_round_trip() -> None:
    document = build_key_document(KEY_B, valid_until_ts=NOW + 1000)
    assert document["server_name"] == B
    assert document["verify_keys"] == {"ed25519:1": {"key": encode_base64(KEY_B.verify_key_bytes)}}
    assert check_key_document(document, expected=B, now_ms=NOW) == B
    assert check_key_document(document, expected=None, now_ms=NOW) == B


def _forged(**fields: object) -> dict[str, object]:
    """B's document with fields replaced, re-signed by C under B's name."""
    unsigned = {k: v for k, v in build_key_document(KEY_B, valid_until_ts=NOW + 1).items()}
    unsigned.pop("signatures")
    unsigned.update(fields)
    return sign_json(unsigned, B, KEY_C)


@pytest.mark.parametrize(
    ("document", "expected", "reason"),
    [
        ([], B, KeyDocumentReason.NOT_OBJECT),
        ({"server_name": "example.org"}, None, KeyDocumentReason.SERVER_NAME_NOT_IDENTIFIER),
        ({}, B, KeyDocumentReason.SERVER_NAME_NOT_IDENTIFIER),
        # Someone else's genuine document at the address advertised for B.
        (
            build_key_document(KEY_C, valid_until_ts=NOW + 1),
            B,
            KeyDocumentReason.SERVER_NAME_MISMATCH,
        ),
        # Claims B, publishes C's key, signed by C: the key is not the one B encodes.
        (
            _forged(verify_keys={"ed25519:1": {"key": encode_base64(KEY_C.verify_key_bytes)}}),
            B,
            KeyDocumentReason.KEY_MISMATCH,
        ),
        (_forged(verify_keys={"ed25519:2": {"key": "x"}}), B, KeyDocumentReason.MISSING_KEY),
        (_forged(verify_keys={"ed25519:1": {"key": "%%%"}}), B, KeyDocumentReason.KEY_MISMATCH),
        # Claims B with B's key, but signed by C.
        (_forged(), B, KeyDocumentReason.BAD_SIGNATURE),
        (
            {**build_key_document(KEY_B, valid_until_ts=NOW + 1), "signatures": {}},
            B,
            KeyDocumentReason.BAD_SIGNATURE,
        ),
        (build_key_document(KEY_B, valid_until_ts=NOW - 1), B, KeyDocumentReason.EXPIRED),
    ],
)
def test_key_documents_that_do_not_certify(
    document: object, expected: str | None, reason: KeyDocumentReason
) -> None:
    with pytest.raises(KeyDocumentError) as info:
        check_key_document(document, expected=expected, now_ms=NOW)
    assert info.value.reason is reason


def test_valid_until_must_be_an_integer() -> None:
    unsigned = {k: v for k, v in build_key_document(KEY_B, valid_until_ts=0).items()}
    unsigned.pop("signatures")
    unsigned["valid_until_ts"] = "soon"
    with pytest.raises(KeyDocumentError) as info:
        check_key_document(sign_json(unsigned, B, KEY_B), expected=B, now_ms=NOW)
    assert info.value.reason is KeyDocumentReason.BAD_VALID_UNTIL


def test_tampered_document_fails_the_signature() -> None:
    document = build_key_document(KEY_B, valid_until_ts=NOW + 1)
    document["valid_until_ts"] = NOW + 10**9  # extend a stale copy
    with pytest.raises(KeyDocumentError) as info:
        check_key_document(document, expected=B, now_ms=NOW)
    assert info.value.reason is KeyDocumentReason.BAD_SIGNATURE


# ----------------------------------------------------------------------------------------------
# The peer table


def advert(identifier: str = B, port: int = 8448, *addresses: str) -> PeerAdvert:
    return parse_advert(
        build_instance_name(identifier),
        good_txt(identifier),
        port,
        addresses or ("10.0.0.2",),
        own_identifier=A,
    )


def test_lifecycle_added_verified_unreachable_departed() -> None:
    table = PeerTable(liveness=Liveness(unreachable_after=2, depart_after=4))
    added = table.observe(advert(), NOW)
    assert added is not None and added.kind is ChangeKind.ADDED and not added.wake
    peer = table.get(B)
    assert peer is not None and not peer.verified and not peer.usable
    assert peer.needs_verification()
    assert table.endpoint_of(B) is None  # never used before it is verified
    assert table.observe(advert(), NOW + 5) is None  # same advert: only last_seen moves
    assert table.get(B).last_seen_ms == NOW + 5  # type: ignore[union-attr]

    verified = table.mark_verified(B, ("10.0.0.2", 8448), NOW + 10)
    assert verified is not None and verified.kind is ChangeKind.VERIFIED and verified.wake
    assert table.endpoint_of(B) == ("10.0.0.2", 8448)
    assert table.mark_verified(B, ("10.0.0.2", 8448), NOW + 11) is None
    assert table.mark_probe_ok(B, NOW + 12) is None

    assert table.mark_probe_failed(B, NOW + 13) is None  # one failure: still used
    assert table.endpoint_of(B) is not None
    unreachable = table.mark_probe_failed(B, NOW + 14)
    assert unreachable is not None and unreachable.kind is ChangeKind.UNREACHABLE
    assert table.endpoint_of(B) is None

    back = table.mark_probe_ok(B, NOW + 15)  # reachable again: a wake
    assert back is not None and back.kind is ChangeKind.VERIFIED and back.wake
    for i in range(3):
        table.mark_probe_failed(B, NOW + 16 + i)
    departed = table.mark_probe_failed(B, NOW + 20)
    assert departed is not None and departed.kind is ChangeKind.DEPARTED
    assert table.get(B) is None and len(table) == 0


def test_goodbye_removes_and_unknown_is_quiet() -> None:
    table = PeerTable()
    table.observe(advert(), NOW)
    departed = table.remove(B)
    assert departed is not None and departed.kind is ChangeKind.DEPARTED
    assert table.remove(B) is None
    assert table.mark_verified(B, ("10.0.0.2", 8448), NOW) is None
    assert table.mark_probe_failed(B, NOW) is None
    assert table.mark_probe_ok(B, NOW) is None


def test_unverified_peers_are_not_probed_away() -> None:
    table = PeerTable(liveness=Liveness(unreachable_after=1, depart_after=1))
    table.observe(advert(), NOW)
    assert table.mark_probe_failed(B, NOW) is None
    assert table.get(B) is not None


def test_changed_advert_keeps_the_verified_endpoint_until_another_verifies() -> None:
    table = PeerTable()
    table.observe(advert(B, 8448, "10.0.0.2"), NOW)
    table.mark_verified(B, ("10.0.0.2", 8448), NOW)
    # Anyone can announce B at another port (a spoof, or B restarted): B stays where verified.
    updated = table.observe(advert(B, 9999, "10.0.0.66"), NOW + 1)
    assert updated is not None and updated.kind is ChangeKind.UPDATED
    peer = table.get(B)
    assert peer is not None and peer.needs_verification()
    assert table.endpoint_of(B) == ("10.0.0.2", 8448)
    moved = table.mark_verified(B, ("10.0.0.66", 9999), NOW + 2)
    assert moved is not None and moved.kind is ChangeKind.VERIFIED
    assert table.endpoint_of(B) == ("10.0.0.66", 9999)
    assert not table.get(B).needs_verification()  # type: ignore[union-attr]


def test_table_is_bounded() -> None:
    table = PeerTable(max_peers=2)
    table.observe(advert(B), NOW)
    table.observe(advert(C), NOW)
    extra = signing_key_from_seed(bytes([4]) * 32).identifier
    with pytest.raises(AdvertError) as info:
        table.observe(advert(extra), NOW)
    assert info.value.reason is AdvertReason.TABLE_FULL
    assert table.observe(advert(B, 1234), NOW) is not None  # known peers still update
    assert [p.identifier for p in table.snapshot()] == sorted([B, C])


def test_format_peer_is_json_ready() -> None:
    table = PeerTable()
    table.observe(advert(), NOW)
    table.mark_verified(B, ("10.0.0.2", 8448), NOW)
    peer = table.get(B)
    assert peer is not None
    view = format_peer(peer)
    assert view["endpoint"] == "10.0.0.2:8448"
    assert view["verified"] is True and view["alive"] is True
    assert dataclasses.is_dataclass(peer)
