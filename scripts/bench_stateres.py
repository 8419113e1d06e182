#!/usr/bin/env python3
"""Time s2s-node's state resolution on the benchmark rooms, side by side with Synapse's.

    scripts/bench_stateres.py [--rooms DIR] [--repeat N] [--synapse-python PATH] [--json]
                              [FILE_NAME_SUBSTRING ...]

For each `*.json.gz` room (perf-dag/1, see the rooms folder's README) it parses the events into
`Pdu`s and builds the auth-chain index beforehand (nothing is verified: what is timed is the
resolution, as Synapse's script times it), resolves the room's `state_sets` once and checks the
answer against `expected.resolved_state`, then times N more resolutions and reports the median.

If a Python with matrix-synapse is given (or found at ../synapse-venv/bin/python beside the
checkout), `<rooms dir>/../synapse_stateres.py` times Synapse on the same file in the same run,
and the table shows the ratio synapse/ours (above 1 = ours is faster).

Default rooms: ../shared/bench/rooms relative to the repository root.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.events import Pdu, parse_pdu
from s2s_node.core.ids import EventId
from s2s_node.core.rules import RoomVersionRules, rules_for
from s2s_node.core.stateres import StateKey, resolve

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOMS = REPO.parent / "shared" / "bench" / "rooms"
DEFAULT_SYNAPSE_PYTHON = REPO.parent / "synapse-venv" / "bin" / "python"


@dataclass(frozen=True, slots=True, kw_only=True)
class Room:
    name: str
    rules: RoomVersionRules
    events: dict[EventId, Pdu]
    index: AuthChainIndex
    state_sets: list[dict[StateKey, EventId]]
    expected: dict[StateKey, EventId]


def load_room(path: Path) -> Room:
    with gzip.open(path, "rb") as f:
        dag = json.loads(f.read())
    rules = rules_for(dag["room_version"])
    events: dict[EventId, Pdu] = {}
    index = AuthChainIndex()
    for obj, event_id in zip(dag["events"], dag["event_ids"], strict=True):
        pdu = parse_pdu(obj, rules, event_id=EventId(event_id), check_values=False)
        events[pdu.event_id] = pdu
        if pdu.is_state:  # message events are never auth events nor state
            index.add(pdu.event_id, pdu.auth_event_ids)
    return Room(
        name=path.name,
        rules=rules,
        events=events,
        index=index,
        state_sets=[{(t, k): e for t, k, e in ss} for ss in dag["state_sets"]],
        expected={(t, k): e for t, k, e in dag["expected"]["resolved_state"]},
    )


def time_ours(room: Room, repeat: int) -> dict[str, Any]:
    get_event = room.events.__getitem__
    result = resolve(room.rules, room.state_sets, room.index, get_event)
    correct = result == room.expected
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        resolve(room.rules, room.state_sets, room.index, get_event)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "correct": correct}


def time_synapse(python: Path, script: Path, path: Path, repeat: int) -> dict[str, Any] | None:
    proc = subprocess.run(
        [str(python), str(script), str(path), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(f"synapse failed on {path.name}: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    line = proc.stdout.strip().splitlines()[-1]
    out: dict[str, Any] = json.loads(line)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("filters", nargs="*", help="only files whose name contains one of these")
    ap.add_argument("--rooms", type=Path, default=DEFAULT_ROOMS)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--synapse-python", type=Path, default=None)
    ap.add_argument("--no-synapse", action="store_true", help="do not run Synapse")
    ap.add_argument("--json", action="store_true", help="print one JSON object per room")
    args = ap.parse_args()

    synapse_python: Path | None = args.synapse_python
    if synapse_python is None and not args.no_synapse and DEFAULT_SYNAPSE_PYTHON.exists():
        synapse_python = DEFAULT_SYNAPSE_PYTHON
    if args.no_synapse:
        synapse_python = None
    synapse_script = args.rooms.resolve().parent / "synapse_stateres.py"

    files = sorted(args.rooms.glob("*.json.gz"))
    if args.filters:
        files = [f for f in files if any(s in f.name for s in args.filters)]
    rows = []
    all_ok = True
    for path in files:
        room = load_room(path)
        ours = time_ours(room, args.repeat)
        row: dict[str, Any] = {
            "file": path.name,
            "room_version": room.rules.version,
            "ours_median_s": ours["median_s"],
            "ours_min_s": ours["min_s"],
            "ours_correct": ours["correct"],
            "repeat": args.repeat,
        }
        all_ok &= ours["correct"]
        if synapse_python is not None:
            theirs = time_synapse(synapse_python, synapse_script, path, args.repeat)
            if theirs is not None:
                row["synapse_median_s"] = theirs["resolve_median_s"]
                row["synapse_correct"] = theirs["correct"]
                row["ratio_synapse_over_ours"] = theirs["resolve_median_s"] / ours["median_s"]
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows)
    return 0 if all_ok else 1


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'room':<28} {'ours ms':>9} {'ok':>3} {'synapse ms':>11} {'ok':>3} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        synapse = row.get("synapse_median_s")
        ratio = row.get("ratio_synapse_over_ours")
        print(
            f"{row['file']:<28} {row['ours_median_s'] * 1000:>9.2f} "
            f"{'yes' if row['ours_correct'] else 'NO':>3} "
            f"{'-' if synapse is None else f'{synapse * 1000:.2f}':>11} "
            f"{'' if synapse is None else ('yes' if row['synapse_correct'] else 'NO'):>3} "
            f"{'-' if ratio is None else f'{ratio:.2f}x':>7}"
        )


if __name__ == "__main__":
    sys.exit(main())
