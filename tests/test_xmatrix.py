"""core.xmatrix: signing requests, parsing and verifying X-Matrix headers."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.canonical import decode_base64, encode_canonical_json
from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.signing import KeyRing, derived_keys
from s2s_node.core.xmatrix import (
    XMatrixAuthorization,
    XMatrixError,
    XMatrixReason,
    build_request_json,
    check_request_auth,
    format_authorization,
    parse_auth_params,
    parse_authorization,
    sign_request,
)

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "xmatrix" / "vectors.json").read_text(encoding="utf-8")
)
SPEC_KEY = signing_key_from_seed(bytes.fromhex(VECTORS["official_signing_key"]["seed_hex"]))
SPEC_RING = KeyRing({"domain": {"ed25519:1": SPEC_KEY.verify_key_bytes}}, derive=False)

ALICE = signing_key_from_seed(b"\x01" * 32)
BOB = signing_key_from_seed(b"\x02" * 32)
URI = "/_matrix/federation/v1/send/txn1?x=%2F1"
BODY = {"origin": "o", "pdus": []}


def reason_of(*args: Any) -> XMatrixReason:
    with pytest.raises(XMatrixError) as info:
        check_request_auth(*args)
    return info.value.reason


def signed(key: SigningKey = ALICE, **overrides: Any) -> str:
    request: dict[str, Any] = {
        "method": "PUT",
        "uri": URI,
        "destination": BOB.identifier,
        "content": BODY,
    }
    request.update(overrides)
    return sign_request(key, **request)


# ----------------------------------------------------------------------------------------------
# Vectors


@pytest.mark.parametrize("name", ["get_version", "put_send"])
def test_vectors(name: str) -> None:
    vector = VECTORS["derived_x_matrix"][name]
    content = vector.get("content")
    request = build_request_json(
        method=vector["method"],
        uri=vector["uri"],
        origin=vector["origin"],
        destination=vector["destination"],
        content=content,
    )
    assert encode_canonical_json(request) == vector[
        "signed_json_without_signatures_canonical"
    ].encode("utf-8")
    header = sign_request(
        SPEC_KEY,
        method=vector["method"],
        uri=vector["uri"],
        destination=vector["destination"],
        content=content,
        origin="domain",
    )
    assert header == vector["authorization_header"]
    assert parse_authorization(header).sig == vector["sig"]
    origin = check_request_auth(
        vector["authorization_header"],
        vector["method"],
        vector["uri"],
        content,
        vector["destination"],
        SPEC_RING,
    )
    assert origin == "domain"


def test_vector_origin_is_not_an_identifier_so_the_node_refuses_it() -> None:
    vector = VECTORS["derived_x_matrix"]["get_version"]
    assert (
        reason_of(
            vector["authorization_header"],
            vector["method"],
            vector["uri"],
            None,
            vector["destination"],
            derived_keys,
        )
        is XMatrixReason.UNKNOWN_KEY
    )


# ----------------------------------------------------------------------------------------------
# Verification with derived keys


def test_round_trip_with_derived_keys() -> None:
    origin = check_request_auth(signed(), "PUT", URI, BODY, BOB.identifier, derived_keys)
    assert origin == ALICE.identifier


def test_request_without_body() -> None:
    header = signed(method="GET", content=None)
    assert check_request_auth(header, "GET", URI, None, BOB.identifier, derived_keys)
    assert (
        reason_of(header, "GET", URI, {}, BOB.identifier, derived_keys)
        is XMatrixReason.BAD_SIGNATURE
    )


@pytest.mark.parametrize(
    ("method", "uri", "content"),
    [
        ("POST", URI, BODY),  # other method
        ("PUT", "/_matrix/federation/v1/send/txn2?x=%2F1", BODY),  # other path
        ("PUT", "/_matrix/federation/v1/send/txn1?x=/1", BODY),  # the uri is the raw target
        ("PUT", URI, {"origin": "o", "pdus": [1]}),  # other body
        ("PUT", URI, None),  # body dropped
    ],
)
def test_tampered_request_fails(method: str, uri: str, content: Any) -> None:
    assert (
        reason_of(signed(), method, uri, content, BOB.identifier, derived_keys)
        is XMatrixReason.BAD_SIGNATURE
    )


def test_method_case_does_not_matter() -> None:
    assert check_request_auth(signed(method="put"), "PUT", URI, BODY, BOB.identifier, derived_keys)


def test_wrong_destination() -> None:
    header = signed(destination=ALICE.identifier)
    assert (
        reason_of(header, "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.WRONG_DESTINATION
    )


def test_missing_destination_is_refused() -> None:
    # DEVIATION pinned: the spec says receivers should accept it; we require it.
    auth = parse_authorization(signed())
    header = f'X-Matrix origin="{auth.origin}",key="{auth.key}",sig="{auth.sig}"'
    assert (
        reason_of(header, "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.MISSING_DESTINATION
    )


def test_signature_by_another_key_fails() -> None:
    # Bob signs but claims to be Alice.
    header = signed(BOB, origin=ALICE.identifier, destination=BOB.identifier)
    assert (
        reason_of(header, "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.BAD_SIGNATURE
    )


def test_unknown_key_forms() -> None:
    auth = parse_authorization(signed())
    for key in ("ed25519:2", "curve25519:1", "1"):
        header = format_authorization(
            XMatrixAuthorization(
                origin=auth.origin, destination=auth.destination, key=key, sig=auth.sig
            )
        )
        assert (
            reason_of(header, "PUT", URI, BODY, BOB.identifier, derived_keys)
            is XMatrixReason.UNKNOWN_KEY
        )


def test_non_identifier_origin_has_no_key() -> None:
    header = signed(origin="example.org")
    assert (
        reason_of(header, "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.UNKNOWN_KEY
    )


def test_origin_must_be_a_server_name() -> None:
    auth = parse_authorization(signed())
    header = f'X-Matrix origin="a b",destination="{auth.destination}",key="ed25519:1",sig="x"'
    assert (
        reason_of(header, "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.BAD_ORIGIN
    )


@pytest.mark.parametrize("sig", ["!!!", "AAAA", "A" * 86 + "=="])
def test_bad_signature_encodings(sig: str) -> None:
    auth = parse_authorization(signed())
    header = (
        f'X-Matrix origin="{auth.origin}",destination="{auth.destination}",'
        f'key="ed25519:1",sig="{sig}"'
    )
    assert (
        reason_of(header, "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.BAD_SIGNATURE
    )


def test_missing_and_wrong_scheme() -> None:
    cases: tuple[list[str] | tuple[str, ...] | None, ...] = (None, [], ())
    for missing in cases:
        assert (
            reason_of(missing, "PUT", URI, BODY, BOB.identifier, derived_keys)
            is XMatrixReason.MISSING
        )
    assert (
        reason_of("Bearer abc", "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.WRONG_SCHEME
    )


def test_several_headers() -> None:
    good = signed()
    # Other schemes are skipped.
    assert check_request_auth(["Bearer abc", good], "PUT", URI, BODY, BOB.identifier, derived_keys)
    # Two X-Matrix headers that disagree on the origin are refused.
    other = signed(BOB, destination=BOB.identifier)
    assert (
        reason_of([good, other], "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.MALFORMED
    )
    # The same key twice is refused.
    assert (
        reason_of([good, good], "PUT", URI, BODY, BOB.identifier, derived_keys)
        is XMatrixReason.MALFORMED
    )


def test_missing_params() -> None:
    for header in ('X-Matrix origin="a",key="ed25519:1"', "X-Matrix", 'X-Matrix sig="x",key=""'):
        with pytest.raises(XMatrixError) as info:
            parse_authorization(header)
        assert info.value.reason is XMatrixReason.MISSING_PARAM


# ----------------------------------------------------------------------------------------------
# Header parsing (RFC 9110 auth-params)


def variants(auth: XMatrixAuthorization) -> list[str]:
    o, d, k, s = auth.origin, auth.destination, auth.key, auth.sig
    escaped = "".join("\\" + c for c in s)
    return [
        f'X-Matrix origin="{o}",destination="{d}",key="{k}",sig="{s}"',
        f"x-matrix origin={o},destination={d},key={k},sig={s}",  # bare, ':' and '/' inside
        f'X-MATRIX  ORIGIN="{o}" , Destination = "{d}",\tKEY="{k}", SiG="{s}"',
        f'X-Matrix sig="{s}",key="{k}",destination="{d}",origin="{o}"',  # any order
        f'X-Matrix ,origin="{o}",,destination="{d}",key="{k}",sig="{escaped}",',  # empty items
        f'X-Matrix origin="{o}",destination="{d}",key="{k}",sig="{s}",extra="x, y",z=1',
    ]


def test_header_variants_parse_to_the_same_values() -> None:
    header = signed()
    auth = parse_authorization(header)
    assert auth.key == "ed25519:1"
    for variant in variants(auth):
        assert parse_authorization(variant) == auth, variant
        assert check_request_auth(variant, "PUT", URI, BODY, BOB.identifier, derived_keys)


@pytest.mark.parametrize(
    "header",
    [
        'X-Matrix origin="a',  # unterminated
        'X-Matrix origin="a\\',  # escape at the end
        'X-Matrix origin="a\x01b"',  # control character
        "X-Matrix origin",  # no '='
        "X-Matrix origin=",  # empty bare value
        'X-Matrix origin="a" key="b"',  # no comma
        "X-Matrix origin=a b",
        'X-Matrix origin="a",origin="b"',  # twice
        'X-Matrix ORIGIN="a",origin="a"',  # twice, names are case-insensitive
        "X-Matrix=origin",
        'X-Matrix origin="' + "a" * 3000 + '"',  # too long
        "",
        " X-Matrix origin=a",
        'X-Matrix origin=("a")',
    ],
)
def test_malformed_headers(header: str) -> None:
    with pytest.raises(XMatrixError) as info:
        parse_authorization(header)
    assert info.value.reason is XMatrixReason.MALFORMED


def test_escapes_and_obs_text_in_quoted_values() -> None:
    assert parse_auth_params('X-Matrix a="\\"q\\\\",b="é"') == ("X-Matrix", {"a": '"q\\', "b": "é"})


def test_format_refuses_values_that_would_need_escaping() -> None:
    with pytest.raises(XMatrixError):
        format_authorization(XMatrixAuthorization(origin='a"', destination=None, key="k", sig="s"))


def test_signature_is_standard_unpadded_base64_of_64_bytes() -> None:
    sig = parse_authorization(signed()).sig
    assert "=" not in sig
    assert len(decode_base64(sig)) == 64


@settings(max_examples=500)
@given(st.text(max_size=120))
def test_parser_raises_only_xmatrix_error(header: str) -> None:
    with contextlib.suppress(XMatrixError):
        check_request_auth(header, "GET", "/x", None, BOB.identifier, derived_keys)


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\')
header_alphabet = st.sampled_from(list('X-Matrix origin=",\\\t :/ed25519sigkey=destinationé\x00'))


@settings(max_examples=500)
@given(st.lists(header_alphabet, max_size=80).map("".join))
def test_parser_on_header_like_text_raises_only_xmatrix_error(header: str) -> None:
    try:
        auth = parse_authorization("X-Matrix " + header)
    except XMatrixError:
        return
    assert auth.origin and auth.key and auth.sig


@settings(max_examples=200)
@given(
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1
    ),
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1
    ),
)
def test_format_parse_round_trip(origin: str, sig: str) -> None:
    auth = XMatrixAuthorization(origin=origin, destination="d", key="ed25519:1", sig=sig)
    assert parse_authorization(format_authorization(auth)) == auth
