"""Check the incremental resolution of the current state against full resolution, call by call.

Usage: `python scripts/check_stateres_incremental.py [--rooms DIR] [FILE ...]`

Replays each benchmark room (perf-dag/1; default: every `*.json.gz` in `../shared/bench/rooms`
relative to the repository root) in file order through `core.ingest.ingest_pdu` into a room
graph in memory, and compares every `IncrementalResolver.resolve` call the graph makes with
`stateres.resolve` over the same inputs. Prints one line per room (calls, mismatches, how many
calls were rebuilt from scratch) and exits 1 if any call differed. The tests do the same over
the small rooms in `tests/vectors/rooms`; this covers the large ones.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.ingest import ingest_create_event, ingest_pdu
from s2s_node.core.room import MemoryRoomStore
from s2s_node.core.signing import KeyRing
from s2s_node.core.state_snapshot import StateSnapshot
from s2s_node.core.stateres import resolve
from s2s_node.core.stateres_incremental import IncrementalResolver

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOMS = REPO_ROOT.parent / "shared" / "bench" / "rooms"

StateKey = tuple[str, str]


class _Checker:
    def __init__(self) -> None:
        self.calls = 0
        self.mismatches = 0
        self._real = IncrementalResolver.resolve

    def install(self) -> None:
        checker = self

        def checked(
            resolver: IncrementalResolver,
            state_sets: Sequence[Mapping[StateKey, EventId]],
            get_event: Callable[[EventId], Pdu],
        ) -> StateSnapshot:
            got = checker._real(resolver, state_sets, get_event)
            want = resolve(
                resolver._rules,
                [dict(s) for s in state_sets],
                resolver.index,
                get_event,
                resolver._is_rejected,
            )
            checker.calls += 1
            if dict(got) != want:
                checker.mismatches += 1
            return got

        IncrementalResolver.resolve = checked  # type: ignore[method-assign, assignment]


def _check_room(path: Path, checker: _Checker) -> bool:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        room: dict[str, Any] = json.load(f)
    events = room["events"]
    checker.calls = checker.mismatches = 0
    keys = KeyRing()
    verdict, graph = ingest_create_event(events[0], keys, MemoryRoomStore())
    if graph is None:
        print(f"{path.name}: the create event was dropped: {verdict}")
        return False
    for event in events[1:]:
        ingest_pdu(event, graph, keys)
    resolver = graph._current_resolver
    rebuilds = 0 if resolver is None else resolver.rebuilds
    print(
        f"{path.name}: {len(events)} events, {checker.calls} incremental resolutions,"
        f" {checker.mismatches} differing from full resolution, {rebuilds} built from scratch"
    )
    return checker.mismatches == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=Path, default=DEFAULT_ROOMS, help="folder of rooms")
    parser.add_argument("files", nargs="*", type=Path, help="room files (override --rooms)")
    args = parser.parse_args(argv)
    paths = args.files or sorted(args.rooms.glob("*.json.gz"))
    if not paths:
        print(f"no *.json.gz rooms in {args.rooms}", file=sys.stderr)
        return 2
    checker = _Checker()
    checker.install()
    ok = all([_check_room(path, checker) for path in paths])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
