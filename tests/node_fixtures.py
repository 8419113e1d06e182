"""Real nodes on 127.0.0.1 for the node and federation tests.

`start_node` opens a node (plain HTTP, port 0, discovery off) on a data directory inside the
test's tmp_path and keeps it open on an `AsyncExitStack`; `connect` tells nodes where each
other are (as discovery would). `wait_for` polls a condition under the caller's deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from s2s_node.config import ClientConfig, Config, DiscoveryConfig, FederationConfig, HostPort
from s2s_node.core.events import Pdu
from s2s_node.net.outbound import BackoffPolicy
from s2s_node.net.server import HttpLimits
from s2s_node.node import Node, open_node
from s2s_node.rooms import Subscription

FAST_BACKOFF = BackoffPolicy(initial_s=0.05, factor=2.0, max_s=0.5, request_timeout_s=5.0)


def node_config(peers: Sequence[HostPort] = (), port: int = 0) -> Config:
    return Config(
        peers=tuple(peers),
        federation=FederationConfig(listen=HostPort(host="127.0.0.1", port=port), tls=False),
        discovery=DiscoveryConfig(enabled=False),
        client=ClientConfig(listen=HostPort(host="127.0.0.1", port=0)),
    )


async def start_node(
    stack: contextlib.AsyncExitStack,
    data_dir: Path,
    *,
    peers: Sequence[HostPort] = (),
    port: int = 0,
    cbor: bool = True,
    http_limits: HttpLimits | None = None,
    backoff: BackoffPolicy = FAST_BACKOFF,
) -> Node:
    return await stack.enter_async_context(
        open_node(
            node_config(peers, port),
            data_dir=data_dir,
            cbor=cbor,
            http_limits=http_limits,
            backoff=backoff,
        )
    )


def address_of(node: Node) -> HostPort:
    assert node.federation_address is not None
    host, port = node.federation_address
    return HostPort(host=host, port=port)


async def connect(*nodes: Node) -> None:
    """Every node learns every other node's address."""
    for node in nodes:
        for other in nodes:
            if other is not node:
                address = address_of(other)
                await node.add_peer_address(other.identifier, address.host, address.port)


async def wait_for(condition: Callable[[], Awaitable[bool]], interval: float = 0.02) -> None:
    while not await condition():
        await trio.sleep(interval)


async def next_event(
    subscription: Subscription, predicate: Callable[[Pdu], bool] = lambda _: True
) -> Pdu:
    async for pdu in subscription:
        if predicate(pdu):
            return pdu
    raise AssertionError("subscription ended")


async def make_shared_room(a: Node, *others: Node) -> str:
    """An s2s room created by `a`, which every other node joined."""
    invite = [other.server_user for other in others]
    room = await a.create_room(room_type="support.feline.s2s", invite=invite)
    for other in others:
        await other.join(room, via=a.identifier)
    return room


async def state_ids(node: Node, room: str) -> dict[tuple[str, str], str]:
    state = await node.room_state(room)
    return {key: pdu.event_id for key, pdu in state.items()}
