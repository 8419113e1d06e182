#!/usr/bin/env python3
"""Benchmark of discovery: three nodes in network namespaces on a bridge find and verify each other.

Usage: `sudo python scripts/bench_discovery.py [--nodes N] [--rounds R] [--timeout S] [--json]`

Builds a small LAN: a switch namespace holding bridge `br0` and, per node, a namespace with one
end of a veth pair (the other end on the bridge), `lo` up and an address in 10.232.0.0/24. Names
carry a random tag. Each round starts `tests/netns_node.py` (a key server plus the node's real
discovery: mDNS advertisement and browsing, then verification by fetching and checking the key
document) in every namespace at once with `ip netns exec`, and waits until every node has
reported every other one `verified`. Measured per round:

- discovery+verification latency of each ordered pair (a, b): the time a reports b verified,
  minus the later of the two `ready` times (both serving and advertising); the round's figure
  is the maximum over pairs (the issue's goal: < 5 s);
- from spawn to all verified: wall time from starting the processes (Python start-up included)
  until the last pair is verified;
- peak RSS of each node process (`VmHWM` from /proc, read just before it is stopped).

Then the nodes are stopped (SIGTERM, mDNS goodbye) before the next round. Everything is torn
down at the end — processes killed, namespaces deleted — also on failure, timeout, Ctrl-C or
SIGTERM. Needs root and iproute2; without them it prints why and exits 0 with `skipped` in the
JSON (so that `scripts/bench.py` reports it as skipped, not failed).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NODE = REPO / "tests" / "netns_node.py"
SUBNET = "10.232.0"
GOAL_S = 5.0


def skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Lan:
    tag: str
    created: list[str] = field(default_factory=list)  # namespaces, in creation order
    nodes: list[str] = field(default_factory=list)

    def build(self, count: int) -> None:
        switch = f"s2sb-{self.tag}-sw"
        _ip("netns", "add", switch)
        self.created.append(switch)
        _ip("-n", switch, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i in range(count):
            namespace = f"s2sb-{self.tag}-n{i}"
            _ip("netns", "add", namespace)
            self.created.append(namespace)
            port_end, node_end = f"bp{self.tag}{i}", f"bv{self.tag}{i}"
            _ip("-n", switch, "link", "add", port_end, "type", "veth",
                "peer", "name", node_end, "netns", namespace)  # fmt: skip
            _ip("-n", switch, "link", "set", port_end, "master", "br0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", node_end)
            _ip("-n", namespace, "link", "set", node_end, "up")
            self.nodes.append(namespace)

    def tear_down(self) -> list[str]:
        """Delete every namespace (links go with them); return the names still listed."""
        for namespace in reversed(self.created):
            subprocess.run(
                ["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=10
            )
        listed = subprocess.run(
            ["ip", "netns", "list"], check=False, capture_output=True, text=True, timeout=10
        ).stdout
        return [n for n in self.created if n in listed]


@dataclass
class NodeRun:
    process: subprocess.Popen[bytes]
    lines: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    identifier: str = ""
    ready_at: float = 0.0
    verified: dict[str, float] = field(default_factory=dict)  # peer -> time

    def pump(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                continue

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line["event"] == "ready":
                self.identifier, self.ready_at = line["identifier"], line["t"]
            elif line["event"] == "verified" and line.get("peer") not in self.verified:
                self.verified[line["peer"]] = line["t"]

    def peak_rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


def stop(runs: list[NodeRun]) -> None:
    for run in runs:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    for run in runs:
        try:
            run.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait(timeout=5)


def one_round(
    lan: Lan, timeout: float, probe_interval: float, runs: list[NodeRun]
) -> dict[str, Any]:
    """Start a node in every namespace, wait for all pairs verified; `runs` is filled as we go
    so that the caller can stop them whatever happens."""
    spawned = time.time()
    for namespace in lan.nodes:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, str(NODE),
             "--interfaces", "all", "--probe-interval", str(probe_interval)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        run = NodeRun(process=process)
        runs.append(run)
        threading.Thread(target=run.pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        for run in runs:
            run.drain()
        done = all(r.identifier for r in runs) and all(
            b.identifier in a.verified for a, b in permutations(runs, 2)
        )
        if done:
            break
        if any(r.process.poll() is not None for r in runs):
            raise RuntimeError("a node exited before discovery completed")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every pair verified within {timeout} s")
        time.sleep(0.02)
    latencies = [
        a.verified[b.identifier] - max(a.ready_at, b.ready_at) for a, b in permutations(runs, 2)
    ]
    last_verified = max(max(r.verified.values()) for r in runs)
    rss = [r.peak_rss_mb() for r in runs]
    return {
        "max_pair_latency_s": max(latencies),
        "median_pair_latency_s": statistics.median(latencies),
        "spawn_to_all_verified_s": last_verified - spawned,
        "node_peak_rss_mb": [round(x, 1) for x in rss if x is not None],
    }


class TerminatedError(Exception):
    """SIGTERM arrived (e.g. the suite's timeout): unwind so that the teardown runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise TerminatedError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0, help="per round")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args(argv)

    reason = skip_reason()
    if reason:
        print(json.dumps({"skipped": reason}) if args.json else f"skipped: {reason}")
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    lan = Lan(tag=secrets.token_hex(3))
    rounds: list[dict[str, Any]] = []
    error: str | None = None
    try:
        lan.build(args.nodes)
        for n in range(args.rounds):
            runs: list[NodeRun] = []
            try:
                result = one_round(lan, args.timeout, args.probe_interval, runs)
            finally:
                stop(runs)
            rounds.append(result)
            if not args.json:
                print(
                    f"round {n + 1}: discovery+verification max {result['max_pair_latency_s']:.3f}"
                    f" s (median {result['median_pair_latency_s']:.3f} s) after both ready;"
                    f" spawn to all verified {result['spawn_to_all_verified_s']:.2f} s;"
                    f" node peak RSS {', '.join(f'{x:.0f}' for x in result['node_peak_rss_mb'])}"
                    " MB",
                    flush=True,
                )
    except (Exception, TerminatedError, KeyboardInterrupt) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        leftover = lan.tear_down()
    if leftover:
        error = (error or "") + f"; namespaces left behind: {leftover}"
    summary: dict[str, Any] = {"nodes": args.nodes, "rounds": rounds, "goal_s": GOAL_S}
    if rounds:
        worst = max(r["max_pair_latency_s"] for r in rounds)
        summary["max_pair_latency_s"] = worst
        summary["median_of_round_max_s"] = statistics.median(
            r["max_pair_latency_s"] for r in rounds
        )
        summary["spawn_to_all_verified_s_median"] = statistics.median(
            r["spawn_to_all_verified_s"] for r in rounds
        )
        summary["node_peak_rss_mb_max"] = max(
            (x for r in rounds for x in r["node_peak_rss_mb"]), default=None
        )
        summary["goal_met"] = worst < GOAL_S
    if error:
        summary["error"] = error
    if args.json:
        print(json.dumps(summary))
    else:
        if rounds:
            verdict = "met" if summary["goal_met"] else "NOT met"
            print(
                f"worst discovery+verification latency over {len(rounds)} rounds:"
                f" {summary['max_pair_latency_s']:.3f} s (goal < {GOAL_S} s: {verdict})"
            )
        if error:
            print(f"error: {error}")
    return 1 if error else 0


if __name__ == "__main__":
    raise SystemExit(main())
