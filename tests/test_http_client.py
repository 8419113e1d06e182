"""net.client against net.server over 127.0.0.1: X-Matrix end to end, JSON/CBOR, errors."""

from __future__ import annotations

import functools
import socket
from typing import Any

import pytest
import trio

from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.wire import CBOR_CONTENT_TYPE, JSON_CONTENT_TYPE
from s2s_node.net.auth import authenticate_request
from s2s_node.net.client import (
    BadResponse,
    BadResponseReason,
    ClientLimits,
    FederationClient,
    PeerUnreachable,
    RemoteError,
    Resolve,
    TransportReason,
    build_path,
    build_target,
    open_federation_client,
)
from s2s_node.net.http import Request, Response, build_negotiated_response, build_response
from s2s_node.net.router import Route, Router
from s2s_node.net.server import HttpLimits, bound_port, serve_http

TEST_DEADLINE_S = 10.0

ALICE = signing_key_from_seed(b"\x0a" * 32)  # the client
BOB = signing_key_from_seed(b"\x0b" * 32)  # the server
CAROL = signing_key_from_seed(b"\x0c" * 32)  # a third node (no address)

TXN: dict[str, Any] = {
    "origin": ALICE.identifier,
    "origin_server_ts": 1,
    "pdus": [],
    "edus": [{"x": [1, None]}],
}


def make_router(seen: list[dict[str, Any]]) -> Router:
    async def federated(request: Request) -> Response:
        authenticated = authenticate_request(request, BOB.identifier)
        seen.append(
            {
                "origin": authenticated.origin,
                "content_type": request.header("content-type"),
                "accept": request.header("accept"),
                "remote_port": request.remote[1] if request.remote else None,
            }
        )
        return build_negotiated_response(
            request,
            {
                "origin": authenticated.origin,
                "content": authenticated.content,
                "params": dict(request.path_params),
                "query": [list(pair) for pair in request.query],
            },
        )

    async def version(request: Request) -> Response:
        return build_response({"server": {"name": "s2s-node"}})

    async def slow(request: Request) -> Response:
        await trio.sleep(5)
        return build_response({})

    async def big(request: Request) -> Response:
        return build_response({"data": "x" * 10_000})

    async def floaty(request: Request) -> Response:
        return Response(status=200, headers=(("content-type", "application/json"),), body=b"1.5")

    async def cbor_error(request: Request) -> Response:
        from s2s_node.core.wire import encode_body

        return Response(
            status=403,
            headers=(("content-type", CBOR_CONTENT_TYPE),),
            body=encode_body({"errcode": "M_FORBIDDEN", "error": "no"}, CBOR_CONTENT_TYPE),
        )

    return Router(
        [
            Route(method="PUT", pattern="/_matrix/federation/v1/send/{txnId}", handler=federated),
            Route(
                method="GET", pattern="/_matrix/federation/v1/event/{eventId}", handler=federated
            ),
            Route(method="GET", pattern="/_matrix/federation/v1/version", handler=version),
            Route(method="GET", pattern="/slow", handler=slow),
            Route(method="GET", pattern="/big", handler=big),
            Route(method="GET", pattern="/floaty", handler=floaty),
            Route(method="GET", pattern="/cbor_error", handler=cbor_error),
        ]
    )


async def start_bob(nursery: trio.Nursery, seen: list[dict[str, Any]]) -> int:
    listeners = await nursery.start(
        functools.partial(serve_http, make_router(seen), limits=HttpLimits())
    )
    return bound_port(listeners)


def resolver(port: int) -> Resolve:
    addresses: dict[str, tuple[str, int]] = {BOB.identifier: ("127.0.0.1", port)}
    return addresses.get


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cbor", "read_cbor"), [(False, False), (True, True), (False, True)])
async def test_signed_request_end_to_end(
    nursery: trio.Nursery, cbor: bool, read_cbor: bool
) -> None:
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, seen)
        async with open_federation_client(ALICE, resolver(port), read_cbor=read_cbor) as client:
            for i in range(3):
                path = build_path("/_matrix/federation/v1/send/{}", f"txn/{i}")
                status, body = await client.request(
                    BOB.identifier, "PUT", path, {"v": ["1", "é"]}, TXN, cbor=cbor
                )
                assert status == 200
                assert body == {
                    "origin": ALICE.identifier,
                    "content": TXN,
                    "params": {"txnId": f"txn/{i}"},
                    "query": [["v", "1"], ["v", "é"]],
                }
            assert len(client.pool.connections) == 1
    assert [s["origin"] for s in seen] == [ALICE.identifier] * 3
    assert len({s["remote_port"] for s in seen}) == 1  # keep-alive
    assert seen[0]["content_type"] == (CBOR_CONTENT_TYPE if cbor else JSON_CONTENT_TYPE)
    assert ("application/cbor" in seen[0]["accept"]) is read_cbor


async def test_request_without_body(nursery: trio.Nursery) -> None:
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, seen)
        async with open_federation_client(ALICE, resolver(port)) as client:
            path = build_path("/_matrix/federation/v1/event/{}", "$abc:x")
            status, body = await client.request(BOB.identifier, "GET", path)
            assert isinstance(body, dict)
            assert (status, body["content"], body["params"]) == (200, None, {"eventId": "$abc:x"})


async def test_unsigned_request_is_refused_with_401(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        async with open_federation_client(ALICE, resolver(port)) as client:
            with pytest.raises(RemoteError) as info:
                await client.request(
                    BOB.identifier, "PUT", "/_matrix/federation/v1/send/t", body={}, sign=False
                )
            assert (info.value.status, info.value.errcode) == (401, "M_UNAUTHORIZED")
            # Unauthenticated endpoints work unsigned.
            status, _ = await client.request(
                BOB.identifier, "GET", "/_matrix/federation/v1/version", sign=False
            )
            assert status == 200


async def test_wrong_destination_is_refused_with_401(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        # Carol's identifier resolves to Bob's address: Bob must refuse a request meant for Carol.
        addresses: dict[str, tuple[str, int]] = {CAROL.identifier: ("127.0.0.1", port)}
        async with open_federation_client(ALICE, addresses.get) as client:
            with pytest.raises(RemoteError) as info:
                await client.request(
                    CAROL.identifier, "PUT", "/_matrix/federation/v1/send/t", body={}
                )
            assert (info.value.status, info.value.errcode) == (401, "M_UNAUTHORIZED")


async def test_forged_origin_is_refused(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        # Alice's key, Carol's name.
        async with open_federation_client(ALICE, resolver(port), origin=CAROL.identifier) as client:
            with pytest.raises(RemoteError) as info:
                await client.request(BOB.identifier, "PUT", "/_matrix/federation/v1/send/t", {}, {})
            assert info.value.status == 401


async def test_remote_error_shapes(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        async with open_federation_client(ALICE, resolver(port)) as client:
            with pytest.raises(RemoteError) as info:
                await client.request(BOB.identifier, "GET", "/nothing")
            assert (info.value.status, info.value.errcode) == (404, "M_UNRECOGNIZED")
            with pytest.raises(RemoteError) as info:
                await client.request(BOB.identifier, "GET", "/cbor_error")
            assert (info.value.status, info.value.errcode, info.value.error) == (
                403,
                "M_FORBIDDEN",
                "no",
            )


async def test_no_address(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        async with open_federation_client(ALICE, resolver(1)) as client:
            with pytest.raises(PeerUnreachable) as info:
                await client.request(CAROL.identifier, "GET", "/x")
            assert info.value.reason is TransportReason.NO_ADDRESS
            # A name that is not an IP literal is never looked up in DNS.
            with pytest.raises(PeerUnreachable) as info:
                await client.request("localhost:1", "GET", "/x", sign=False)
            assert info.value.reason is TransportReason.NO_ADDRESS


async def test_connection_refused() -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        async with open_federation_client(ALICE, resolver(free_port())) as client:
            with pytest.raises(PeerUnreachable) as info:
                await client.request(BOB.identifier, "GET", "/x")
            assert info.value.reason is TransportReason.CONNECT


async def test_ip_literal_destination_is_reached_directly(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        async with open_federation_client(ALICE, lambda _: None) as client:
            status, body = await client.request(
                f"127.0.0.1:{port}", "GET", "/_matrix/federation/v1/version", sign=False
            )
            assert (status, body) == (200, {"server": {"name": "s2s-node"}})


async def test_read_deadline(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        limits = ClientLimits(read_timeout_s=0.3)
        async with open_federation_client(ALICE, resolver(port), limits=limits) as client:
            started = trio.current_time()
            with pytest.raises(PeerUnreachable) as info:
                await client.request(BOB.identifier, "GET", "/slow")
            assert info.value.reason is TransportReason.TIMEOUT
            assert trio.current_time() - started < 2


async def test_total_deadline(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        async with open_federation_client(ALICE, resolver(port)) as client:
            with pytest.raises(PeerUnreachable) as info:
                await client.request(BOB.identifier, "GET", "/slow", timeout_s=0.3)
            assert info.value.reason is TransportReason.TIMEOUT


async def test_connect_deadline_against_a_server_that_never_answers() -> None:
    # A listening socket with a full backlog and nobody accepting: the TCP handshake may still
    # complete (kernel), so the read deadline is what ends this; both are TIMEOUT.
    with trio.fail_after(TEST_DEADLINE_S):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        limits = ClientLimits(connect_timeout_s=0.3, read_timeout_s=0.3)
        async with open_federation_client(ALICE, resolver(port), limits=limits) as client:
            with pytest.raises(PeerUnreachable) as info:
                await client.request(BOB.identifier, "GET", "/x")
            assert info.value.reason is TransportReason.TIMEOUT
        listener.close()


async def test_response_size_cap(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        limits = ClientLimits(max_response_bytes=5000)
        async with open_federation_client(ALICE, resolver(port), limits=limits) as client:
            with pytest.raises(BadResponse) as info:
                await client.request(BOB.identifier, "GET", "/big")
            assert info.value.reason is BadResponseReason.TOO_LARGE
            # The client still works afterwards.
            status, _ = await client.request(
                BOB.identifier, "GET", "/_matrix/federation/v1/version", sign=False
            )
            assert status == 200


async def test_undecodable_response(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        async with open_federation_client(ALICE, resolver(port)) as client:
            with pytest.raises(BadResponse) as info:
                await client.request(BOB.identifier, "GET", "/floaty")
            assert info.value.reason is BadResponseReason.UNDECODABLE


async def test_server_refuses_a_malformed_cbor_body_from_a_signed_client(
    nursery: trio.Nursery,
) -> None:
    # A raw request with a CBOR body holding a float: 400 M_BAD_JSON before signature work.
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_bob(nursery, [])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            body = bytes.fromhex("a16161f93c00")  # {"a": 1.0}
            await stream.send_all(
                b"PUT /_matrix/federation/v1/send/t HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: X-Matrix origin=a,key=ed25519:1,sig=x\r\n"
                b"Content-Type: application/cbor\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            received = b""
            while b"M_BAD_JSON" not in received:
                received += await stream.receive_some(65536)
            assert received.startswith(b"HTTP/1.1 400 ")


def test_build_target_and_path() -> None:
    assert build_path("/a/{}/b/{}", "$x/y", "é") == "/a/%24x%2Fy/b/%C3%A9"
    assert build_target("/p") == "/p"
    assert build_target("/p", {"v": ["1", "2"], "a b": "c&d"}) == "/p?v=1&v=2&a%20b=c%26d"


async def test_client_can_be_closed_twice() -> None:
    client = FederationClient(ALICE, resolver(1))
    await client.aclose()
    await client.aclose()
