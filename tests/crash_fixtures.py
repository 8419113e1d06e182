"""Child-process nodes for the crash and load tests: start tests/crash_node_child.py, read its
`child.json` and stdout lines, SIGKILL it; and the store reads the checks need.

A child is set up by opening its data directory in-process first (room created, joined), then
closing it cleanly and starting the child on the same directory: the child has the key, the
rooms and the peer addresses; only its port is new (the parent tells the peers).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from s2s_node.core.ids import EventId, RoomId
from s2s_node.core.room import EventStatus
from s2s_node.node import Node
from s2s_node.store import Store

CHILD = Path(__file__).with_name("crash_node_child.py")


@dataclass(slots=True, kw_only=True)
class Child:
    process: trio.Process
    info: dict[str, Any]
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def identifier(self) -> str:
        return str(self.info["identifier"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL (nothing runs after it: no cleanup, no flush of anything unwritten)."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    def acked(self) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith("ack ")]


async def _read_lines(child: Child) -> None:
    assert child.process.stdout is not None
    buffer = b""
    async with child.process.stdout:
        while True:
            chunk = await child.process.stdout.receive_some(65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            child.lines.extend(line.decode() for line in complete)
    child.done.set()


async def start_child(
    nursery: trio.Nursery,
    data_dir: Path,
    mode: str,
    args: Sequence[str] = (),
    *,
    peers: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> Child:
    """Start a child node on `data_dir` and wait until it serves (its child.json).
    `peers`: `ID=HOST:PORT` (`peer_of`)."""
    info_file = data_dir / "child.json"
    info_file.unlink(missing_ok=True)
    peer_args = [f"--peer={peer}" for peer in peers]
    log = (data_dir / "child.log").open("ab")
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), str(data_dir), mode, *args, *peer_args],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=CHILD.parent,
    )
    log.close()
    child = Child(process=process, info={}, data_dir=data_dir)
    nursery.start_soon(_read_lines, child)
    with trio.fail_after(timeout_s):
        while not info_file.exists():
            if process.returncode is not None or process.poll() is not None:
                raise AssertionError(f"child exited with {process.returncode}: see {log.name}")
            await trio.sleep(0.02)
    child.info = json.loads(info_file.read_text(encoding="utf-8"))
    return child


def peer_of(node: Node, port: int | None = None) -> str:
    """The `--peer` argument naming `node` (at `port` on 127.0.0.1 if given)."""
    assert node.federation_address is not None
    host, real = node.federation_address
    return f"{node.identifier}={host}:{real if port is None else port}"


async def wait_lines(child: Child, count: int, prefix: str = "ack ") -> None:
    while sum(1 for line in child.lines if line.startswith(prefix)) < count:
        if child.done.is_set():
            raise AssertionError(f"child ended after {len(child.lines)} lines")
        await trio.sleep(0.01)


async def kill_and_reap(child: Child) -> int:
    child.kill()
    code = await child.process.wait()
    with trio.fail_after(5):
        await child.done.wait()  # every line it wrote before dying has been read
    return code


def pending_in_db(data_dir: Path, destination: str) -> int:
    """The outbound queue of a dead node, read from its database file."""
    with sqlite3.connect(f"file:{data_dir / 'node.db'}?mode=ro", uri=True) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM outbound WHERE destination = ?", (destination,)
        ).fetchone()
    return int(count)


async def statuses(node: Node, room: str, event_ids: Sequence[str]) -> dict[str, str | None]:
    """Each event's status in `node`'s DAG of `room` (None: not there)."""

    def run(store: Store) -> dict[str, str | None]:
        stored = store.room(RoomId(room))
        found: dict[str, str | None] = {}
        for event_id in event_ids:
            admission = None if stored is None else stored.get_admission(EventId(event_id))
            found[event_id] = None if admission is None else admission.status.value
        return found

    return await node.astore.read(run)


async def all_accepted(node: Node, room: str, event_ids: Sequence[str]) -> bool:
    found = await statuses(node, room, event_ids)
    return all(s == EventStatus.ACCEPTED.value for s in found.values())


async def pending(node: Node, destination: str) -> int:
    return await node.astore.read(lambda s: s.outbound.pending_count(destination))
