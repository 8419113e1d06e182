#!/usr/bin/env python3
"""Run every atheris fuzz target for a bounded time; report inputs tried and crashes found.

Usage: `python scripts/fuzz/run_all.py [--seconds N] [--only NAME[,NAME]] [--out DIR]
[--json-out FILE]`

For each target of `targets.py`, one after the other, each in its own subprocess
(`fuzz.py TARGET`): the corpus folder `DIR/corpus/TARGET` is seeded with the target's valid
inputs on first use and kept between campaigns (libFuzzer adds what raises coverage), so a
second campaign goes on from the first. A target runs for N seconds in total (default 60); when
it crashes (an exception other than the decoder's typed errors, a failed round trip, a timeout
of 10 s on one input, or more than 2 GB RSS) the crashing input is saved as
`DIR/crashes/TARGET-crash-<sha1>`, the exception is recorded, and the target is restarted for
the time left (at most 5 crashes per target). Prints one line per target (inputs tried, exec/s,
coverage, crashes) and writes a JSON summary (`--json-out`, default `DIR/summary.json`).
Reproduce a crash with `python scripts/fuzz/fuzz.py TARGET DIR/crashes/TARGET-crash-...`.
Needs atheris (`pip install -e '.[fuzz]'`); not run in CI (tests/test_fuzz_*.py are).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402

MAX_CRASHES = 5
PER_INPUT_TIMEOUT_S = 10
_STATS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.MULTILINE)
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def crash_summary(output: str) -> str:
    """The exception (type and message) and the innermost frame, from atheris' report."""
    start = output.find("=== Uncaught Python exception: ===")
    if start < 0:
        for kind in ("ERROR: libFuzzer: timeout", "ERROR: libFuzzer: out-of-memory"):
            if kind in output:
                return kind.removeprefix("ERROR: libFuzzer: ")
        return "crash (no Python exception reported)"
    lines = output[start:].splitlines()[1:]
    exception = next((line for line in lines if line and not line.startswith(" ")), "?")
    frames = [line.strip() for line in lines if line.strip().startswith("File ")]
    return f"{exception} at {frames[-1] if frames else '?'}"


def run_target(name: str, seconds: float, out: Path) -> dict[str, Any]:
    corpus = out / "corpus" / name
    crashes_dir = out / "crashes"
    crashes_dir.mkdir(parents=True, exist_ok=True)
    if not corpus.exists():
        corpus.mkdir(parents=True)
        for seed in targets.seeds(name):
            (corpus / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
    runs = 0
    coverage = features = corpus_size = 0
    crashes: list[dict[str, str]] = []
    started = time.monotonic()
    while len(crashes) < MAX_CRASHES:
        left = seconds - (time.monotonic() - started)
        if left < 1:
            break
        proc = subprocess.run(
            [
                sys.executable, str(HERE / "fuzz.py"), name,
                f"-max_total_time={int(left)}", f"-timeout={PER_INPUT_TIMEOUT_S}",
                "-rss_limit_mb=2048", f"-artifact_prefix={crashes_dir / name}-",
                "-print_final_stats=1", str(corpus),
            ],
            capture_output=True, text=True, timeout=left + 120, check=False,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        done = _DONE.findall(output)
        stats = _STATS.findall(output)
        if done:
            runs += int(done[-1][0])
        elif stats:
            runs += int(stats[-1][0])
        if stats:
            coverage, features, corpus_size = (int(x) for x in stats[-1][1:])
        artifact = _ARTIFACT.search(output)
        if proc.returncode == 0 and not artifact:
            break
        crashes.append(
            {
                "summary": crash_summary(output),
                "input": artifact.group(1) if artifact else "",
                "exit_code": str(proc.returncode),
            }
        )
        if not artifact:  # e.g. atheris missing: restarting will not help
            crashes[-1]["output_tail"] = output[-1500:]
            break
    elapsed = time.monotonic() - started
    return {
        "target": name,
        "seconds": round(elapsed, 1),
        "inputs": runs,
        "exec_per_s": round(runs / elapsed) if elapsed else 0,
        "coverage_edges": coverage,
        "features": features,
        "corpus": corpus_size,
        "crashes": crashes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--only", action="append", default=[], help="target(s), comma-separated")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"))
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    only = {n.strip() for group in args.only for n in group.split(",") if n.strip()}
    unknown = only - set(targets.TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}; known: {sorted(targets.TARGETS)}")
    names = [n for n in targets.TARGETS if not only or n in only]
    print(f"{len(names)} targets, {args.seconds:.0f} s each; output in {args.out}", flush=True)
    results = []
    for name in names:
        result = run_target(name, args.seconds, args.out)
        results.append(result)
        print(
            f"  {name:14s} {result['inputs']:>10,} inputs ({result['exec_per_s']:,}/s),"
            f" cov {result['coverage_edges']}, ft {result['features']},"
            f" corpus {result['corpus']}, crashes {len(result['crashes'])}",
            flush=True,
        )
        for crash in result["crashes"]:
            print(f"      crash: {crash['summary']}  [{crash['input'] or 'no input saved'}]")
    total = sum(r["inputs"] for r in results)
    found = sum(len(r["crashes"]) for r in results)
    print(f"total: {total:,} inputs, {found} crashes")
    summary = {
        "seconds_per_target": args.seconds,
        "python": sys.version.split()[0],
        "targets": results,
        "total_inputs": total,
        "total_crashes": found,
    }
    json_out = args.json_out or args.out / "summary.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
