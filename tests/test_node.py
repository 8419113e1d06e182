"""Two and three real nodes on 127.0.0.1: rooms across nodes through the Python API."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from node_fixtures import (
    address_of,
    connect,
    make_shared_room,
    next_event,
    start_node,
    state_ids,
    wait_for,
)

from s2s_node.core.auth import AuthError, AuthRule
from s2s_node.core.ids import RoomId
from s2s_node.net.client import RemoteError, build_path
from s2s_node.rooms import LocalEvent


async def test_two_nodes_create_invite_join_and_exchange_events(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            # b learns a from its static peer list (key document), a learns b as discovery would
            b = await start_node(stack, tmp_path / "b", peers=[address_of(a)])
            address = address_of(b)
            await a.add_peer_address(b.identifier, address.host, address.port)
            await wait_for(lambda: _resolved(b, a.identifier))

            invites = b.subscribe()
            room = await a.create_room(room_type="support.feline.s2s")
            await a.invite(room, b.server_user)
            invite = await next_event(invites, lambda p: p.room_id == room)
            assert invite.membership == "invite"
            assert room in b.invites

            join = await b.join(room, via=a.identifier)
            assert join.sender == b.server_user
            assert b.join_state_mismatches == 0  # the resident's state is the one computed here
            assert await b.servers_in_room(room) == {a.identifier, b.identifier}
            # a learns of the join from its own send_join handling
            assert await a.servers_in_room(room) == {a.identifier, b.identifier}

            on_b = b.subscribe(room)
            sent = await a.send_event(room, "m.test", {"from": "a"})
            got = await next_event(on_b, lambda p: p.type == "m.test")
            assert got.event_id == sent.event_id
            assert got.content == {"from": "a"}

            on_a = a.subscribe(room)
            reply = await b.send_event(room, "m.test", {"from": "b"})
            got = await next_event(on_a, lambda p: p.type == "m.test")
            assert got.event_id == reply.event_id
            assert await state_ids(a, room) == await state_ids(b, room)


async def _resolved(node: object, identifier: str) -> bool:
    from s2s_node.node import Node

    assert isinstance(node, Node)
    return node.peer_book.resolve(identifier) is not None


async def test_three_nodes_converge_after_concurrent_state_changes(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            c = await start_node(stack, tmp_path / "c")
            await connect(a, b, c)
            room = await make_shared_room(a, b, c)
            await wait_for(
                lambda: _all_see_servers(
                    room, (a, b, c), {a.identifier, b.identifier, c.identifier}
                )
            )
            # Concurrent state changes on two nodes: same key, different values.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.send_event, room, "m.room.topic", {"topic": "from a"}, "")
                nursery.start_soon(b.send_event, room, "m.room.topic", {"topic": "from b"}, "")
                nursery.start_soon(c.send_event, room, "m.room.name", {"name": "from c"}, "")

            async def converged() -> bool:
                states = [await state_ids(n, room) for n in (a, b, c)]
                return (
                    states[0] == states[1] == states[2]
                    and ("m.room.name", "") in states[0]
                    and await _extremities_merged((a, b, c), room)
                )

            await wait_for(converged)
            topic = (await a.room_state(room))[("m.room.topic", "")]
            assert topic.content["topic"] in ("from a", "from b")


async def _all_see_servers(room: str, nodes: tuple[object, ...], servers: set[str]) -> bool:
    from s2s_node.node import Node

    for node in nodes:
        assert isinstance(node, Node)
        if await node.servers_in_room(room) != servers:
            return False
    return True


async def _extremities_merged(nodes: tuple[object, ...], room: str) -> bool:
    """Every node has every other node's events (same set of forward extremities)."""
    from s2s_node.node import Node

    seen = []
    for node in nodes:
        assert isinstance(node, Node)
        seen.append(await node.rooms.read(room, lambda g: g.forward_extremities))
    return all(s == seen[0] for s in seen)


async def test_server_user_creates_only_s2s_rooms(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            with pytest.raises(AuthError) as caught:
                await a.create_room(room_type=None)
            assert caught.value.rule is AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM
            assert await a.room_ids() == []
            # An ordinary room is created by a local non-server user.
            alice = f"@alice:{a.identifier}"
            room = await a.create_room(room_type=None, creator=alice)
            state = await a.room_state(room)
            assert state[("m.room.member", alice)].membership == "join"


async def test_invite_of_server_user_into_ordinary_room_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            alice = f"@alice:{a.identifier}"
            room = await a.create_room(room_type=None, creator=alice)
            # Refused here before anything is sent...
            with pytest.raises(AuthError) as refused:
                await a.invite(room, b.server_user, sender=alice)
            assert refused.value.rule is AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM
            # ...and by the invited server when a sender does not check.
            invite = LocalEvent(
                event_type="m.room.member",
                content={"membership": "invite"},
                sender=alice,
                state_key=b.server_user,
            )
            pdu = await a.rooms.write(
                lambda store: a.rooms._build(a.rooms._graph(store, RoomId(room)), invite)
            )
            create = (await a.room_state(room))[("m.room.create", "")]
            with pytest.raises(RemoteError) as caught:
                await a.client.request(
                    b.identifier,
                    "PUT",
                    build_path("/_matrix/federation/v2/invite/{}/{}", room, pdu.event_id),
                    body={
                        "room_version": "12",
                        "event": pdu.json,
                        "invite_room_state": [create.json],
                    },
                )
            assert caught.value.status == 403
            assert caught.value.errcode == "M_FORBIDDEN"
            assert AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM.value in (caught.value.error or "")
            assert room not in b.invites
            assert ("m.room.member", b.server_user) not in await a.room_state(room)
            # A non-server user of b may be invited into the ordinary room.
            bob = f"@bob:{b.identifier}"
            await a.invite(room, bob, sender=alice)
            assert (await a.room_state(room))[("m.room.member", bob)].membership == "invite"
