"""TLS between nodes over real sockets on 127.0.0.1: pinning both ways, refusals, a wire tap.

Each test is bounded with `trio.fail_after`. Bob serves; Alice (and impostors) dial.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from s2s_node.core.keys import signing_key_from_seed
from s2s_node.net import tls as tls_module
from s2s_node.net.auth import authenticate_request
from s2s_node.net.client import (
    PeerUnreachable,
    RemoteError,
    Resolve,
    TransportReason,
    build_path,
    open_federation_client,
)
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route, Router
from s2s_node.net.server import HttpLimits, bound_port, serve_http
from s2s_node.net.tls import (
    BindingReason,
    ChannelBindingError,
    ClientTls,
    PinReason,
    ServerTls,
    TransportSecurity,
    build_transport_security,
    current_tls_peer,
)
from s2s_node.net.tls_channels import ChannelLog, Direction

TEST_DEADLINE_S = 15.0

ALICE = signing_key_from_seed(b"\x0a" * 32)  # the client
BOB = signing_key_from_seed(b"\x0b" * 32)  # the server
CAROL = signing_key_from_seed(b"\x0c" * 32)
MALLORY = signing_key_from_seed(b"\x0d" * 32)  # an impostor

MARKER = "secret-room-content-7f3a9c"
TXN: dict[str, Any] = {
    "origin": ALICE.identifier,
    "origin_server_ts": 1,
    "pdus": [{"content": {"body": MARKER}}],
    "edus": [],
}
SEND = build_path("/_matrix/federation/v1/send/{}", "txn1")


@functools.cache
def security_of(seed: bytes) -> TransportSecurity:
    return build_transport_security(signing_key_from_seed(seed), tls=True)


def fresh_security(seed: bytes) -> TransportSecurity:
    """Contexts built once per key (it costs a little), a new channel log per test."""
    cached = security_of(seed)
    assert cached.server is not None and cached.client is not None
    channels = ChannelLog(tls_enabled=True)
    return replace(
        cached,
        server=replace(cached.server, channels=channels),
        client=replace(cached.client, channels=channels),
        channels=channels,
    )


def make_router(seen: list[dict[str, Any]]) -> Router:
    """Bob's routes: the federation one authenticates X-Matrix, which binds it to the TLS peer."""

    async def send(request: Request) -> Response:
        try:
            authenticated = authenticate_request(request, BOB.identifier)
        except ChannelBindingError as exc:
            seen.append({"refused": exc.reason, "tls_peer": current_tls_peer()})
            raise
        seen.append({"origin": authenticated.origin, "tls_peer": current_tls_peer()})
        return build_response({"ok": True, "content": authenticated.content})

    async def version(request: Request) -> Response:
        return build_response({"server": {"name": "s2s-node"}})

    return Router(
        [
            Route(method="PUT", pattern="/_matrix/federation/v1/send/{txnId}", handler=send),
            Route(method="GET", pattern="/_matrix/federation/v1/version", handler=version),
        ]
    )


async def start_server(
    nursery: trio.Nursery, seen: list[dict[str, Any]], tls: ServerTls | None
) -> int:
    listeners = await nursery.start(
        functools.partial(serve_http, make_router(seen), limits=HttpLimits(), tls=tls)
    )
    return bound_port(listeners)


def resolver(port: int, name: str = BOB.identifier) -> Resolve:
    addresses: dict[str, tuple[str, int]] = {name: ("127.0.0.1", port)}
    return addresses.get


# ----------------------------------------------------------------------------------------------
# Two nodes over TLS


async def test_two_nodes_talk_over_pinned_tls(nursery: trio.Nursery) -> None:
    alice, bob = fresh_security(b"\x0a" * 32), fresh_security(b"\x0b" * 32)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, seen, bob.server)
        async with open_federation_client(ALICE, resolver(port), tls=alice.client) as client:
            for _ in range(3):
                status, body = await client.request(BOB.identifier, "PUT", SEND, body=TXN)
                assert (status, body) == (200, {"ok": True, "content": TXN})
            assert len(client.pool.connections) == 1  # one handshake, kept alive
            connection: Any = client.pool.connections[0]
            ssl_object = connection._connection._network_stream.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
    assert seen == [{"origin": ALICE.identifier, "tls_peer": ALICE.identifier}] * 3
    outbound = alice.channels.status(BOB.identifier)
    assert outbound is not None
    assert (outbound.encrypted, outbound.pinned, outbound.failure) == (True, True, None)
    assert alice.channels.is_encrypted_and_pinned(BOB.identifier)
    inbound = bob.channels.status(ALICE.identifier, Direction.INBOUND)
    assert inbound is not None and inbound.pinned and inbound.identifier == ALICE.identifier


async def test_dialling_an_address_learns_the_identifier_unpinned(nursery: trio.Nursery) -> None:
    alice, bob = fresh_security(b"\x0a" * 32), fresh_security(b"\x0b" * 32)
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, [], bob.server)
        async with open_federation_client(ALICE, resolver(port), tls=alice.client) as client:
            status, _ = await client.request(
                f"127.0.0.1:{port}", "GET", "/_matrix/federation/v1/version", sign=False
            )
            assert status == 200
    status_of_address = alice.channels.status(f"127.0.0.1:{port}")
    assert status_of_address is not None
    assert status_of_address.identifier == BOB.identifier
    assert (status_of_address.encrypted, status_of_address.pinned) == (True, False)


# ----------------------------------------------------------------------------------------------
# Someone else's identifier


async def test_client_refuses_a_server_with_another_key(nursery: trio.Nursery) -> None:
    alice, mallory = fresh_security(b"\x0a" * 32), fresh_security(b"\x0d" * 32)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TEST_DEADLINE_S):
        # Mallory listens where Alice believes Bob is, with a valid certificate for her own key.
        port = await start_server(nursery, seen, mallory.server)
        async with open_federation_client(ALICE, resolver(port), tls=alice.client) as client:
            with pytest.raises(PeerUnreachable) as info:
                await client.request(BOB.identifier, "PUT", SEND, body=TXN)
            assert info.value.reason is TransportReason.PIN
            assert MALLORY.identifier in info.value.detail
            assert len(client.pool.connections) == 0
    assert seen == []  # the request never left Alice
    status = alice.channels.status(BOB.identifier)
    assert status is not None
    assert (status.encrypted, status.failure) == (False, PinReason.KEY_MISMATCH.value)


async def test_server_refuses_an_origin_that_is_not_the_tls_client(nursery: trio.Nursery) -> None:
    alice, bob = fresh_security(b"\x0a" * 32), fresh_security(b"\x0b" * 32)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, seen, bob.server)
        # Carol signs X-Matrix with her own key, over a channel that shows Alice's certificate.
        async with open_federation_client(CAROL, resolver(port), tls=alice.client) as client:
            with pytest.raises(RemoteError) as info:
                await client.request(BOB.identifier, "PUT", SEND, body=TXN)
            assert (info.value.status, info.value.errcode) == (401, "M_UNAUTHORIZED")
    assert seen == [{"refused": BindingReason.ORIGIN_NOT_TLS_PEER, "tls_peer": ALICE.identifier}]


def client_tls_with(context: ssl.SSLContext) -> ClientTls:
    return ClientTls(
        context=context, identifier=ALICE.identifier, channels=ChannelLog(tls_enabled=True)
    )


def bare_client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def load_pem(
    context: ssl.SSLContext, tmp_path: Any, key: Any, certificate: x509.Certificate
) -> None:
    path = tmp_path / "client.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + certificate.public_bytes(serialization.Encoding.PEM)
    )
    context.load_cert_chain(str(path))


def self_signed_ed25519(identifier: str) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    key = Ed25519PrivateKey.from_private_bytes(ALICE.seed)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identifier)])
    anchor = tls_module.build_anchor_certificate()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(3)
        .not_valid_before(anchor.not_valid_before_utc)
        .not_valid_after(anchor.not_valid_after_utc)
        .sign(key, None)
    )
    return key, certificate


def anchored_ec(identifier: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate the server's chain check accepts, but whose key encodes no identifier."""
    key = ec.generate_private_key(ec.SECP256R1())
    anchor = tls_module.build_anchor_certificate()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identifier)]))
        .issuer_name(anchor.subject)
        .public_key(key.public_key())
        .serial_number(4)
        .not_valid_before(anchor.not_valid_before_utc)
        .not_valid_after(anchor.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(tls_module._anchor_key(), None)
    )
    return key, certificate


async def test_server_refuses_signed_requests_without_a_client_certificate(
    nursery: trio.Nursery,
) -> None:
    bob = fresh_security(b"\x0b" * 32)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, seen, bob.server)
        tls = client_tls_with(bare_client_context())
        async with open_federation_client(ALICE, resolver(port), tls=tls) as client:
            # The channel is encrypted and Bob is pinned; unauthenticated endpoints answer.
            status, _ = await client.request(
                BOB.identifier, "GET", "/_matrix/federation/v1/version", sign=False
            )
            assert status == 200
            with pytest.raises(RemoteError) as info:
                await client.request(BOB.identifier, "PUT", SEND, body=TXN)
            assert info.value.status == 401
    assert seen == [{"refused": BindingReason.NO_CLIENT_CERTIFICATE, "tls_peer": None}]


@pytest.mark.parametrize("kind", ["self_signed", "not_ed25519"])
async def test_server_refuses_client_certificates_it_cannot_pin(
    nursery: trio.Nursery, tmp_path: Any, kind: str
) -> None:
    bob = fresh_security(b"\x0b" * 32)
    seen: list[dict[str, Any]] = []
    context = bare_client_context()
    if kind == "self_signed":  # not under the anchor: OpenSSL's chain check refuses it
        load_pem(context, tmp_path, *self_signed_ed25519(ALICE.identifier))
    else:  # under the anchor, but its key encodes no identifier: the pin check refuses it
        load_pem(context, tmp_path, *anchored_ec(ALICE.identifier))
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, seen, bob.server)
        async with open_federation_client(
            ALICE, resolver(port), tls=client_tls_with(context)
        ) as client:
            with pytest.raises(PeerUnreachable) as info:
                await client.request(BOB.identifier, "PUT", SEND, body=TXN)
            assert info.value.reason in (TransportReason.CONNECT, TransportReason.PROTOCOL)
        # Bob keeps serving.
        good = fresh_security(b"\x0a" * 32)
        async with open_federation_client(ALICE, resolver(port), tls=good.client) as client:
            assert (await client.request(BOB.identifier, "PUT", SEND, body=TXN))[0] == 200
    assert seen == [{"origin": ALICE.identifier, "tls_peer": ALICE.identifier}]
    if kind == "not_ed25519":
        failures = [s for s in bob.channels.all() if s.failure is not None]
        assert [s.failure for s in failures] == [PinReason.NOT_ED25519.value]


# ----------------------------------------------------------------------------------------------
# Plain HTTP, old TLS, stalls


async def test_plain_http_client_is_refused_by_a_tls_listener(nursery: trio.Nursery) -> None:
    alice, bob = fresh_security(b"\x0a" * 32), fresh_security(b"\x0b" * 32)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, seen, bob.server)
        async with open_federation_client(ALICE, resolver(port)) as plain:
            with pytest.raises(RemoteError) as info:
                await plain.request(BOB.identifier, "PUT", SEND, body=TXN)
            assert (info.value.status, info.value.errcode) == (400, "M_UNRECOGNIZED")
            assert "TLS" in (info.value.error or "")
        async with open_federation_client(ALICE, resolver(port), tls=alice.client) as client:
            assert (await client.request(BOB.identifier, "PUT", SEND, body=TXN))[0] == 200
    assert len(seen) == 1


async def test_tls_client_is_refused_by_a_plain_listener(nursery: trio.Nursery) -> None:
    alice = fresh_security(b"\x0a" * 32)
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, [], None)
        async with open_federation_client(ALICE, resolver(port), tls=alice.client) as client:
            with pytest.raises(PeerUnreachable) as info:
                await client.request(BOB.identifier, "PUT", SEND, body=TXN)
            assert info.value.reason is TransportReason.CONNECT
    status = alice.channels.status(BOB.identifier)
    assert status is not None and status.failure == "handshake"


async def test_tls_1_2_is_refused(nursery: trio.Nursery) -> None:
    bob = fresh_security(b"\x0b" * 32)
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, [], bob.server)
        context = bare_client_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context)
        with pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()
        await trio.aclose_forcefully(stream)


@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01"])
async def test_handshake_deadline(nursery: trio.Nursery, first_bytes: bytes) -> None:
    bob = fresh_security(b"\x0b" * 32)
    assert bob.server is not None
    server_tls = replace(bob.server, handshake_timeout_s=0.3)
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, [], server_tls)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(first_bytes)
        started = trio.current_time()
        with contextlib.suppress(trio.BrokenResourceError):  # reset, or closed:
            assert await stream.receive_some(1024) == b""
        assert trio.current_time() - started < 3.0
        await stream.aclose()


# ----------------------------------------------------------------------------------------------
# A tap on the wire


async def tap(
    listen_port_ready: Callable[[int], Awaitable[None]] | None,
    target_port: int,
    recorded: list[bytes],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A TCP relay on 127.0.0.1 that records every byte in both directions."""

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                recorded.append(bytes(data))
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(sink)

    async def relay(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(int(listeners[0].socket.getsockname()[1]))
    await trio.serve_listeners(relay, listeners)


@pytest.mark.parametrize("use_tls", [True, False])
async def test_wire_shows_no_content_over_tls(nursery: trio.Nursery, use_tls: bool) -> None:
    alice, bob = fresh_security(b"\x0a" * 32), fresh_security(b"\x0b" * 32)
    recorded: list[bytes] = []
    with trio.fail_after(TEST_DEADLINE_S):
        port = await start_server(nursery, [], bob.server if use_tls else None)
        tap_port = await nursery.start(tap, None, port, recorded)
        client_tls = alice.client if use_tls else None
        async with open_federation_client(ALICE, resolver(tap_port), tls=client_tls) as client:
            status, body = await client.request(BOB.identifier, "PUT", SEND, body=TXN)
            assert status == 200 and body == {"ok": True, "content": TXN}
    wire = b"".join(recorded)
    assert len(wire) > 500
    visible = [
        needle
        for needle in (MARKER, "/_matrix/federation", "X-Matrix", ALICE.identifier, BOB.identifier)
        if needle.encode() in wire
    ]
    if use_tls:
        # Not the content, not the request line, not even who is talking (no SNI; TLS 1.3
        # encrypts the certificates).
        assert visible == []
    else:  # the control: the tap does see plain HTTP
        assert MARKER in visible and "/_matrix/federation" in visible


async def test_idle_tls_connection_is_closed(nursery: trio.Nursery) -> None:
    alice, bob = fresh_security(b"\x0a" * 32), fresh_security(b"\x0b" * 32)
    assert alice.client is not None
    with trio.fail_after(TEST_DEADLINE_S):
        listeners = await nursery.start(
            functools.partial(
                serve_http,
                make_router([]),
                limits=HttpLimits(request_timeout_s=0.3, idle_timeout_s=0.3),
                tls=bob.server,
            )
        )
        tcp = await trio.open_tcp_stream("127.0.0.1", bound_port(listeners))
        stream = trio.SSLStream(tcp, alice.client.context, https_compatible=True)
        await stream.do_handshake()
        started = trio.current_time()
        with contextlib.suppress(trio.BrokenResourceError):  # reset, or closed:
            assert await stream.receive_some(1024) == b""
        assert trio.current_time() - started < 3.0
        await trio.aclose_forcefully(stream)
