"""One load run (tests/test_load.py, scripts/chaos_soak.py --load): a receiving node and four
senders, each a child process (tests/crash_node_child.py), sharing one room; every sender sends
messages into it as fast as it can for `seconds`, while this process (otherwise idle) asks the
receiver's client API `GET /_matrix/client/v3/joined_rooms` every 50 ms and samples the
receiver's RSS from /proc every 100 ms. Then it waits until every sender's queue is empty and
the receiver holds every event.

Measured (`LoadResult`): client API latency p50/p99/max, the receiver's RSS (baseline, peak),
events sent and received during the flood, the senders' persisted outbound queues at the end
of the flood (the back-pressure: the backlog waits in the senders' stores, not in the
receiver's memory), and the drain time.
"""

from __future__ import annotations

import contextlib
import http.client
import sqlite3
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import trio
from crash_fixtures import Child, start_child
from crash_node_child import child_config
from node_fixtures import FAST_BACKOFF, connect, make_shared_room

from s2s_node.node import Node, open_node

SENDERS = 4


@dataclass(slots=True, kw_only=True)
class LoadResult:
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    rss_baseline_kb: int = 0
    rss_samples_kb: list[int] = field(default_factory=list)
    sent: int = 0
    received_at_end: int = 0
    queued_at_end: list[int] = field(default_factory=list)
    queued_max: list[int] = field(default_factory=list)
    drain_s: float = 0.0
    received_total: int = 0

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_s)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    @property
    def rss_peak_kb(self) -> int:
        return max(self.rss_samples_kb)

    def summary(self) -> str:
        return (
            f"{self.seconds:.0f}s flood, {SENDERS} senders: sent {self.sent} "
            f"({self.sent / self.seconds:.0f} ev/s), received {self.received_at_end} by the end "
            f"({self.received_at_end / self.seconds:.0f} ev/s), queued at the end "
            f"{self.queued_at_end} (max seen {self.queued_max}), drained in {self.drain_s:.1f}s; "
            f"client API {len(self.latencies_s)} requests p50 {self.p50 * 1000:.1f} ms "
            f"p99 {self.p99 * 1000:.1f} ms max {max(self.latencies_s) * 1000:.1f} ms "
            f"statuses {self.statuses} errors {self.errors}; receiver RSS baseline "
            f"{self.rss_baseline_kb / 1024:.0f} MiB peak {self.rss_peak_kb / 1024:.0f} MiB"
        )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _get(url: str, token: str) -> tuple[int, float]:
    parts = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", parts.path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def _count(db_file: Path, sql: str, *params: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as db:
        return int(db.execute(sql, params).fetchone()[0])


def queued(data_dir: Path, destination: str) -> int:
    return _count(
        data_dir / "node.db", "SELECT COUNT(*) FROM outbound WHERE destination = ?", destination
    )


def room_events(data_dir: Path, room: str) -> int:
    return _count(
        data_dir / "node.db",
        "SELECT COUNT(*) FROM events JOIN rooms USING (room_nid) WHERE room_id = ?",
        room,
    )


async def _setup(workdir: Path) -> str:
    """The shared room of the receiver and the senders, made in-process, then closed."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = []
        for name in ["r", *(f"s{i}" for i in range(SENDERS))]:
            nodes.append(
                await stack.enter_async_context(
                    open_node(child_config(), data_dir=workdir / name, backoff=FAST_BACKOFF)
                )
            )
        await connect(*nodes)
        return await make_shared_room(nodes[0], *nodes[1:])


async def run_load(workdir: Path, seconds: float, drain_timeout_s: float = 120.0) -> LoadResult:
    room = await _setup(workdir)
    result = LoadResult(seconds=seconds)
    async with trio.open_nursery() as nursery:
        receiver = await start_child(nursery, workdir / "r", "serve")
        await trio.sleep(0.5)
        result.rss_baseline_kb = rss_kb(receiver.pid)
        url = receiver.info["client_url"] + "/_matrix/client/v3/joined_rooms"
        token = str(receiver.info["token"])
        status, _ = await trio.to_thread.run_sync(_get, url, token)
        assert status == 200, status
        received_before = room_events(workdir / "r", room)
        peer = [f"{receiver.identifier}=127.0.0.1:{receiver.port}"]
        senders: list[Child] = []
        for i in range(SENDERS):
            senders.append(
                await start_child(
                    nursery,
                    workdir / f"s{i}",
                    "flood",
                    [room, str(seconds)],
                    peers=peer,
                )
            )
        result.queued_max = [0] * SENDERS
        flood_over = trio.Event()

        async def probe() -> None:
            while not flood_over.is_set():
                try:
                    status, took = await trio.to_thread.run_sync(_get, url, token)
                except OSError:
                    result.errors += 1
                else:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    result.latencies_s.append(took)
                await trio.sleep(0.05)

        async def sample() -> None:
            while not flood_over.is_set():
                result.rss_samples_kb.append(rss_kb(receiver.pid))
                for i, sender in enumerate(senders):
                    depth = queued(sender.data_dir, receiver.identifier)
                    result.queued_max[i] = max(result.queued_max[i], depth)
                await trio.sleep(0.1)

        async with trio.open_nursery() as measuring:
            measuring.start_soon(probe)
            measuring.start_soon(sample)
            for sender in senders:
                await _wait_sent(sender)
            flood_over.set()
        result.sent = sum(int(s.lines[-1].split()[1]) for s in senders)
        result.received_at_end = room_events(workdir / "r", room) - received_before
        result.queued_at_end = [queued(s.data_dir, receiver.identifier) for s in senders]
        started = trio.current_time()
        with trio.move_on_after(drain_timeout_s):
            while any(queued(s.data_dir, receiver.identifier) for s in senders):
                await trio.sleep(0.1)
        result.drain_s = trio.current_time() - started
        result.received_total = room_events(workdir / "r", room) - received_before
        for child in [*senders, receiver]:
            child.kill()
            await child.process.wait()
        nursery.cancel_scope.cancel()
    return result


async def _wait_sent(child: Child) -> None:
    while not any(line.startswith("sent ") for line in child.lines):
        if child.process.poll() is not None:
            raise AssertionError(f"sender exited early: see {child.data_dir / 'child.log'}")
        await trio.sleep(0.05)
