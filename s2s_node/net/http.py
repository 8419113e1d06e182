"""HTTP request and response values, and the handler type the server calls.

Owns: the frozen `Request` the server builds from h11 events (method, raw target, path, decoded
query, headers, body, remote address, path parameters filled in by the router) and the frozen
`Response` a handler returns, with builders for JSON/CBOR bodies and Matrix error bodies. Must
not: do I/O or know about routes.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from s2s_node.core.canonical import JsonValue
from s2s_node.core.wire import (
    JSON_CONTENT_TYPE,
    choose_response_type,
    decode_body,
    encode_body,
)
from s2s_node.net.errors import build_error_body

# Query strings with more parameters than this are refused (Matrix endpoints take a handful).
MAX_QUERY_FIELDS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One HTTP request, body read in full.

    `target` is the request target exactly as on the request line (the X-Matrix `uri`); `path`
    is its part before `?`, still percent-encoded; `query` holds percent-decoded pairs in order.
    Header names are lower case; values are the raw bytes decoded as Latin-1.
    """

    method: str
    target: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remote: tuple[str, int] | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The first value of a header (name case-insensitive), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def header_values(self, name: str) -> list[str]:
        """All values of a header, in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def query_value(self, name: str) -> str | None:
        """The first value of a query parameter, or None."""
        return next((value for key, value in self.query if key == name), None)

    def query_values(self, name: str) -> list[str]:
        """All values of a query parameter, in order (e.g. `v=10&v=11`)."""
        return [value for key, value in self.query if key == name]

    def decode_body(self) -> JsonValue:
        """The body decoded by its Content-Type (raises `WireError`)."""
        return decode_body(self.header("content-type"), self.body)


def parse_query(query: str) -> tuple[tuple[str, str], ...]:
    """Percent-decode a query string; `ValueError` when it is not UTF-8 or has too many fields."""
    if not query:
        return ()
    pairs = urllib.parse.parse_qsl(
        query,
        keep_blank_values=True,
        strict_parsing=False,
        errors="strict",
        max_num_fields=MAX_QUERY_FIELDS,
    )
    return tuple(pairs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What a handler answers. `Content-Length` and `Connection` are added by the server."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Response]]


def build_response(
    value: JsonValue, *, status: int = 200, content_type: str = JSON_CONTENT_TYPE
) -> Response:
    """A response with `value` encoded as `content_type` (raises `WireError`)."""
    return Response(
        status=status,
        headers=(("content-type", content_type),),
        body=encode_body(value, content_type),
    )


def build_negotiated_response(request: Request, value: JsonValue, *, status: int = 200) -> Response:
    """A response in CBOR if the request's Accept prefers it, else JSON (core.wire rules)."""
    return build_response(
        value, status=status, content_type=choose_response_type(request.header("accept"))
    )


def build_error_response(
    status: int,
    errcode: str,
    error: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    **extra: Any,
) -> Response:
    """A Matrix error response. Errors are always JSON, whatever the request accepts."""
    return Response(
        status=status,
        headers=(("content-type", JSON_CONTENT_TYPE), *headers),
        body=encode_body(build_error_body(errcode, error, **extra)),
    )
