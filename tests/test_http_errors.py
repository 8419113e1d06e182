"""net.errors (the one error table), net.router without sockets, and net.server on garbage."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.auth_errors import AuthError, AuthRule
from s2s_node.core.canonical import CanonicalJsonError, CanonicalJsonReason
from s2s_node.core.events import EventFormatError, FormatReason
from s2s_node.core.signing import SignatureError, SignatureReason
from s2s_node.core.wire import WireError, WireReason
from s2s_node.core.xmatrix import XMatrixError, XMatrixReason
from s2s_node.net.errors import (
    ErrorCode,
    HttpError,
    build_error_body_for,
    classify_error,
)
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route, Router
from s2s_node.net.server import HttpLimits, serve_connection


@pytest.mark.parametrize("reason", list(XMatrixReason))
def test_every_x_matrix_failure_is_401(reason: XMatrixReason) -> None:
    assert classify_error(XMatrixError(reason, "x")) == ErrorCode(401, "M_UNAUTHORIZED")


@pytest.mark.parametrize("reason", list(WireReason))
def test_wire_errors(reason: WireReason) -> None:
    expected = {
        WireReason.TOO_LARGE: ErrorCode(413, "M_TOO_LARGE"),
        WireReason.MALFORMED: ErrorCode(400, "M_NOT_JSON"),
        WireReason.NOT_UTF8: ErrorCode(400, "M_NOT_JSON"),
        WireReason.UNSUPPORTED_MEDIA_TYPE: ErrorCode(415, "M_UNRECOGNIZED"),
    }.get(reason, ErrorCode(400, "M_BAD_JSON"))
    assert classify_error(WireError(reason, "x")) == expected


def test_other_core_errors() -> None:
    assert classify_error(CanonicalJsonError(CanonicalJsonReason.NOT_JSON, "x")) == ErrorCode(
        400, "M_NOT_JSON"
    )
    assert classify_error(CanonicalJsonError(CanonicalJsonReason.FLOAT, "x")) == ErrorCode(
        400, "M_BAD_JSON"
    )
    assert classify_error(EventFormatError(FormatReason.TOO_LARGE, "x")) == ErrorCode(
        400, "M_BAD_JSON"
    )
    assert classify_error(SignatureError(SignatureReason.BAD_SIGNATURE, "s", "x")) == ErrorCode(
        403, "M_FORBIDDEN"
    )
    assert classify_error(AuthError(AuthRule.SENDER_NOT_JOINED)) == ErrorCode(403, "M_FORBIDDEN")


def test_subclasses_use_their_base_class_entry() -> None:
    class SpecialWireError(WireError):
        pass

    assert classify_error(SpecialWireError(WireReason.TOO_LARGE, "x")) == ErrorCode(
        413, "M_TOO_LARGE"
    )


def test_unknown_errors_are_not_classified() -> None:
    assert classify_error(RuntimeError("x")) is None
    assert classify_error(ValueError("x")) is None
    assert build_error_body_for(KeyError("x")) is None


def test_http_error_body_carries_extra_keys() -> None:
    exc = HttpError(403, "M_FORBIDDEN", "refused by rule", extra={"rule": {"type": "t"}})
    assert build_error_body_for(exc) == (
        403,
        {"errcode": "M_FORBIDDEN", "error": "refused by rule", "rule": {"type": "t"}},
    )


# ----------------------------------------------------------------------------------------------
# Router


async def ok(request: Request) -> Response:
    return build_response({"params": dict(request.path_params)})


def request(method: str, path: str) -> Request:
    return Request(method=method, target=path, path=path, query=(), headers=(), body=b"")


def test_router_refuses_bad_patterns() -> None:
    with pytest.raises(ValueError, match="start with"):
        Router([Route(method="GET", pattern="x", handler=ok)])
    with pytest.raises(ValueError, match="bad segment"):
        Router([Route(method="GET", pattern="/a{b}", handler=ok)])
    with pytest.raises(ValueError, match="same method"):
        Router(
            [
                Route(method="GET", pattern="/a/{b}", handler=ok),
                Route(method="GET", pattern="/a/{c}", handler=ok),
            ]
        )


async def test_router_matching() -> None:
    router = Router([Route(method="GET", pattern="/a/{b}/c", handler=ok)])
    response = await router(request("GET", "/a/%24x%3Ay/c"))
    assert json.loads(response.body) == {"params": {"b": "$x:y"}}
    for path in ("/a//c", "/a/x/c/", "/a/x", "a/x/c", "", "*"):
        response = await router(request("GET", path))
        assert response.status == 404, path
    assert (await router(request("POST", "/a/x/c"))).status == 405


# ----------------------------------------------------------------------------------------------
# The server on arbitrary bytes (no sockets: a memory stream)


async def serve_bytes(data: bytes) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    received = b""
    limits = HttpLimits(request_timeout_s=0.5, idle_timeout_s=0.5, max_header_bytes=2048)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server, Router([]), limits)
            await client.send_all(data)
            await client.send_eof()
            while chunk := await client.receive_some(65536):
                received += chunk
    return received


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
async def test_server_survives_arbitrary_bytes(data: bytes) -> None:
    received = await serve_bytes(data)
    assert received == b"" or received.startswith(b"HTTP/1.1 ")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"GET ",
                b"PUT ",
                b"/x",
                b" HTTP/1.1",
                b"\r\n",
                b"Host: a",
                b"Content-Length: 3",
                b"Transfer-Encoding: chunked",
                b"Expect: 100-continue",
                b"abc",
                b"0\r\n",
                b":",
                b" ",
            ]
        ),
        max_size=20,
    ).map(b"".join)
)
async def test_server_survives_http_like_bytes(data: bytes) -> None:
    received = await serve_bytes(data)
    assert received == b"" or received.startswith(b"HTTP/1.1 ")
