"""Three real `s2s-node run` processes in three network namespaces on a bridge (issue 6's show).

Each node runs with its defaults (TLS on, discovery on "all" interfaces — inside its namespace
only its veth and its own `lo`), a temporary `--data-dir` and `federation.listen=0.0.0.0:0`.
The test reads each node's peer table from its stderr log, where `net.peering` writes one stable
line per change (`peer verified <identifier> at <host>:<port>`, `peer unreachable <identifier>`,
`peer departed <identifier>`): every node discovers and verifies (over pinned TLS) the other two
within 5 s, then one leaves (SIGTERM: mDNS goodbye) and one crashes (SIGKILL: found by probes).
The network is the `lan` fixture of test_discovery_netns (namespaces deleted at the end, always).

Needs root and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path

import pytest
import trio
from test_discovery_netns import Lan, lan  # noqa: F401 -- the fixture

pytestmark = pytest.mark.netns

RUN = [sys.executable, "-m", "s2s_node.cli", "run"]
# The bound: every node discovers and verifies the other two within this.
DISCOVERY_BOUND_S = 5.0
GOODBYE_BOUND_S = 3.0
# Default timing: probes every 1 s, unreachable after 2 failures, removed after 5.
CRASH_UNREACHABLE_BOUND_S = 5.0
CRASH_DEPARTED_BOUND_S = 10.0
TEST_DEADLINE_S = 90.0

LISTENING = re.compile(r"s2s_node\.node: node ([a-z2-7]{52}) listening on (\S+)")
CHANGE = re.compile(
    r"s2s_node\.net\.peering: peer (verified|unreachable|departed) ([a-z2-7]{52})"
    r"(?: at (\S+):(\d+))?$"
)


@dataclass
class RunningNode:
    index: int
    process: trio.Process
    identifier: str = ""
    url: str = ""
    ready_at: float = 0.0
    # (kind, peer identifier, host or None, time seen by the test)
    changes: list[tuple[str, str, str | None, float]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def first(self, kind: str, peer: str) -> tuple[str, str, str | None, float] | None:
        return next((c for c in self.changes if c[0] == kind and c[1] == peer), None)

    def kinds_about(self, peer: str) -> list[str]:
        return [c[0] for c in self.changes if c[1] == peer]


async def _read_log(node: RunningNode) -> None:
    assert node.process.stderr is not None
    buffer = b""
    async for chunk in node.process.stderr:
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode(errors="replace")
            node.log.append(line)
            now = trio.current_time()
            if match := LISTENING.search(line):
                node.identifier, node.url = match.group(1), match.group(2)
                node.ready_at = now
            elif match := CHANGE.search(line):
                node.changes.append((match.group(1), match.group(2), match.group(3), now))


async def until(condition: object, interval: float = 0.05) -> None:
    assert callable(condition)
    while not condition():
        await trio.sleep(interval)


async def test_three_s2s_nodes_discover_verify_leave_and_crash(lan: Lan, tmp_path: Path) -> None:  # noqa: F811
    nodes: list[RunningNode] = []
    with trio.fail_after(TEST_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            try:
                for i, namespace in enumerate(lan.namespaces):
                    process = await trio.lowlevel.open_process(
                        ["ip", "netns", "exec", namespace, *RUN,
                         "--data-dir", str(tmp_path / f"node{i}"),
                         "--set", "federation.listen=0.0.0.0:0",
                         "--set", "client.listen=127.0.0.1:0"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )  # fmt: skip
                    node = RunningNode(index=i, process=process)
                    nodes.append(node)
                    nursery.start_soon(_read_log, node)
                await until(lambda: all(n.identifier for n in nodes))
                assert all(n.url.startswith("https://") for n in nodes)  # TLS by default
                all_ready = max(n.ready_at for n in nodes)

                # 1. Everyone discovers and verifies everyone else, at its veth address.
                await until(
                    lambda: all(
                        a.first("verified", b.identifier) for a, b in permutations(nodes, 2)
                    )
                )
                found = {
                    (a.index, b.index): a.first("verified", b.identifier)
                    for a, b in permutations(nodes, 2)
                }
                latest = max(c[3] for c in found.values() if c is not None) - all_ready
                print(f"\nall six verifications {latest:.3f} s after the last node was up")
                assert latest < DISCOVERY_BOUND_S
                for (_, b), change in found.items():
                    assert change is not None and change[2] == lan.address(b)

                # 2. Node 0 leaves cleanly: the others see its goodbye, not failed probes.
                leaving, crashing, staying = nodes
                leaving.process.send_signal(signal.SIGTERM)
                left_at = trio.current_time()
                await until(
                    lambda: all(
                        n.first("departed", leaving.identifier) for n in (crashing, staying)
                    )
                )
                goodbye_s = trio.current_time() - left_at
                with trio.fail_after(10):
                    assert await leaving.process.wait() == 0
                for n in (crashing, staying):
                    assert "unreachable" not in n.kinds_about(leaving.identifier)

                # 3. Node 1 crashes: no goodbye; node 2's probes notice, then remove it.
                crashing.process.send_signal(signal.SIGKILL)
                crashed_at = trio.current_time()
                await until(lambda: staying.first("unreachable", crashing.identifier))
                unreachable_s = trio.current_time() - crashed_at
                await until(lambda: staying.first("departed", crashing.identifier))
                departed_s = trio.current_time() - crashed_at
                print(
                    f"goodbye seen after {goodbye_s:.3f} s; crash: unreachable after "
                    f"{unreachable_s:.3f} s, removed after {departed_s:.3f} s"
                )
                assert goodbye_s < GOODBYE_BOUND_S
                assert unreachable_s < CRASH_UNREACHABLE_BOUND_S
                assert departed_s < CRASH_DEPARTED_BOUND_S
                assert staying.kinds_about(crashing.identifier)[-2:] == ["unreachable", "departed"]

                # The survivor stops cleanly too.
                staying.process.send_signal(signal.SIGTERM)
                with trio.fail_after(10):
                    assert await staying.process.wait() == 0
            except BaseException:
                for node in nodes:
                    print(f"--- node {node.index} log ---", *node.log[-40:], sep="\n")
                raise
            finally:
                for node in nodes:
                    if node.process.returncode is None:
                        node.process.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for node in nodes:
                        await node.process.wait()
                nursery.cancel_scope.cancel()
