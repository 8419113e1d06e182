"""scripts/bench_ingest.py run as a user runs it, on a small room: it replays the room in batches
and event by event, and both give the file's state (no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_ingest.py"
ROOM = ROOT / "tests" / "vectors" / "rooms" / "v12-s100-c100-k2.json.gz"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--room", str(ROOM), "--repeats", "1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("batch", ["1", "7", "50"])
def test_batches_and_single_events_reach_the_files_state(batch: str) -> None:
    done = _run("--batch", batch, "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["batch"] == int(batch)
    assert figures["same_as_per_event"] is True
    assert figures["tips_ok"] is True
    assert figures["matches_expected"] is True
    assert sum(figures["outcomes"].values()) == figures["events"]
    assert figures["resolve_calls"] > 0  # the room has two forks to resolve


def test_a_batch_below_one_is_a_usage_error() -> None:
    done = _run("--batch", "0")
    assert done.returncode == 2
    assert "--batch" in done.stderr
