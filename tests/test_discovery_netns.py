"""Three real nodes in three network namespaces on a Linux bridge find and verify each other.

The test builds its own network: a switch namespace holding bridge `br0`, and per node a
namespace with one end of a veth pair (the other end enslaved to the bridge), `lo` up, an
address in 10.231.0.0/24. Names carry a random tag so parallel runs do not collide; every
namespace is deleted at the end, on failure too (deleting a namespace destroys its links). The
veth pairs are created directly inside the switch namespace (`ip -n`), so no link ever exists
in the host's namespace. Each node is `tests/netns_node.py` run with `ip netns exec`, with
`--interfaces all` — which inside its namespace means only its veth and its own `lo`.

Needs root and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest
import trio

pytestmark = pytest.mark.netns

NODE = Path(__file__).resolve().parent / "netns_node.py"
NODES = 3
SUBNET = "10.231.0"
# The bound: every node discovers and verifies the other two within this.
DISCOVERY_BOUND_S = 5.0
# A goodbye is seen at once; a crash after a few failed probes (0.5 s apart, 2 -> unreachable,
# 5 -> departed). Either way far below mDNS TTLs (PTR >= 1125 s at receivers, ours 20 s).
GOODBYE_BOUND_S = 2.0
CRASH_BOUND_S = 6.0
TEST_DEADLINE_S = 40.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


@dataclass
class Lan:
    tag: str
    switch: str
    namespaces: list[str] = field(default_factory=list)

    def address(self, index: int) -> str:
        return f"{SUBNET}.{index + 1}"


@pytest.fixture
def lan() -> Iterator[Lan]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    net = Lan(tag=tag, switch=f"s2s-{tag}-sw")
    created: list[str] = []
    try:
        try:
            _ip("netns", "add", net.switch)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` failed here: {exc.stderr.decode(errors='replace')}")
        created.append(net.switch)
        _ip("-n", net.switch, "link", "set", "lo", "up")
        _ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", net.switch, "link", "set", "br0", "up")
        for i in range(NODES):
            namespace = f"s2s-{tag}-n{i}"
            _ip("netns", "add", namespace)
            created.append(namespace)
            port_end, node_end = f"p{tag}{i}", f"v{tag}{i}"
            _ip("-n", net.switch, "link", "add", port_end, "type", "veth",
                "peer", "name", node_end, "netns", namespace)  # fmt: skip
            _ip("-n", net.switch, "link", "set", port_end, "master", "br0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "addr", "add", f"{net.address(i)}/24", "dev", node_end)
            _ip("-n", namespace, "link", "set", node_end, "up")
            net.namespaces.append(namespace)
        yield net
    finally:
        for namespace in reversed(created):
            # Best effort for each, so one failure does not leave the others behind.
            subprocess.run(
                ["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=10
            )
    leftover = subprocess.run(
        ["ip", "netns", "list"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    assert tag not in leftover


@dataclass
class NodeProcess:
    index: int
    process: trio.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    identifier: str = ""
    ready_at: float = 0.0

    def first(self, event: str, peer: str) -> dict[str, Any] | None:
        for line in self.lines:
            if line["event"] == event and line.get("peer") == peer:
                return line
        return None

    def events_about(self, peer: str) -> list[str]:
        return [line["event"] for line in self.lines if line.get("peer") == peer]


async def _read_lines(node: NodeProcess) -> None:
    assert node.process.stdout is not None
    buffer = b""
    async for chunk in node.process.stdout:
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = json.loads(raw)
            node.lines.append(line)
            if line["event"] == "ready":
                node.identifier = line["identifier"]
                node.ready_at = line["t"]


async def until(condition: Any, interval: float = 0.05) -> None:
    while not condition():
        await trio.sleep(interval)


async def test_three_namespaces_discover_verify_leave_and_crash(lan: Lan) -> None:
    nodes: list[NodeProcess] = []
    with trio.fail_after(TEST_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            try:
                for i, namespace in enumerate(lan.namespaces):
                    process = await trio.lowlevel.open_process(
                        ["ip", "netns", "exec", namespace, sys.executable, str(NODE),
                         "--interfaces", "all", "--probe-interval", "0.5"],
                        stdout=subprocess.PIPE,
                    )  # fmt: skip
                    node = NodeProcess(index=i, process=process)
                    nodes.append(node)
                    nursery.start_soon(_read_lines, node)
                await until(lambda: all(n.identifier for n in nodes))
                last_ready = max(n.ready_at for n in nodes)

                # 1. Everyone discovers and verifies everyone else.
                await until(
                    lambda: all(
                        a.first("verified", b.identifier) for a, b in permutations(nodes, 2)
                    )
                )
                latencies = {
                    (a.index, b.index): a.first("verified", b.identifier)["t"]  # type: ignore[index]
                    - max(a.ready_at, b.ready_at)
                    for a, b in permutations(nodes, 2)
                }
                added_to_verified = [
                    a.first("verified", b.identifier)["t"]  # type: ignore[index]
                    - a.first("added", b.identifier)["t"]  # type: ignore[index]
                    for a, b in permutations(nodes, 2)
                ]
                print(
                    f"\ndiscovery+verification after both ready: max "
                    f"{max(latencies.values()):.3f} s, min {min(latencies.values()):.3f} s; "
                    f"added->verified max {max(added_to_verified) * 1000:.1f} ms"
                )
                assert max(latencies.values()) < DISCOVERY_BOUND_S
                for a, b in permutations(nodes, 2):
                    endpoint = a.first("verified", b.identifier)["endpoint"]  # type: ignore[index]
                    assert endpoint[0] == lan.address(b.index)  # the veth address, not loopback
                    assert a.first("wake", b.identifier) is not None
                assert max(last_ready - n.ready_at for n in nodes) < 10

                # 2. Node 0 leaves cleanly: the others see its goodbye.
                leaving, crashing, staying = nodes
                leaving.process.send_signal(signal.SIGTERM)
                left_at = trio.current_time()
                await until(
                    lambda: all(
                        n.first("departed", leaving.identifier) for n in (crashing, staying)
                    )
                )
                goodbye_s = trio.current_time() - left_at
                with trio.fail_after(5):
                    assert await leaving.process.wait() == 0
                assert [line for line in leaving.lines if line["event"] == "stopped"]
                for n in (crashing, staying):
                    assert "unreachable" not in n.events_about(leaving.identifier)

                # 3. Node 1 crashes: no goodbye; node 2's probes notice.
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
                assert unreachable_s < departed_s < CRASH_BOUND_S
                assert staying.events_about(crashing.identifier)[-2:] == [
                    "unreachable",
                    "departed",
                ]
            finally:
                for node in nodes:
                    if node.process.returncode is None:
                        node.process.kill()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for node in nodes:
                        await node.process.wait()
                nursery.cancel_scope.cancel()
