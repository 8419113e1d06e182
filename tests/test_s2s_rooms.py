"""s2s rooms between two real nodes on 127.0.0.1: the room DESIGN §4 describes, the peer's
automatic join, one live room per pair, `s2s.auto_open`, and server users kept out of ordinary
rooms on both nodes."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import trio
from node_fixtures import FAST_BACKOFF, address_of, connect, node_config, wait_for

from s2s_node.config import Config, RoomsConfig, S2SConfig
from s2s_node.core.auth import AuthError, AuthRule
from s2s_node.core.events import Pdu
from s2s_node.core.ids import server_user
from s2s_node.core.room import RoomGraph
from s2s_node.net.client import RemoteError, build_path
from s2s_node.net.federation import V2
from s2s_node.node import Node, open_node
from s2s_node.s2s import service as service_module


async def start(
    stack: contextlib.AsyncExitStack, data_dir: Path, config: Config | None = None
) -> Node:
    return await stack.enter_async_context(
        open_node(config or node_config(), data_dir=data_dir, backoff=FAST_BACKOFF)
    )


async def joined(node: Node, room: str, user: str) -> bool:
    if await node.rooms.room_rules(room) is None:
        return False
    state = await node.room_state(room)
    member = state.get(("m.room.member", user))
    return member is not None and member.membership == "join"


@pytest.mark.parametrize("version", ["12", "11", "10"])
async def test_s2s_room_as_designed_and_the_peer_joins_by_itself(
    tmp_path: Path, version: str
) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            config = dataclasses.replace(node_config(), rooms=RoomsConfig(default_version=version))
            a = await start(stack, tmp_path / "a", config)
            b = await start(stack, tmp_path / "b")
            await connect(a, b)
            room = await a.create_s2s_room(b.identifier)
            await wait_for(lambda: joined(b, room, b.server_user))
            state = await a.room_state(room)
            create = state[("m.room.create", "")].content
            assert create["type"] == "support.feline.s2s"
            assert create["room_version"] == version
            users = state[("m.room.power_levels", "")].content["users"]
            if version == "12":
                assert create["additional_creators"] == [b.server_user]
                assert users == {}
            else:
                assert users == {a.server_user: 100, b.server_user: 100}
            assert state[("m.room.join_rules", "")].content == {"join_rule": "invite"}
            assert state[("m.room.history_visibility", "")].content == {
                "history_visibility": "shared"
            }
            # One live room per pair, asked from either side.
            assert await a.create_s2s_room(b.identifier) == room
            assert await a.s2s_room_with(b.identifier) == room
            assert await b.s2s_room_with(a.identifier) == room
            assert await b.create_s2s_room(a.identifier) == room
            assert await a.s2s_rooms() == [room]
            assert await b.s2s_rooms() == [room]


async def test_stable_room_type_from_config(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            config = dataclasses.replace(node_config(), s2s=S2SConfig(room_type="stable"))
            a = await start(stack, tmp_path / "a", config)
            b = await start(stack, tmp_path / "b")
            await connect(a, b)
            room = await a.create_s2s_room(b.identifier)
            await wait_for(lambda: joined(b, room, b.server_user))
            state = await b.room_state(room)
            assert state[("m.room.create", "")].content["type"] == "m.s2s"


async def test_invite_from_an_unknown_server_is_not_followed(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            _a, b, room = await _invited_by_a_stranger(stack, tmp_path)
            await wait_for(lambda: _invited(b, room))
            await trio.sleep(0.5)
            assert await b.rooms.room_rules(room) is None


async def _invited_by_a_stranger(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> tuple[Node, Node, str]:
    """Nodes a and b, and an s2s room a created inviting b: a knows b, b does not know a (so
    b's s2s service does not join on its own)."""
    a = await start(stack, tmp_path / "a")
    b = await start(stack, tmp_path / "b")
    address = address_of(b)
    await a.add_peer_address(b.identifier, address.host, address.port)
    return a, b, await a.create_s2s_room(b.identifier)


async def _invited(node: Node, room: str) -> bool:
    return room in node.invites


async def test_auto_open_opens_one_room_with_a_new_peer(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            config = dataclasses.replace(node_config(), s2s=S2SConfig(auto_open=True))
            a = await start(stack, tmp_path / "a", config)
            b = await start(stack, tmp_path / "b", config)
            # the node whose identifier sorts first opens at once; the other defers and
            # then finds the room
            first, second = sorted([a, b], key=lambda n: n.identifier)
            address = address_of(second)
            await first.add_peer_address(second.identifier, address.host, address.port)
            address = address_of(first)
            await second.add_peer_address(first.identifier, address.host, address.port)
            await wait_for(lambda: _has_room(second, first.identifier))
            room = await first.s2s_room_with(second.identifier)
            assert room is not None
            assert await second.s2s_room_with(first.identifier) == room
            assert len(await first.s2s_rooms()) == 1


async def _has_room(node: Node, peer: str) -> bool:
    return await node.s2s_room_with(peer) is not None


async def test_server_users_stay_out_of_ordinary_rooms(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a")
            b = await start(stack, tmp_path / "b")
            await connect(a, b)
            # An ordinary room made by a person of a's node, with a person of b's in it.
            alice = f"@alice:{a.identifier}"
            room = await a.create_room(creator=alice)
            with pytest.raises(AuthError) as caught:
                await a.create_room()  # the server user creates only s2s rooms
            assert caught.value.rule is AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM
            # On a: inviting either server user is refused before anything leaves the node.
            for user in (a.server_user, b.server_user):
                with pytest.raises(AuthError) as caught:
                    await a.invite(room, user, sender=alice)
                assert caught.value.rule is AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM
            # On b: an invite of b's server user into the ordinary room, built and sent by
            # hand past a's own check, is refused by b's /invite (403).
            forged = await _build_unchecked_invite(a, room, alice, b.server_user)
            with pytest.raises(RemoteError) as refused:
                await a.client.request(
                    b.identifier,
                    "PUT",
                    build_path(f"{V2}/invite/{{}}/{{}}", room, forged.event_id),
                    body={
                        "room_version": forged.rules.version,
                        "event": forged.json,
                        "invite_room_state": [
                            (await a.room_state(room))[("m.room.create", "")].json
                        ],
                    },
                )
            assert refused.value.status == 403
            # b's person joins the ordinary room; b's server user cannot (a refuses the
            # make_join template), and the join rules would not help it either.
            await a.invite(room, f"@bob:{b.identifier}", sender=alice)
            await b.join(room, via=a.identifier, user=f"@bob:{b.identifier}")
            with pytest.raises(RemoteError) as caught_join:
                await b.join(room, via=a.identifier)
            assert caught_join.value.status == 403
            # ... and on b's own node, b's server user cannot join it either.
            with pytest.raises(AuthError) as caught:
                await b.send_event(
                    room,
                    "m.room.member",
                    {"membership": "join"},
                    state_key=b.server_user,
                    sender=b.server_user,
                )
            assert caught.value.rule is AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM
            assert server_user(b.identifier) not in {
                k[1] for k in (await b.room_state(room)) if k[0] == "m.room.member"
            }


async def _build_unchecked_invite(node: Node, room: str, sender: str, target: str) -> Pdu:
    """An invite event signed by `node` without the auth check (a misbehaving server)."""

    def build(graph: RoomGraph) -> Pdu:
        return graph.build_event(
            event_type="m.room.member",
            content={"membership": "invite"},
            sender=sender,
            state_key=target,
            now_ms=node.now_ms(),
            server_name=node.identifier,
            signing_key=node.key,
        )

    return await node.rooms.read(room, build)


async def test_a_joining_node_does_not_read_the_dag_per_event_of_its_catch_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting a room's negotiation driver reads the whole DAG. While a node catches up the
    # history of a room it joins, it is not joined yet for most of those events: starting the
    # driver on each of them read the DAG thousands of times (a 10,000-event catch-up ran at
    # under 900 events/s). Only our membership, negotiation events and tombstones start one.
    loads: list[str] = []
    real_load = service_module._load_room

    def counting(store: object, room_id: str) -> object:
        loads.append(room_id)
        return real_load(store, room_id)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "_load_room", counting)
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            # b learns a only after the fill, so it does not auto-join.
            a, b, room = await _invited_by_a_stranger(stack, tmp_path)
            for i in range(1100):  # more than two ingest chunks of 500
                await a.send_event(room, "m.room.message", {"msgtype": "m.text", "body": str(i)})
            await connect(a, b)
            loads.clear()
            await b.join(room, via=a.identifier)
            await wait_for(lambda: joined(b, room, b.server_user))
            assert len(loads) <= 4, loads
            # The driver still starts when it is needed: a negotiation from a reaches b's.
            await a.propose_upgrade(room, {"12": 100}, wait=False)
            await wait_for(lambda: _negotiates(b, room))


async def _negotiates(node: Node, room: str) -> bool:
    return bool(await node.negotiations(room))
