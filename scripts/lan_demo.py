#!/usr/bin/env python3
"""The LAN demo: real `s2s-node run` processes in network namespaces on a bridge, driven only
through the `s2s-node` command line, every step verified.

Usage: `sudo scripts/lan_demo.py [--nodes N] [--keep] [--verbose] [--partition-hold S]`
(N >= 3, default 3). `--keep` leaves the namespaces and nodes running and prints how to reach
and remove them; `--verbose` shows the nodes' logs as they come.

Builds a LAN (a switch namespace holding a bridge; per node a namespace with a veth pair to the
bridge and an address in 10.77.0.0/24), starts `s2s-node run` in each namespace (temporary data
directories, TLS on, mDNS discovery bound to the namespace's address, client API on
127.0.0.1:8008 inside the namespace, new rooms of version 10), then narrates with timestamps:

1. discovery: every node discovers and verifies every other one (`s2s-node peers --json`);
2. s2s rooms: each node opens an s2s room with the next one around the ring
   (`s2s-node room create --s2s --peer ID`); the peer joins by itself;
3. events both ways in each room (`s2s-node send`), seen by the other side (`s2s-node state`,
   `s2s-node dag --format json`);
4. a policy rule: n0 asks n1 not to send it invites (`s2s-node rules add`); an invite of a user
   of n0 made on n1 is refused on n1 naming the rule; after `rules remove` it goes through;
5. upgrades: the last two nodes negotiate one (`s2s-node upgrade ROOM --versions 12:100,11:50`)
   and agree on 11, the only newer version the last node (configured older-only: 11 and 10)
   accepts; n0, configured `upgrade.mode = "strict"`, proposes to that same older-only peer and
   the negotiation fails with "no match";
6. a partition: n0's cable is unplugged at the bridge (`ip link set <port> down`), n0 and n1
   both change the topic of their room (and each adds a state event of its own), the states
   differ; the cable is plugged back and both converge to the same current state;
7. n1 is killed (SIGKILL); n0 and the last node send events to it while it is down; n1 is
   restarted on the same data directory and catches up on all of them.

Each step prints PASS or FAIL with what it checked; the exit status is 0 only if every step
passed. Everything (node processes, namespaces with the bridge and links, temporary
directories) is torn down at the end, on failure and on Ctrl-C/SIGTERM too, unless `--keep`.
Exit status 2 when the demo cannot run here (not root, no `ip`, s2s_node not installed).

This file sets the nodes up (step 0) and runs the steps; the steps themselves are in
`lan_demo_steps.py`, the namespaces, processes and command-line readers in `lan_demo_lib.py`.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lan_demo_lib import (  # the sibling module, through sys.path
    ABORT,
    PREFIX,
    CommandError,
    DemoInterruptError,
    Lan,
    Narrator,
    Node,
    WaitTimeoutError,
    in_parallel,
    keep,
    node_python,
    signals_deferred,
    signals_interrupt,
    skip_reason,
    tear_down,
)
from lan_demo_steps import (  # the sibling module, through sys.path
    PARTITION_HOLD_S,
    ROOM_VERSION,
    STEPS,
    CheckFailedError,
    Demo,
)

MIN_NODES = 3
CLIENT_LISTEN = "127.0.0.1:8008"
FEDERATION_PORT = 8448
OLDER_ONLY_VERSIONS = '{"11"=100,"10"=50}'


def node_settings(lan: Lan, index: int, count: int) -> list[str]:
    address = lan.address(index)
    settings = [
        f"federation.listen={address}:{FEDERATION_PORT}",
        "federation.tls=true",
        f"client.listen={CLIENT_LISTEN}",
        "discovery.enabled=true",
        f'discovery.interfaces=["{address}"]',
        f'rooms.default_version="{ROOM_VERSION}"',
    ]
    if index == 0:
        settings.append('upgrade.mode="strict"')
    if index == count - 1:
        settings.append(f"upgrade.versions={OLDER_ONLY_VERSIONS}")
    return [arg for setting in settings for arg in ("--set", setting)]


def describe(node: Node, count: int) -> str:
    role = ""
    if node.index == 0:
        role = ", upgrade.mode=strict"
    elif node.index == count - 1:
        role = ", upgrade.versions=11:100,10:50 (older-only)"
    where = f"{node.namespace} at {node.info['federation_url']}"
    return f"{node.name} {node.identifier[:16]}... in {where}{role}"


def set_up(args: argparse.Namespace, narrator: Narrator, lan: Lan, nodes: list[Node]) -> str:
    python = node_python()
    assert python is not None
    lan.build(args.nodes)
    narrator.say(f"switch namespace {lan.switch} with bridge br0; nodes {', '.join(lan.nodes)}")
    for i, namespace in enumerate(lan.nodes):
        nodes.append(
            Node(
                index=i,
                name=f"n{i}",
                namespace=namespace,
                data_dir=lan.workdir / f"n{i}",
                settings=node_settings(lan, i, args.nodes),
                python=python,
                verbose=args.verbose,
                narrator=narrator,
            )
        )
    in_parallel([node.start for node in nodes])
    for node in nodes:
        narrator.say(describe(node, args.nodes))
    return (
        f"{args.nodes} `s2s-node run` processes serving (TLS on, discovery on the namespace "
        f"address, client API on {CLIENT_LISTEN} in each namespace, rooms of version "
        f"{ROOM_VERSION})"
    )


def run_demo(args: argparse.Namespace, narrator: Narrator, lan: Lan, nodes: list[Node]) -> bool:
    """Every step in order; stops at the first that fails. True if all passed."""
    demo = Demo(narrator=narrator, lan=lan, nodes=nodes, partition_hold_s=args.partition_hold)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("0 setup", functools.partial(set_up, args, narrator, lan, nodes)),
        *((title, functools.partial(step, demo)) for title, step in STEPS),
    ]
    for title, step in steps:
        narrator.step(title)
        try:
            checked = step()
        except (
            CheckFailedError,
            WaitTimeoutError,
            CommandError,
            subprocess.SubprocessError,
            OSError,
            ValueError,
            KeyError,
        ) as exc:
            narrator.verdict(title, False, f"{type(exc).__name__}: {exc}")
            if not args.verbose:
                for node in nodes:
                    if node.process is not None and node.process.poll() is not None:
                        narrator.say(f"{node.name}'s process exited ({node.process.returncode})")
                    narrator.say(f"--- last lines of {node.name}'s log ({node.log_path}):")
                    for line in node.log_tail(12).splitlines():
                        narrator.say(f"  {node.name}| {line}")
            return False
        narrator.verdict(title, True, checked)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Run as root. Exit status: 0 every step verified, 1 a step failed, 2 cannot run.",
    )
    parser.add_argument("--nodes", type=int, default=3, help=f"how many nodes (>= {MIN_NODES})")
    parser.add_argument("--keep", action="store_true", help="leave everything running at the end")
    parser.add_argument(
        "--partition-hold",
        type=float,
        default=PARTITION_HOLD_S,
        metavar="S",
        help=f"seconds the cable stays out in step 6 (default {PARTITION_HOLD_S:g})",
    )
    parser.add_argument("--verbose", action="store_true", help="show the nodes' logs as they come")
    args = parser.parse_args()
    if args.nodes < MIN_NODES:
        parser.error(f"--nodes must be at least {MIN_NODES}: strict, compatible and older-only")
    reason = skip_reason()
    if reason:
        print(f"lan_demo: cannot run: {reason}", file=sys.stderr)
        return 2

    narrator = Narrator()
    narrator.start(f"s2s-node LAN demo: {args.nodes} nodes")
    lan = Lan()
    nodes: list[Node] = []
    passed = interrupted = False
    try:
        with signals_interrupt():
            lan.workdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{lan.tag}-"))
            passed = run_demo(args, narrator, lan, nodes)
    except DemoInterruptError as exc:
        interrupted = True
        narrator.say(f"interrupted by {exc}; tearing down")
    except BaseException as exc:
        narrator.say(f"error: {exc!r}; tearing down")
        raise
    finally:
        ABORT.set()  # waits still running in other threads end at once
        with signals_deferred():
            if args.keep:
                keep(narrator, lan, nodes)
                torn_down = True
            else:
                torn_down = tear_down(narrator, lan, nodes)
    ok = passed and torn_down
    verdict = "ALL PASSED" if ok else "INTERRUPTED" if interrupted else "FAILED"
    steps = [r for r in narrator.results if r[0] != "teardown"]
    teardown = "skipped (--keep)" if args.keep else "PASS" if torn_down else "FAIL"
    narrator.say("")
    narrator.say(
        f"{verdict}: {sum(r[1] for r in steps)} of {len(STEPS) + 1} steps passed (setup "
        f"included), teardown {teardown}; {narrator.elapsed():.1f} s"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
