#!/usr/bin/env python3
"""Benchmark the SQLite store: persistent ingest vs in-memory, RSS at 100k events, state reads.

    scripts/bench_store.py [--rooms DIR] [--events N] [--state N] [--repeat N] [--json]

1. Ingest of the largest benchmark room (most events; default rooms ../shared/bench/rooms)
   through the whole receive pipeline (`ingest_pdu`: format, signatures, hashes, steps 4-6),
   once on `MemoryRoomStore` and once on `SqliteRoomStore` in a temporary data directory
   (WAL, synchronous=NORMAL, one transaction per event), in the same run: events/s of each and
   the ratio persistent/in-memory (goal >= 0.6). Best of `--repeat` runs each.
2. Peak RSS after storing `--events` (default 100,000) events, in a fresh child process: a
   synthetic room version 11 room (create, alice's join, power levels, public join rule), then
   `--state` (default 10,000) users join and the rest are messages from joined users, every event
   built and signed with `build_event` on top of the forward extremities and added through
   `RoomGraph` on the SQLite store (signatures are made, not verified: what is measured is
   storing). Goal < 200 MB.
3. Reading the current state of that room (10,000+ state entries): cold (a freshly opened
   store, no cache) and warm, median of 5. Goal < 50 ms.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from s2s_node.core.events import build_event, parse_pdu
from s2s_node.core.ids import RoomId
from s2s_node.core.ingest import Outcome, ingest_pdu
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.room import MemoryRoomStore, RoomGraph, RoomStore
from s2s_node.core.rules import rules_for
from s2s_node.core.signing import derived_keys
from s2s_node.store import Store

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOMS = REPO.parent / "shared" / "bench" / "rooms"


# -- 1. ingest ---------------------------------------------------------------------------------


def largest_room(rooms: Path) -> tuple[Path, dict[str, Any]]:
    best: tuple[int, Path, dict[str, Any]] | None = None
    for path in sorted(rooms.glob("*.json.gz")):
        with gzip.open(path, "rb") as f:
            dag = json.loads(f.read())
        if best is None or len(dag["events"]) > best[0]:
            best = (len(dag["events"]), path, dag)
    if best is None:
        raise SystemExit(f"no *.json.gz rooms in {rooms}")
    return best[1], best[2]


def time_ingest(dag: dict[str, Any], persistent: bool) -> float:
    """Seconds to ingest every event; checks the final state against `expected`."""
    rules = rules_for(dag["room_version"])
    create = parse_pdu(dag["events"][0], rules)
    with tempfile.TemporaryDirectory() as tmp:
        store: Store | None = None
        room: RoomStore
        if persistent:
            store = Store.open(tmp)
            room = store.create_room(create.room_id, rules)
        else:
            room = MemoryRoomStore()
        graph = RoomGraph(rules, create.room_id, room)
        start = time.perf_counter()
        for obj in dag["events"]:
            outcome = ingest_pdu(obj, graph, derived_keys).outcome
            if outcome not in (Outcome.ACCEPTED, Outcome.SOFT_FAILED):
                raise SystemExit(f"unexpected outcome {outcome}")
        elapsed = time.perf_counter() - start
        expected = {(t, k): e for t, k, e in dag["expected"]["resolved_state"]}
        if dict(graph.current_state()) != expected:
            raise SystemExit("the ingested room does not reach the expected state")
        if store is not None:
            store.close()
    return elapsed


# -- 2. and 3. the synthetic room --------------------------------------------------------------


def build_synthetic(data_dir: Path, n_events: int, n_state: int) -> dict[str, float]:
    """Store a synthetic room (see the module docstring); runs in a child process."""
    rules = rules_for("11")
    key = signing_key_from_seed(hashlib.sha256(b"bench-store").digest())
    server = key.identifier
    alice = f"@alice:{server}"
    clock = 1_700_000_000_000
    create = build_event(
        rules=rules,
        room_id=f"!bench:{server}",
        sender=alice,
        event_type="m.room.create",
        state_key="",
        content={"room_version": "11"},
        prev_events=[],
        auth_events=[],
        depth=1,
        origin_server_ts=clock,
        server_name=server,
        signing_key=key,
    )
    start = time.perf_counter()
    with Store.open(data_dir) as store:
        room = store.create_room(create.room_id, rules)
        graph = RoomGraph(rules, create.room_id, room)
        graph.add(create)
        stored = 1

        def send(
            event_type: str, sender: str, content: dict[str, Any], state_key: str | None
        ) -> None:
            nonlocal clock, stored
            clock += 1
            pdu = graph.build_event(
                event_type=event_type,
                content=content,
                sender=sender,
                state_key=state_key,
                now_ms=clock,
                server_name=server,
                signing_key=key,
            )
            admission = graph.add(pdu)
            if admission.failed_check is not None:
                raise SystemExit(f"synthetic event failed: {admission}")
            stored += 1

        send("m.room.member", alice, {"membership": "join"}, alice)
        send("m.room.power_levels", alice, {"users": {alice: 100}}, "")
        send("m.room.join_rules", alice, {"join_rule": "public"}, "")
        users = [f"@u{i}:{server}" for i in range(n_state)]
        messages = max(0, n_events - stored - n_state)
        every = max(1, messages // max(1, n_state))
        joined = 0
        while stored < n_events:
            if joined < n_state and (stored % (every + 1) == 0 or messages == 0):
                send("m.room.member", users[joined], {"membership": "join"}, users[joined])
                joined += 1
            else:
                sender = users[stored % joined] if joined else alice
                send("m.room.message", sender, {"msgtype": "m.text", "body": f"m{stored}"}, None)
        while joined < n_state:
            send("m.room.member", users[joined], {"membership": "join"}, users[joined])
            joined += 1
        elapsed = time.perf_counter() - start
        state_size = len(graph.current_state())
        (rows,) = store.database.conn.execute("SELECT count(*) FROM events").fetchone()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "events": float(rows),
        "state_entries": float(state_size),
        "seconds": elapsed,
        "peak_rss_mb": rss_mb,
    }


def time_state_reads(data_dir: Path, repeat: int) -> dict[str, float]:
    cold: list[float] = []
    warm: list[float] = []
    size = 0
    for _ in range(repeat):
        with Store.open(data_dir) as store:
            room_id = RoomId(store.rooms()[0][0])
            start = time.perf_counter()
            room = store.room(room_id)
            assert room is not None
            state = room.get_current_state()
            size = len(state)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            room.get_current_state()
            warm.append(time.perf_counter() - start)
    return {
        "state_entries": float(size),
        "cold_ms": statistics.median(cold) * 1000,
        "warm_ms": statistics.median(warm) * 1000,
    }


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rooms", type=Path, default=DEFAULT_ROOMS)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--state", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--synthetic-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.synthetic_child is not None:
        print(json.dumps(build_synthetic(args.synthetic_child, args.events, args.state)))
        return 0

    path, dag = largest_room(args.rooms)
    memory_s = min(time_ingest(dag, persistent=False) for _ in range(args.repeat))
    sqlite_s = min(time_ingest(dag, persistent=True) for _ in range(args.repeat))
    n = len(dag["events"])

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "node"
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--synthetic-child",
                str(data_dir),
                "--events",
                str(args.events),
                "--state",
                str(args.state),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        synthetic = json.loads(child.stdout)
        db_mb = (data_dir / "node.db").stat().st_size / 2**20
        reads = time_state_reads(data_dir, repeat=5)

    results = {
        "room": path.name,
        "room_events": n,
        "memory_events_per_s": n / memory_s,
        "sqlite_events_per_s": n / sqlite_s,
        "ratio": memory_s / sqlite_s,
        "synthetic": synthetic | {"db_mb": db_mb},
        "state_read": reads,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [
        ("ingest room", f"{path.name} ({n} events)", ""),
        ("ingest, in memory", f"{n / memory_s:,.0f} events/s", ""),
        ("ingest, SQLite", f"{n / sqlite_s:,.0f} events/s", ""),
        ("ratio SQLite / memory", f"{memory_s / sqlite_s:.2f}", ">= 0.6"),
        (
            "synthetic room stored",
            f"{synthetic['events']:,.0f} events, {synthetic['state_entries']:,.0f} state entries,"
            f" {synthetic['seconds']:.0f} s, {db_mb:.0f} MB on disk",
            "",
        ),
        ("peak RSS after storing", f"{synthetic['peak_rss_mb']:.0f} MB", "< 200 MB"),
        (
            "read current state, cold",
            f"{reads['cold_ms']:.1f} ms ({reads['state_entries']:,.0f} entries)",
            "< 50 ms",
        ),
        ("read current state, warm", f"{reads['warm_ms']:.3f} ms", ""),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
