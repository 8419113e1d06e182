"""Benchmark of the receive pipeline: a whole room through `ingest_pdu`, against a ceiling.

Usage: `python scripts/bench_ingest.py [--rooms DIR] [--room FILE] [--repeats R] [--batch N]
[--json]`

Replays one benchmark room (perf-dag/1; default: the largest file in `../shared/bench/rooms`
relative to the repository root) in file order into a fresh `RoomGraph` over a
`MemoryRoomStore`, with the node's key lookup (`KeyRing`, keys derived from the identifiers).
That is every check on receipt: format, signatures, content hash, auth against the event's
auth events, against the state before it and against the current state, plus keeping state,
extremities and current state (state resolution whenever the forks' states differ).

The events go through `core.ingest.ingest_batch` N at a time (`--batch`, default 50), as the
node hands them over: the federation layer passes each transaction (at most 50 PDUs) and each
fetched page to one `ingest_batch` call (`NodeRooms.ingest`). Each replay is timed twice in
the same run: in batches of N (the figure the goal is read on) and event by event through
`ingest_pdu` (`per_event`: the same work with worse cache locality, since every event runs the
crypto and then the room graph before the next one starts).

Beside it, the verify ceiling measured in the same run, as `scripts/bench_events.py` defines
it: per event, canonical JSON encoding of the precomputed content-hash form and of the
precomputed redacted form, two `hashlib.sha256`, one PyNaCl `VerifyKey.verify`. The ratio
(ceiling time / ingest time) is what to watch; goal >= 0.5. It also prints how many times
state resolution ran and the time spent in it, and the outcomes.

Each repeat starts from the same heap: the previous repeat's graphs are let go and `gc.collect()`
runs before each timed part (the collector still runs during it, on that part's own objects).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import hashlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing

from s2s_node.core import room as room_module
from s2s_node.core.canonical import decode_base64
from s2s_node.core.ids import server_of
from s2s_node.core.ingest import Outcome, ingest_batch, ingest_create_event, ingest_pdu
from s2s_node.core.redaction import redact
from s2s_node.core.room import EventStatus, MemoryRoomStore, RoomGraph
from s2s_node.core.rules import RoomVersionRules, rules_for
from s2s_node.core.signing import KeyRing
from s2s_node.core.stateres import resolve
from s2s_node.core.stateres_incremental import IncrementalResolver

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOMS = REPO_ROOT.parent / "shared" / "bench" / "rooms"

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _largest_room(rooms: Path) -> Path:
    files = sorted(rooms.glob("*.json.gz"), key=lambda p: p.stat().st_size)
    if not files:
        sys.exit(f"no *.json.gz rooms in {rooms}")
    return files[-1]


def _time(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


class _ResolveMeter:
    """Counts and times state resolution as the room graph asks for it: `resolve` (state
    before an event at a merge) and `IncrementalResolver.resolve` (the current state)."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self._real = resolve
        self._real_incremental = IncrementalResolver.resolve
        meter = self

        def incremental(resolver: IncrementalResolver, *args: Any, **kwargs: Any) -> Any:
            return meter._timed(meter._real_incremental, resolver, *args, **kwargs)

        self.incremental = incremental

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._real, *args, **kwargs)

    def _timed(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


def _ingest_room(
    events: list[dict[str, Any]], batch: int = 1
) -> tuple[RoomGraph, Counter[Outcome]]:
    """Replay `events` into a new graph: one `ingest_pdu` per event (`batch` 1), else
    `ingest_batch` over consecutive slices of `batch` events."""
    keys = KeyRing()  # derived from identifiers, as the node does
    verdict, graph = ingest_create_event(events[0], keys, MemoryRoomStore())
    if graph is None:
        raise SystemExit(f"the create event was dropped: {verdict}")
    outcomes: Counter[Outcome] = Counter([verdict.outcome])
    if batch == 1:
        for event in events[1:]:
            outcomes[ingest_pdu(event, graph, keys).outcome] += 1
    else:
        for start in range(1, len(events), batch):
            for verdict in ingest_batch(events[start : start + batch], graph, keys):
                outcomes[verdict.outcome] += 1
    return graph, outcomes


def _verify_ceiling_work(
    room: dict[str, Any], rules: RoomVersionRules
) -> list[tuple[dict[str, Any], dict[str, Any], nacl.signing.VerifyKey, bytes]]:
    """The inputs of the verify ceiling, prepared outside the timed region."""
    work = []
    for event in room["events"]:
        hash_form = {
            k: v for k, v in event.items() if k not in ("hashes", "signatures", "unsigned")
        }
        redacted = redact(event, rules)
        redacted.pop("signatures", None)
        server = server_of(event["sender"])
        key_id = room["servers"][server]["key_id"]
        verify_key = nacl.signing.VerifyKey(decode_base64(room["servers"][server]["verify_key"]))
        signature = decode_base64(event["signatures"][server][key_id])
        work.append((hash_form, redacted, verify_key, signature))
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=Path, default=DEFAULT_ROOMS, help="folder of rooms")
    parser.add_argument("--room", type=Path, help="one room file (overrides --rooms)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch",
        type=int,
        default=50,
        help="events per ingest_batch call (default 50, a federation transaction; 1 = per event)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be at least 1")

    path = args.room or _largest_room(args.rooms)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        room = json.load(f)
    rules = rules_for(room["room_version"])
    events: list[dict[str, Any]] = room["events"]
    work = _verify_ceiling_work(room, rules)
    encode = _ENCODER.encode
    sha256 = hashlib.sha256

    def verify_ceiling() -> None:
        for hash_form, redacted, verify_key, signature in work:
            sha256(encode(hash_form).encode("utf-8")).digest()
            message = encode(redacted).encode("utf-8")
            sha256(message).digest()
            verify_key.verify(message, signature)

    meter = _ResolveMeter()
    room_module.resolve = meter  # type: ignore[attr-defined]
    IncrementalResolver.resolve = meter.incremental  # type: ignore[method-assign, assignment]
    ingest_runs: list[float] = []
    per_event_runs: list[float] = []
    ceiling_runs: list[float] = []
    resolve_seconds: list[float] = []
    result: tuple[RoomGraph, Counter[Outcome]] | None = None
    per_event: tuple[RoomGraph, Counter[Outcome]] | None = None
    for _ in range(args.repeats):
        # Every repeat starts from the same heap: the previous repeat's graphs are let go and
        # collected first, so that no run pays the cyclic collector for an earlier one's objects.
        result = per_event = None
        gc.collect()
        meter.seconds = 0.0
        meter.calls = 0
        start = time.perf_counter()
        result = _ingest_room(events, args.batch)
        ingest_runs.append(time.perf_counter() - start)
        resolve_seconds.append(meter.seconds)
        resolve_calls = meter.calls
        gc.collect()
        ceiling_runs.append(_time(verify_ceiling))
        gc.collect()
        start = time.perf_counter()
        per_event = _ingest_room(events)  # (with this repeat's batch graph alive, every time)
        per_event_runs.append(time.perf_counter() - start)
    assert result is not None and per_event is not None
    graph, outcomes = result
    # Batches change the grouping, never a verdict or the state.
    same_as_per_event = outcomes == per_event[1] and dict(graph.current_state()) == dict(
        per_event[0].current_state()
    )

    expected = {(t, k): e for t, k, e in room["expected"]["resolved_state"]}
    matches_expected = dict(graph.current_state()) == expected
    # The state after each fork's tip must be the file's state set. Whether the current state
    # is Synapse's resolution of those sets depends on the tips being accepted: a tip that is
    # soft-failed in this delivery order is no forward extremity (spec), so it is not resolved.
    tips_ok = all(
        dict(graph.state_after(tip)) == {(t, k): e for t, k, e in state_set}
        for tip, state_set in zip(room["tips"], room["state_sets"], strict=True)
    )
    soft_failed_tips = sum(graph.status(tip) is not EventStatus.ACCEPTED for tip in room["tips"])
    n = len(events)
    best_ratio = min(ceiling_runs) / min(ingest_runs)
    median_ratio = statistics.median(ceiling_runs) / statistics.median(ingest_runs)
    without_resolve = [i - r for i, r in zip(ingest_runs, resolve_seconds, strict=True)]
    per_event_ratio = statistics.median(ceiling_runs) / statistics.median(per_event_runs)
    exit_status = (
        0 if tips_ok and (matches_expected or soft_failed_tips) and same_as_per_event else 1
    )
    if args.json:
        figures = {
            "room": path.name,
            "room_version": rules.version,
            "events": n,
            "repeats": args.repeats,
            "batch": args.batch,
            "events_per_s_best": n / min(ingest_runs),
            "events_per_s_median": n / statistics.median(ingest_runs),
            "ceiling_events_per_s_best": n / min(ceiling_runs),
            "ceiling_events_per_s_median": n / statistics.median(ceiling_runs),
            "ratio_best": best_ratio,
            "ratio_median": median_ratio,
            "goal_ratio": 0.5,
            "per_event_events_per_s_median": n / statistics.median(per_event_runs),
            "per_event_ratio_median": per_event_ratio,
            "same_as_per_event": same_as_per_event,
            "resolve_calls": resolve_calls,
            "resolve_seconds_median": statistics.median(resolve_seconds),
            "ratio_without_resolve": min(ceiling_runs) / min(without_resolve),
            "outcomes": {o.value: c for o, c in outcomes.items()},
            "tips_ok": tips_ok,
            "soft_failed_tips": soft_failed_tips,
            "matches_expected": matches_expected,
        }
        print(json.dumps(figures))
        return exit_status
    print(
        f"room {path.name}: room version {rules.version}, {n} events, {args.repeats} repeats,"
        f" batches of {args.batch}"
    )
    print(
        f"ingest  {n / min(ingest_runs):9.0f} ev/s"
        f" (median {n / statistics.median(ingest_runs):9.0f})"
        f" | verify ceiling {n / min(ceiling_runs):9.0f} ev/s"
        f" (median {n / statistics.median(ceiling_runs):9.0f})"
        f" | ratio best {best_ratio:.2f}, median {median_ratio:.2f} (goal >= 0.5)"
    )
    print(
        f"event by event: {n / statistics.median(per_event_runs):9.0f} ev/s (median),"
        f" ratio {per_event_ratio:.2f};"
        f" verdicts and state {'the same' if same_as_per_event else 'DIFFER'}"
    )
    print(
        f"state resolution: {resolve_calls} calls per replay,"
        f" {statistics.median(resolve_seconds):.3f} s of {statistics.median(ingest_runs):.3f} s"
        f" (median); ratio without it: {min(ceiling_runs) / min(without_resolve):.2f}"
    )
    print(
        "outcomes: "
        + ", ".join(f"{o.value} {c}" for o, c in sorted(outcomes.items(), key=lambda i: i[0].value))
    )
    print(
        f"state after each tip {'matches' if tips_ok else 'DIFFERS FROM'} the file;"
        f" {soft_failed_tips} of {len(room['tips'])} tips soft-failed;"
        f" current state {'matches' if matches_expected else 'differs from'} expected"
    )
    return exit_status


if __name__ == "__main__":
    raise SystemExit(main())
