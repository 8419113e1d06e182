"""net.server and net.router over real sockets on 127.0.0.1: keep-alive, caps, deadlines."""

from __future__ import annotations

import functools
import json
from typing import Any

import httpcore
import pytest
import trio

from s2s_node.core.xmatrix import XMatrixError, XMatrixReason
from s2s_node.net.errors import M_NOT_FOUND, HttpError
from s2s_node.net.http import (
    Handler,
    Request,
    Response,
    build_negotiated_response,
    build_response,
)
from s2s_node.net.router import Route, Router
from s2s_node.net.server import HttpLimits, bound_port, serve_http

# Every test here must finish well within this.
TEST_DEADLINE_S = 10.0


async def start(nursery: trio.Nursery, handler: Handler, limits: HttpLimits | None = None) -> int:
    listeners = await nursery.start(
        functools.partial(serve_http, handler, limits=limits or HttpLimits())
    )
    return bound_port(listeners)


async def echo(request: Request) -> Response:
    return build_response(
        {
            "method": request.method,
            "target": request.target,
            "path_params": dict(request.path_params),
            "query": [list(pair) for pair in request.query],
            "body": request.body.decode("latin-1"),
            "remote_port": request.remote[1] if request.remote else None,
        }
    )


async def boom(request: Request) -> Response:
    raise RuntimeError("handler bug")


async def unauthorized(request: Request) -> Response:
    raise XMatrixError(XMatrixReason.BAD_SIGNATURE, "nope")


async def not_found(request: Request) -> Response:
    raise HttpError(404, M_NOT_FOUND, "no such event", extra={"event_id": "$x"})


async def negotiated(request: Request) -> Response:
    return build_negotiated_response(request, {"a": [1, "b"]})


ROUTER = Router(
    [
        Route(method="GET", pattern="/echo/{first}/{second}", handler=echo),
        Route(method="PUT", pattern="/echo/{first}/{second}", handler=echo),
        Route(method="GET", pattern="/echo/fixed/{second}", handler=negotiated),
        Route(method="POST", pattern="/echo", handler=echo),
        Route(method="GET", pattern="/boom", handler=boom),
        Route(method="GET", pattern="/unauthorized", handler=unauthorized),
        Route(method="GET", pattern="/not_found", handler=not_found),
    ]
)


async def http(
    pool: httpcore.AsyncConnectionPool,
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=port, target=target)
    response = await pool.request(method, url, headers=headers or [], content=body)
    return (
        response.status,
        {k.decode().lower(): v.decode() for k, v in response.headers},
        response.content,
    )


async def raw_exchange(port: int, *chunks: bytes, read_timeout_s: float = 5.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for chunk in chunks:
            await stream.send_all(chunk)
        received = b""
        with trio.fail_after(read_timeout_s):
            while data := await stream.receive_some(65536):
                received += data
        return received


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def error_body(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


# ----------------------------------------------------------------------------------------------


async def test_round_trip_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        async with httpcore.AsyncConnectionPool() as pool:
            ports = set()
            for i in range(3):
                status, headers, body = await http(
                    pool, port, "PUT", f"/echo/a%2Fb/{i}?x=1&x=%C3%A9&y", body=b"payload"
                )
                assert status == 200
                assert headers["content-type"] == "application/json"
                value = json.loads(body)
                assert value["path_params"] == {"first": "a/b", "second": str(i)}
                assert value["target"] == f"/echo/a%2Fb/{i}?x=1&x=%C3%A9&y"
                assert value["query"] == [["x", "1"], ["x", "é"], ["y", ""]]
                assert value["body"] == "payload"
                ports.add(value["remote_port"])
            assert len(ports) == 1  # one TCP connection served all three


async def test_literal_routes_win_over_parameters(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, body = await http(pool, port, "GET", "/echo/fixed/x")
            assert (status, json.loads(body)) == (200, {"a": [1, "b"]})
            # PUT has no literal route: the parameter route takes it.
            status, _, body = await http(pool, port, "PUT", "/echo/fixed/x")
            assert json.loads(body)["path_params"] == {"first": "fixed", "second": "x"}


async def test_response_negotiates_cbor(nursery: trio.Nursery) -> None:
    import cbor2

    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        async with httpcore.AsyncConnectionPool() as pool:
            status, headers, body = await http(
                pool, port, "GET", "/echo/fixed/x", headers=[("Accept", "application/cbor")]
            )
            assert (status, headers["content-type"]) == (200, "application/cbor")
            assert cbor2.loads(body) == {"a": [1, "b"]}


async def test_unknown_path_and_bad_method(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, body = await http(pool, port, "GET", "/nothing/here")
            assert status == 404
            assert json.loads(body)["errcode"] == "M_UNRECOGNIZED"
            status, headers, body = await http(pool, port, "DELETE", "/echo/a/b")
            assert status == 405
            assert json.loads(body)["errcode"] == "M_UNRECOGNIZED"
            assert headers["allow"] == "GET, PUT"
            status, _, _ = await http(pool, port, "GET", "/echo/a/b/c")
            assert status == 404


async def test_bad_percent_encoding_in_a_parameter(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, body = await http(pool, port, "GET", "/echo/%FF/x")
            assert (status, json.loads(body)["errcode"]) == (400, "M_INVALID_PARAM")
            status, _, body = await http(pool, port, "GET", "/echo/a/b?x=%FF")
            assert (status, json.loads(body)["errcode"]) == (400, "M_INVALID_PARAM")


async def test_handler_exception_is_500_and_the_connection_survives(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, body = await http(pool, port, "GET", "/boom")
            assert status == 500
            assert json.loads(body) == {"errcode": "M_UNKNOWN", "error": "internal server error"}
            status, _, body = await http(pool, port, "GET", "/echo/a/b")
            assert status == 200
            assert len(pool.connections) == 1
        assert "handler bug" in caplog.text


async def test_typed_errors_are_mapped_by_the_table(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, body = await http(pool, port, "GET", "/unauthorized")
            assert (status, json.loads(body)["errcode"]) == (401, "M_UNAUTHORIZED")
            status, _, body = await http(pool, port, "GET", "/not_found")
            assert status == 404
            assert json.loads(body) == {
                "errcode": "M_NOT_FOUND",
                "error": "no such event",
                "event_id": "$x",
            }


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /echo/a/b HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /echo/a/b HTTP/1.1\r\n\r\n",  # no Host
        b"GET /echo/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
    ],
)
async def test_malformed_http_is_400_and_closed(
    nursery: trio.Nursery, request_bytes: bytes
) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        raw = await raw_exchange(port, request_bytes)
        assert status_of(raw) == 400
        assert b"connection: close" in raw.lower()


async def test_oversized_body_by_content_length_is_413_before_reading(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(max_body_bytes=1000))
        # The body is announced but never sent: the answer must not wait for it.
        raw = await raw_exchange(
            port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
        )
        assert status_of(raw) == 413
        assert error_body(raw)["errcode"] == "M_TOO_LARGE"


async def test_oversized_chunked_body_is_413(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(max_body_bytes=1000))
        chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
        raw = await raw_exchange(
            port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", chunk
        )
        assert status_of(raw) == 413


async def test_body_at_the_limit_is_accepted(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(max_body_bytes=1000))
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, body = await http(pool, port, "POST", "/echo", body=b"y" * 1000)
            assert status == 200
            assert json.loads(body)["body"] == "y" * 1000


async def test_header_flood_is_431(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(max_header_bytes=4096))
        flood = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
        raw = await raw_exchange(port, b"GET /echo/a/b HTTP/1.1\r\nHost: x\r\n" + flood)
        assert status_of(raw) == 431
        assert error_body(raw)["errcode"] == "M_TOO_LARGE"


async def test_slowloris_is_cut_off_while_others_are_served(nursery: trio.Nursery) -> None:
    limits = HttpLimits(request_timeout_s=1.0)
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, limits)
        outcome: dict[str, Any] = {}

        async def slow_client() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            received = b""
            async with stream:
                try:
                    for byte in b"GET /echo/a/b HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n\r\n":
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.5)
                except trio.BrokenResourceError:
                    pass
                with trio.fail_after(5):
                    try:
                        while data := await stream.receive_some(65536):
                            received += data
                    except trio.BrokenResourceError:
                        pass
            outcome["slow"] = (trio.current_time() - started, received)

        async with trio.open_nursery() as clients:
            clients.start_soon(slow_client)
            await trio.sleep(0.3)
            async with httpcore.AsyncConnectionPool() as pool:
                for _ in range(5):
                    status, _, _ = await http(pool, port, "GET", "/echo/a/b")
                    assert status == 200
                    await trio.sleep(0.1)
        elapsed, received = outcome["slow"]
        assert elapsed < 3.0  # the whole request would take ~25 s at this pace
        assert status_of(received) == 408


async def test_idle_keep_alive_connection_is_closed(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(idle_timeout_s=0.3))
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /echo/a/b HTTP/1.1\r\nHost: x\r\n\r\n")
            started = trio.current_time()
            received = b""
            with trio.fail_after(3):
                while data := await stream.receive_some(65536):
                    received += data
            assert status_of(received) == 200
            assert b"408" not in received  # idle between requests closes silently
            assert trio.current_time() - started >= 0.3


async def test_expect_100_continue(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hello")
            final = b""
            while b'"body":"hello"' not in final:
                final += await stream.receive_some(65536)
            assert status_of(final) == 200


async def test_expect_100_continue_with_a_too_large_body_gets_413_at_once(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(max_body_bytes=10))
        raw = await raw_exchange(
            port,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nExpect: 100-continue\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 413 ")


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        raw = await raw_exchange(
            port,
            b"GET /echo/a/1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /echo/a/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert raw.count(b"HTTP/1.1 200 ") == 2
        assert raw.index(b'"second":"1"') < raw.index(b'"second":"2"')


async def test_head_request_gets_headers_only(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER)
        raw = await raw_exchange(
            port, b"HEAD /echo/a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(raw) == 405
        assert raw.endswith(b"\r\n\r\n")


async def test_connections_per_address_are_capped(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(max_connections_per_address=2))
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.sleep(0.1)  # let the server accept them
        raw = await raw_exchange(port, b"GET /echo/a/b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 429
        assert error_body(raw)["errcode"] == "M_LIMIT_EXCEEDED"
        for stream in held:
            await stream.aclose()
        await trio.sleep(0.1)
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, _ = await http(pool, port, "GET", "/echo/a/b")
            assert status == 200


async def test_total_connections_are_capped(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(nursery, ROUTER, HttpLimits(max_connections=1))
        async with await trio.open_tcp_stream("127.0.0.1", port):
            await trio.sleep(0.1)
            raw = await raw_exchange(port, b"GET /echo/a/b HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(raw) == 429


async def test_handler_deadline(nursery: trio.Nursery) -> None:
    async def stuck(request: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(TEST_DEADLINE_S):
        port = await start(
            nursery,
            Router([Route(method="GET", pattern="/stuck", handler=stuck)]),
            HttpLimits(handler_timeout_s=0.3),
        )
        async with httpcore.AsyncConnectionPool() as pool:
            status, _, body = await http(pool, port, "GET", "/stuck")
            assert (status, json.loads(body)["errcode"]) == (500, "M_UNKNOWN")
