"""A node in a child process, for the crash and load tests (tests/test_crash.py,
tests/test_load.py, scripts/chaos_soak.py): the parent kills it with SIGKILL.

Usage: `python tests/crash_node_child.py DATA_DIR MODE [ARGS...] [--peer=ID=HOST:PORT ...]`

It opens a node on DATA_DIR (plain HTTP on 127.0.0.1 port 0, discovery off, fast back-off),
tells it where the `--peer`s are, and writes `DATA_DIR/child.json` (`pid`, `identifier`,
`port`, `client_url`, `token`: the server user's access token) through a rename once it
serves. Then, by MODE:

- `serve`: nothing more (it receives).
- `send ROOM COUNT [SENDER]`: sends COUNT messages into ROOM one after another as fast as it
  can, printing `ack <event_id>` after each `send_event` returned (the event is committed and
  queued), then `done`.
- `flood ROOM SECONDS`: like `send` for SECONDS, printing `sent <count>` at the end.
- `upgrade ROOM STAGE`: proposes an upgrade of the s2s room ROOM (wait=False) and kills itself
  with SIGKILL as soon as the first event of STAGE is committed here, from the rooms' publish
  hook, before the node takes another step (`ack`: our m.s2s.upgrade.ack, owed once the
  responder accepted our proposal; `successor`: the successor room's create event;
  `tombstone`: the old room's tombstone), printing `stage <event_id>` first.
Logs go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import trio
from node_fixtures import FAST_BACKOFF, node_config

from s2s_node.config import Config, RoomsConfig, UpgradeConfig
from s2s_node.core.events import Pdu
from s2s_node.node import Node, open_node

STAGES = ("ack", "successor", "tombstone")


def child_config() -> Config:
    return dataclasses.replace(
        node_config(),
        rooms=RoomsConfig(default_version="10"),
        upgrade=UpgradeConfig(versions={"12": 100, "11": 60, "10": 20}, timeout_s=60),
    )


def _write_info(node: Node, data_dir: Path, token: str) -> None:
    assert node.federation_address is not None
    info = {
        "pid": os.getpid(),
        "identifier": node.identifier,
        "port": node.federation_address[1],
        "client_url": node.client_url,
        "token": token,
    }
    tmp = data_dir / ".child.json.tmp"
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, data_dir / "child.json")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _is_stage(pdu: Pdu, stage: str, room: str, us: str) -> bool:
    if stage == "ack":
        return pdu.type == "m.s2s.upgrade.ack" and pdu.sender == us
    if stage == "successor":
        predecessor = pdu.content.get("predecessor")
        return (
            pdu.type == "m.room.create"
            and isinstance(predecessor, dict)
            and predecessor.get("room_id") == room
        )
    return pdu.type == "m.room.tombstone" and pdu.room_id == room


async def main(data_dir: Path, mode: str, args: list[str], peers: list[str]) -> None:
    async with open_node(child_config(), data_dir=data_dir, backoff=FAST_BACKOFF) as node:
        for peer in peers:
            identifier, address = peer.split("=", 1)
            host, port = address.rsplit(":", 1)
            await node.add_peer_address(identifier, host, int(port))
        token = (data_dir / "access_token").read_text(encoding="utf-8").strip()
        _write_info(node, data_dir, token)
        if mode == "send":
            room, count = args[0], int(args[1])
            for n in range(count):
                pdu = await node.send_event(room, "m.room.message", {"body": f"c{n}"})
                _say(f"ack {pdu.event_id}")
            _say("done")
        elif mode == "flood":
            room, seconds = args[0], float(args[1])
            sent = 0
            with trio.move_on_after(seconds):
                while True:
                    await node.send_event(room, "m.room.message", {"body": f"f{sent}"})
                    sent += 1
            _say(f"sent {sent}")
        elif mode == "upgrade":
            room, stage = args[0], args[1]
            assert stage in STAGES
            publish = node.rooms.publish

            def publish_then_die(events: Iterable[Pdu]) -> None:
                # called right after the commit, before the node does anything else
                events = list(events)
                for pdu in events:
                    if _is_stage(pdu, stage, room, node.server_user):
                        _say(f"stage {pdu.event_id}")
                        os.kill(os.getpid(), signal.SIGKILL)
                publish(events)

            node.rooms.publish = publish_then_die  # type: ignore[method-assign]
            outcome = await node.propose_upgrade(room, wait=False)
            _say(f"proposed {outcome.negotiation_id}")
        await trio.sleep_forever()


if __name__ == "__main__":
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    argv = sys.argv[1:]
    peer_args = [a.split("=", 1)[1] for a in argv if a.startswith("--peer=")]
    rest = [a for a in argv if not a.startswith("--peer=")]
    trio.run(main, Path(rest[0]), rest[1], rest[2:], peer_args)
