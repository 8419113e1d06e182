"""The `s2s-node` commands against real running nodes (`s2s-node run` subprocesses on loopback).

One node: tokens, rooms, send, state, refusals, dag. Two nodes with a static peer: an s2s room
opened from the command line, events sent on one node read from the other.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import RunningNode, cli, cli_json, running_node

from s2s_node.core.keys import is_identifier

WAIT_S = 30.0


def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll `check` until it returns something truthy (commands are subprocesses: no events)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with running_node(
        tmp_path_factory.mktemp("cli") / "n1", ["--set", "federation.tls=false"]
    ) as n:
        yield n


def test_node_json_names_the_client_api_and_id_agrees(node: RunningNode) -> None:
    assert str(node.info["client_url"]).startswith("http://127.0.0.1:")
    shown = cli_json("id", data_dir=node.data_dir)
    assert shown["identifier"] == node.identifier
    assert is_identifier(node.identifier)


def test_token_create_makes_a_local_user(node: RunningNode) -> None:
    created = cli_json("token", "create", "--user", "alice", data_dir=node.data_dir)
    assert set(created) == {"user_id", "access_token"}
    assert created["user_id"] == f"@alice:{node.identifier}"
    assert created["access_token"]
    human = cli("token", "create", "--user", "alice", data_dir=node.data_dir)
    assert human.returncode == 0
    assert f"user_id: @alice:{node.identifier}\n" in human.stdout
    bad = cli("token", "create", "--user", "Not Valid", data_dir=node.data_dir)
    assert bad.returncode == 2
    assert "M_INVALID_PARAM" in bad.stderr or "M_INVALID_USERNAME" in bad.stderr


def test_s2s_room_send_and_state(node: RunningNode) -> None:
    data_dir = node.data_dir
    room_id = cli_json("room", "create", "--s2s", data_dir=data_dir)["room_id"]
    assert room_id.startswith("!")

    rooms = cli_json("rooms", data_dir=data_dir)
    (mine,) = [r for r in rooms if r["room_id"] == room_id]
    assert mine["room_type"] == "support.feline.s2s"
    assert mine["room_version"] == "12"
    assert mine["joined_members"] == [f"@:{node.identifier}"]
    table = cli("rooms", data_dir=data_dir)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["ROOM", "VERSION", "TYPE", "MEMBERS", "NAME"]
    assert room_id in table.stdout

    sent = cli_json("send", room_id, "org.example.ping", '{"n": 1}', data_dir=data_dir)
    assert sent["event_id"].startswith("$")
    piped = cli("send", room_id, "org.example.ping", "-", data_dir=data_dir, stdin='{"n": 2}')
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip().startswith("$")
    state_sent = cli_json(
        "send",
        room_id,
        "org.example.setting",
        '{"on": true}',
        "--state-key",
        "k",
        data_dir=data_dir,
    )
    assert state_sent["event_id"].startswith("$")

    state = cli_json("state", room_id, data_dir=data_dir)
    by_key = {(e["type"], e["state_key"]): e for e in state}
    assert by_key[("m.room.create", "")]["content"]["type"] == "support.feline.s2s"
    assert by_key[("org.example.setting", "k")]["content"] == {"on": True}
    assert by_key[("org.example.setting", "k")]["event_id"] == state_sent["event_id"]

    one = cli_json("state", room_id, "org.example.setting", "k", data_dir=data_dir)
    assert one == {"on": True}
    members = cli_json("state", room_id, "m.room.member", data_dir=data_dir)
    assert [m["state_key"] for m in members] == [f"@:{node.identifier}"]
    table = cli("state", room_id, data_dir=data_dir)
    assert table.stdout.splitlines()[0].split() == ["TYPE", "STATE_KEY", "SENDER", "CONTENT"]
    assert "org.example.setting  k" in table.stdout

    # "no" answers: exit 1
    missing = cli("state", room_id, "org.example.setting", "nope", data_dir=data_dir)
    assert missing.returncode == 1
    assert "M_NOT_FOUND" in missing.stderr
    none = cli("state", room_id, "org.example.none", data_dir=data_dir)
    assert none.returncode == 1


def test_the_server_user_creates_only_s2s_rooms_a_local_user_may(node: RunningNode) -> None:
    data_dir = node.data_dir
    refused = cli("room", "create", "--name", "lobby", "--json", data_dir=data_dir)
    assert refused.returncode == 1
    assert "M_FORBIDDEN" in refused.stderr
    assert "s2s_server_user_outside_s2s_room" in refused.stderr
    assert json.loads(refused.stdout)["errcode"] == "M_FORBIDDEN"

    token = cli_json("token", "create", "--user", "bob", data_dir=data_dir)["access_token"]
    created = cli("room", "create", "--name", "lobby", "--access-token", token, data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    room_id = created.stdout.strip()
    # The same through the environment variable.
    rooms = cli("rooms", "--json", data_dir=data_dir, env={"S2S_NODE_ACCESS_TOKEN": token})
    assert rooms.returncode == 0
    (lobby,) = [r for r in json.loads(rooms.stdout) if r["room_id"] == room_id]
    assert lobby["name"] == "lobby"
    assert lobby["room_type"] is None
    assert lobby["joined_members"] == [f"@bob:{node.identifier}"]
    # The server user is not in bob's room.
    server_rooms = cli_json("rooms", data_dir=data_dir)
    assert room_id not in [r["room_id"] for r in server_rooms]


def test_a_wrong_token_is_exit_2_with_the_matrix_error(node: RunningNode) -> None:
    result = cli("rooms", "--access-token", "s2s_nope", data_dir=node.data_dir)
    assert result.returncode == 2
    assert "M_UNKNOWN_TOKEN" in result.stderr


def test_unknown_room_is_no(node: RunningNode) -> None:
    result = cli("send", "!nope:x", "org.example.t", "{}", data_dir=node.data_dir)
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_dag_in_every_format(node: RunningNode, tmp_path: Path) -> None:
    data_dir = node.data_dir
    room_id = cli_json("room", "create", "--s2s", data_dir=data_dir)["room_id"]
    cli_json("send", room_id, "org.example.ping", "{}", data_dir=data_dir)
    shown = cli("dag", room_id, "--format", "json", data_dir=data_dir)
    assert shown.returncode == 0, shown.stderr
    dag = json.loads(shown.stdout)
    types = [n["type"] for n in dag["nodes"]]
    assert types[0] == "m.room.create"
    assert "org.example.ping" in types
    assert all(n["status"] == "accepted" for n in dag["nodes"])
    assert [n["extremity"] for n in dag["nodes"]].count(True) == 1
    assert len(dag["edges"]) == len(dag["nodes"]) - 1

    dot = cli("dag", room_id, data_dir=data_dir)
    assert dot.stdout.startswith("digraph")
    out = tmp_path / "room.svg"
    svg = cli("dag", room_id, "--format", "svg", "--output", str(out), data_dir=data_dir)
    assert svg.returncode == 0
    assert svg.stdout == ""
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_peers_of_a_lonely_node(node: RunningNode) -> None:
    assert cli_json("peers", data_dir=node.data_dir) == []
    table = cli("peers", data_dir=node.data_dir)
    assert table.stdout.split() == [
        "IDENTIFIER",
        "ADDRESSES",
        "PORT",
        "VERIFIED",
        "ALIVE",
        "ENCRYPTED",
    ]


# ------------------------------------------------------------------------------ two nodes


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (the nodes must know each other's before starting)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def two_nodes(
    tmp_path: Path,
    *,
    tls: bool = False,
    settings_a: Sequence[str] = (),
    settings_b: Sequence[str] = (),
) -> Iterator[tuple[RunningNode, RunningNode]]:
    """Nodes a and b, each the other's static peer (as mDNS discovery would give on a LAN): a
    node joins an s2s room only when invited by a peer it verified."""
    port_a, port_b = free_ports(2)

    def settings(own: int, peer: int) -> list[str]:
        return [
            *("--set", f"federation.tls={str(tls).lower()}"),
            *("--set", f"federation.listen=127.0.0.1:{own}"),
            *("--set", f'peers=["127.0.0.1:{peer}"]'),
        ]

    with (
        running_node(tmp_path / "a", [*settings(port_a, port_b), *settings_a]) as a,
        running_node(tmp_path / "b", [*settings(port_b, port_a), *settings_b]) as b,
    ):
        yield a, b


def is_verified(node: RunningNode, peer: RunningNode) -> bool:
    peers = cli_json("peers", data_dir=node.data_dir)
    return any(p["identifier"] == peer.identifier and p["verified"] for p in peers)


def open_s2s_room(a: RunningNode, b: RunningNode) -> str:
    """b opens the s2s room with a once both verified each other; returns once a joined it."""
    eventually(lambda: is_verified(a, b) and is_verified(b, a), "the nodes to verify each other")
    room_id = str(
        cli_json("room", "create", "--s2s", "--peer", a.identifier, data_dir=b.data_dir)["room_id"]
    )

    def a_joined() -> bool:
        rooms = cli_json("rooms", data_dir=a.data_dir)
        return any(r["room_id"] == room_id and len(r["joined_members"]) == 2 for r in rooms)

    eventually(a_joined, "a to join the s2s room")
    return room_id


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_two_nodes_open_an_s2s_room_and_exchange_events(tmp_path: Path, tls: bool) -> None:
    with two_nodes(tmp_path, tls=tls) as (a, b):

        def b_knows_a() -> list[dict[str, Any]]:
            return [
                p
                for p in cli_json("peers", data_dir=b.data_dir)
                if p["identifier"] == a.identifier and p["verified"]
            ]

        (peer,) = eventually(b_knows_a, "b to verify its static peer a")
        assert set(peer) >= {
            "identifier",
            "addresses",
            "port",
            "verified",
            "alive",
            "encrypted",
        }
        assert peer["encrypted"] is tls

        room_id = open_s2s_room(a, b)
        # At most one live s2s room per pair: asking again gives the same room.
        again = cli_json("room", "create", "--s2s", "--peer", a.identifier, data_dir=b.data_dir)
        assert again == {"room_id": room_id}
        sent = cli_json(
            "send",
            room_id,
            "org.example.hello",
            '{"from": "b"}',
            "--state-key",
            "",
            data_dir=b.data_dir,
        )

        def a_sees() -> Any:
            result = cli("state", room_id, "org.example.hello", "", "--json", data_dir=a.data_dir)
            return json.loads(result.stdout) if result.returncode == 0 else None

        assert eventually(a_sees, "the event at a") == {"from": "b"}
        reply = cli_json(
            "send",
            room_id,
            "org.example.hello",
            '{"from": "a"}',
            "--state-key",
            "a",
            data_dir=a.data_dir,
        )

        def b_sees() -> Any:
            state = cli_json("state", room_id, "org.example.hello", data_dir=b.data_dir)
            return {e["state_key"]: e for e in state} if len(state) == 2 else None

        seen = eventually(b_sees, "a's event at b")
        assert seen[""]["event_id"] == sent["event_id"]
        assert seen["a"]["event_id"] == reply["event_id"]
        assert seen["a"]["sender"] == f"@:{a.identifier}"


def test_rules_refuse_at_the_source_then_upgrade_and_negotiations(tmp_path: Path) -> None:
    # b opens a room of version 11; a accepts only room version 12 in negotiations.
    with two_nodes(
        tmp_path,
        settings_a=["--set", 'upgrade.versions={"12"=100}'],
        settings_b=["--set", 'rooms.default_version="11"'],
    ) as (a, b):
        room_id = open_s2s_room(a, b)
        (room,) = [r for r in cli_json("rooms", data_dir=a.data_dir) if r["room_id"] == room_id]
        assert room["room_version"] == "11"

        # MSC3348's example: a asks b not to send it invites (dropped at the source).
        added = cli_json(
            "rules",
            "add",
            b.identifier,
            "--match",
            "type=m.room.member",
            "--match",
            "content.membership=invite",
            "--reason",
            "no invites",
            data_dir=a.data_dir,
        )
        assert added["event_id"].startswith("$")
        (ours,) = cli_json("rules", "list", b.identifier, data_dir=a.data_dir)
        assert ours["direction"] == "ours"
        assert ours["type"] == "m.s2s.drop"
        assert ours["content"] == {
            "match": {"type": "m.room.member", "content.membership": "invite"},
            "reason": "no invites",
        }
        assert ours["room_id"] == room_id

        def b_has_theirs() -> list[dict[str, Any]]:
            rules = cli_json("rules", "list", "--json", data_dir=b.data_dir)
            return [r for r in rules if r["direction"] == "theirs"]

        (theirs,) = eventually(b_has_theirs, "a's rule to reach b")
        assert theirs["state_key"] == ours["state_key"]
        table = cli("rules", "list", data_dir=b.data_dir)
        assert table.stdout.split()[:5] == ["PEER", "DIRECTION", "TYPE", "STATE_KEY", "CONTENT"]

        # carol, a local user of b, may not invite a user of a into her room; she may invite
        # a user of b.
        carol = cli_json("token", "create", "--user", "carol", data_dir=b.data_dir)
        as_carol = ["--access-token", carol["access_token"]]
        lobby = cli("room", "create", "--name", "lobby", *as_carol, data_dir=b.data_dir)
        assert lobby.returncode == 0, lobby.stderr
        lobby_id = lobby.stdout.strip()

        def invite(user: str) -> subprocess.CompletedProcess[str]:
            return cli(
                *("send", lobby_id, "m.room.member", '{"membership": "invite"}'),
                *("--state-key", user, "--json", *as_carol),
                data_dir=b.data_dir,
            )

        refused = invite(f"@dave:{a.identifier}")
        assert refused.returncode == 1
        body = json.loads(refused.stdout)
        assert body["errcode"] == "M_FORBIDDEN"
        assert body["rule"] == {
            "type": "m.s2s.drop",
            "state_key": ours["state_key"],
            "room_id": room_id,
        }
        assert "m.s2s.drop" in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert invite(f"@erin:{b.identifier}").returncode == 0

        removed = cli(
            "rules", "remove", b.identifier, "m.s2s.drop", ours["state_key"], data_dir=a.data_dir
        )
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.strip().startswith("$")
        eventually(lambda: not b_has_theirs(), "the removal to reach b")
        assert "m.s2s.drop" not in invite(f"@dave:{a.identifier}").stderr

        # An upgrade a cannot accept fails: exit 1, the outcome says why.
        failed = cli("upgrade", room_id, "--versions", "11:100", "--json", data_dir=b.data_dir)
        # (a accepts only 12: nothing in common)
        assert failed.returncode == 1, failed.stderr
        outcome = json.loads(failed.stdout)
        assert outcome["status"] == "failed"
        assert outcome["error"]
        # One both accept succeeds and names the new room.
        done = cli("upgrade", room_id, "--versions", "12:100,11:50", "--json", data_dir=b.data_dir)
        assert done.returncode == 0, done.stderr
        upgraded = json.loads(done.stdout)
        assert upgraded["status"] == "upgraded"
        assert upgraded["version"] == "12"
        assert upgraded["new_room_id"].startswith("!")

        negotiations = cli_json("negotiations", room_id, data_dir=a.data_dir)
        states = sorted(n["state"] for n in negotiations)
        assert len(negotiations) == 2
        assert {n["negotiation_id"] for n in negotiations} == {
            outcome["negotiation_id"],
            upgraded["negotiation_id"],
        }, states
        table = cli("negotiations", room_id, data_dir=b.data_dir)
        assert table.stdout.split()[:6] == [
            "NEGOTIATION_ID",
            "STATE",
            "ROLE",
            "PEER",
            "VERSION",
            "ERROR",
        ]

        def a_in_new_room() -> bool:
            rooms = cli_json("rooms", data_dir=a.data_dir)
            return any(r["room_id"] == upgraded["new_room_id"] for r in rooms)

        eventually(a_in_new_room, "a to follow the upgrade")
