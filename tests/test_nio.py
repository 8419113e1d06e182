"""A real Matrix client SDK (matrix-nio, asyncio + aiohttp) drives running `s2s-node run` nodes.

Two nodes run as subprocesses with static peers pointing at each other's federation ports
(free ports picked here), TLS on, discovery off; nio talks to their client APIs with the
tokens from their data directories. Each scenario is bounded by asyncio timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

nio = pytest.importorskip("nio")

RUN = [sys.executable, "-m", "s2s_node.cli", "run"]
START_DEADLINE_S = 30.0
SCENARIO_DEADLINE_S = 60.0


@dataclass(frozen=True, slots=True)
class RunningNode:
    identifier: str
    client_url: str
    token: str
    process: subprocess.Popen[bytes]

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.identifier}"

    def s2s_call(self, method: str, path: str, body: Any = None) -> Any:
        """The s2s unstable endpoints, as the server user (nio does not know them)."""
        request = urllib.request.Request(
            f"{self.client_url}/_matrix/client/unstable/support.feline.s2s/{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}"},
            method=method,
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def create_token(self, localpart: str) -> str:
        """A token for a new local user."""
        return str(self.s2s_call("POST", "tokens", {"user": localpart})["access_token"])

    def wait_verified(self, peer: str) -> None:
        """Until `peer` is a verified peer (static peers are retried with a back-off)."""
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            peers = self.s2s_call("GET", "peers")["peers"]
            if any(p["identifier"] == peer and p["verified"] for p in peers):
                return
            time.sleep(0.1)
        raise AssertionError(f"{peer} not verified by {self.identifier}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def run_nodes(tmp_path: Path, count: int) -> Iterator[list[RunningNode]]:
    ports = [free_port() for _ in range(count)]
    processes = []
    logs = []
    try:
        for i, port in enumerate(ports):
            peers = json.dumps([f"127.0.0.1:{p}" for p in ports if p != port])
            settings = [
                *("--set", f"federation.listen=127.0.0.1:{port}"),
                *("--set", "client.listen=127.0.0.1:0"),
                *("--set", "discovery.enabled=false"),
                *("--set", f"peers={peers}"),
            ]
            log = (tmp_path / f"node{i}.log").open("wb")
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    [*RUN, "--data-dir", str(tmp_path / f"n{i}"), *settings],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
        yield [_wait_running(tmp_path / f"n{i}", p) for i, p in enumerate(processes)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def _wait_running(data_dir: Path, process: subprocess.Popen[bytes]) -> RunningNode:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        path = data_dir / "node.json"
        if path.exists():
            info = json.loads(path.read_text())
            token = (data_dir / "access_token").read_text().strip()
            return RunningNode(info["identifier"], info["client_url"], token, process)
        if process.poll() is not None:
            raise AssertionError(f"s2s-node run exited with {process.returncode}")
        time.sleep(0.05)
    raise AssertionError("no node.json")


def make_client(node: RunningNode, localpart: str, token: str) -> Any:
    config = nio.AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
    client = nio.AsyncClient(node.client_url, node.user(localpart), config=config)
    client.access_token = token
    return client


async def sync_until(client: Any, since: str | None, predicate: Any) -> Any:
    """Sync (long-polling) until `predicate(response)` holds; returns that response."""
    while True:
        response = await client.sync(timeout=2000, since=since)
        assert isinstance(response, nio.SyncResponse), response
        if predicate(response):
            return response
        since = response.next_batch


def test_nio_single_node(tmp_path: Path) -> None:
    with run_nodes(tmp_path, 1) as (node,):
        alice_token = node.create_token("alice")
        asyncio.run(asyncio.wait_for(_single_node(node, alice_token), SCENARIO_DEADLINE_S))


async def _single_node(node: RunningNode, alice_token: str) -> None:
    alice = make_client(node, "alice", alice_token)
    server = make_client(node, "", node.token)
    wrong = make_client(node, "alice", "s2s_wrong")
    try:
        me = await alice.whoami()
        assert isinstance(me, nio.WhoamiResponse), me
        assert me.user_id == node.user("alice")
        assert (await server.whoami()).user_id == f"@:{node.identifier}"

        # A wrong token and a missing one.
        denied = await wrong.whoami()
        assert isinstance(denied, nio.WhoamiError)
        assert denied.status_code == "M_UNKNOWN_TOKEN"
        raw = await wrong.send("GET", "/_matrix/client/v3/account/whoami")
        body = await raw.json()
        assert (raw.status, body["errcode"]) == (401, "M_MISSING_TOKEN")

        created = await alice.room_create(name="nio room", topic="driven by nio")
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from nio"}
        )
        assert isinstance(sent, nio.RoomSendResponse), sent

        def has_event(response: Any) -> bool:
            info = response.rooms.join.get(room_id)
            return info is not None and any(
                getattr(e, "event_id", None) == sent.event_id for e in info.timeline.events
            )

        synced = await sync_until(alice, None, has_event)
        message = next(e for e in synced.rooms.join[room_id].timeline.events
                       if getattr(e, "event_id", None) == sent.event_id)  # fmt: skip
        assert isinstance(message, nio.RoomMessageText)
        assert message.body == "hello from nio"
        assert room_id in alice.rooms  # nio built its room model from our sync

        name = await alice.room_get_state_event(room_id, "m.room.name")
        assert isinstance(name, nio.RoomGetStateEventResponse), name
        assert name.content == {"name": "nio room"}
        state = await alice.room_get_state(room_id)
        assert isinstance(state, nio.RoomGetStateResponse), state
        assert {"m.room.create", "m.room.name", "m.room.topic"} <= {e["type"] for e in state.events}
        put = await alice.room_put_state(room_id, "org.example.colour", {"colour": "teal"})
        assert isinstance(put, nio.RoomPutStateResponse), put

        messages = await alice.room_messages(room_id, start="", limit=5)
        assert isinstance(messages, nio.RoomMessagesResponse), messages
        assert messages.chunk[0].event_id == put.event_id

        joined = await alice.joined_rooms()
        assert isinstance(joined, nio.JoinedRoomsResponse) and joined.rooms == [room_id]
        # The server user is kept out of ordinary rooms.
        refused = await server.room_create(name="not s2s")
        assert isinstance(refused, nio.RoomCreateError)
        assert refused.status_code == "M_FORBIDDEN"
    finally:
        for client in (alice, server, wrong):
            await client.close()


def test_nio_invite_and_join_across_two_nodes(tmp_path: Path) -> None:
    with run_nodes(tmp_path, 2) as (a, b):
        a.wait_verified(b.identifier)
        b.wait_verified(a.identifier)
        tokens = (a.create_token("alice"), b.create_token("bob"))
        asyncio.run(asyncio.wait_for(_two_nodes(a, b, *tokens), SCENARIO_DEADLINE_S))


async def _two_nodes(a: RunningNode, b: RunningNode, alice_token: str, bob_token: str) -> None:
    alice = make_client(a, "alice", alice_token)
    bob = make_client(b, "bob", bob_token)
    try:
        created = await alice.room_create(name="across", invite=[b.user("bob")])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id

        invited = await sync_until(bob, None, lambda r: room_id in r.rooms.invite)
        assert room_id in bob.invited_rooms
        joined = await bob.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined

        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "from A to B"}
        )
        assert isinstance(sent, nio.RoomSendResponse), sent

        def bob_sees(response: Any) -> bool:
            info = response.rooms.join.get(room_id)
            return info is not None and any(
                getattr(e, "event_id", None) == sent.event_id for e in info.timeline.events
            )

        await sync_until(bob, invited.next_batch, bob_sees)
        assert room_id in bob.rooms
        reply = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "B"})
        assert isinstance(reply, nio.RoomSendResponse), reply

        def alice_sees(response: Any) -> bool:
            info = response.rooms.join.get(room_id)
            return info is not None and any(
                getattr(e, "event_id", None) == reply.event_id for e in info.timeline.events
            )

        await sync_until(alice, None, alice_sees)
    finally:
        await alice.close()
        await bob.close()
