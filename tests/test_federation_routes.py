"""The federation routes one by one, against a running node, as a peer in the room sees them."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import pytest
import trio
from node_fixtures import connect, make_shared_room, next_event, start_node

from s2s_node.core.events import build_event
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.peers import check_key_document
from s2s_node.net.client import RemoteError, build_path
from s2s_node.net.outbound import BackoffPolicy

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


async def test_version_and_key_document(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b", cbor=False)
            await connect(a, b)
            version: Any
            _, version = await b.client.request(a.identifier, "GET", V1 + "/version", sign=False)
            assert version["server"]["name"] == "s2s-node"
            assert version["server"]["support.feline.s2s.enc"] == ["json", "cbor"]
            _, version = await a.client.request(b.identifier, "GET", V1 + "/version", sign=False)
            assert version["server"]["support.feline.s2s.enc"] == ["json"]
            _, document = await b.client.request(
                a.identifier, "GET", "/_matrix/key/v2/server", sign=False
            )
            assert check_key_document(document, expected=a.identifier, now_ms=a.now_ms()) == (
                a.identifier
            )


async def test_reads_of_a_room_member(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            room = await make_shared_room(a, b)
            sent = [(await a.send_event(room, "m.test", {"n": n})).event_id for n in range(5)]
            answer: Any
            _, answer = await b.client.request(
                a.identifier, "GET", build_path(V1 + "/event/{}", sent[0])
            )
            assert answer["origin"] == a.identifier
            assert len(answer["pdus"]) == 1 and answer["pdus"][0]["content"] == {"n": 0}

            _, answer = await b.client.request(
                a.identifier,
                "GET",
                build_path(V1 + "/backfill/{}", room),
                {"v": sent[-1], "limit": "3"},
            )
            assert [p["content"].get("n") for p in answer["pdus"]] == [4, 3, 2]

            _, answer = await b.client.request(
                a.identifier,
                "POST",
                build_path(V1 + "/get_missing_events/{}", room),
                body={"earliest_events": [sent[1]], "latest_events": [sent[-1]], "limit": 10},
            )
            assert [p["content"].get("n") for p in answer["events"]] == [3, 2]

            state = await a.room_state(room)
            _, answer = await b.client.request(
                a.identifier,
                "GET",
                build_path(V1 + "/state_ids/{}", room),
                {"event_id": sent[0]},
            )
            assert set(answer["pdu_ids"]) == {p.event_id for p in state.values()}
            full: Any
            _, full = await b.client.request(
                a.identifier, "GET", build_path(V1 + "/state/{}", room), {"event_id": sent[0]}
            )
            assert len(full["pdus"]) == len(answer["pdu_ids"])
            assert len(full["auth_chain"]) == len(answer["auth_chain_ids"])

            _, answer = await b.client.request(
                a.identifier, "GET", build_path(V1 + "/event_auth/{}/{}", room, sent[0])
            )
            assert {p["type"] for p in answer["auth_chain"]} >= {
                "m.room.create",
                "m.room.power_levels",
                "m.room.member",
            }
            with pytest.raises(RemoteError) as caught:
                await b.client.request(a.identifier, "GET", build_path(V1 + "/state_ids/{}", room))
            assert (caught.value.status, caught.value.errcode) == (400, "M_MISSING_PARAM")
            with pytest.raises(RemoteError) as caught:
                await b.client.request(
                    a.identifier, "GET", build_path(V1 + "/event/{}", "$" + "A" * 43)
                )
            assert caught.value.status == 404


async def test_make_join_checks(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            room = await a.create_room(room_type="support.feline.s2s", invite=[b.server_user])
            path = build_path(V1 + "/make_join/{}/{}", room, b.server_user)
            with pytest.raises(RemoteError) as caught:
                await b.client.request(a.identifier, "GET", path, {"ver": ["10", "11"]})
            assert caught.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
            assert caught.value.body == {
                "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
                "error": "the room is version 12",
                "room_version": "12",
            }
            # A server asks only for its own users.
            with pytest.raises(RemoteError) as caught:
                await b.client.request(
                    a.identifier,
                    "GET",
                    build_path(V1 + "/make_join/{}/{}", room, f"@x:{a.identifier}"),
                    {"ver": "12"},
                )
            assert caught.value.status == 403
            # Not invited: the join rule (invite) refuses.
            c = await start_node(stack, tmp_path / "c")
            await connect(a, c)
            with pytest.raises(RemoteError) as caught:
                await c.client.request(
                    a.identifier,
                    "GET",
                    build_path(V1 + "/make_join/{}/{}", room, c.server_user),
                    {"ver": "12"},
                )
            assert (caught.value.status, caught.value.errcode) == (403, "M_FORBIDDEN")


async def test_send_join_refuses_a_join_not_signed_by_its_server(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            room = await a.create_room(room_type="support.feline.s2s", invite=[b.server_user])
            answer: Any
            _, answer = await b.client.request(
                a.identifier,
                "GET",
                build_path(V1 + "/make_join/{}/{}", room, b.server_user),
                {"ver": "12"},
            )
            template = answer["event"]
            other = signing_key_from_seed(hashlib.sha256(b"routes:other").digest())
            forged = build_event(
                rules=(await a.rooms.room_rules(room)),  # type: ignore[arg-type]
                room_id=room,
                sender=b.server_user,
                event_type="m.room.member",
                state_key=b.server_user,
                content={"membership": "join"},
                prev_events=template["prev_events"],
                auth_events=template["auth_events"],
                depth=template["depth"],
                origin_server_ts=1,
                server_name=other.identifier,
                signing_key=other,
            )
            with pytest.raises(RemoteError) as caught:
                await b.client.request(
                    a.identifier,
                    "PUT",
                    build_path(V2 + "/send_join/{}/{}", room, forged.event_id),
                    body=forged.json,
                )
            assert (caught.value.status, caught.value.errcode) == (400, "M_INVALID_PARAM")
            # (b's node may join on its own: the invite came from a verified peer)
            assert not await a.rooms.known_events(room, [forged.event_id])


async def test_declining_an_invite_goes_through_make_leave_and_send_leave(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            on_a = a.subscribe()
            room = await a.create_room(room_type="support.feline.s2s", invite=[b.server_user])
            assert room in b.invites
            leave = await b.leave(room)
            assert leave.membership == "leave"
            assert room not in b.invites
            got = await next_event(on_a, lambda p: p.event_id == leave.event_id)
            assert got.sender == b.server_user
            state = await a.room_state(room)
            assert state[("m.room.member", b.server_user)].membership == "leave"


async def test_leaving_a_joined_room(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            room = await make_shared_room(a, b)
            on_a = a.subscribe(room)
            leave = await b.leave(room)
            await next_event(on_a, lambda p: p.event_id == leave.event_id)
            assert await a.servers_in_room(room) == {a.identifier}
            # a no longer sends the room's events to b.
            after = await a.send_event(room, "m.test", {})
            await trio.sleep(0.3)
            assert not await b.rooms.read(room, lambda g: after.event_id in g)


def test_backoff_is_exponential_and_capped() -> None:
    policy = BackoffPolicy(initial_s=1.0, factor=2.0, max_s=60.0)
    assert [policy.delay(n) for n in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert policy.delay(1000) == 60.0


def test_room_errors_are_in_the_error_table() -> None:
    from s2s_node.core.ids import EventId
    from s2s_node.core.room import MissingEventsError, RoomMismatchError
    from s2s_node.net.errors import ErrorCode, classify_error

    missing = MissingEventsError(EventId("$a"), (EventId("$b"),))
    assert classify_error(missing) == ErrorCode(404, "M_NOT_FOUND")
    assert classify_error(RoomMismatchError("other room")) == ErrorCode(400, "M_INVALID_PARAM")
