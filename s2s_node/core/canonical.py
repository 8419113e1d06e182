"""Canonical JSON and unpadded base64, as the Matrix spec defines them.

Owns: encoding values to canonical JSON bytes, strictly decoding untrusted JSON text, and the
unpadded base64 alphabets (standard and URL-safe). Must not: know about events, keys or rooms.

Spec: appendices, "Canonical JSON" and "Unpadded Base64"; room versions >= 6 enforce the value
rules (integers only, within +/-(2**53 - 1)).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from typing import Any, TypeAlias

# A JSON value as Matrix allows it in events: no floats.
JsonValue: TypeAlias = bool | int | str | list["JsonValue"] | dict[str, "JsonValue"] | None
# Event objects are read field by field with checks; `Any` values keep that code readable.
JsonDict: TypeAlias = dict[str, Any]

# Canonical JSON's integer range (room versions >= 6).
MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53 - 1)

# Nesting limit for untrusted JSON. Matrix events are at most 64 KiB; real events nest fewer
# than ten levels. 64 keeps recursive walks far below Python's recursion limit.
MAX_JSON_DEPTH = 64


class CanonicalJsonReason(enum.Enum):
    """Why a value or a text is not acceptable as (canonical) JSON."""

    NOT_JSON = "not_json"
    NOT_UTF8 = "not_utf8"
    FLOAT = "float"
    INTEGER_OUT_OF_RANGE = "integer_out_of_range"
    NON_FINITE = "non_finite"
    DUPLICATE_KEY = "duplicate_key"
    TOO_DEEP = "too_deep"
    BAD_TYPE = "bad_type"
    NOT_OBJECT = "not_object"


class CanonicalJsonError(ValueError):
    """A value cannot be encoded canonically, or a text is not strict JSON."""

    def __init__(self, reason: CanonicalJsonReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class Base64Error(ValueError):
    """A string is not unpadded base64 of the expected alphabet."""


# ----------------------------------------------------------------------------------------------
# Encoding


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
)


def check_canonical_value(value: object, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `CanonicalJsonError` unless `value` is a JSON value that canonical JSON accepts."""
    _check_value(value, max_depth)


def _check_value(value: object, depth_left: int) -> None:
    if depth_left < 0:
        raise CanonicalJsonError(CanonicalJsonReason.TOO_DEEP, "value nests too deeply")
    if value is None or value is True or value is False or isinstance(value, str):
        return
    if isinstance(value, int):
        if not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalJsonError(
                CanonicalJsonReason.INTEGER_OUT_OF_RANGE, f"{value} is outside +/-(2**53-1)"
            )
        return
    if isinstance(value, float):
        raise CanonicalJsonError(CanonicalJsonReason.FLOAT, f"{value!r} is a float")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJsonError(
                    CanonicalJsonReason.BAD_TYPE, f"object key {key!r} is not a string"
                )
            _check_value(item, depth_left - 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, depth_left - 1)
        return
    raise CanonicalJsonError(
        CanonicalJsonReason.BAD_TYPE, f"{type(value).__name__} is not a JSON type"
    )


def encode_canonical_json(value: object) -> bytes:
    """Encode `value` as canonical JSON: sorted keys by code point, no spaces, UTF-8.

    The value is checked first (no floats, integers in range, bounded nesting).
    """
    check_canonical_value(value)
    return _ENCODER.encode(value).encode("utf-8")


def encode_canonical_json_trusted(value: object) -> bytes:
    """Encode a value already known to be valid (from `parse_json` or our own builders).

    Skips the value check: the hot path for hashing and signing events whose values came
    through the strict decoder.
    """
    return _ENCODER.encode(value).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Strict decoding of untrusted JSON


def _reject_float(text: str) -> object:
    raise CanonicalJsonError(CanonicalJsonReason.FLOAT, f"{text} is not an integer")


def _reject_constant(text: str) -> object:
    raise CanonicalJsonError(CanonicalJsonReason.NON_FINITE, f"{text} is not JSON")


def _parse_int(text: str) -> int:
    if len(text) > 17:  # "-9007199254740991" is 17 characters; longer ones cannot fit
        raise CanonicalJsonError(
            CanonicalJsonReason.INTEGER_OUT_OF_RANGE, f"{text[:20]} is outside +/-(2**53-1)"
        )
    value = int(text)
    if not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise CanonicalJsonError(
            CanonicalJsonReason.INTEGER_OUT_OF_RANGE, f"{text} is outside +/-(2**53-1)"
        )
    return value


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise CanonicalJsonError(
                    CanonicalJsonReason.DUPLICATE_KEY, f"duplicate key {key!r}"
                )
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_to_dict,
    parse_float=_reject_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
)


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """True if brackets outside strings nest deeper than `limit` (cheap pre-scan)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def parse_json(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> JsonValue:
    """Decode untrusted JSON text strictly.

    Rejects (with `CanonicalJsonError`): invalid UTF-8, syntax errors, duplicate object keys,
    numbers with a fraction or exponent, integers outside +/-(2**53-1), NaN/Infinity, and
    nesting deeper than `max_depth`.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalJsonError(CanonicalJsonReason.NOT_UTF8, str(exc)) from None
    else:
        text = data
    if _nesting_depth_exceeds(text, max_depth):
        raise CanonicalJsonError(
            CanonicalJsonReason.TOO_DEEP, f"JSON nests deeper than {max_depth} levels"
        )
    try:
        value: JsonValue = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise CanonicalJsonError(CanonicalJsonReason.NOT_JSON, str(exc)) from None
    except RecursionError:
        raise CanonicalJsonError(CanonicalJsonReason.TOO_DEEP, "JSON nests too deeply") from None
    return value


def parse_json_object(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> JsonDict:
    """`parse_json`, and the top level must be an object."""
    value = parse_json(data, max_depth=max_depth)
    if not isinstance(value, dict):
        raise CanonicalJsonError(CanonicalJsonReason.NOT_OBJECT, "top level is not an object")
    return value


# ----------------------------------------------------------------------------------------------
# Unpadded base64


def encode_base64(data: bytes) -> str:
    """Standard alphabet, no padding."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def encode_base64_urlsafe(data: bytes) -> str:
    """URL-safe alphabet (`-`, `_`), no padding (event IDs, v12 room IDs)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str, altchars: bytes | None) -> bytes:
    if not isinstance(text, str):
        raise Base64Error("base64 value is not a string")
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2 or len(stripped) % 4 == 1:
        raise Base64Error(f"{text[:16]!r}... has an impossible length")
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        # validate=True: only alphabet characters. Padding bits in the last character are
        # accepted whatever they are, as the spec's own test seed requires.
        return base64.b64decode(padded.encode("ascii"), altchars=altchars, validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Base64Error(f"{text[:16]!r} is not valid base64") from None


def decode_base64(text: str) -> bytes:
    """Decode standard-alphabet base64, with or without padding."""
    return _decode(text, None)


def decode_base64_urlsafe(text: str) -> bytes:
    """Decode URL-safe base64, with or without padding."""
    return _decode(text, b"-_")
