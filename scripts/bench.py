#!/usr/bin/env python3
"""The benchmark suite: every bench in scripts/, one table, one JSON file.

Usage: `python scripts/bench.py [--quick] [--only NAME[,NAME]] [--json-out FILE] [--rooms DIR]
[--timeout-factor F] [--list]`

Runs each bench as its own subprocess (with `--json`, so that its figures are read, not
scraped), one after the other so that they do not compete for the CPU, each with a timeout
(SIGTERM to its process group, SIGKILL 10 s later): a crash or a timeout is reported for that
bench and the suite goes on. While a bench runs, its line shows the elapsed time (updated in
place on a terminal). At the end: a table of every figure with its same-run baseline (the
ceiling, the in-memory store, Synapse, plain HTTP, ...) and the ratio, the goal from the issues
and whether it is met; and a JSON file (default `bench-results.json` in the current directory)
holding the same figures, the machine, the commands and each bench's status, wall time and
peak RSS (`ru_maxrss` of the bench process and the children it waited for).

Benches: events (build+sign and verify vs the raw crypto/encoding ceiling), ingest on a
low-conflict and on the most conflict-heavy benchmark room (vs the verify ceiling), store
(SQLite vs in-memory ingest, peak RSS at 100k events, state reads), stateres (vs Synapse when
../synapse-venv or /work/synapse-venv exists), federation (catch-up of a 10,000-event room, JSON
and CBOR, TLS and plain), tls (signed transaction PUTs, TLS vs plain), discovery (3 nodes in
network namespaces; root only, reported as skipped otherwise), and the memory figures those
print. `--quick` runs each with a reduced size (figures then are not comparable with the
goals' sizes; the table says which size ran).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
DEFAULT_ROOMS = REPO.parent / "shared" / "bench" / "rooms"
SYNAPSE_PYTHONS = (
    REPO.parent / "synapse-venv" / "bin" / "python",
    Path("/work/synapse-venv/bin/python"),
)
LOW_CONFLICT_ROOM = "v11-s1000-c10-k2.json.gz"
KILL_GRACE_S = 10.0

Figure = dict[str, Any]


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    baseline: tuple[str, float] | None = None,
    ratio: float | None = None,
    ratio_name: str = "",
    goal: str = "",
    met: bool | None = None,
    note: str = "",
) -> Figure:
    """One measured figure, with its same-run baseline and/or ratio and its goal."""
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": None if baseline is None else {"name": baseline[0], "value": baseline[1]},
        "ratio": ratio,
        "ratio_name": ratio_name,
        "goal": goal,
        "met": met,
        "note": note,
    }


def _json_lines(out: str) -> list[dict[str, Any]]:
    found = []
    for raw in out.splitlines():
        line = raw.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def _last_json(out: str) -> dict[str, Any]:
    """The last JSON object of the output (one line, or indented over several)."""
    lines = _json_lines(out)
    if lines:
        return lines[-1]
    start = out.rfind("\n{")
    return dict(json.loads(out[start + 1 if start >= 0 else out.index("{") :]))


# -- what each bench prints, as figures --------------------------------------------------------


def parse_events(out: str) -> list[Figure]:
    r = _last_json(out)
    figures = []
    for name, label in (("build", "build+sign"), ("verify", "verify")):
        x = r[name]
        figures.append(
            figure(
                f"{label} ({r['events']} events of {r['room']})",
                x["events_per_s_median"],
                "events/s",
                baseline=("raw ceiling, median", x["ceiling_events_per_s_median"]),
                ratio=x["ratio_median"],
                ratio_name="ours/ceiling",
                goal=f"ratio >= {x['target_ratio']}",
                met=x["ratio_median"] >= x["target_ratio"],
                note=f"best-of ratio {x['ratio_best']:.2f}",
            )
        )
    return figures


def parse_ingest(out: str) -> list[Figure]:
    r = _last_json(out)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
    return [
        figure(
            f"ingest_batch of {r['batch']}, whole room ({r['events']} events of {r['room']})",
            r["events_per_s_median"],
            "events/s",
            baseline=("verify ceiling, median", r["ceiling_events_per_s_median"]),
            ratio=r["ratio_median"],
            ratio_name="ours/ceiling",
            goal=f"ratio >= {r['goal_ratio']}",
            met=r["ratio_median"] >= r["goal_ratio"],
            note=(
                f"best-of ratio {r['ratio_best']:.2f}; event by event (ingest_pdu)"
                f" {r['per_event_ratio_median']:.2f}; {r['resolve_calls']} state resolutions,"
                f" {r['resolve_seconds_median']:.2f} s; ratio without them"
                f" {r['ratio_without_resolve']:.2f}; {outcomes}"
            ),
        )
    ]


def parse_store(out: str) -> list[Figure]:
    r = _last_json(out)
    synthetic, reads = r["synthetic"], r["state_read"]
    events = int(synthetic["events"])
    return [
        figure(
            f"ingest on SQLite ({r['room_events']} events of {r['room']})",
            r["sqlite_events_per_s"],
            "events/s",
            baseline=("same ingest in memory", r["memory_events_per_s"]),
            ratio=r["ratio"],
            ratio_name="SQLite/memory",
            goal="ratio >= 0.6",
            met=r["ratio"] >= 0.6,
        ),
        figure(
            f"peak RSS after storing {events:,} events",
            synthetic["peak_rss_mb"],
            "MB",
            goal="< 200 MB at 100,000 events",
            met=synthetic["peak_rss_mb"] < 200 if events >= 100_000 else None,
            note=f"{synthetic['db_mb']:.0f} MB on disk; stored in {synthetic['seconds']:.0f} s",
        ),
        figure(
            f"current state read, cold ({int(reads['state_entries']):,} entries)",
            reads["cold_ms"],
            "ms",
            baseline=("warm read", reads["warm_ms"]),
            goal="< 50 ms",
            met=reads["cold_ms"] < 50,
        ),
    ]


def parse_stateres(out: str) -> list[Figure]:
    rows = _json_lines(out)
    figures = []
    ratios = []
    for row in rows:
        ratio = row.get("ratio_synapse_over_ours")
        synapse = row.get("synapse_median_s")
        correct = row["ours_correct"] and row.get("synapse_correct", True)
        if ratio is not None:
            ratios.append(ratio)
        figures.append(
            figure(
                f"resolve {row['file']}",
                row["ours_median_s"] * 1000,
                "ms",
                baseline=None if synapse is None else ("Synapse, median", synapse * 1000),
                ratio=ratio,
                ratio_name="Synapse/ours",
                goal="ratio >= 2",
                met=None if ratio is None else ratio >= 2 and correct,
                note="" if correct else "ANSWER DIFFERS from expected",
            )
        )
    if ratios:
        geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        figures.append(
            figure(
                f"state resolution, {len(ratios)} rooms: smallest Synapse/ours",
                min(ratios),
                "x",
                ratio=geomean,
                ratio_name="geometric mean",
                goal=">= 2x in every room",
                met=min(ratios) >= 2,
            )
        )
    return figures


def parse_federation(out: str) -> list[Figure]:
    lines = _json_lines(out)
    rates = {(x["mode"], x["transport"]): x for x in lines if "transport" in x}
    costs = {x["mode"]: x for x in lines if "tls_cost_percent" in x}
    figures = []
    for (mode, transport), x in sorted(rates.items()):
        rate = x["events_per_s_median"]
        baseline, ratio, ratio_name = None, None, ""
        if transport == "tls" and (mode, "plain") in rates:
            plain = rates[(mode, "plain")]["events_per_s_median"]
            baseline, ratio, ratio_name = (
                (f"{mode} over plain HTTP", plain),
                rate / plain,
                "tls/plain",
            )
        elif mode == "cbor" and ("json", transport) in rates:
            json_rate = rates[("json", transport)]["events_per_s_median"]
            baseline, ratio = (f"JSON over {transport}", json_rate), rate / json_rate
            ratio_name = "cbor/json"
        same = all(run["same_state"] for run in x["runs"])
        figures.append(
            figure(
                f"catch-up of {x['events']:,} events, {mode.upper()} over {transport}",
                rate,
                "events/s",
                baseline=baseline,
                ratio=ratio,
                ratio_name=ratio_name,
                goal=f">= {x['goal_events_per_s']:,} events/s",
                met=rate >= x["goal_events_per_s"] and same,
                note="" if same else "STATES DIFFER after the join",
            )
        )
    for mode, c in sorted(costs.items()):
        figures.append(
            figure(
                f"cost of TLS in catch-up, {mode.upper()}",
                c["tls_cost_percent"],
                "%",
                ratio=c["tls_over_plain"],
                ratio_name="tls/plain",
                goal=f"< {c['goal_tls_cost_percent_below']}%",
                met=c["tls_cost_percent"] < c["goal_tls_cost_percent_below"],
            )
        )
    return figures


def parse_tls(out: str) -> list[Figure]:
    r = _last_json(out)
    best = r["best_requests_per_s"]
    figures = []
    for mode in ("sequential", "concurrent", "new_connection"):
        ratio = r["tls_over_plain"][mode]
        sequential = mode == "sequential"
        figures.append(
            figure(
                f"signed PUT of {r['pdus_per_txn']} PDUs over TLS, {mode.replace('_', ' ')}",
                best["tls"][mode],
                "requests/s",
                baseline=("plain HTTP", best["plain"][mode]),
                ratio=ratio,
                ratio_name="tls/plain",
                goal="TLS cost < 25% (ratio >= 0.75)" if sequential else "",
                met=ratio >= 0.75 if sequential else None,
                note=f"TLS cost {(1 - ratio) * 100:.0f}%",
            )
        )
    return figures


def parse_discovery(out: str) -> list[Figure]:
    r = _last_json(out)
    if "skipped" in r:
        raise SkippedError(r["skipped"])
    figures = [
        figure(
            f"discovery+verification, {r['nodes']} nodes in namespaces, worst pair of"
            f" {len(r['rounds'])} rounds",
            r["max_pair_latency_s"],
            "s",
            baseline=("spawn to all verified, median", r["spawn_to_all_verified_s_median"]),
            goal=f"< {r['goal_s']:.0f} s",
            met=r["goal_met"],
            note=f"median of the rounds' worst pair {r['median_of_round_max_s']:.2f} s",
        )
    ]
    if r.get("node_peak_rss_mb_max") is not None:
        figures.append(figure("peak RSS of a discovery node", r["node_peak_rss_mb_max"], "MB"))
    return figures


class SkippedError(Exception):
    """A bench that cannot run here (e.g. no root for namespaces)."""


# -- the benches -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    timeout_s: float
    parse: Callable[[str], list[Figure]]
    rooms: bool = True  # takes --rooms
    json_flag: bool = True  # takes --json (bench_federation prints JSON lines always)
    ok_exit: tuple[int, ...] = (0,)


def benches(rooms: Path, synapse: Path | None) -> list[Bench]:
    low = str(rooms / LOW_CONFLICT_ROOM)
    stateres_extra = ("--synapse-python", str(synapse)) if synapse else ("--no-synapse",)
    return [
        Bench(name="events", script="bench_events.py", full=("--repeats", "5"),
              quick=("--n", "500", "--repeats", "2"), timeout_s=300, parse=parse_events),
        Bench(name="ingest", script="bench_ingest.py", full=("--room", low, "--repeats", "3"),
              quick=("--room", low, "--repeats", "1"), timeout_s=300, parse=parse_ingest,
              rooms=False),
        # Exit 1 of bench_ingest means the replay's state disagreed with the file: a finding,
        # reported through the figures' notes, not a crash.
        Bench(name="ingest-conflicts", script="bench_ingest.py", full=("--repeats", "3"),
              quick=("--repeats", "1"), timeout_s=600, parse=parse_ingest, ok_exit=(0, 1)),
        Bench(name="store", script="bench_store.py", full=("--repeat", "2"),
              quick=("--events", "10000", "--state", "1000", "--repeat", "1"), timeout_s=1200,
              parse=parse_store),
        Bench(name="stateres", script="bench_stateres.py", full=("--repeat", "7", *stateres_extra),
              quick=("--repeat", "3", *stateres_extra, "s100-"), timeout_s=1200,
              parse=parse_stateres),
        Bench(name="federation", script="bench_federation.py",
              full=("--events", "10000", "--repeats", "3"),
              quick=("--events", "2000"), timeout_s=900, parse=parse_federation, rooms=False,
              json_flag=False),
        Bench(name="tls", script="bench_tls.py", full=("--requests", "200", "--rounds", "3"),
              quick=("--requests", "50", "--rounds", "1"), timeout_s=300, parse=parse_tls,
              rooms=False),
        Bench(name="discovery", script="bench_discovery.py", full=("--rounds", "5"),
              quick=("--rounds", "1"), timeout_s=300, parse=parse_discovery, rooms=False),
    ]  # fmt: skip


def command(bench: Bench, quick: bool, rooms: Path) -> list[str]:
    args = [sys.executable, str(SCRIPTS / bench.script), *(bench.quick if quick else bench.full)]
    if bench.json_flag:
        args.append("--json")
    if bench.rooms:
        args += ["--rooms", str(rooms)]
    return args


# -- running -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    status: str  # ok | failed | timeout | skipped
    seconds: float
    peak_rss_mb: float | None
    exit_code: int | None
    stdout: str
    stderr_tail: str


def _show(line: str, *, final: bool, tty: bool) -> None:
    if tty:
        sys.stdout.write("\r\x1b[K" + line + ("\n" if final else ""))
        sys.stdout.flush()
    elif final:
        print(line, flush=True)


def run_bench(bench: Bench, cmd: list[str], timeout_s: float, tty: bool) -> Outcome:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, start_new_session=True)
        status: str | None = None
        exit_code: int | None = None
        rss_kb = 0
        terminated_at: float | None = None
        try:
            while True:
                pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
                elapsed = time.monotonic() - started
                if pid:
                    exit_code = os.waitstatus_to_exitcode(wait_status)
                    process.returncode = exit_code
                    rss_kb = usage.ru_maxrss
                    break
                if terminated_at is None and elapsed > timeout_s:
                    status, terminated_at = "timeout", elapsed
                    _signal_group(process.pid, signal.SIGTERM)
                elif terminated_at is not None and elapsed > terminated_at + KILL_GRACE_S:
                    _signal_group(process.pid, signal.SIGKILL)
                _show(f"  {bench.name:18s} running {elapsed:7.1f} s", final=False, tty=tty)
                time.sleep(0.25)
        except BaseException:  # Ctrl-C: do not leave the bench running
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
            raise
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr_tail = err.read().decode(errors="replace")[-2000:]
    if status is None:
        status = "ok" if exit_code in bench.ok_exit else "failed"
    return Outcome(
        status=status,
        seconds=seconds,
        peak_rss_mb=rss_kb / 1024 if rss_kb else None,
        exit_code=exit_code,
        stdout=stdout,
        stderr_tail=stderr_tail,
    )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


# -- the machine and the report ----------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    with contextlib.suppress(OSError):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    return info


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'bench':18s} {'figure':62s} {'value':>18s} {'baseline':>18s} {'ratio':>13s} {'goal':>6s}"
    )
    print()
    print(header)
    print("-" * len(header))
    for result in results:
        if result["status"] != "ok":
            detail = result.get("error", "")
            print(f"{result['name']:18s} {result['status'].upper()}: {detail}"[:200])
            continue
        for f in result["figures"]:
            baseline = f["baseline"]
            ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f} {f['ratio_name']}"
            met = {True: "met", False: "NOT", None: "-"}[f["met"]]
            print(
                f"{result['name']:18s} {f['name'][:62]:62s} {_number(f['value'], f['unit']):>18s}"
                f" {_number(baseline['value'] if baseline else None, f['unit']):>18s}"
                f" {ratio:>13s} {met:>6s}"
            )
        rss = result["peak_rss_mb"]
        print(
            f"{result['name']:18s} {'(peak RSS of the bench process)':62s}"
            f" {_number(rss, 'MB'):>18s}"
        )
    goals = [
        f for r in results if r["status"] == "ok" for f in r["figures"] if f["met"] is not None
    ]
    missed = [f["name"] for f in goals if not f["met"]]
    print(f"\ngoals: {len(goals) - len(missed)} of {len(goals)} met")
    for name in missed:
        print(f"  not met: {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument(
        "--only", action="append", default=[], help="bench name(s), comma-separated"
    )
    parser.add_argument("--json-out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--rooms", type=Path, default=DEFAULT_ROOMS)
    parser.add_argument("--timeout-factor", type=float, default=1.0)
    parser.add_argument("--list", action="store_true", help="list the benches and exit")
    args = parser.parse_args(argv)

    synapse = next((p for p in SYNAPSE_PYTHONS if p.exists()), None)
    suite = benches(args.rooms.resolve(), synapse)
    names = {b.name for b in suite}
    only = {n.strip() for group in args.only for n in group.split(",") if n.strip()}
    if only - names:
        parser.error(f"unknown bench(es) {sorted(only - names)}; known: {sorted(names)}")
    if args.list:
        for b in suite:
            print(f"{b.name:18s} {shlex.join(command(b, args.quick, args.rooms))}")
        return 0
    selected = [b for b in suite if not only or b.name in only]
    tty = sys.stdout.isatty()
    size = "quick" if args.quick else "full"
    print(f"{len(selected)} benches, {size} run; Synapse: {synapse or 'not found'}", flush=True)
    results: list[dict[str, Any]] = []
    suite_started = time.time()
    load_at_start = os.getloadavg()
    for bench in selected:
        cmd = command(bench, args.quick, args.rooms)
        outcome = run_bench(bench, cmd, bench.timeout_s * args.timeout_factor, tty)
        result: dict[str, Any] = {
            "name": bench.name,
            "command": shlex.join(["python", *cmd[1:]]).replace(f"{REPO}/", ""),
            "status": outcome.status,
            "seconds": round(outcome.seconds, 1),
            "exit_code": outcome.exit_code,
            "peak_rss_mb": outcome.peak_rss_mb,
            "figures": [],
        }
        if outcome.status == "ok":
            try:
                result["figures"] = bench.parse(outcome.stdout)
            except SkippedError as exc:
                result["status"], result["error"] = "skipped", str(exc)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                result["status"] = "failed"
                result["error"] = f"unreadable output ({type(exc).__name__}: {exc})"
                result["stdout_tail"] = outcome.stdout[-2000:]
        elif outcome.status == "timeout":
            result["error"] = f"stopped after {bench.timeout_s * args.timeout_factor:.0f} s"
        else:
            result["error"] = f"exit {outcome.exit_code}: {outcome.stderr_tail.strip()[-300:]}"
            result["stderr_tail"] = outcome.stderr_tail
        results.append(result)
        rss = _number(outcome.peak_rss_mb, "MB")
        _show(
            f"  {bench.name:18s} {result['status']:7s} {outcome.seconds:7.1f} s"
            f"  (peak RSS {rss}; {len(result['figures'])} figures)",
            final=True,
            tty=tty,
        )
    print_table(results)
    report = {
        "suite": "scripts/bench.py",
        "size": size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(suite_started)),
        "seconds": round(time.time() - suite_started, 1),
        "machine": machine() | {"load_average_at_start": load_at_start},
        "synapse_python": str(synapse) if synapse else None,
        "benches": results,
    }
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json_out}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
