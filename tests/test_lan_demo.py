"""The LAN demo (`scripts/lan_demo.py`, issue 10's show) runs to the end and leaves nothing behind.

The demo is run as a user would run it, as a subprocess: it builds its network namespaces, starts
real `s2s-node run` processes in them and verifies seven steps through the `s2s-node` command
line. The test asserts exit status 0, a PASS line for every step and the teardown, and that no
namespace carrying the demo's tag is left in `ip netns list`, nor its temporary directory.

Needs root and iproute2; skipped with the reason otherwise. About 20-30 s on 2 shared cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "lan_demo.py"
# The demo bounds each of its waits; this only stops a hung run from hanging the suite.
RUN_TIMEOUT_S = 240.0
STEPS = 8  # setup and the seven steps
TAG = re.compile(r"switch namespace (s2sdemo-([0-9a-f]{6})-sw)")


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def _namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], check=True, capture_output=True, text=True, timeout=10
    ).stdout


@pytest.mark.netns
def test_lan_demo_passes_every_step_and_tears_down() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    match = TAG.search(output)
    assert match, output
    tag = match.group(2)
    assert f"-{tag}-" not in _namespaces()
    assert not list(Path(tempfile.gettempdir()).glob(f"s2sdemo-{tag}-*"))
    assert result.returncode == 0, output
    passed = re.findall(r"^\[[ \d.]+s\] PASS (\d) ", result.stdout, flags=re.MULTILINE)
    assert passed == [str(i) for i in range(STEPS)], output
    assert re.search(r"PASS teardown: ", result.stdout), output
    assert "FAIL" not in result.stdout
    assert "ALL PASSED" in result.stdout


def test_lan_demo_refuses_fewer_than_three_nodes() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO), "--nodes", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--nodes must be at least 3" in result.stderr
