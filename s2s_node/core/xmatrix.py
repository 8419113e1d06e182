"""X-Matrix request authentication: signing requests, parsing and verifying the header.

Owns: the JSON object a federation request signs (`{method, uri, origin, destination,
content?}`), formatting the `Authorization: X-Matrix ...` header, parsing it from untrusted text
(RFC 9110 auth-params) and verifying it against the origin's key. Must not: do I/O, read HTTP
requests (the shell passes method, raw request target, decoded body and header values), or
choose HTTP status codes (net.errors maps `XMatrixError` to 401 M_UNAUTHORIZED).

Keys come from an injected `KeyLookup`; the node passes `signing.derived_keys`, so an origin that
is not a node identifier has no key and is refused (DESIGN.md section 3).

Spec: server-server API "Request Authentication" (matrix-digest section 8.1); RFC 9110 section
11.4 (credentials, auth-param) and section 5.6 (token, quoted-string, lists).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from s2s_node.core.canonical import (
    CanonicalJsonError,
    JsonDict,
    encode_base64,
    encode_canonical_json,
)
from s2s_node.core.ids import ServerName, is_valid_server_name
from s2s_node.core.keys import SigningKey
from s2s_node.core.signing import (
    KeyLookup,
    SignatureError,
    SignatureReason,
    check_json_signature,
)

SCHEME = "X-Matrix"

# An Authorization header longer than this is refused unparsed: a real one is ~200 bytes
# (a 255-byte origin and destination, a key ID and an 86-character signature).
MAX_HEADER_LENGTH = 2048
# At most this many X-Matrix headers are looked at (the spec allows one per signing key; we
# publish one key).
MAX_HEADERS = 4


class XMatrixReason(enum.Enum):
    """Why a request's X-Matrix authentication is refused (every one is a 401)."""

    MISSING = "missing"  # no Authorization header
    WRONG_SCHEME = "wrong_scheme"  # Authorization headers, none of them X-Matrix
    MALFORMED = "malformed"  # not parseable as auth-params, or inconsistent headers
    MISSING_PARAM = "missing_param"  # no origin, key or sig
    BAD_ORIGIN = "bad_origin"  # origin is not a server name
    MISSING_DESTINATION = "missing_destination"  # see the DEVIATION in check_request_auth
    WRONG_DESTINATION = "wrong_destination"  # destination is not this node
    UNKNOWN_KEY = "unknown_key"  # no key known for (origin, key): e.g. not an identifier
    BAD_SIGNATURE = "bad_signature"  # not base64 of 64 bytes, or does not verify


class XMatrixError(ValueError):
    """A federation request is not (validly) authenticated with X-Matrix."""

    def __init__(self, reason: XMatrixReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class XMatrixAuthorization:
    """The parameters of one X-Matrix header (`destination` is None when absent)."""

    origin: str
    destination: str | None
    key: str
    sig: str


# ----------------------------------------------------------------------------------------------
# Signing


def build_request_json(
    *, method: str, uri: str, origin: str, destination: str, content: Any = None
) -> JsonDict:
    """The object a request signs; `content` (the decoded body) only when there is a body."""
    # 1. method in upper case; uri exactly as on the request line (path and query).
    request: JsonDict = {
        "method": method.upper(),
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        request["content"] = content
    return request


def sign_request(
    key: SigningKey,
    *,
    method: str,
    uri: str,
    destination: str,
    content: Any = None,
    origin: str | None = None,
) -> str:
    """The `Authorization` header value for a request (origin defaults to the key's identifier).

    Raises `CanonicalJsonError` if `content` is not a canonical-JSON value.
    """
    origin = key.identifier if origin is None else origin
    request = build_request_json(
        method=method, uri=uri, origin=origin, destination=destination, content=content
    )
    # 2. The JSON-signing algorithm: the object has no `signatures`/`unsigned` yet.
    sig = encode_base64(key.sign(encode_canonical_json(request)))
    # 3. The header.
    return format_authorization(
        XMatrixAuthorization(origin=origin, destination=destination, key=key.key_id, sig=sig)
    )


def format_authorization(auth: XMatrixAuthorization) -> str:
    """Format a header as the spec asks senders to: one space, lower-case names, no escapes."""
    params = [("origin", auth.origin)]
    if auth.destination is not None:
        params.append(("destination", auth.destination))
    params += [("key", auth.key), ("sig", auth.sig)]
    for name, value in params:
        if any(c in value for c in '"\\') or not all(0x20 <= ord(c) < 0x7F for c in value):
            raise XMatrixError(XMatrixReason.MALFORMED, f"{name} cannot be sent unescaped")
    return f"{SCHEME} " + ",".join(f'{name}="{value}"' for name, value in params)


# ----------------------------------------------------------------------------------------------
# Parsing (RFC 9110 section 11.4)

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Bare values: tokens, plus ':' (the spec asks receivers to accept it in server names and key
# IDs) and '/', '=' (DECISION: unquoted base64 signatures are accepted too, as Synapse does).
_BARE_VALUE_CHARS = _TCHAR | frozenset(":/=")
_WHITESPACE = " \t"


def _is_qdtext(char: str) -> bool:
    # qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
    code = ord(char)
    return (
        char in _WHITESPACE
        or code == 0x21
        or 0x23 <= code <= 0x5B
        or 0x5D <= code <= 0x7E
        or 0x80 <= code <= 0xFF
    )


def _is_quoted_pair_char(char: str) -> bool:
    # quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
    code = ord(char)
    return char in _WHITESPACE or 0x21 <= code <= 0x7E or 0x80 <= code <= 0xFF


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _read_token(text: str, i: int, chars: frozenset[str]) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] in chars:
        i += 1
    return text[start:i], i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; returns (value, index after it)."""
    out: list[str] = []
    i += 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(out), i + 1
        if char == "\\":
            if i + 1 >= len(text) or not _is_quoted_pair_char(text[i + 1]):
                raise XMatrixError(XMatrixReason.MALFORMED, "bad escape in a quoted value")
            out.append(text[i + 1])
            i += 2
            continue
        if not _is_qdtext(char):
            raise XMatrixError(XMatrixReason.MALFORMED, "control character in a quoted value")
        out.append(char)
        i += 1
    raise XMatrixError(XMatrixReason.MALFORMED, "unterminated quoted value")


def is_x_matrix(header: str) -> bool:
    """True if an Authorization header value uses the X-Matrix scheme (case-insensitive)."""
    scheme, _ = _read_token(header, 0, _TCHAR)
    return scheme.lower() == SCHEME.lower() and (
        len(header) == len(scheme) or header[len(scheme)] in _WHITESPACE
    )


def parse_auth_params(header: str) -> tuple[str, dict[str, str]]:
    """Split `scheme 1*SP #auth-param` into the scheme and its parameters (names lower case).

    Empty list elements are allowed (RFC 9110 section 5.6.1); a parameter named twice is
    refused (DECISION: two values for one name would be read differently by different servers).
    """
    if len(header) > MAX_HEADER_LENGTH:
        raise XMatrixError(XMatrixReason.MALFORMED, "Authorization header too long")
    scheme, i = _read_token(header, 0, _TCHAR)
    if not scheme:
        raise XMatrixError(XMatrixReason.MALFORMED, "no authentication scheme")
    params: dict[str, str] = {}
    if i == len(header):
        return scheme, params
    if header[i] not in _WHITESPACE:
        raise XMatrixError(XMatrixReason.MALFORMED, "no space after the scheme")
    i = _skip(header, i, _WHITESPACE)
    while True:
        # list separators: OWS "," OWS, empty elements allowed
        i = _skip(header, i, _WHITESPACE + ",")
        if i >= len(header):
            return scheme, params
        name, i = _read_token(header, i, _TCHAR)
        if not name:
            raise XMatrixError(XMatrixReason.MALFORMED, "expected a parameter name")
        i = _skip(header, i, _WHITESPACE)
        if i >= len(header) or header[i] != "=":
            raise XMatrixError(XMatrixReason.MALFORMED, f"parameter {name[:20]!r} has no value")
        i = _skip(header, i + 1, _WHITESPACE)
        if i < len(header) and header[i] == '"':
            value, i = _read_quoted(header, i)
        else:
            value, i = _read_token(header, i, _BARE_VALUE_CHARS)
            if not value:
                raise XMatrixError(XMatrixReason.MALFORMED, f"parameter {name[:20]!r} is empty")
        i = _skip(header, i, _WHITESPACE)
        if i < len(header) and header[i] != ",":
            raise XMatrixError(XMatrixReason.MALFORMED, "expected ',' between parameters")
        name = name.lower()
        if name in params:
            raise XMatrixError(XMatrixReason.MALFORMED, f"parameter {name[:20]!r} given twice")
        params[name] = value


def parse_authorization(header: str) -> XMatrixAuthorization:
    """Parse one X-Matrix header value; unknown parameters are ignored."""
    scheme, params = parse_auth_params(header)
    if scheme.lower() != SCHEME.lower():
        raise XMatrixError(XMatrixReason.WRONG_SCHEME, f"scheme {scheme[:20]!r} is not X-Matrix")
    for name in ("origin", "key", "sig"):
        if not params.get(name):
            raise XMatrixError(XMatrixReason.MISSING_PARAM, f"no {name} parameter")
    return XMatrixAuthorization(
        origin=params["origin"],
        destination=params.get("destination"),
        key=params["key"],
        sig=params["sig"],
    )


# ----------------------------------------------------------------------------------------------
# Verifying

_SIGNATURE_REASONS = {
    SignatureReason.UNKNOWN_KEY: XMatrixReason.UNKNOWN_KEY,
    SignatureReason.BAD_ENCODING: XMatrixReason.BAD_SIGNATURE,
    SignatureReason.BAD_SIGNATURE: XMatrixReason.BAD_SIGNATURE,
    SignatureReason.MISSING_SIGNATURE: XMatrixReason.MISSING_PARAM,
    SignatureReason.NO_SIGNATURES: XMatrixReason.MISSING_PARAM,
}


def check_request_auth(
    authorization: str | Sequence[str] | None,
    method: str,
    uri: str,
    content: Any,
    our_server_name: str,
    keys: KeyLookup,
) -> ServerName:
    """Verify a request's X-Matrix header(s); return the authenticated origin.

    `authorization` is the Authorization header value (or all of them, in order; non-X-Matrix
    ones are skipped), `uri` the raw request target, `content` the decoded body or None when the
    request has none. Raises `XMatrixError` and nothing else.
    """
    headers = [authorization] if isinstance(authorization, str) else list(authorization or ())
    if not headers:
        raise XMatrixError(XMatrixReason.MISSING, "no Authorization header")
    parsed = [parse_authorization(h) for h in headers[:MAX_HEADERS] if is_x_matrix(h)]
    if not parsed:
        raise XMatrixError(XMatrixReason.WRONG_SCHEME, "no X-Matrix Authorization header")
    first = parsed[0]
    if any((p.origin, p.destination) != (first.origin, first.destination) for p in parsed):
        raise XMatrixError(XMatrixReason.MALFORMED, "X-Matrix headers disagree")
    if not is_valid_server_name(first.origin):
        raise XMatrixError(XMatrixReason.BAD_ORIGIN, f"{first.origin[:60]!r} is not a server name")
    # DEVIATION: the spec says receivers should accept a request without `destination` (from
    # older servers). Every node sends it, and without it a signed request could be replayed at
    # another node, so it is required here (DESIGN.md section 7: "the destination must be this
    # node"). Pinned by test_xmatrix.py::test_missing_destination_is_refused.
    if first.destination is None:
        raise XMatrixError(XMatrixReason.MISSING_DESTINATION, "no destination parameter")
    if first.destination != our_server_name:
        raise XMatrixError(
            XMatrixReason.WRONG_DESTINATION, f"request is for {first.destination[:60]!r}"
        )
    request = build_request_json(
        method=method, uri=uri, origin=first.origin, destination=first.destination, content=content
    )
    signatures: dict[str, str] = {}
    for p in parsed:
        if p.key in signatures:
            raise XMatrixError(XMatrixReason.MALFORMED, f"key {p.key[:20]!r} given twice")
        signatures[p.key] = p.sig
    request["signatures"] = {first.origin: signatures}
    try:
        check_json_signature(request, first.origin, keys)
    except SignatureError as exc:
        raise XMatrixError(_SIGNATURE_REASONS[exc.reason], exc.detail) from None
    except CanonicalJsonError as exc:  # a content or uri that is not canonical JSON
        raise XMatrixError(XMatrixReason.MALFORMED, exc.detail) from None
    return ServerName(first.origin)
