"""Hostile input against a running node: each answered as the spec says, and the node keeps
serving its peers.

Node a shares a room with node b; "mallory" is a third key that is not in the room.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import httpcore
import pytest
import trio
from node_fixtures import address_of, connect, make_shared_room, next_event, start_node

from s2s_node.core.auth import select_auth_events
from s2s_node.core.events import Pdu, build_event
from s2s_node.core.ids import EventId
from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.room import RoomGraph
from s2s_node.net.client import FederationClient, RemoteError, build_path, open_federation_client
from s2s_node.net.server import HttpLimits
from s2s_node.node import Node

MALLORY = signing_key_from_seed(hashlib.sha256(b"hostile:mallory").digest())
LIMITS = HttpLimits(max_body_bytes=64 * 1024, request_timeout_s=1.0, idle_timeout_s=2.0)
SEND = "/_matrix/federation/v1/send/{}"


@dataclass
class Scene:
    a: Node
    b: Node
    room: str
    mallory: FederationClient


@contextlib.asynccontextmanager
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    async with contextlib.AsyncExitStack() as stack:
        a = await start_node(stack, tmp_path / "a", http_limits=LIMITS)
        b = await start_node(stack, tmp_path / "b")
        await connect(a, b)
        room = await make_shared_room(a, b)
        address = address_of(a)
        mallory = await stack.enter_async_context(
            # Every destination resolves to a: mallory can aim at a under any name.
            open_federation_client(MALLORY, lambda _: (address.host, address.port))
        )
        yield Scene(a=a, b=b, room=room, mallory=mallory)


async def build_in_room(
    node: Node, room: str, *, sender: str, key: SigningKey, event_type: str = "m.test"
) -> Pdu:
    """An event on `node`'s extremities, signed by `key` (whatever `sender` says)."""

    def facts(graph: RoomGraph) -> tuple[list[EventId], int, list[EventId]]:
        prev = sorted(graph.forward_extremities)
        depth = 1 + max(graph.get_event(e).depth for e in prev)
        auth = select_auth_events(event_type, sender, None, {}, graph.rules, graph.current_state())
        return prev, depth, list(auth)

    prev, depth, auth = await node.rooms.read(room, facts)
    rules = await node.rooms.room_rules(room)
    assert rules is not None
    return build_event(
        rules=rules,
        room_id=room,
        sender=sender,
        event_type=event_type,
        content={"body": "hostile"},
        prev_events=prev,
        auth_events=auth,
        depth=depth,
        origin_server_ts=1,
        server_name=key.identifier,
        signing_key=key,
    )


async def still_serving(s: Scene) -> None:
    """a answers /version and still exchanges events with b."""
    _, version = await s.b.client.request(
        s.a.identifier, "GET", "/_matrix/federation/v1/version", sign=False
    )
    assert isinstance(version, dict)
    on_b = s.b.subscribe(s.room)
    sent = await s.a.send_event(s.room, "m.test", {"ok": True})
    got = await next_event(on_b, lambda p: p.event_id == sent.event_id)
    assert got.content == {"ok": True}


def _txn(origin: str, pdus: list[Any]) -> Any:
    return {"origin": origin, "origin_server_ts": 1, "pdus": pdus}


async def raw_request(port: int, data: bytes, *, read_s: float = 5.0) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.move_on_after(read_s):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict[str, Any]:
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert isinstance(body, dict)
    return body


# ----------------------------------------------------------------------------------------------


async def test_request_authentication_failures_are_401(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            path = build_path(SEND, "t1")
            body = _txn(MALLORY.identifier, [])
            # Unsigned.
            with pytest.raises(RemoteError) as caught:
                await s.mallory.request(s.a.identifier, "PUT", path, body=body, sign=False)
            assert (caught.value.status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
            # Signed by mallory's key but claiming to come from b.
            forger = FederationClient(
                MALLORY,
                lambda _: (address_of(s.a).host, address_of(s.a).port),
                origin=s.b.identifier,
            )
            try:
                with pytest.raises(RemoteError) as caught:
                    await forger.request(s.a.identifier, "PUT", path, body=body)
            finally:
                await forger.aclose()
            assert (caught.value.status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
            # Correctly signed, but for another destination.
            with pytest.raises(RemoteError) as caught:
                await s.mallory.request(s.b.identifier, "PUT", path, body=body)
            assert (caught.value.status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
            await still_serving(s)


async def test_oversized_and_malformed_bodies(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            port = address_of(s.a).port
            big = _txn(MALLORY.identifier, [{"padding": "x" * (LIMITS.max_body_bytes + 1)}])
            with pytest.raises(RemoteError) as caught:
                await s.mallory.request(s.a.identifier, "PUT", build_path(SEND, "big"), body=big)
            assert (caught.value.status, caught.value.errcode) == (413, "M_TOO_LARGE")

            auth = (
                f'X-Matrix origin="{MALLORY.identifier}",destination="{s.a.identifier}",'
                'key="ed25519:1",sig="x"'
            )
            for content_type, payload, errcode in (
                ("application/json", b'{"pdus": [', "M_NOT_JSON"),
                ("application/json", b'{"pdus": [], "pdus": []}', "M_BAD_JSON"),
                ("application/cbor", b"\xbf\x64pdus\x80\xff", "M_BAD_JSON"),  # indefinite map
                ("application/cbor", b"\xa1\x64pdus", "M_NOT_JSON"),  # truncated
            ):
                request = (
                    b"PUT /_matrix/federation/v1/send/m HTTP/1.1\r\nHost: a\r\n"
                    + f"Authorization: {auth}\r\nContent-Type: {content_type}\r\n".encode()
                    + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
                response = await raw_request(port, request)
                assert status_of(response) == 400, response
                assert body_of(response)["errcode"] == errcode, (payload, response)
            await still_serving(s)


async def test_transaction_limits(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            pdu = await build_in_room(
                s.a, s.room, sender=f"@mallory:{MALLORY.identifier}", key=MALLORY
            )
            with pytest.raises(RemoteError) as caught:
                await s.mallory.request(
                    s.a.identifier,
                    "PUT",
                    build_path(SEND, "fat"),
                    body=_txn(MALLORY.identifier, [pdu.json] * 51),
                )
            assert (caught.value.status, caught.value.errcode) == (400, "M_BAD_JSON")
            edus: list[Any] = [{"edu_type": "m.typing", "content": {}}] * 101
            with pytest.raises(RemoteError) as caught:
                await s.mallory.request(
                    s.a.identifier,
                    "PUT",
                    build_path(SEND, "edus"),
                    body={**_txn(MALLORY.identifier, []), "edus": edus},
                )
            assert caught.value.status == 400
            assert pdu.event_id not in await s.a.rooms.read(s.room, _ids)
            await still_serving(s)


def _ids(graph: RoomGraph) -> set[str]:
    return {e for e in graph.store.event_ids()}  # type: ignore[attr-defined]


async def test_forged_sender_is_dropped_and_unauthorised_event_rejected(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            # A PDU claiming to be from b's server user, signed by mallory.
            forged = await build_in_room(s.a, s.room, sender=s.b.server_user, key=MALLORY)
            # A PDU from mallory's own user, who is not in the room.
            outsider = await build_in_room(
                s.a, s.room, sender=f"@mallory:{MALLORY.identifier}", key=MALLORY
            )
            answer: Any
            _, answer = await s.mallory.request(
                s.a.identifier,
                "PUT",
                build_path(SEND, "mixed"),
                body=_txn(MALLORY.identifier, [forged.json, outsider.json]),
            )
            assert isinstance(answer, dict)
            results = answer["pdus"]
            assert results[forged.event_id]["error"].startswith("dropped: signature")
            assert results[outsider.event_id]["error"].startswith("rejected: auth")
            stored = await s.a.rooms.read(s.room, _ids)
            assert forged.event_id not in stored
            # A rejected event stays a DAG node, never state and never an extremity.
            extremities = await s.a.rooms.read(s.room, lambda g: g.forward_extremities)
            assert outsider.event_id not in extremities
            await still_serving(s)


async def test_duplicate_transaction_is_answered_from_record(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            first = await build_in_room(
                s.a, s.room, sender=f"@mallory:{MALLORY.identifier}", key=MALLORY
            )
            second = await build_in_room(
                s.a, s.room, sender=f"@mallory:{MALLORY.identifier}", key=MALLORY, event_type="x"
            )
            path = build_path(SEND, "same-id")
            one: Any
            two: Any
            _, one = await s.mallory.request(
                s.a.identifier, "PUT", path, body=_txn(MALLORY.identifier, [first.json])
            )
            _, two = await s.mallory.request(
                s.a.identifier, "PUT", path, body=_txn(MALLORY.identifier, [second.json])
            )
            assert one == two
            assert isinstance(one, dict) and first.event_id in one["pdus"]
            assert second.event_id not in await s.a.rooms.read(s.room, _ids)


async def test_room_reads_only_for_servers_in_the_room(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            create = (await s.a.room_state(s.room))[("m.room.create", "")]
            v1 = "/_matrix/federation/v1"
            cases: list[tuple[str, str, Any, Any]] = [
                (
                    "GET",
                    build_path(v1 + "/state_ids/{}", s.room),
                    {"event_id": create.event_id},
                    None,
                ),
                ("GET", build_path(v1 + "/state/{}", s.room), {"event_id": create.event_id}, None),
                ("GET", build_path(v1 + "/event/{}", create.event_id), None, None),
                ("GET", build_path(v1 + "/event_auth/{}/{}", s.room, create.event_id), None, None),
                (
                    "GET",
                    build_path(v1 + "/backfill/{}", s.room),
                    {"v": create.event_id, "limit": "5"},
                    None,
                ),
                (
                    "POST",
                    build_path(v1 + "/get_missing_events/{}", s.room),
                    None,
                    {"earliest_events": [], "latest_events": [create.event_id]},
                ),
            ]
            for method, path, query, body in cases:
                with pytest.raises(RemoteError) as caught:
                    await s.mallory.request(s.a.identifier, method, path, query, body)
                assert (caught.value.status, caught.value.errcode) == (403, "M_FORBIDDEN"), path
            # b is in the room and gets answers.
            _, answer = await s.b.client.request(
                s.a.identifier,
                "GET",
                build_path(v1 + "/state_ids/{}", s.room),
                {"event_id": create.event_id},
            )
            assert answer == {"pdu_ids": [], "auth_chain_ids": []}
            with pytest.raises(RemoteError) as caught:
                await s.b.client.request(
                    s.a.identifier, "GET", build_path(v1 + "/state_ids/{}", "!nope:x"),
                    {"event_id": create.event_id},
                )  # fmt: skip
            assert caught.value.status == 404


async def test_slowloris_is_cut_off_and_others_are_served(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            port = address_of(s.a).port
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                started = trio.current_time()
                await stream.send_all(b"PUT /_matrix/federation/v1/send/slow HTTP/1.1\r\n")
                answer = b""

                async def drip() -> None:
                    for _ in range(40):
                        try:
                            await stream.send_all(b"X")
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        await trio.sleep(0.1)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drip)
                    await still_serving(s)  # meanwhile, others are served
                    with trio.move_on_after(5):
                        while chunk := await stream.receive_some(65536):
                            answer += chunk
                    nursery.cancel_scope.cancel()
                assert status_of(answer) == 408
                assert trio.current_time() - started < LIMITS.request_timeout_s + 2


async def test_cbor_bodies_and_answers(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with scene(tmp_path) as s:
            url = f"http://127.0.0.1:{address_of(s.a).port}/_matrix/federation/v1/version"
            async with httpcore.AsyncConnectionPool() as pool:
                response = await pool.request("GET", url, headers={"accept": "application/cbor"})
                assert dict(response.headers)[b"content-type"] == b"application/cbor"
                assert cbor2.loads(response.content)["server"]["name"] == "s2s-node"
                response = await pool.request("GET", url)
                assert dict(response.headers)[b"content-type"] == b"application/json"
            outsider = await build_in_room(
                s.a, s.room, sender=f"@mallory:{MALLORY.identifier}", key=MALLORY
            )
            answer: Any
            _, answer = await s.mallory.request(
                s.a.identifier,
                "PUT",
                build_path(SEND, "cbor"),
                body=_txn(MALLORY.identifier, [outsider.json]),
                cbor=True,
            )
            assert isinstance(answer, dict)
            assert outsider.event_id in answer["pdus"]  # decoded, checked, answered
