"""The one table from typed errors to HTTP status codes and Matrix error codes.

Owns: `ERROR_TABLE` (exception class, optional reason) -> (status, errcode), `HttpError` for
shell code that must answer with a given status, and the Matrix error body
`{"errcode", "error"}`. Must not: decide anything about requests; the core raises typed errors
and never knows about HTTP (STYLE.md: "Exactly one table maps errors to HTTP status and Matrix
error codes").

Spec: client-server API "Standard error response" (the `errcode`/`error` body and the common
codes); server-server API "Request Authentication" (401 for X-Matrix failures).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from s2s_node.core.auth_errors import AuthError
from s2s_node.core.authchain import AuthChainError
from s2s_node.core.canonical import Base64Error, CanonicalJsonError, CanonicalJsonReason
from s2s_node.core.events import EventFormatError
from s2s_node.core.ids import IdError
from s2s_node.core.keys import IdentityError
from s2s_node.core.room import MissingEventsError, RoomMismatchError
from s2s_node.core.rules import UnsupportedRoomVersionError
from s2s_node.core.signing import SignatureError
from s2s_node.core.wire import WireError, WireReason
from s2s_node.core.xmatrix import XMatrixError

# Matrix error codes used by the node.
M_BAD_JSON = "M_BAD_JSON"
M_NOT_JSON = "M_NOT_JSON"
M_UNAUTHORIZED = "M_UNAUTHORIZED"
M_FORBIDDEN = "M_FORBIDDEN"
M_NOT_FOUND = "M_NOT_FOUND"
M_TOO_LARGE = "M_TOO_LARGE"
M_LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
M_UNRECOGNIZED = "M_UNRECOGNIZED"
M_INVALID_PARAM = "M_INVALID_PARAM"
M_MISSING_PARAM = "M_MISSING_PARAM"
M_UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
M_UNKNOWN = "M_UNKNOWN"
# Client API access tokens (client-server API "Client Authentication").
M_MISSING_TOKEN = "M_MISSING_TOKEN"
M_UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """An HTTP status and the Matrix `errcode` that goes with it."""

    status: int
    errcode: str


class HttpError(Exception):
    """Raised by shell code (routes) to answer with a given status, errcode and message.

    `extra` adds keys to the error body (e.g. the `rule` of a policy refusal, DESIGN.md 11).
    """

    def __init__(
        self, status: int, errcode: str, error: str, *, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = dict(extra or {})


_BAD_JSON = ErrorCode(400, M_BAD_JSON)
_NOT_JSON = ErrorCode(400, M_NOT_JSON)

# (exception class, reason or None) -> status and errcode. `None` is the class's default; a
# subclass not listed uses its nearest listed base class.
ERROR_TABLE: Mapping[tuple[type[BaseException], enum.Enum | None], ErrorCode] = {
    # Bodies
    (CanonicalJsonError, None): _BAD_JSON,
    (CanonicalJsonError, CanonicalJsonReason.NOT_JSON): _NOT_JSON,
    (CanonicalJsonError, CanonicalJsonReason.NOT_UTF8): _NOT_JSON,
    (CanonicalJsonError, CanonicalJsonReason.NON_FINITE): _NOT_JSON,
    (WireError, None): _BAD_JSON,
    (WireError, WireReason.MALFORMED): _NOT_JSON,
    (WireError, WireReason.NOT_UTF8): _NOT_JSON,
    (WireError, WireReason.TOO_LARGE): ErrorCode(413, M_TOO_LARGE),
    (WireError, WireReason.UNSUPPORTED_MEDIA_TYPE): ErrorCode(415, M_UNRECOGNIZED),
    (Base64Error, None): _BAD_JSON,
    # Request authentication: every X-Matrix failure is a 401 (spec 8.1).
    (XMatrixError, None): ErrorCode(401, M_UNAUTHORIZED),
    # Events and identifiers in a request
    (EventFormatError, None): _BAD_JSON,
    (SignatureError, None): ErrorCode(403, M_FORBIDDEN),
    (AuthError, None): ErrorCode(403, M_FORBIDDEN),
    (IdError, None): ErrorCode(400, M_INVALID_PARAM),
    (IdentityError, None): ErrorCode(400, M_INVALID_PARAM),
    (UnsupportedRoomVersionError, None): ErrorCode(400, M_UNSUPPORTED_ROOM_VERSION),
    (AuthChainError, None): ErrorCode(404, M_NOT_FOUND),
    # Rooms: an event citing events this node lacks, or of another room than the request's
    (MissingEventsError, None): ErrorCode(404, M_NOT_FOUND),
    (RoomMismatchError, None): ErrorCode(400, M_INVALID_PARAM),
}

INTERNAL_ERROR = ErrorCode(500, M_UNKNOWN)


def _reason_of(exc: BaseException) -> enum.Enum | None:
    for attribute in ("reason", "rule"):
        value = getattr(exc, attribute, None)
        if isinstance(value, enum.Enum):
            return value
    return None


def classify_error(exc: BaseException) -> ErrorCode | None:
    """The status and errcode of a typed error; None when the table does not know it."""
    if isinstance(exc, HttpError):
        return ErrorCode(exc.status, exc.errcode)
    reason = _reason_of(exc)
    for cls in type(exc).__mro__:
        found = ERROR_TABLE.get((cls, reason)) if reason is not None else None
        if found is None:
            found = ERROR_TABLE.get((cls, None))
        if found is not None:
            return found
    return None


def build_error_body(errcode: str, error: str, **extra: Any) -> dict[str, Any]:
    """The Matrix error body."""
    return {"errcode": errcode, "error": error, **extra}


def build_error_body_for(exc: BaseException) -> tuple[int, dict[str, Any]] | None:
    """Status and body for a typed error, or None when the table does not know it."""
    code = classify_error(exc)
    if code is None:
        return None
    if isinstance(exc, HttpError):
        return code.status, build_error_body(code.errcode, exc.error, **exc.extra)
    return code.status, build_error_body(code.errcode, str(exc))
