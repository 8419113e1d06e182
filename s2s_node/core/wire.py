"""Request and response bodies on the wire: strict JSON and CBOR decoding, encoding, negotiation.

Owns: turning an untrusted HTTP body (given its `Content-Type`) into a `JsonValue`, encoding a
`JsonValue` as JSON or CBOR, and choosing a response encoding from an `Accept` header. Must not:
do I/O, know about HTTP status codes (net.errors maps `WireError` to them), or hash/sign bodies
(what is hashed and signed is always canonical JSON of the decoded value, DESIGN.md section 7).

CBOR (RFC 8949) is accepted only in the subset that maps one-to-one onto Matrix JSON: maps with
text keys, arrays, text strings, integers within +/-(2**53-1), true, false and null. Everything
else is refused with a reason: duplicate map keys, indefinite lengths, any tag, floats (Matrix
has none), byte strings (DECISION: refused rather than mapped to base64 text, because the JSON
side has no byte type and a silent mapping would make two encodings of one value), other simple
values (`undefined`, simple(n)), non-text map keys, nesting beyond a depth limit, and trailing
bytes after the top-level item. The raw bytes are scanned for all of this first (cbor2 decodes
several tags natively -- bignums, shared values, self-describe -- without telling its caller, and
accepts trailing data), then cbor2 builds the values with duplicate keys and indefinite lengths
switched off as a second line.

Spec: DESIGN.md section 7 (CBOR when the peer advertises `enc=cbor`); MSC3079/MSC4224 for the
negotiation (answer in CBOR only when the request's `Accept` includes `application/cbor`);
canonical JSON value rules (appendices, "Canonical JSON").
"""

from __future__ import annotations

import enum
import re
from typing import Any

import cbor2

from s2s_node.core.canonical import (
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    CanonicalJsonReason,
    JsonDict,
    JsonValue,
    check_canonical_value,
    encode_canonical_json,
    parse_json,
)

JSON_CONTENT_TYPE = "application/json"
CBOR_CONTENT_TYPE = "application/cbor"

# Largest body accepted by default: 4 MiB. A federation transaction is at most 50 PDUs of
# 64 KiB plus 100 EDUs; 4 MiB covers that with room, and bounds what one request can allocate.
MAX_BODY_BYTES = 4 * 1024 * 1024

# Accept headers longer than this are not parsed (a real one is a few dozen bytes).
MAX_ACCEPT_LENGTH = 1024
# RFC 9110 section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


class WireReason(enum.Enum):
    """Why a body cannot be decoded (or a value cannot be encoded) for the wire."""

    TOO_LARGE = "too_large"  # more bytes than the limit
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # encoding asked for an unknown type
    MALFORMED = "malformed"  # not JSON / not well-formed CBOR, truncated, trailing bytes
    NOT_UTF8 = "not_utf8"  # text that is not valid UTF-8
    DUPLICATE_KEY = "duplicate_key"
    INDEFINITE_LENGTH = "indefinite_length"  # CBOR additional information 31
    TAG = "tag"  # CBOR major type 6: no tag is accepted
    FLOAT = "float"
    BYTE_STRING = "byte_string"  # CBOR major type 2
    SIMPLE_VALUE = "simple_value"  # CBOR simple values other than false/true/null
    NON_TEXT_KEY = "non_text_key"
    INTEGER_OUT_OF_RANGE = "integer_out_of_range"
    TOO_DEEP = "too_deep"
    NOT_OBJECT = "not_object"  # the top level must be an object (request bodies)


class WireError(ValueError):
    """A body is not acceptable JSON/CBOR, or a value cannot be put on the wire."""

    def __init__(self, reason: WireReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------------
# Media types


def parse_media_type(content_type: str | None) -> str:
    """The lower-case `type/subtype` of a `Content-Type` value ("" when absent)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_cbor_media_type(content_type: str | None) -> bool:
    """True if a `Content-Type` value names CBOR (parameters ignored)."""
    return parse_media_type(content_type) == CBOR_CONTENT_TYPE


def parse_accept(accept: str | None) -> dict[str, float]:
    """Media ranges of an `Accept` header with their quality (RFC 9110 section 12.5.1).

    Lenient by design: malformed entries or q-values are skipped, never an error (a bad
    `Accept` must not break a request; the answer then falls back to JSON). Names are lower
    case; a range listed twice keeps its highest quality.
    """
    ranges: dict[str, float] = {}
    if not accept or len(accept) > MAX_ACCEPT_LENGTH:
        return ranges
    for entry in accept.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        media = media.lower()
        if media.count("/") != 1:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                quality = _parse_quality(value.strip())
        if quality >= 0:
            ranges[media] = max(quality, ranges.get(media, 0.0))
    return ranges


def _parse_quality(text: str) -> float:
    # RFC 9110 qvalue; anything else makes the entry be skipped (-1).
    return float(text) if _QVALUE.fullmatch(text) else -1.0


def choose_response_type(accept: str | None) -> str:
    """`application/cbor` if the request's `Accept` lists it at least as high as JSON, else JSON.

    Only an explicit `application/cbor` counts: `*/*` or `application/*` never selects CBOR, so
    a plain Matrix client or `curl` always gets JSON (MSC4224's rule).
    """
    ranges = parse_accept(accept)
    cbor_q = ranges.get(CBOR_CONTENT_TYPE, 0.0)
    if cbor_q <= 0.0:
        return JSON_CONTENT_TYPE
    json_q = max(
        ranges.get(JSON_CONTENT_TYPE, 0.0), ranges.get("application/*", 0.0), ranges.get("*/*", 0.0)
    )
    return CBOR_CONTENT_TYPE if cbor_q >= json_q else JSON_CONTENT_TYPE


def build_accept(*, read_cbor: bool) -> str:
    """The `Accept` header that says what we can read."""
    return f"{CBOR_CONTENT_TYPE}, {JSON_CONTENT_TYPE}" if read_cbor else JSON_CONTENT_TYPE


# ----------------------------------------------------------------------------------------------
# Decoding

_JSON_REASONS = {
    CanonicalJsonReason.NOT_JSON: WireReason.MALFORMED,
    CanonicalJsonReason.NON_FINITE: WireReason.MALFORMED,
    CanonicalJsonReason.NOT_UTF8: WireReason.NOT_UTF8,
    CanonicalJsonReason.FLOAT: WireReason.FLOAT,
    CanonicalJsonReason.INTEGER_OUT_OF_RANGE: WireReason.INTEGER_OUT_OF_RANGE,
    CanonicalJsonReason.DUPLICATE_KEY: WireReason.DUPLICATE_KEY,
    CanonicalJsonReason.TOO_DEEP: WireReason.TOO_DEEP,
    CanonicalJsonReason.BAD_TYPE: WireReason.MALFORMED,
    CanonicalJsonReason.NOT_OBJECT: WireReason.NOT_OBJECT,
}


def decode_body(
    content_type: str | None,
    data: bytes,
    *,
    max_bytes: int = MAX_BODY_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> JsonValue:
    """Decode an untrusted body: CBOR when `content_type` is `application/cbor`, else JSON.

    DECISION: any other (or no) `Content-Type` is read as JSON, as Matrix servers do; a body
    that is not JSON then fails with `MALFORMED`. Raises `WireError` and nothing else.
    """
    if len(data) > max_bytes:
        raise WireError(WireReason.TOO_LARGE, f"body of {len(data)} bytes exceeds {max_bytes}")
    if is_cbor_media_type(content_type):
        return decode_cbor(data, max_depth=max_depth)
    try:
        return parse_json(data, max_depth=max_depth)
    except CanonicalJsonError as exc:
        raise WireError(_JSON_REASONS[exc.reason], exc.detail) from None


def decode_body_object(
    content_type: str | None,
    data: bytes,
    *,
    max_bytes: int = MAX_BODY_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> JsonDict:
    """`decode_body`, and the top level must be an object (every Matrix request body is one)."""
    value = decode_body(content_type, data, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(value, dict):
        raise WireError(WireReason.NOT_OBJECT, "the body's top level is not an object")
    return value


def decode_cbor(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> JsonValue:
    """Decode one CBOR item in the Matrix-JSON subset (see the module docstring)."""
    data = bytes(data)
    check_cbor_structure(data, max_depth=max_depth)
    try:
        value: JsonValue = cbor2.loads(
            data,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            max_depth=max_depth,
        )
    # The structure is already checked; what cbor2 can still refuse is a duplicate key or text
    # that is not UTF-8. Any exception of a third-party decoder on untrusted input is a refusal.
    except Exception:
        raise WireError(_classify_cbor_failure(data, max_depth), "CBOR refused") from None
    return value


def _classify_cbor_failure(data: bytes, max_depth: int) -> WireReason:
    # Error path only: decode again allowing duplicates; if that works, duplicates were the cause.
    try:
        cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=True, max_depth=max_depth)
    except Exception:
        return WireReason.NOT_UTF8
    return WireReason.DUPLICATE_KEY


# CBOR major types (RFC 8949 section 3.1).
_MAJOR_UINT, _MAJOR_NEGINT, _MAJOR_BYTES, _MAJOR_TEXT = 0, 1, 2, 3
_MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG, _MAJOR_SIMPLE = 4, 5, 6, 7
# Additional information of major type 7 that we accept: false, true, null.
_FALSE_TRUE_NULL = frozenset({20, 21, 22})
_ARGUMENT_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}
_INDEFINITE = 31


def check_cbor_structure(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `WireError` unless `data` is exactly one well-formed CBOR item of the JSON subset.

    Walks item heads without building values (strings are skipped by length), with an explicit
    stack, so hostile input cannot recurse or make anything be allocated from a declared length.
    """
    n = len(data)
    i = 0
    # Per open container: items still expected (a map expects 2 per pair), and whether a map.
    remaining: list[int] = []
    is_map: list[bool] = []
    while True:
        if i >= n:
            raise WireError(WireReason.MALFORMED, "CBOR ends in the middle of an item")
        initial = data[i]
        i += 1
        major = initial >> 5
        info = initial & 0x1F
        if remaining and is_map[-1] and remaining[-1] % 2 == 0 and major != _MAJOR_TEXT:
            raise WireError(WireReason.NON_TEXT_KEY, f"map key of major type {major}")
        # 1. The argument: in the initial byte, or in the 1/2/4/8 bytes after it.
        if major == _MAJOR_SIMPLE:
            if info in _FALSE_TRUE_NULL:
                _close_items(remaining, is_map)
                if not remaining:
                    break
                continue
            if info in (25, 26, 27):
                raise WireError(WireReason.FLOAT, "CBOR float")
            if info == _INDEFINITE:
                raise WireError(WireReason.INDEFINITE_LENGTH, "CBOR break outside an item")
            if info in (28, 29, 30):
                raise WireError(WireReason.MALFORMED, "reserved CBOR additional information")
            raise WireError(WireReason.SIMPLE_VALUE, f"CBOR simple value (info {info})")
        if info < 24:
            argument = info
        elif info in _ARGUMENT_BYTES:
            size = _ARGUMENT_BYTES[info]
            if i + size > n:
                raise WireError(WireReason.MALFORMED, "CBOR ends inside an item head")
            argument = int.from_bytes(data[i : i + size], "big")
            i += size
        elif info == _INDEFINITE:
            raise WireError(WireReason.INDEFINITE_LENGTH, "indefinite-length CBOR item")
        else:
            raise WireError(WireReason.MALFORMED, "reserved CBOR additional information")
        # 2. The item itself.
        if major == _MAJOR_UINT:
            if argument > MAX_SAFE_INTEGER:
                raise WireError(WireReason.INTEGER_OUT_OF_RANGE, "integer above 2**53-1")
        elif major == _MAJOR_NEGINT:
            if argument > MAX_SAFE_INTEGER - 1:  # the value is -1 - argument
                raise WireError(WireReason.INTEGER_OUT_OF_RANGE, "integer below -(2**53-1)")
        elif major == _MAJOR_TEXT:
            if argument > n - i:
                raise WireError(WireReason.MALFORMED, "CBOR text longer than the data")
            i += argument
        elif major in (_MAJOR_ARRAY, _MAJOR_MAP):
            items = argument * 2 if major == _MAJOR_MAP else argument
            if items > n - i:  # every item takes at least one byte
                raise WireError(WireReason.MALFORMED, "CBOR container longer than the data")
            if items:
                if len(remaining) >= max_depth:
                    raise WireError(WireReason.TOO_DEEP, f"CBOR nests deeper than {max_depth}")
                remaining.append(items)
                is_map.append(major == _MAJOR_MAP)
                continue
            if len(remaining) >= max_depth:
                raise WireError(WireReason.TOO_DEEP, f"CBOR nests deeper than {max_depth}")
        elif major == _MAJOR_BYTES:
            raise WireError(WireReason.BYTE_STRING, "CBOR byte string")
        else:  # _MAJOR_TAG
            raise WireError(WireReason.TAG, f"CBOR tag {argument}")
        # 3. A complete item: count it in its container, closing finished containers.
        _close_items(remaining, is_map)
        if not remaining:
            break
    if i != n:
        raise WireError(WireReason.MALFORMED, f"{n - i} bytes after the CBOR item")


def _close_items(remaining: list[int], is_map: list[bool]) -> None:
    while remaining:
        remaining[-1] -= 1
        if remaining[-1]:
            return
        remaining.pop()
        is_map.pop()


# ----------------------------------------------------------------------------------------------
# Encoding


def encode_body(value: Any, content_type: str = JSON_CONTENT_TYPE) -> bytes:
    """Encode a JSON value as canonical JSON or as CBOR (`content_type` picks which).

    The value is checked first (no floats, integers in range, text keys, bounded depth), so we
    never send what we would refuse. Raises `WireError`.
    """
    media = parse_media_type(content_type)
    try:
        if media == JSON_CONTENT_TYPE:
            return encode_canonical_json(value)
        if media == CBOR_CONTENT_TYPE:
            check_canonical_value(value)
            # canonical=True: map keys sorted (length-first; for text keys this is the RFC 8949
            # core-deterministic order too), so one value has one encoding.
            encoded: bytes = cbor2.dumps(value, canonical=True)
            return encoded
    except CanonicalJsonError as exc:
        raise WireError(_JSON_REASONS[exc.reason], exc.detail) from None
    raise WireError(WireReason.UNSUPPORTED_MEDIA_TYPE, f"cannot encode as {media!r}")
