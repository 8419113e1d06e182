"""Discovery over zeroconf bound to 127.0.0.1, and the service with injected fetchers.

Nothing here touches the host's real interfaces: the autouse `loopback_only` fixture (from
discovery_fixtures) replaces `zeroconf.Zeroconf` with a guard that refuses any `interfaces` but
["127.0.0.1"] before a socket is opened (a test below proves the guard trips). Other programs on
this machine may use mDNS on loopback at the same time, so assertions are about our own
identifiers, never about totals.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import zeroconf
from discovery_fixtures import FAST_DISCOVERY as FAST
from discovery_fixtures import LOOPBACK, loopback_only  # noqa: F401 -- the autouse fixture
from netns_node import key_server_router

from s2s_node.core.canonical import JsonValue
from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.peers import (
    SERVICE_TYPE,
    AdvertReason,
    ChangeKind,
    KeyDocumentReason,
    PeerChange,
    build_instance_name,
    build_key_document,
    build_txt,
)
from s2s_node.core.signing import sign_json
from s2s_node.discovery import (
    Discovery,
    DiscoveryTiming,
    KeyFetchError,
    VerificationError,
    VerifyReason,
    open_discovery,
    verify_static_peer,
)
from s2s_node.discovery.bridge import MdnsInbox, MdnsObservation
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route, Router
from s2s_node.net.server import bound_port, serve_http

# Every zeroconf test must finish well within this.
DEADLINE_S = 20.0


def new_key() -> SigningKey:
    return signing_key_from_seed(os.urandom(32))


async def start_server(nursery: trio.Nursery, router: Router, port: int = 0) -> int:
    listeners = await nursery.start(
        functools.partial(serve_http, router, host="127.0.0.1", port=port)
    )
    return bound_port(listeners)


@dataclass
class Node:
    key: SigningKey
    port: int
    discovery: Discovery
    changes: list[PeerChange] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)

    @property
    def identifier(self) -> str:
        return self.key.identifier

    def kinds(self, identifier: str) -> list[ChangeKind]:
        return [c.kind for c in self.changes if c.peer.identifier == identifier]


@asynccontextmanager
async def open_node(
    nursery: trio.Nursery,
    *,
    key: SigningKey | None = None,
    port: int | None = None,
    timing: DiscoveryTiming = FAST,
) -> AsyncIterator[Node]:
    key = key or new_key()
    if port is None:
        port = await start_server(nursery, key_server_router(key))
    woken: list[str] = []
    async with open_discovery(
        key.identifier, port, interfaces=LOOPBACK, timing=timing, on_wake=woken.append
    ) as discovery:
        node = Node(key=key, port=port, discovery=discovery, woken=woken)
        async with trio.open_nursery() as inner:

            async def record() -> None:
                async for change in discovery.changes():
                    node.changes.append(change)

            inner.start_soon(record)
            await trio.sleep(0)
            yield node
            inner.cancel_scope.cancel()


async def until(condition: Callable[[], bool], interval: float = 0.05) -> None:
    while not condition():
        await trio.sleep(interval)


# ----------------------------------------------------------------------------------------------
# The guard and the arguments


async def test_the_guard_refuses_real_interfaces() -> None:
    key = new_key()
    with pytest.raises(AssertionError, match=r"InterfaceChoice\.All"):
        async with open_discovery(key.identifier, 8448, interfaces="all"):
            pass


async def test_bad_arguments_are_refused_before_zeroconf_starts(loopback_only: list[Any]) -> None:  # noqa: F811
    key = new_key()
    for kwargs in (
        {"identifier": "example.org", "port": 8448, "interfaces": LOOPBACK},
        {"identifier": key.identifier, "port": 0, "interfaces": LOOPBACK},
        {"identifier": key.identifier, "port": 8448, "interfaces": ["eth0"]},
        {"identifier": key.identifier, "port": 8448, "interfaces": []},
    ):
        with pytest.raises(ValueError):
            async with open_discovery(**kwargs):  # type: ignore[arg-type]
                pass
    assert loopback_only == []


# ----------------------------------------------------------------------------------------------
# The bridge


async def test_inbox_coalesces_per_name_and_drops_past_capacity() -> None:
    inbox = MdnsInbox(trio.lowlevel.current_trio_token(), capacity=2)

    def producer() -> None:  # a thread trio did not create, like zeroconf's
        inbox.put(MdnsObservation(name="a", present=True, port=1))
        inbox.put(MdnsObservation(name="b", present=True, port=1))
        inbox.put(MdnsObservation(name="a", present=False))  # supersedes a's first
        inbox.put(MdnsObservation(name="c", present=True, port=1))  # third name: dropped

    thread = threading.Thread(target=producer)
    thread.start()
    await trio.to_thread.run_sync(thread.join)
    with trio.fail_after(2):
        batch = await inbox.get_batch()
    assert [(o.name, o.present) for o in batch] == [("b", True), ("a", False)]
    assert (inbox.coalesced, inbox.dropped, inbox.delivered) == (1, 1, 2)
    # Drained: the next batch waits for the next observation.
    with trio.move_on_after(0.1) as scope:
        await inbox.get_batch()
    assert scope.cancelled_caught
    inbox.put(MdnsObservation(name="c", present=True, port=1))
    with trio.fail_after(2):
        assert [o.name for o in await inbox.get_batch()] == ["c"]
    inbox.close()
    inbox.put(MdnsObservation(name="d", present=True, port=1))  # after close: discarded
    with trio.move_on_after(0.1) as scope:
        await inbox.get_batch()
    assert scope.cancelled_caught


async def test_inbox_many_threads_lose_nothing_under_capacity() -> None:
    inbox = MdnsInbox(trio.lowlevel.current_trio_token(), capacity=1000)
    names = [f"n{i}" for i in range(400)]

    def producer(part: list[str]) -> None:
        for name in part:
            inbox.put(MdnsObservation(name=name, present=True, port=1))

    threads = [threading.Thread(target=producer, args=(names[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    seen: set[str] = set()
    with trio.fail_after(5):
        while len(seen) < len(names):
            seen.update(o.name for o in await inbox.get_batch())
    for thread in threads:
        await trio.to_thread.run_sync(thread.join)
    assert seen == set(names) and inbox.dropped == 0


# ----------------------------------------------------------------------------------------------
# Two real discovery instances on loopback


async def test_two_nodes_find_verify_and_see_the_goodbye() -> None:
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            async with open_node(nursery) as a:
                async with open_node(nursery) as b:
                    start = trio.current_time()
                    await until(
                        lambda: (
                            a.discovery.resolve(b.identifier) == ("127.0.0.1", b.port)
                            and b.discovery.resolve(a.identifier) == ("127.0.0.1", a.port)
                        )
                    )
                    found_in = trio.current_time() - start
                    assert found_in < 5.0
                    assert a.kinds(b.identifier)[:2] == [ChangeKind.ADDED, ChangeKind.VERIFIED]
                    assert a.woken.count(b.identifier) == 1 and b.identifier not in b.woken
                    peer = a.discovery.peer(b.identifier)
                    assert peer is not None and peer.usable
                    assert peer.encodings == frozenset({"json", "cbor"})
                    assert peer.room_versions == ("10", "11", "12")
                    assert a.discovery.stats.own_records >= 1
                    mdns = a.discovery.mdns
                    assert mdns is not None
                    await until(lambda: mdns.stats.registered)  # the last announcement is out
                    # Probes keep succeeding without noise.
                    await trio.sleep(0.6)
                    assert a.kinds(b.identifier) == [ChangeKind.ADDED, ChangeKind.VERIFIED]
                gone = trio.current_time()
                await until(lambda: a.discovery.peer(b.identifier) is None)
                # The goodbye, not the probes (those would need 4 x 0.2 s and say UNREACHABLE).
                assert a.kinds(b.identifier)[-1] is ChangeKind.DEPARTED
                assert ChangeKind.UNREACHABLE not in a.kinds(b.identifier)
                assert trio.current_time() - gone < 2.0
            nursery.cancel_scope.cancel()


async def test_crashed_peer_is_probed_away_and_woken_when_back() -> None:
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            b_key = new_key()

            # B's HTTP server runs in its own scope so it can "crash" while its mDNS stays.
            async def b_http(
                scope: trio.CancelScope, port: int, task_status: trio.TaskStatus[int]
            ) -> None:
                with scope:
                    async with trio.open_nursery() as n:
                        listeners = await n.start(
                            functools.partial(
                                serve_http, key_server_router(b_key), host="127.0.0.1", port=port
                            )
                        )
                        task_status.started(bound_port(listeners))
                        await trio.sleep_forever()

            crash = trio.CancelScope()
            b_port = await nursery.start(b_http, crash, 0)
            async with (
                open_node(nursery) as a,
                open_node(nursery, key=b_key, port=b_port) as b,
            ):
                await until(lambda: a.discovery.resolve(b.identifier) is not None)
                crashed = trio.current_time()
                crash.cancel()  # B's server is gone; no mDNS goodbye
                await until(lambda: ChangeKind.UNREACHABLE in a.kinds(b.identifier))
                unreachable_in = trio.current_time() - crashed
                assert a.discovery.resolve(b.identifier) is None
                await until(lambda: a.discovery.peer(b.identifier) is None)
                departed_in = trio.current_time() - crashed
                # 2 and 4 failed probes at 0.2 s intervals (0.5 s timeouts), far under any TTL.
                assert unreachable_in < 2.0 and departed_in < 3.0
                assert a.discovery.stats.probes_failed >= 4
                woken_before = a.woken.count(b.identifier)
                # B comes back on the same port: mDNS has nothing new to say, the dormant probe
                # finds it and wakes it.
                await nursery.start(b_http, trio.CancelScope(), b_port)
                await until(lambda: a.discovery.resolve(b.identifier) == ("127.0.0.1", b_port))
                assert a.woken.count(b.identifier) == woken_before + 1
                assert a.kinds(b.identifier)[-2:] == [ChangeKind.ADDED, ChangeKind.VERIFIED]
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------------------------
# Hostile advertisements and spoofs over the wire


def forged_document_router(claimed: str, signer: SigningKey, *, claimed_key: bytes) -> Router:
    """Serves a key document naming `claimed` (with `claimed_key`) but signed by `signer`."""

    async def handler(request: Request) -> Response:
        document: dict[str, Any] = {
            "server_name": claimed,
            "verify_keys": {"ed25519:1": {"key": _b64(claimed_key)}},
            "old_verify_keys": {},
            "valid_until_ts": 2**50,
        }
        return build_response(sign_json(document, claimed, signer))

    return Router([Route(method="GET", pattern="/_matrix/key/v2/server", handler=handler)])


def _b64(raw: bytes) -> str:
    from s2s_node.core.canonical import encode_base64

    return encode_base64(raw)


def service(name_label: str, port: int, txt: bytes | dict[str, str]) -> zeroconf.ServiceInfo:
    return zeroconf.ServiceInfo(
        SERVICE_TYPE,
        f"{name_label}.{SERVICE_TYPE}",
        port=port,
        properties=txt,
        server=f"spoof-{os.urandom(4).hex()}.local.",
        addresses=[bytes([127, 0, 0, 1])],
        host_ttl=20,
        other_ttl=20,
    )


async def register_without_probing(zc: Any, info: zeroconf.ServiceInfo) -> None:
    """Announce a name even if someone else holds it (as an attacker would)."""
    await trio.to_thread.run_sync(
        functools.partial(zc.register_service, info, cooperating_responders=True)
    )


def raw_txt(*entries: bytes) -> bytes:
    return b"".join(bytes([len(e)]) + e for e in entries)


async def test_hostile_txt_and_spoofed_adverts_are_ignored_and_counted() -> None:
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            async with open_node(nursery) as a, open_node(nursery) as b:
                await until(lambda: a.discovery.resolve(b.identifier) is not None)
                # Nodes that are not running, whose identifiers a spoofer claims.
                victim, victim2, victim3 = new_key(), new_key(), new_key()
                spoofer = new_key()
                v, v2, v3 = victim.identifier, victim2.identifier, victim3.identifier
                forged_key_port = await start_server(
                    nursery,
                    forged_document_router(v2, spoofer, claimed_key=spoofer.verify_key_bytes),
                )
                forged_sig_port = await start_server(
                    nursery,
                    forged_document_router(v3, spoofer, claimed_key=victim3.verify_key_bytes),
                )
                other = new_key().identifier
                hostile = {
                    "sn lies": service(other, a.port, build_txt(new_key().identifier)),
                    "sn not an id": service(
                        new_key().identifier, a.port, {"v": "1", "sn": "x.org"}
                    ),
                    "no sn": service(new_key().identifier, a.port, {"v": "1"}),
                    "v=2": service(new_key().identifier, a.port, {**build_txt(other), "v": "2"}),
                    "not an id": service("hello-world", a.port, build_txt(other)),
                    "oversized": service(
                        new_key().identifier, a.port, raw_txt(*[b"x=" + b"y" * 250] * 4)
                    ),
                    "not utf-8": service(
                        new_key().identifier, a.port, raw_txt(b"v=1", b"sn=\xff\xfe\xfd")
                    ),
                    "bad length": service(new_key().identifier, a.port, b"\x03v=1\x40sn="),
                    "poses as a": service(a.identifier, b.port, build_txt(a.identifier)),
                    # Someone else's identifier on our (A's) port: A's document names A.
                    "victim on a's port": service(v, a.port, build_txt(v)),
                }
                # Forged documents at other ports: B sees these (A sees the one above).
                on_other_ports = {
                    "victim, wrong key": service(v2, forged_key_port, build_txt(v2)),
                    "victim, forged signature": service(v3, forged_sig_port, build_txt(v3)),
                }
                # B's own identifier, announced (without probing) at A's port.
                spoof_b = service(b.identifier, a.port, build_txt(b.identifier))
                zc = await trio.to_thread.run_sync(
                    lambda: zeroconf.Zeroconf(
                        interfaces=LOOPBACK, ip_version=zeroconf.IPVersion.V4Only
                    )
                )
                try:
                    async with trio.open_nursery() as registering:
                        for info in hostile.values():
                            registering.start_soon(register_without_probing, zc, info)
                    await until(
                        lambda: (
                            a.discovery.stats.key_document_rejected[
                                KeyDocumentReason.SERVER_NAME_MISMATCH
                            ]
                            > 0
                            and len(a.discovery.stats.recent_ignored) >= 8
                        )
                    )
                    ignored = {r for _, r in a.discovery.stats.recent_ignored}
                    assert {
                        AdvertReason.SERVER_NAME_MISMATCH,
                        AdvertReason.SERVER_NAME_NOT_IDENTIFIER,
                        AdvertReason.MISSING_SERVER_NAME,
                        AdvertReason.UNSUPPORTED_VERSION,
                        AdvertReason.INSTANCE_NOT_IDENTIFIER,
                        AdvertReason.TXT_TOO_LARGE,
                        AdvertReason.TXT_MALFORMED,
                        AdvertReason.OWN_IDENTIFIER,
                    } <= ignored
                    # The victim is listed (TXT is a hint) but never verified nor resolvable.
                    assert a.discovery.resolve(v) is None
                    victim_peer = a.discovery.peer(v)
                    assert victim_peer is not None and not victim_peer.verified
                    assert ChangeKind.VERIFIED not in a.kinds(v)

                    # Now the two forged documents elsewhere, and the spoof of B.
                    await trio.to_thread.run_sync(
                        zc.unregister_service, hostile["victim on a's port"]
                    )
                    async with trio.open_nursery() as registering:
                        for info in [*on_other_ports.values(), spoof_b]:
                            registering.start_soon(register_without_probing, zc, info)
                    rejected = b.discovery.stats.key_document_rejected
                    await until(
                        lambda: (
                            rejected[KeyDocumentReason.KEY_MISMATCH] > 0
                            and rejected[KeyDocumentReason.BAD_SIGNATURE] > 0
                        )
                    )
                    for spoofed in (v, v2, v3):
                        assert b.discovery.resolve(spoofed) is None
                        assert ChangeKind.VERIFIED not in b.kinds(spoofed)
                    # Whatever the spoof of B did to A's cache, A still reaches B where B is.
                    await trio.sleep(1.0)
                    # A saw the spoof (B's advertised port is now A's), tried it, refused it, and
                    # still reaches B where B was verified.
                    await until(lambda: ChangeKind.UPDATED in a.kinds(b.identifier))
                    b_peer = a.discovery.peer(b.identifier)
                    assert b_peer is not None and b_peer.port == a.port
                    assert a.discovery.resolve(b.identifier) == ("127.0.0.1", b.port)
                    assert a.woken.count(b.identifier) == 1
                    # Nothing crashed: the browsers are alive and no callback failed.
                    for node in (a, b):
                        assert node.discovery.mdns is not None
                        assert node.discovery.mdns.stats.handler_errors == 0
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(zc.close)
            nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------------------------
# The service with injected fetchers (no zeroconf)


@asynccontextmanager
async def bare_discovery(
    fetch: Callable[[str, int], Any], **kwargs: Any
) -> AsyncIterator[Discovery]:
    key = new_key()
    discovery = Discovery(
        identifier=key.identifier,
        port=8448,
        fetch=fetch,
        timing=kwargs.pop("timing", FAST),
        on_wake=kwargs.pop("on_wake", None),
        inbox=MdnsInbox(trio.lowlevel.current_trio_token()),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        yield discovery
        nursery.cancel_scope.cancel()


def seen(key: SigningKey, port: int = 9000, address: str = "10.9.0.1") -> MdnsObservation:
    return MdnsObservation(
        name=build_instance_name(key.identifier),
        present=True,
        port=port,
        addresses=(address,),
        txt=raw_txt(*(f"{k}={v}".encode() for k, v in build_txt(key.identifier).items())),
    )


async def test_verification_retries_until_the_peer_answers() -> None:
    peer = new_key()
    calls: list[tuple[str, int]] = []

    async def fetch(host: str, port: int) -> JsonValue:
        calls.append((host, port))
        if len(calls) < 3:
            raise KeyFetchError("connection refused")
        return build_key_document(peer, valid_until_ts=2**50)

    woken: list[str] = []
    with trio.fail_after(DEADLINE_S):
        async with bare_discovery(fetch, on_wake=woken.append) as discovery:
            discovery.handle_observation(seen(peer))
            discovery.handle_observation(seen(peer))  # no second verification task
            await until(lambda: discovery.resolve(peer.identifier) is not None)
            assert calls[:3] == [("10.9.0.1", 9000)] * 3
            assert discovery.stats.verify_failed[VerifyReason.UNREACHABLE] == 2
            assert woken == [peer.identifier]


async def test_a_broken_fetcher_or_wake_callback_is_counted_not_fatal() -> None:
    peer = new_key()

    async def fetch(host: str, port: int) -> JsonValue:
        raise RuntimeError("bug in an injected fetcher")

    def wake(identifier: str) -> None:
        raise RuntimeError("bug in the node")

    with trio.fail_after(DEADLINE_S):
        async with bare_discovery(fetch, on_wake=wake) as discovery:
            discovery.handle_observation(seen(peer))
            await until(lambda: discovery.stats.verify_failed[VerifyReason.BAD_RESPONSE] >= 2)
            assert discovery.resolve(peer.identifier) is None

        async def good(host: str, port: int) -> JsonValue:
            return build_key_document(peer, valid_until_ts=2**50)

        async with bare_discovery(good, on_wake=wake) as discovery:
            discovery.handle_observation(seen(peer))
            await until(lambda: discovery.resolve(peer.identifier) is not None)
            assert discovery.stats.wake_errors == 1


async def test_a_slow_subscriber_loses_changes_not_the_table() -> None:
    async def fetch(host: str, port: int) -> JsonValue:
        raise KeyFetchError("down")

    with trio.fail_after(DEADLINE_S):
        async with bare_discovery(fetch) as discovery:
            first = trio.Event()

            async def slow() -> None:
                async with discovery.changes() as stream:
                    async for _ in stream:
                        first.set()
                        await trio.sleep_forever()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                await trio.sleep(0.01)
                keys = [new_key() for _ in range(300)]
                for key in keys:
                    discovery.handle_observation(seen(key))
                await first.wait()
                assert len(discovery.peers()) == 300
                assert discovery.stats.changes_dropped == 300 - 1 - 256
                nursery.cancel_scope.cancel()


async def test_goodbye_and_garbage_goodbyes() -> None:
    peer = new_key()

    async def fetch(host: str, port: int) -> JsonValue:
        return build_key_document(peer, valid_until_ts=2**50)

    with trio.fail_after(DEADLINE_S):
        async with bare_discovery(fetch) as discovery:
            discovery.handle_observation(MdnsObservation(name="junk", present=False))
            discovery.handle_observation(seen(peer))
            await until(lambda: discovery.resolve(peer.identifier) is not None)
            discovery.handle_observation(
                MdnsObservation(name=build_instance_name(peer.identifier), present=False)
            )
            assert discovery.peer(peer.identifier) is None


# ----------------------------------------------------------------------------------------------
# Static peers


async def test_verify_static_peer() -> None:
    key = new_key()

    async def not_found(request: Request) -> Response:
        return build_response({"errcode": "M_UNRECOGNIZED"}, status=404)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, key_server_router(key))
            assert await verify_static_peer("127.0.0.1", port) == key.identifier
            other = await start_server(
                nursery, Router([Route(method="GET", pattern="/x", handler=not_found)])
            )
            with pytest.raises(VerificationError) as info:
                await verify_static_peer("127.0.0.1", other)
            assert info.value.reason is VerifyReason.UNREACHABLE
            forged = await start_server(
                nursery,
                forged_document_router(key.identifier, new_key(), claimed_key=key.verify_key_bytes),
            )
            with pytest.raises(VerificationError) as info:
                await verify_static_peer("127.0.0.1", forged)
            assert info.value.key_document_reason is KeyDocumentReason.BAD_SIGNATURE
            nursery.cancel_scope.cancel()
        with pytest.raises(VerificationError) as info:
            await verify_static_peer("127.0.0.1", port)  # nothing listens any more
        assert info.value.reason is VerifyReason.UNREACHABLE
