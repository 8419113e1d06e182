"""Nodes over TLS (issue 11 at the node level): real nodes on 127.0.0.1, pinned both ways.

Two nodes exchange events end to end over TLS with one learning the other as a static peer; a
node answering for someone else's identifier is refused; a signed request whose X-Matrix origin
is not the TLS client is refused; the key route serves clients without a certificate; a key
document replayed behind another node's certificate does not verify; `federation.tls = false`
warns loudly and runs plain.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import pytest
import trio
from netns_node import key_server_router
from node_fixtures import FAST_BACKOFF, make_shared_room, next_event, wait_for

from s2s_node.config import ClientConfig, Config, DiscoveryConfig, FederationConfig, HostPort
from s2s_node.core.ids import server_user
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.peers import ChangeKind
from s2s_node.discovery import KeyFetchError, VerificationError, VerifyReason, verify_static_peer
from s2s_node.net.client import (
    FederationClient,
    PeerUnreachable,
    RemoteError,
    TransportReason,
    build_path,
)
from s2s_node.net.peer_fetch import open_peer_fetcher
from s2s_node.net.peering import PeerChangeStream, PeeringTiming
from s2s_node.net.server import bound_port, serve_http
from s2s_node.net.tls import WARNING_PLAIN_HTTP, build_transport_security
from s2s_node.node import Node, open_node
from s2s_node.peerinfo import PeerInfoChange

DEADLINE_S = 30.0
FAST_PEERING = PeeringTiming(
    static_retry_s=0.05, static_retry_max_s=0.2, static_probe_interval_s=0.2, static_timeout_s=2.0
)


def tls_config(peers: Sequence[HostPort] = (), *, tls: bool = True, port: int = 0) -> Config:
    return Config(
        peers=tuple(peers),
        federation=FederationConfig(listen=HostPort(host="127.0.0.1", port=port), tls=tls),
        discovery=DiscoveryConfig(enabled=False),
        client=ClientConfig(listen=HostPort(host="127.0.0.1", port=0)),
    )


@asynccontextmanager
async def two_nodes(tmp_path: Path, *, tls: bool = True) -> AsyncIterator[tuple[Node, Node]]:
    """a, and b which has a as its static peer (a learns b as discovery would)."""
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            open_node(
                tls_config(tls=tls),
                data_dir=tmp_path / "a",
                backoff=FAST_BACKOFF,
                peering=FAST_PEERING,
            )
        )
        assert a.federation_address is not None
        host, port = a.federation_address
        b = await stack.enter_async_context(
            open_node(
                tls_config([HostPort(host=host, port=port)], tls=tls),
                data_dir=tmp_path / "b",
                backoff=FAST_BACKOFF,
                peering=FAST_PEERING,
            )
        )
        assert b.federation_address is not None
        await a.add_peer_address(b.identifier, *b.federation_address)
        yield a, b


def bare_tls_context() -> ssl.SSLContext:
    """A TLS 1.3 client with no certificate that verifies nothing (a stranger, or a browser)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


async def test_two_nodes_exchange_events_over_pinned_tls(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        async with two_nodes(tmp_path) as (a, b):
            assert a.federation_url.startswith("https://127.0.0.1:")
            # b verified a, its static peer, over TLS (certificate bound to the key document).
            await wait_for(lambda: _async(b.peer_book.resolve(a.identifier) is not None))
            (seen,) = b.peers()
            assert seen.identifier == a.identifier
            assert (seen.static, seen.verified, seen.alive) == (True, True, True)
            assert seen.encrypted and seen.pinned
            assert seen.to_json()["encrypted"] is True

            room = await make_shared_room(a, b)
            assert await a.servers_in_room(room) == {a.identifier, b.identifier}
            received = b.subscribe(room)
            sent = await a.send_event(room, "m.room.message", {"body": "over tls", "msgtype": "t"})
            got = await next_event(received, lambda pdu: pdu.event_id == sent.event_id)
            assert got.content["body"] == "over tls"
            back = a.subscribe(room)
            reply = await b.send_event(room, "m.room.message", {"body": "back", "msgtype": "t"})
            await next_event(back, lambda pdu: pdu.event_id == reply.event_id)

            # Both directions of both channels were pinned TLS 1.3.
            for node, other in ((a, b), (b, a)):
                assert node.security.channels.is_encrypted_and_pinned(other.identifier)
            # Nothing went over plain HTTP: the listener refuses it.
            assert a.federation_address is not None
            host, port = a.federation_address
            plain = await trio.to_thread.run_sync(
                functools.partial(
                    httpcore.request, "GET", f"http://{host}:{port}/_matrix/federation/v1/version"
                )
            )
            assert plain.status == 400 and b"TLS" in plain.content


async def _async(value: bool) -> bool:
    return value


async def test_a_node_answering_for_another_identifier_is_refused(tmp_path: Path) -> None:
    """a is told that b's identifier lives at c's address: the pin check refuses c."""
    with trio.fail_after(DEADLINE_S):
        async with contextlib.AsyncExitStack() as stack:
            nodes = []
            for name in "abc":
                nodes.append(
                    await stack.enter_async_context(
                        open_node(tls_config(), data_dir=tmp_path / name, backoff=FAST_BACKOFF)
                    )
                )
            a, b, c = nodes
            assert c.federation_address is not None
            await a.add_peer_address(b.identifier, *c.federation_address)
            with pytest.raises(PeerUnreachable) as caught:
                await a.client.request(
                    b.identifier, "GET", "/_matrix/federation/v1/version", sign=False
                )
            assert caught.value.reason is TransportReason.PIN
            status = a.security.channels.status(b.identifier)
            assert status is not None and status.failure == "key_mismatch"
            assert not a.security.channels.is_encrypted_and_pinned(b.identifier)
            # An invite to b's server user never reaches c, and c stores nothing.
            room = await a.create_room(room_type="support.feline.s2s")
            with pytest.raises(PeerUnreachable):
                await a.invite(room, server_user(b.identifier))
            assert await c.room_ids() == []


async def test_an_origin_that_is_not_the_tls_client_is_refused(tmp_path: Path) -> None:
    """A client showing key 1's certificate but signing as key 2 gets 401 from the node."""
    with trio.fail_after(DEADLINE_S):
        async with two_nodes(tmp_path) as (a, b):
            room = await make_shared_room(a, b)
            assert a.federation_address is not None
            path = build_path("/_matrix/federation/v1/state_ids/{}", room)
            create = (await a.room_state(room))[("m.room.create", "")].event_id
            query = {"event_id": create}
            certificate_key = signing_key_from_seed(os.urandom(32))
            security = build_transport_security(certificate_key, tls=True)
            liar = FederationClient(
                b.key,  # signs as b, a member of the room ...
                lambda name: a.federation_address if name == a.identifier else None,
                tls=security.client,  # ... over someone else's certificate
            )
            try:
                with pytest.raises(RemoteError) as caught:
                    await liar.request(a.identifier, "GET", path, query=query)
                assert caught.value.status == 401
                assert "origin_not_tls_peer" in str(caught.value)
            finally:
                await liar.aclose()
            # b itself, over its own certificate, is answered.
            _, state = await b.client.request(a.identifier, "GET", path, query=query)
            assert isinstance(state, dict) and state["auth_chain_ids"] == []


async def test_the_key_route_serves_clients_without_a_certificate(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE_S):
        async with two_nodes(tmp_path) as (a, _):
            url = f"{a.federation_url}/_matrix/key/v2/server"
            with httpcore.ConnectionPool(ssl_context=bare_tls_context()) as pool:
                response = await trio.to_thread.run_sync(
                    functools.partial(pool.request, "GET", url)
                )
                assert response.status == 200
                assert a.identifier.encode() in response.content
                signed = await trio.to_thread.run_sync(
                    functools.partial(
                        pool.request,
                        "GET",
                        f"{a.federation_url}/_matrix/federation/v1/state_ids/!x:y",
                    )
                )
                assert signed.status == 401  # no X-Matrix, no certificate


async def test_a_replayed_key_document_behind_another_certificate_does_not_verify() -> None:
    """A TLS server with key 1 serving key 2's (valid, public) key document."""
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            key_1 = signing_key_from_seed(os.urandom(32))
            key_2 = signing_key_from_seed(os.urandom(32))
            server = build_transport_security(key_1, tls=True).server
            listeners = await nursery.start(
                functools.partial(
                    serve_http, key_server_router(key_2), host="127.0.0.1", port=0, tls=server
                )
            )
            port = bound_port(listeners)
            ours = build_transport_security(signing_key_from_seed(os.urandom(32)), tls=True)
            async with open_peer_fetcher(tls=ours.client) as fetch:
                with pytest.raises(KeyFetchError, match="certificate"):
                    await fetch("127.0.0.1", port)
                with pytest.raises(VerificationError) as caught:
                    await verify_static_peer("127.0.0.1", port, fetch=fetch)
                assert caught.value.reason is VerifyReason.UNREACHABLE
                assert not ours.channels.is_encrypted_and_pinned(key_2.identifier)
                # A plain fetcher cannot read the TLS listener at all.
            async with open_peer_fetcher(tls=None) as plain:
                with pytest.raises(KeyFetchError):
                    await plain("127.0.0.1", port)
            # The honest server (key 2 serving its own document) verifies and is pinned.
            honest = build_transport_security(key_2, tls=True).server
            listeners = await nursery.start(
                functools.partial(
                    serve_http, key_server_router(key_2), host="127.0.0.1", port=0, tls=honest
                )
            )
            async with open_peer_fetcher(tls=ours.client) as fetch:
                found = await verify_static_peer("127.0.0.1", bound_port(listeners), fetch=fetch)
            assert found == key_2.identifier
            assert ours.channels.is_encrypted_and_pinned(key_2.identifier)
            nursery.cancel_scope.cancel()


async def test_tls_false_warns_loudly_and_runs_plain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(DEADLINE_S):
        with caplog.at_level(logging.WARNING, logger="s2s_node.node"):
            async with two_nodes(tmp_path, tls=False) as (a, b):
                warnings = [r for r in caplog.records if r.getMessage() == WARNING_PLAIN_HTTP]
                assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
                assert a.federation_url.startswith("http://127.0.0.1:")
                await wait_for(lambda: _async(b.peer_book.resolve(a.identifier) is not None))
                room = await make_shared_room(a, b)
                received = b.subscribe(room)
                sent = await a.send_event(room, "m.room.message", {"body": "plain", "msgtype": "t"})
                await next_event(received, lambda pdu: pdu.event_id == sent.event_id)
                (seen,) = b.peers()
                assert seen.verified and not seen.encrypted and not seen.pinned
                assert a.security.channels.all() == []


async def test_a_static_peer_is_probed_marked_unreachable_and_back_never_removed(
    tmp_path: Path,
) -> None:
    changes: list[PeerInfoChange] = []
    with trio.fail_after(DEADLINE_S):
        async with open_node(tls_config(), data_dir=tmp_path / "a") as first:
            assert first.federation_address is not None
            port = first.federation_address[1]
            identifier = first.identifier
        a_config = tls_config(port=port)
        b_config = tls_config([HostPort(host="127.0.0.1", port=port)])
        async with (
            open_node(b_config, data_dir=tmp_path / "b", peering=FAST_PEERING) as b,
            trio.open_nursery() as watchers,
        ):
            watchers.start_soon(collect, b.peer_changes(), changes)
            await trio.sleep(0.3)
            assert b.peers() == []  # a static peer that never answered has no identifier yet

            def alive() -> bool:
                return any(p.identifier == identifier and p.alive for p in b.peers())

            async with open_node(a_config, data_dir=tmp_path / "a"):
                await wait_for(lambda: _async(alive()))
            await wait_for(lambda: _async(not alive()))
            (down,) = b.peers()
            assert (down.static, down.verified, down.alive) == (True, True, False)
            assert b.peer_book.resolve(identifier) == ("127.0.0.1", port)  # static: kept
            async with open_node(a_config, data_dir=tmp_path / "a"):
                await wait_for(lambda: _async(alive()))
            assert [c.kind for c in changes] == [
                ChangeKind.ADDED,
                ChangeKind.VERIFIED,
                ChangeKind.UNREACHABLE,
                ChangeKind.VERIFIED,
            ]
            assert all(c.peer.static and c.peer.identifier == identifier for c in changes)
            assert changes[1].to_json()["kind"] == "verified"
            assert list(changes[1].peer.to_json())[:6] == [
                "identifier",
                "addresses",
                "port",
                "verified",
                "alive",
                "encrypted",
            ]
            watchers.cancel_scope.cancel()


async def collect(stream: PeerChangeStream, into: list[PeerInfoChange]) -> None:
    async with stream:
        async for change in stream:
            into.append(change)
