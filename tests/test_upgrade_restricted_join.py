"""Restricted joins (digest 7.2/7.3), which let the peer into a successor room without an
invite: the resident names its authorising user in the make_join template and countersigns
the join in send_join; non-members and rooms the resident does not know are refused."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from node_fixtures import connect, start_node, wait_for

from s2s_node.core.ids import RoomId
from s2s_node.net.client import RemoteError
from s2s_node.node import Node


async def _joined(node: Node, room: str) -> bool:
    if await node.rooms.room_rules(room) is None:
        return False
    member = (await node.room_state(room)).get(("m.room.member", node.server_user))
    return member is not None and member.membership == "join"


async def _restricted_room(node: Node, allowed: str) -> RoomId:
    return await node.rooms.create_room(
        creator=node.server_user,
        room_version="12",
        room_type="support.feline.s2s",
        join_rule="restricted",
        join_allow=[{"type": "m.room_membership", "room_id": allowed}],
    )


async def test_members_of_the_allowed_room_join_others_are_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            c = await start_node(stack, tmp_path / "c")
            await connect(a, b, c)
            old = await a.create_s2s_room(b.identifier)
            await wait_for(lambda: _joined(b, old))
            new = await _restricted_room(a, old)

            join = await b.join(new, via=a.identifier)
            assert join.content["join_authorised_via_users_server"] == a.server_user
            # countersigned by the authorising server before it was stored anywhere
            assert set(join.json["signatures"]) == {a.identifier, b.identifier}
            assert await a.servers_in_room(new) == {a.identifier, b.identifier}

            # c is in no allowed room: 403 at make_join
            with pytest.raises(RemoteError) as refused:
                await c.join(new, via=a.identifier)
            assert (refused.value.status, refused.value.errcode) == (403, "M_FORBIDDEN")

            # an allow list naming only rooms a does not know: 400 M_UNABLE_TO_AUTHORISE_JOIN
            unknown = await _restricted_room(a, "!nowhere:example.org")
            with pytest.raises(RemoteError) as unable:
                await b.join(unknown, via=a.identifier)
            assert (unable.value.status, unable.value.errcode) == (
                400,
                "M_UNABLE_TO_AUTHORISE_JOIN",
            )


async def test_a_member_who_left_the_allowed_room_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            old = await a.create_s2s_room(b.identifier)
            await wait_for(lambda: _joined(b, old))
            new = await _restricted_room(a, old)
            await b.leave(old)
            await wait_for(lambda: _left(a, old, b.server_user))
            with pytest.raises(RemoteError) as refused:
                await b.join(new, via=a.identifier)
            assert refused.value.status == 403


async def _left(node: Node, room: str, user: str) -> bool:
    member = (await node.room_state(room)).get(("m.room.member", user))
    return member is not None and member.membership == "leave"
