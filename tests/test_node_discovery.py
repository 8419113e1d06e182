"""Discovery wired into the node (issue 6 at the node level): two real nodes over TLS whose
zeroconf is bound to 127.0.0.1 find and verify each other, open a room with no static peer,
see a departure, and deliver a queued event when the peer is rediscovered (the wake).

Nothing here touches the host's real interfaces: the autouse `loopback_only` fixture (from
discovery_fixtures) replaces `zeroconf.Zeroconf` with a guard that refuses any `interfaces` but
["127.0.0.1"]. Other programs may use mDNS on loopback too, so assertions are about our own
identifiers only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import trio
from discovery_fixtures import FAST_DISCOVERY, LOOPBACK, loopback_only  # noqa: F401 -- autouse
from node_fixtures import FAST_BACKOFF, make_shared_room, next_event

from s2s_node.config import ClientConfig, Config, DiscoveryConfig, FederationConfig, HostPort
from s2s_node.core.peers import ChangeKind
from s2s_node.net.outbound import BackoffPolicy
from s2s_node.net.peering import PeeringTiming
from s2s_node.node import Node, open_node
from s2s_node.peerinfo import PeerInfo, PeerInfoChange

DEADLINE_S = 40.0
# The bound for discovering and verifying a peer.
DISCOVERY_BOUND_S = 5.0
FAST = PeeringTiming(discovery=FAST_DISCOVERY)
# A back-off far longer than the test: a delivery that happens anyway was woken.
SLOW_BACKOFF = BackoffPolicy(initial_s=120.0, max_s=120.0, request_timeout_s=5.0)


def discovery_config(*, tls: bool = True) -> Config:
    return Config(
        federation=FederationConfig(listen=HostPort(host="127.0.0.1", port=0), tls=tls),
        discovery=DiscoveryConfig(enabled=True, interfaces=tuple(LOOPBACK)),
        client=ClientConfig(listen=HostPort(host="127.0.0.1", port=0)),
    )


def open_discovering_node(
    data_dir: Path, *, backoff: BackoffPolicy = FAST_BACKOFF, tls: bool = True
) -> contextlib.AbstractAsyncContextManager[Node]:
    return open_node(discovery_config(tls=tls), data_dir=data_dir, backoff=backoff, peering=FAST)


def usable(node: Node, other: Node) -> PeerInfo | None:
    info = next((p for p in node.peers() if p.identifier == other.identifier), None)
    return info if info is not None and info.verified and info.alive else None


async def until(condition: Any, interval: float = 0.05) -> None:
    while not condition():
        await trio.sleep(interval)


async def collect(stream: Any, into: list[PeerInfoChange]) -> None:
    async for change in stream:
        into.append(change)


def kinds(changes: list[PeerInfoChange], identifier: str) -> list[ChangeKind]:
    return [c.kind for c in changes if c.peer.identifier == identifier]


async def test_two_nodes_discover_verify_open_a_room_and_see_departure(tmp_path: Path) -> None:
    changes: list[PeerInfoChange] = []
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as watchers:
            async with open_discovering_node(tmp_path / "a", backoff=SLOW_BACKOFF) as a:
                watchers.start_soon(collect, a.peer_changes(), changes)
                async with open_discovering_node(tmp_path / "b") as b:
                    started = trio.current_time()
                    await until(lambda: usable(a, b) and usable(b, a))
                    assert trio.current_time() - started < DISCOVERY_BOUND_S
                    seen = usable(a, b)
                    assert seen is not None and b.federation_address is not None
                    assert seen.endpoint == b.federation_address
                    assert (seen.static, seen.discovered, seen.tls) == (False, True, True)
                    assert seen.encrypted and seen.pinned  # the key fetch was pinned TLS
                    assert set(seen.encodings) == {"json", "cbor"}
                    assert a.peer_book.resolve(b.identifier) == b.federation_address
                    assert a.peer_book.reads_cbor(b.identifier)
                    # The watcher task may not have taken the VERIFIED change off its stream yet.
                    await until(lambda: ChangeKind.VERIFIED in kinds(changes, b.identifier))
                    assert kinds(changes, b.identifier)[:2] == [
                        ChangeKind.ADDED,
                        ChangeKind.VERIFIED,
                    ]
                    assert a.identifier not in [p.identifier for p in a.peers()]

                    # No static peer anywhere: the room is opened through what was discovered.
                    room = await make_shared_room(a, b)
                    received = b.subscribe(room)
                    sent = await a.send_event(
                        room, "m.room.message", {"body": "hi", "msgtype": "t"}
                    )
                    await next_event(received, lambda pdu: pdu.event_id == sent.event_id)
                    assert a.security.channels.is_encrypted_and_pinned(b.identifier)
                    b_data = b.data_dir

                # b stopped: its goodbye removes it from a's peers and address book.
                gone = trio.current_time()
                await until(lambda: all(p.identifier != b.identifier for p in a.peers()))
                assert trio.current_time() - gone < 3.0
                assert kinds(changes, b.identifier)[-1] is ChangeKind.DEPARTED
                assert a.peer_book.resolve(b.identifier) is None

                # a writes while b is away: the delivery fails (no address) and backs off 120 s.
                queued = await a.send_event(
                    room, "m.room.message", {"body": "later", "msgtype": "t"}
                )
                await trio.sleep(0.3)

                # b comes back on a new port: rediscovery re-adds it and wakes a's queue.
                async with open_discovering_node(b_data) as b_again:
                    assert b_again.identifier == b.identifier
                    received = b_again.subscribe(room)
                    await until(lambda: usable(a, b_again))
                    assert a.peer_book.resolve(b.identifier) == b_again.federation_address
                    with trio.fail_after(10):
                        await next_event(received, lambda pdu: pdu.event_id == queued.event_id)
                    assert kinds(changes, b.identifier)[-1] is ChangeKind.VERIFIED
            watchers.cancel_scope.cancel()


async def test_a_tls_node_does_not_use_a_plain_peer(tmp_path: Path) -> None:
    """TXT `tls` differs: each side's key fetch fails against the other's listener, so the
    peer stays unverified and is never put in the address book."""
    with trio.fail_after(DEADLINE_S):
        async with (
            open_discovering_node(tmp_path / "a") as a,
            open_discovering_node(tmp_path / "b", tls=False) as b,
        ):
            await until(
                lambda: (
                    any(p.identifier == b.identifier for p in a.peers())
                    and any(p.identifier == a.identifier for p in b.peers())
                )
            )
            await trio.sleep(1.0)  # several verification attempts
            (seen_by_a,) = [p for p in a.peers() if p.identifier == b.identifier]
            (seen_by_b,) = [p for p in b.peers() if p.identifier == a.identifier]
            assert (seen_by_a.tls, seen_by_b.tls) == (False, True)
            assert not seen_by_a.verified and not seen_by_b.verified
            assert a.peer_book.resolve(b.identifier) is None
            assert b.peer_book.resolve(a.identifier) is None
