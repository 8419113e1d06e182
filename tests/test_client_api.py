"""The client API over real sockets on 127.0.0.1: tokens, errors, rooms, sync, two nodes."""

from __future__ import annotations

import contextlib
import functools
import json
import stat
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpcore
import pytest
import trio
from node_fixtures import connect, start_node

from s2s_node.net.client_api_auth import ClientApiLimits, TokenBuckets, TxnIds
from s2s_node.node import Node
from s2s_node.sync import parse_messages_token

V3 = "/_matrix/client/v3"
S2S = "/_matrix/client/unstable/support.feline.s2s"


class Client:
    """One user of one node's client API."""

    def __init__(self, pool: httpcore.AsyncConnectionPool, node: Node, token: str | None):
        self.pool = pool
        self.node = node
        self.token = token

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else []
        content = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        response = await self.pool.request(
            method, self.node.client_url + path, headers=headers, content=content
        )
        return response.status, json.loads(response.content)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(method, path, body)
        assert status == 200, answer
        return answer

    async def as_user(self, localpart: str) -> Client:
        answer = await self.ok("POST", f"{S2S}/tokens", {"user": localpart})
        return Client(self.pool, self.node, answer["access_token"])


def q(room: str) -> str:
    return urllib.parse.quote(room, safe="")


def server_token(data_dir: Path) -> str:
    return (data_dir / "access_token").read_text().strip()


@contextlib.asynccontextmanager
async def open_client(tmp_path: Path, name: str = "a") -> AsyncIterator[Client]:
    async with contextlib.AsyncExitStack() as stack:
        node = await start_node(stack, tmp_path / name)
        pool = await stack.enter_async_context(httpcore.AsyncConnectionPool())
        yield Client(pool, node, server_token(tmp_path / name))


async def test_token_file_whoami_and_token_errors(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_client(tmp_path) as server:
            path = tmp_path / "a" / "access_token"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert server.node.client_url.startswith("http://127.0.0.1:")
            status, versions = await Client(server.pool, server.node, None).call(
                "GET", "/_matrix/client/versions"
            )
            assert status == 200 and "v1.1" in versions["versions"]
            me = await server.ok("GET", f"{V3}/account/whoami")
            assert me["user_id"] == server.node.server_user

            missing = Client(server.pool, server.node, None)
            status, answer = await missing.call("GET", f"{V3}/account/whoami")
            assert (status, answer["errcode"]) == (401, "M_MISSING_TOKEN")
            wrong = Client(server.pool, server.node, "s2s_not-a-token")
            status, answer = await wrong.call("GET", f"{V3}/joined_rooms")
            assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN")

            alice = await server.as_user("alice")
            me = await alice.ok("GET", f"{V3}/account/whoami")
            assert me["user_id"] == f"@alice:{server.node.identifier}"
            # Only the server user makes tokens; localparts follow the grammar for new users.
            status, answer = await alice.call("POST", f"{S2S}/tokens", {"user": "bob"})
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
            status, answer = await server.call("POST", f"{S2S}/tokens", {"user": "Bad:Name"})
            assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    # The token file survives a restart and is never rewritten.
    before = path.read_text()
    with trio.fail_after(20):
        async with open_client(tmp_path) as again:
            assert path.read_text() == before
            await again.ok("GET", f"{V3}/account/whoami")


async def test_server_user_creates_only_s2s_rooms(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_client(tmp_path) as server:
            status, answer = await server.call("POST", f"{V3}/createRoom", {"name": "x"})
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
            assert "s2s membership rule" in answer["error"]
            assert await server.node.room_ids() == []  # nothing was stored
            for room_type in ("m.s2s", "support.feline.s2s"):
                await server.ok(
                    "POST", f"{V3}/createRoom", {"creation_content": {"type": room_type}}
                )
            rooms = await server.ok("GET", f"{S2S}/s2s_rooms")
            types = sorted(r["room_type"] for r in rooms["rooms"])
            assert types == ["m.s2s", "support.feline.s2s"]


async def test_rooms_endpoints(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_client(tmp_path) as server:
            alice = await server.as_user("alice")
            status, answer = await alice.call("POST", f"{V3}/createRoom", {"preset": "nope"})
            assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
            room = (
                await alice.ok("POST", f"{V3}/createRoom", {"name": "kitchen", "topic": "tea"})
            )["room_id"]
            assert (await alice.ok("GET", f"{V3}/joined_rooms"))["joined_rooms"] == [room]
            assert (await server.ok("GET", f"{V3}/joined_rooms"))["joined_rooms"] == []

            initial = await alice.ok("GET", f"{V3}/sync")
            joined = initial["rooms"]["join"][room]
            types = [e["type"] for e in joined["timeline"]["events"]]
            assert types[0] == "m.room.create" and "m.room.name" in types

            # Sends are idempotent per token and txnId.
            send = f"{V3}/rooms/{q(room)}/send/m.room.message/txn1"
            first = await alice.ok("PUT", send, {"msgtype": "m.text", "body": "hello"})
            again = await alice.ok("PUT", send, {"msgtype": "m.text", "body": "hello"})
            assert first == again
            other = await alice.ok("PUT", send.replace("txn1", "txn2"), {"body": "2"})
            assert other != first

            # An incremental sync sees the new events, with the sender's transaction ID.
            since = initial["next_batch"]
            later = await alice.ok("GET", f"{V3}/sync?since={since}&timeout=0")
            events = later["rooms"]["join"][room]["timeline"]["events"]
            assert [e["event_id"] for e in events] == [first["event_id"], other["event_id"]]
            assert events[0]["unsigned"]["transaction_id"] == "txn1"

            # A long poll returns when an event arrives.
            async def send_soon() -> None:
                await trio.sleep(0.3)
                await alice.ok("PUT", send.replace("txn1", "txn3"), {"body": "3"})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_soon)
                started = trio.current_time()
                polled = await alice.ok(
                    "GET", f"{V3}/sync?since={later['next_batch']}&timeout=10000"
                )
            assert trio.current_time() - started < 5
            bodies = [e["content"].get("body") for e in
                      polled["rooms"]["join"][room]["timeline"]["events"]]  # fmt: skip
            assert bodies == ["3"]
            # Nothing new: the poll times out empty.
            empty = await alice.ok("GET", f"{V3}/sync?since={polled['next_batch']}&timeout=200")
            assert empty["rooms"]["join"] == {}

            # State.
            state_path = f"{V3}/rooms/{q(room)}/state"
            assert await alice.ok("GET", f"{state_path}/m.room.name") == {"name": "kitchen"}
            assert await alice.ok("GET", f"{state_path}/m.room.topic/") == {"topic": "tea"}
            put = await alice.ok("PUT", f"{state_path}/org.example.thing/k", {"v": 1})
            assert await alice.ok("GET", f"{state_path}/org.example.thing/k") == {"v": 1}
            full = await alice.ok("GET", state_path)
            assert put["event_id"] in {e["event_id"] for e in full}
            status, answer = await alice.call("GET", f"{state_path}/m.room.avatar")
            assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
            # Someone not in the room reads nothing.
            bob = await server.as_user("bob")
            status, answer = await bob.call("GET", state_path)
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")

            # Messages, backwards in pages, then forwards from the start.
            messages = f"{V3}/rooms/{q(room)}/messages"
            page = await alice.ok("GET", f"{messages}?dir=b&limit=2")
            assert page["chunk"][0]["event_id"] == put["event_id"]  # newest first
            seen = [e["event_id"] for e in page["chunk"]]
            while "end" in page:
                page = await alice.ok("GET", f"{messages}?dir=b&limit=2&from={page['end']}")
                seen += [e["event_id"] for e in page["chunk"]]
            assert len(seen) == len(set(seen))
            assert {first["event_id"], other["event_id"]} <= set(seen)
            forwards = await alice.ok("GET", f"{messages}?dir=f&limit=1000&from=m0")
            assert [e["event_id"] for e in forwards["chunk"]] == seen[::-1]
            status, answer = await alice.call("GET", f"{messages}?from=x1")
            assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")

            # Invite, sync shows it, join, leave.
            await alice.ok("POST", f"{V3}/rooms/{q(room)}/invite", {"user_id": bob_id(server)})
            invited = await bob.ok("GET", f"{V3}/sync")
            stripped = invited["rooms"]["invite"][room]["invite_state"]["events"]
            assert {"m.room.create", "m.room.name", "m.room.member"} <= {
                e["type"] for e in stripped
            }
            await bob.ok("POST", f"{V3}/join/{q(room)}")
            assert room in (await bob.ok("GET", f"{V3}/joined_rooms"))["joined_rooms"]
            await bob.ok("POST", f"{V3}/rooms/{q(room)}/leave")
            assert (await bob.ok("GET", f"{V3}/joined_rooms"))["joined_rooms"] == []
            # No server user in an ordinary room.
            status, answer = await alice.call(
                "POST", f"{V3}/rooms/{q(room)}/invite", {"user_id": server.node.server_user}
            )
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
            assert "s2s membership rule" in answer["error"]


def bob_id(server: Client) -> str:
    return f"@bob:{server.node.identifier}"


async def test_bad_bodies_and_unknown_things(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_client(tmp_path) as server:
            alice = await server.as_user("alice")
            status, answer = await alice.call("POST", f"{V3}/createRoom", raw=b"{nope")
            assert (status, answer["errcode"]) == (400, "M_NOT_JSON")
            status, answer = await alice.call("POST", f"{V3}/createRoom", [1, 2])
            assert (status, answer["errcode"]) == (400, "M_BAD_JSON")
            status, answer = await alice.call("PUT", f"{V3}/rooms/{q('!nope')}/send/m.x/1", {})
            assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
            status, answer = await alice.call("GET", f"{V3}/no/such/endpoint")
            assert (status, answer["errcode"]) == (404, "M_UNRECOGNIZED")
            status, answer = await alice.call("POST", f"{V3}/createRoom", {"room_version": "9"})
            assert (status, answer["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")


async def test_invite_and_join_across_two_nodes(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start_node(stack, tmp_path / "a")
            b = await start_node(stack, tmp_path / "b")
            await connect(a, b)
            pool = await stack.enter_async_context(httpcore.AsyncConnectionPool())
            alice = await Client(pool, a, server_token(tmp_path / "a")).as_user("alice")
            bob = await Client(pool, b, server_token(tmp_path / "b")).as_user("bob")
            bob_user = f"@bob:{b.identifier}"
            room = (await alice.ok("POST", f"{V3}/createRoom", {"invite": [bob_user]}))["room_id"]
            initial = await bob.ok("GET", f"{V3}/sync")
            assert room in initial["rooms"]["invite"]
            await bob.ok("POST", f"{V3}/join/{q(room)}")
            sent = await alice.ok("PUT", f"{V3}/rooms/{q(room)}/send/m.room.message/1",
                                  {"msgtype": "m.text", "body": "over the wire"})  # fmt: skip
            since = initial["next_batch"]
            while True:
                body = await bob.ok("GET", f"{V3}/sync?since={since}&timeout=5000")
                since = body["next_batch"]
                timeline = body["rooms"]["join"].get(room, {}).get("timeline", {"events": []})
                if sent["event_id"] in {e["event_id"] for e in timeline["events"]}:
                    break


def test_token_bucket_refills() -> None:
    now = [0.0]
    buckets = TokenBuckets(ClientApiLimits(rate_per_s=2.0, burst=3), clock=lambda: now[0])
    assert [buckets.take("d") for _ in range(3)] == [None, None, None]
    wait = buckets.take("d")
    assert wait is not None and 0 < wait <= 0.5
    assert buckets.take("other") is None  # per token
    now[0] += 0.5
    assert buckets.take("d") is None


async def test_rate_limit_answers_limit_exceeded(tmp_path: Path) -> None:
    from s2s_node.net.client_api import serve_client_api

    limits = ClientApiLimits(rate_per_s=0.5, burst=2)
    with trio.fail_after(20):
        async with open_client(tmp_path) as server, trio.open_nursery() as nursery:
            # A second listener of the same node, with a tight limit (the config's port is 0).
            host, port = await nursery.start(functools.partial(serve_client_api, server.node,
                                                               limits=limits))  # fmt: skip
            server.node.client_address = (host, port)
            statuses = [(await server.call("GET", f"{V3}/account/whoami"))[0] for _ in range(2)]
            assert statuses == [200, 200]
            status, answer = await server.call("GET", f"{V3}/account/whoami")
            assert (status, answer["errcode"]) == (429, "M_LIMIT_EXCEEDED")
            assert 0 < answer["retry_after_ms"] <= 2000
            nursery.cancel_scope.cancel()


async def test_txn_ids_run_once_under_concurrency() -> None:
    txns = TxnIds()
    calls: list[int] = []

    async def send() -> Any:
        calls.append(1)
        await trio.sleep(0.05)
        return "$e"

    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(lambda: _collect(txns, send, results))
    assert results == ["$e"] * 3 and calls == [1]
    assert txns.txn_of("dev", "$e") == "t"  # type: ignore[arg-type]
    assert txns.txn_of("other", "$e") is None  # type: ignore[arg-type]


async def _collect(txns: TxnIds, send: Any, results: list[Any]) -> None:
    results.append(await txns.run_once("dev", "t", send))


def test_messages_tokens() -> None:
    assert parse_messages_token("m12") == 12
    for bad in ("12", "mx", "m" + "9" * 30, ""):
        with pytest.raises(ValueError):
            parse_messages_token(bad)


def test_init_writes_the_token_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    from s2s_node.store import Store

    data_dir = tmp_path / "n"
    init = [sys.executable, "-m", "s2s_node.cli", "init", "--data-dir", str(data_dir)]
    subprocess.run(init, check=True, capture_output=True, timeout=30)
    path = data_dir / "access_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    subprocess.run(init, check=True, capture_output=True, timeout=30)
    assert path.read_text().strip() == token  # never overwritten
    with Store.open(data_dir) as store:
        owner = store.accounts.owner_of(token)
    assert owner is not None and owner.user_id.startswith("@:")
