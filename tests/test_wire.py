"""core.wire: strict JSON/CBOR bodies, encoding and content negotiation."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.canonical import MAX_SAFE_INTEGER, MIN_SAFE_INTEGER
from s2s_node.core.wire import (
    CBOR_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    WireError,
    WireReason,
    build_accept,
    choose_response_type,
    decode_body,
    decode_body_object,
    decode_cbor,
    encode_body,
    parse_accept,
)

CBOR = CBOR_CONTENT_TYPE
JSON = JSON_CONTENT_TYPE


def reason_of(content_type: str, data: bytes, **kwargs: Any) -> WireReason:
    with pytest.raises(WireError) as info:
        decode_body(content_type, data, **kwargs)
    return info.value.reason


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(MIN_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(st.characters(codec="utf-8")), children, max_size=5)
    ),
    max_leaves=30,
)


# ----------------------------------------------------------------------------------------------
# Round trips


@given(json_values)
def test_round_trip_both_encodings(value: Any) -> None:
    for content_type in (JSON, CBOR):
        assert decode_body(content_type, encode_body(value, content_type)) == value


def test_cbor_encoding_is_deterministic() -> None:
    assert encode_body({"b": 1, "a": [True, None]}, CBOR) == encode_body(
        {"a": [True, None], "b": 1}, CBOR
    )


def test_json_encoding_is_canonical() -> None:
    assert encode_body({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_content_type_parameters_and_case_are_ignored() -> None:
    data = cbor2.dumps({"a": 1})
    assert decode_body("Application/CBOR; charset=binary", data) == {"a": 1}
    assert decode_body("application/json; charset=utf-8", b'{"a":1}') == {"a": 1}


def test_missing_or_other_content_type_is_read_as_json() -> None:
    assert decode_body(None, b'{"a":1}') == {"a": 1}
    assert decode_body("text/plain", b"[1]") == [1]
    assert reason_of("text/plain", cbor2.dumps({"a": 1})) in {
        WireReason.MALFORMED,
        WireReason.NOT_UTF8,
    }


def test_encoding_refuses_what_decoding_refuses() -> None:
    for content_type in (JSON, CBOR):
        with pytest.raises(WireError) as info:
            encode_body({"a": 1.5}, content_type)
        assert info.value.reason is WireReason.FLOAT
        with pytest.raises(WireError) as info:
            encode_body({"a": 2**53}, content_type)
        assert info.value.reason is WireReason.INTEGER_OUT_OF_RANGE
        with pytest.raises(WireError) as info:
            encode_body({"a": b"x"}, content_type)
        assert info.value.reason is WireReason.MALFORMED
    with pytest.raises(WireError) as info:
        encode_body({}, "application/xml")
    assert info.value.reason is WireReason.UNSUPPORTED_MEDIA_TYPE


# ----------------------------------------------------------------------------------------------
# Limits common to both


def test_size_limit_is_checked_before_decoding() -> None:
    assert reason_of(JSON, b"[" + b" " * 100 + b"]", max_bytes=50) is WireReason.TOO_LARGE
    assert reason_of(CBOR, cbor2.dumps("x" * 100), max_bytes=50) is WireReason.TOO_LARGE
    assert decode_body(CBOR, cbor2.dumps("x" * 40), max_bytes=50) == "x" * 40


def test_depth_limit() -> None:
    nested: Any = 1
    for _ in range(5):
        nested = [nested]
    assert decode_body(CBOR, cbor2.dumps(nested), max_depth=5) == nested
    assert decode_body(JSON, encode_body(nested), max_depth=5) == nested
    assert reason_of(CBOR, cbor2.dumps([nested]), max_depth=5) is WireReason.TOO_DEEP
    assert reason_of(JSON, encode_body([nested]), max_depth=5) is WireReason.TOO_DEEP
    # An empty container at the limit is still one level too many.
    assert reason_of(CBOR, cbor2.dumps([[[]]]), max_depth=2) is WireReason.TOO_DEEP


def test_default_depth_limit_refuses_a_deep_bomb() -> None:
    data = b"\x81" * 100_000 + b"\x01"
    assert reason_of(CBOR, data) is WireReason.TOO_DEEP


def test_decode_body_object_needs_an_object() -> None:
    assert decode_body_object(CBOR, cbor2.dumps({"a": []})) == {"a": []}
    for content_type, data in ((JSON, b"[]"), (CBOR, cbor2.dumps([1]))):
        with pytest.raises(WireError) as info:
            decode_body_object(content_type, data)
        assert info.value.reason is WireReason.NOT_OBJECT


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", WireReason.MALFORMED),
        (b"{", WireReason.MALFORMED),
        (b'{"a":1.0}', WireReason.FLOAT),
        (b'{"a":NaN}', WireReason.MALFORMED),
        (b'{"a":1,"a":2}', WireReason.DUPLICATE_KEY),
        (b'{"a":9007199254740992}', WireReason.INTEGER_OUT_OF_RANGE),
        (b'"\xff"', WireReason.NOT_UTF8),
    ],
)
def test_strict_json(data: bytes, reason: WireReason) -> None:
    assert reason_of(JSON, data) is reason


# ----------------------------------------------------------------------------------------------
# Strict CBOR

CBOR_CASES = [
    # duplicates: {"a": 1, "a": 2}
    ("a2616101616102", WireReason.DUPLICATE_KEY),
    # indefinite lengths: array, map, text, bytes; a stray break
    ("9f01ff", WireReason.INDEFINITE_LENGTH),
    ("bf616101ff", WireReason.INDEFINITE_LENGTH),
    ("7f6161ff", WireReason.INDEFINITE_LENGTH),
    ("5f4101ff", WireReason.INDEFINITE_LENGTH),
    ("ff", WireReason.INDEFINITE_LENGTH),
    # tags, including those cbor2 would decode silently into JSON-looking values
    ("c24101", WireReason.TAG),  # bignum 1
    ("d81c8101", WireReason.TAG),  # shareable [1]
    ("d9d9f701", WireReason.TAG),  # self-describe 1
    ("c11a514b67b0", WireReason.TAG),  # epoch datetime
    ("d64101", WireReason.TAG),  # tag 22 (MSC4224 base64 hint)
    ("a16161c101", WireReason.TAG),  # nested in a map value
    # floats: half, single, double; NaN and infinity are floats too
    ("f93c00", WireReason.FLOAT),
    ("fa3f800000", WireReason.FLOAT),
    ("fb3ff0000000000000", WireReason.FLOAT),
    ("f97e00", WireReason.FLOAT),
    ("f97c00", WireReason.FLOAT),
    # byte strings, as values and as keys
    ("4101", WireReason.BYTE_STRING),
    ("a1416101", WireReason.NON_TEXT_KEY),
    # other simple values
    ("f7", WireReason.SIMPLE_VALUE),  # undefined
    ("f0", WireReason.SIMPLE_VALUE),  # simple(16)
    ("f820", WireReason.SIMPLE_VALUE),  # simple(32)
    # non-text keys
    ("a10101", WireReason.NON_TEXT_KEY),
    ("a1f501", WireReason.NON_TEXT_KEY),
    ("a1810101", WireReason.NON_TEXT_KEY),
    # integer range (+/-(2**53-1))
    ("1b0020000000000000", WireReason.INTEGER_OUT_OF_RANGE),
    ("3b001fffffffffffff", WireReason.INTEGER_OUT_OF_RANGE),
    ("1bffffffffffffffff", WireReason.INTEGER_OUT_OF_RANGE),
    # truncation, lies about lengths, reserved bits, trailing bytes
    ("", WireReason.MALFORMED),
    ("82 01", WireReason.MALFORMED),
    ("9b00000000ffffffff", WireReason.MALFORMED),
    ("7a7fffffff61", WireReason.MALFORMED),
    ("19 01", WireReason.MALFORMED),
    ("1c", WireReason.MALFORMED),
    ("fc", WireReason.MALFORMED),
    ("0101", WireReason.MALFORMED),
    # text that is not UTF-8
    ("62c328", WireReason.NOT_UTF8),
]


@pytest.mark.parametrize(("hex_data", "reason"), CBOR_CASES)
def test_strict_cbor(hex_data: str, reason: WireReason) -> None:
    assert reason_of(CBOR, bytes.fromhex(hex_data.replace(" ", ""))) is reason


def test_cbor_integer_bounds_are_inclusive() -> None:
    assert decode_cbor(bytes.fromhex("1b001fffffffffffff")) == MAX_SAFE_INTEGER
    assert decode_cbor(bytes.fromhex("3b001ffffffffffffe")) == MIN_SAFE_INTEGER


def test_cbor_accepts_non_shortest_heads() -> None:
    # RFC 8949 well-formedness allows them; we do not require deterministic encoding.
    assert decode_cbor(bytes.fromhex("1801")) == 1
    assert decode_cbor(bytes.fromhex("a1780161 f5".replace(" ", ""))) == {"a": True}


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_cbor_decoder_raises_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_body(CBOR, data)


@settings(max_examples=300)
@given(json_values, st.data())
def test_mutated_cbor_raises_only_wire_error(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode_body(value, CBOR))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    try:
        result = decode_body(CBOR, bytes(encoded))
    except WireError:
        return
    # Whatever is accepted is a valid Matrix JSON value and survives re-encoding.
    assert decode_body(JSON, encode_body(result)) == result


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_json_decoder_raises_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_body(JSON, data)


# ----------------------------------------------------------------------------------------------
# Negotiation


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        ("", JSON),
        ("application/json", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("application/cbor", CBOR),
        ("application/cbor, application/json", CBOR),
        ("application/json, application/cbor;q=0.5", JSON),
        ("application/json;q=0.5, application/cbor", CBOR),
        ("application/cbor;q=0", JSON),
        ("Application/CBOR", CBOR),
        ("application/cbor;q=2", JSON),  # an invalid q-value drops the entry
        ("garbage, ;;;, application/cbor", CBOR),
        ("application/cbor" + " " * 2000, JSON),  # too long to parse
    ],
)
def test_choose_response_type(accept: str | None, chosen: str) -> None:
    assert choose_response_type(accept) == chosen


def test_parse_accept() -> None:
    assert parse_accept("text/html;level=1;q=0.3, application/json") == {
        "text/html": 0.3,
        "application/json": 1.0,
    }


def test_build_accept_round_trips_through_negotiation() -> None:
    assert choose_response_type(build_accept(read_cbor=True)) == CBOR
    assert choose_response_type(build_accept(read_cbor=False)) == JSON
