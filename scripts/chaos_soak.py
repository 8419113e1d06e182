#!/usr/bin/env python3
"""The long version of the chaos, crash and load suites (docs/reliability.md).

Usage: `.venv/bin/python scripts/chaos_soak.py [--minutes 10] [--seeds 200] [--first-seed 1000]
[--quiet 5] [--load-seconds 60] [--crash-rounds 6] [--json FILE] [--log FILE]`

Runs, within `--minutes` (the chaos seeds stop when the time is up):
1. one load run (tests/load_run.py) of `--load-seconds` (0 skips it);
2. `--crash-rounds` crash rounds (tests/test_crash.py), cycling through a kill during ingest
   (at a random queue depth), during sending (after a random number of acknowledged events,
   over a randomly slowed link) and during an upgrade (at a random stage);
3. chaos seeds from `--first-seed` (tests/chaos_cluster.py): 3, 4 or 5 nodes and 3-8 s of chaos,
   drawn from the seed, until `--seeds` seeds ran or the time is up. After healing, the nodes
   get `--quiet` seconds of empty queues to agree by themselves (recorded) before the settle
   round (every node speaks once more) and the convergence check.
Prints one line per run and a summary, writes everything as JSON (`--json`), and exits 1 if any
run failed; the nodes' warnings and errors go to `--log`. A failed chaos seed is printed with
its problems: rerun it with `--first-seed N --seeds 1`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import trio

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from chaos_cluster import ChaosSettings, run_chaos  # noqa: E402
from load_run import run_load  # noqa: E402
from test_crash import (  # noqa: E402
    crash_during_ingest,
    crash_during_sending,
    crash_during_upgrade,
)

STAGES = ("ack", "successor", "tombstone")


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


async def run_crashes(rounds: int, rng: random.Random, report: dict[str, Any]) -> None:
    for n in range(rounds):
        kind = ("ingest", "sending", "upgrade")[n % 3]
        started = time.monotonic()
        if kind == "ingest":
            params: dict[str, Any] = {"kill_below": rng.randrange(100, 950)}
        elif kind == "sending":
            params = {"kill_after": rng.randrange(50, 1500), "seed": rng.randrange(10**6)}
        else:
            params = {"stage": rng.choice(STAGES)}
        entry: dict[str, Any] = {"kind": kind, **params}
        with tempfile.TemporaryDirectory(prefix="soak-crash-") as tmp:
            try:
                if kind == "ingest":
                    await crash_during_ingest(Path(tmp), **params)
                elif kind == "sending":
                    await crash_during_sending(Path(tmp), **params)
                else:
                    await crash_during_upgrade(Path(tmp), params["stage"])
                entry["ok"] = True
            except Exception as exc:
                entry["ok"] = False
                entry["error"] = "".join(traceback.format_exception_only(exc)).strip()[:2000]
        entry["seconds"] = round(time.monotonic() - started, 1)
        report["crash"].append(entry)
        say(f"crash {kind} {params}: {'ok' if entry['ok'] else 'FAILED ' + entry['error']}")


async def run_seeds(
    first: int, count: int, deadline: float, report: dict[str, Any], quiet_s: float
) -> None:
    for seed in range(first, first + count):
        if time.monotonic() >= deadline:
            break
        rng = random.Random(f"soak/{seed}")
        settings = ChaosSettings(
            nodes=rng.choice([3, 4, 5]), seconds=rng.uniform(3.0, 8.0), quiet_s=quiet_s
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="soak-chaos-") as tmp:
            try:
                result = await run_chaos(seed, Path(tmp), settings)
            except Exception as exc:
                error = "".join(traceback.format_exception_only(exc)).strip()[:2000]
                report["chaos"].append({"seed": seed, "ok": False, "error": error})
                say(f"seed {seed}: CRASHED {error}")
                continue
        report["chaos"].append(
            {
                "seed": seed,
                "ok": result.converged,
                "nodes": result.nodes,
                "chaos_s": round(settings.seconds, 1),
                "room_version": result.room_version,
                "acknowledged": result.acknowledged,
                "events": result.events,
                "rejected": result.rejected,
                "soft_failed": result.soft_failed,
                "refused_locally": result.refused_locally,
                "agreed_before_settle": result.agreed_before_settle,
                "before_settle": result.before_settle,
                "problems": result.problems,
                "faults": dict(result.faults),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
        say(result.summary() + ("" if result.converged else f" {result.problems}"))


async def main(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.minutes * 60
    report: dict[str, Any] = {"args": vars(args), "load": None, "crash": [], "chaos": []}
    rng = random.Random(args.first_seed)
    if args.load_seconds > 0:
        with tempfile.TemporaryDirectory(prefix="soak-load-") as tmp:
            load = await run_load(Path(tmp), args.load_seconds, drain_timeout_s=600)
        say("load: " + load.summary())
        report["load"] = {
            "summary": load.summary(),
            "p50_ms": round(load.p50 * 1000, 1),
            "p99_ms": round(load.p99 * 1000, 1),
            "max_ms": round(max(load.latencies_s) * 1000, 1),
            "requests": len(load.latencies_s),
            "rss_baseline_mib": round(load.rss_baseline_kb / 1024, 1),
            "rss_peak_mib": round(load.rss_peak_kb / 1024, 1),
            "rss_mib_every_5s": [round(kb / 1024) for kb in load.rss_samples_kb[::50]],
            "sent": load.sent,
            "received_at_end": load.received_at_end,
            "received_total": load.received_total,
            "queued_max": load.queued_max,
            "drain_s": round(load.drain_s, 1),
            "ok": load.received_total == load.sent and load.p99 < 1.0,
        }
    await run_crashes(args.crash_rounds, rng, report)
    await run_seeds(args.first_seed, args.seeds, deadline, report, args.quiet)

    chaos = report["chaos"]
    faults: Counter[str] = Counter()
    for entry in chaos:
        faults.update(entry.get("faults", {}))
    failed = [e["seed"] for e in chaos if not e["ok"]]
    report["summary"] = {
        "chaos_seeds": len(chaos),
        "chaos_failed": failed,
        "agreed_before_settle": sum(1 for e in chaos if e.get("agreed_before_settle")),
        "before_settle_differences": dict(
            Counter(
                p.split(":")[0] if ":" in p else "lacks acknowledged events"
                for e in chaos
                for p in e.get("before_settle", [])
            )
        ),
        "acknowledged": sum(e.get("acknowledged", 0) for e in chaos),
        "faults": dict(faults),
        "crash_rounds": len(report["crash"]),
        "crash_failed": [e for e in report["crash"] if not e["ok"]],
    }
    say(f"summary: {json.dumps(report['summary'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    load_ok = report["load"] is None or report["load"]["ok"]
    return 0 if not failed and not report["summary"]["crash_failed"] and load_ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--crash-rounds", type=int, default=6)
    parser.add_argument(
        "--quiet",
        type=float,
        default=5.0,
        help="seconds of empty queues after healing before the settle round",
    )
    parser.add_argument("--json", default="")
    parser.add_argument(
        "--log",
        default=str(Path(tempfile.gettempdir()) / "chaos_soak.log"),
        help="the nodes' warnings and errors",
    )
    parsed = parser.parse_args()
    logging.basicConfig(
        filename=parsed.log, level=logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    sys.exit(trio.run(main, parsed))
