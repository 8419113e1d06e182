"""kill -9 at random points loses no acknowledged event and leaves a consistent room.

A child process (tests/store_crash_child.py) ingests a benchmark room through `RoomGraph` on
the SQLite store and prints each event ID once its transaction committed. The test kills it
with SIGKILL after a random number of new acknowledgements plus a random delay of up to 3 ms,
so the kill lands anywhere in a later event (mid-transaction, mid-commit, between events).
It then opens the store itself and checks that every acknowledged event is there, that the
stored events are a prefix of the room, that the extremities, the current state and every
event's status equal a recomputation (a replay of the stored events into a fresh in-memory
graph), and that the outbound queue holds exactly the accepted events. After the rounds a
child runs to the end; the final state must be Synapse's.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from room_fixtures import ROOMS, load_bench_room

from s2s_node.core.room import EventStatus, MemoryRoomStore, RoomGraph
from s2s_node.core.rules import rules_for
from s2s_node.store import Store

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "store_crash_child.py"


def run_child(
    data_dir: Path,
    room: str,
    kill_after_acks: int | None,
    extra_delay_s: float = 0.0,
    known: frozenset[str] = frozenset(),
) -> tuple[list[str], bool]:
    """Run the child; SIGKILL it `extra_delay_s` after it acknowledged `kill_after_acks` events
    not in `known` (None: let it finish). Returns (acknowledged IDs, finished)."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(ROOMS / room)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None and child.stderr is not None
    lines: list[str] = []
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        if kill_after_acks is not None:
            new = 0
            while new < kill_after_acks:
                line = child.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
                new += line.startswith("ack ") and line.split()[1] not in known
            # The child goes on meanwhile: the kill lands somewhere in a later event.
            time.sleep(extra_delay_s)
            child.send_signal(signal.SIGKILL)
        rest, errors = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
    lines.extend(rest.splitlines())
    finished = "done" in lines
    if not finished:
        assert child.returncode == -signal.SIGKILL, errors
    acked = [line.split(" ", 1)[1] for line in lines if line.startswith("ack ")]
    return acked, finished


def check_store(data_dir: Path, room_name: str, acknowledged: set[str]) -> int:
    """Check the store after a crash; return how many events it holds."""
    bench = load_bench_room(room_name)
    rules = rules_for(bench.room_version)
    with Store.open(data_dir) as store:
        (room_id, _version), *others = store.rooms()
        assert not others
        room = store.room(room_id)
        assert room is not None
        stored = room.event_ids()
        # Every acknowledged event is there; what is stored is a prefix of the room.
        assert acknowledged <= set(stored)
        assert stored == list(bench.event_ids[: len(stored)])
        # Recompute from the stored events alone and compare.
        replay = RoomGraph(rules, room_id, MemoryRoomStore())
        for event_id in stored:
            pdu = room.get_pdu(event_id)
            assert pdu is not None
            replay.add(pdu)
            assert room.get_admission(event_id) == replay.admission(event_id)
        assert room.get_forward_extremities() == replay.forward_extremities
        assert dict(room.get_current_state()) == dict(replay.current_state())
        for event_id in stored[-5:]:
            assert room.get_state_after(event_id) == replay.state_after(event_id)
        # The outbound queue holds exactly the accepted events, in order.
        accepted = [e for e in stored if replay.status(e) is EventStatus.ACCEPTED]
        queued: list[str] = []
        while (batch := store.outbound.next_batch("peer", max_pdus=1000)) is not None:
            queued.extend(e for e, _ in batch.pdus)
            store.outbound.ack("peer", batch.last_seq)
        assert queued == accepted
        # Put them back for the next round's check.
        store.outbound.enqueue_pdus(["peer"], accepted, now_ms=0)
        return len(stored)


def crash_rounds(tmp_path: Path, room_name: str, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    acknowledged: set[str] = set()
    counts: list[int] = []
    for _ in range(rounds):
        acked, finished = run_child(
            data_dir,
            room_name,
            rng.randint(1, 40),
            extra_delay_s=rng.uniform(0.0, 0.003),
            known=frozenset(acknowledged),
        )
        acknowledged.update(acked)
        counts.append(check_store(data_dir, room_name, acknowledged))
        if finished:
            break
    # Ingest to the end; the result is Synapse's resolved state.
    _acked, finished = run_child(data_dir, room_name, None)
    assert finished
    bench = load_bench_room(room_name)
    assert check_store(data_dir, room_name, acknowledged) == len(bench.events)
    with Store.open(data_dir) as store:
        room = store.room(store.rooms()[0][0])
        assert room is not None
        assert room.get_forward_extremities() == bench.tips
        assert dict(room.get_current_state()) == bench.expected
    # The kills landed mid-room, at different events.
    assert len({c for c in counts if 0 < c < len(bench.events)}) >= min(3, len(counts)), counts


def test_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """Bounded: 12 kills in one room (a few seconds)."""
    crash_rounds(tmp_path, "v12-s100-c100-k2.json.gz", rounds=12, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("room_name", ["v11-s100-c100-k2.json.gz", "v12-s100-c10-k2.json.gz"])
def test_kill_9_soak(tmp_path: Path, room_name: str) -> None:
    crash_rounds(tmp_path, room_name, rounds=40, seed=len(room_name))
