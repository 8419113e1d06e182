"""The machinery of the LAN demo (`scripts/lan_demo.py`): the network, the node processes, the
`s2s-node` commands run inside a namespace, bounded waits and the timestamped narration.

Owns: building and deleting the demo's network namespaces (a switch namespace holding the bridge,
one namespace per node joined to it by a veth pair, addresses in 10.77.0.0/24 that exist only
inside those namespaces), starting, killing and stopping `s2s-node run` processes with
`ip netns exec`, and running `s2s-node COMMAND ... --data-dir DIR` inside a node's namespace (the
client API listens on 127.0.0.1 there, so the command must run there too). Must not: import the
node's code or talk to a node any other way than its command line; decide what a step checks
(`lan_demo_steps.py` does).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

REPO = Path(__file__).resolve().parent.parent
SUBNET = "10.77.0"
PREFIX = "s2sdemo"
# A command against a running node answers in well under a second; an upgrade waits for the
# peer's reply. Anything beyond this is a hang, not a slow answer.
COMMAND_TIMEOUT_S = 30.0
# `s2s-node run` writes node.json once its listeners are bound (Python start-up included).
START_TIMEOUT_S = 20.0
# SIGTERM must stop a node within 10 s (DESIGN.md section 11); we give it less, then SIGKILL.
STOP_TIMEOUT_S = 5.0
T = TypeVar("T")
# Set when the demo stops (a failure elsewhere, Ctrl-C): waits in other threads end at once.
ABORT = threading.Event()


class DemoInterruptError(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop the demo and tear everything down."""


class WaitTimeoutError(Exception):
    """A bounded wait ran out; the message says what was awaited and the last thing seen."""


def skip_reason() -> str | None:
    """Why the demo cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    if node_python() is None:
        return "s2s_node is not installed (python3 -m venv .venv && .venv/bin/pip install -e .)"
    return None


def node_python() -> str | None:
    """A Python that can run `-m s2s_node.cli`: this one, else the repository's .venv."""
    if importlib.util.find_spec("s2s_node") is not None:
        return sys.executable
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else None


# ---------------------------------------------------------------------------------------------
# Narration


@dataclass
class Narrator:
    """Prints timestamped lines (seconds since the demo started) and keeps each step's verdict."""

    started: float = field(default_factory=time.monotonic)
    out: TextIO = sys.stdout
    results: list[tuple[str, bool, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        with self.lock:
            print(f"[{self.elapsed():6.2f}s] {text}", file=self.out, flush=True)

    def start(self, title: str) -> None:
        wall = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        self.say(f"{title} (t=0 is {wall} local time, as in the nodes' logs)")

    def step(self, title: str) -> None:
        self.say("")
        self.say(f"== {title}")

    def verdict(self, step: str, ok: bool, checked: str) -> None:
        self.results.append((step, ok, checked))
        self.say(f"{'PASS' if ok else 'FAIL'} {step}: {checked}")


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2
) -> tuple[T, float]:
    """Call `probe` until it returns something other than None (or False); return it and the
    seconds waited. Raises `WaitTimeoutError` naming `what` after `timeout` seconds."""
    start = time.monotonic()
    last_error = ""
    while True:
        if ABORT.is_set():
            raise DemoInterruptError(f"stopped while waiting for {what}")
        try:
            value = probe()
        except CommandError as exc:
            value, last_error = None, str(exc)
        if value is not None and value is not False:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            detail = f" (last error: {last_error})" if last_error else ""
            raise WaitTimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        ABORT.wait(interval)


# ---------------------------------------------------------------------------------------------
# The network


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


@dataclass
class Lan:
    """A switch namespace with bridge `br0` and one namespace per node, each joined to the bridge
    by a veth pair. The bridge-side ends live in the switch namespace (`port(i)`), so no link ever
    appears in the host's namespace and deleting the namespaces deletes every link."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    #: the temporary directory holding the nodes' data directories and logs
    workdir: Path = Path("/nonexistent")

    @property
    def switch(self) -> str:
        return f"{PREFIX}-{self.tag}-sw"

    def address(self, index: int) -> str:
        return f"{SUBNET}.{index + 1}"

    def port(self, index: int) -> str:
        """The bridge-side end of node `index`'s veth pair (in the switch namespace)."""
        return f"p{self.tag}{index}"

    def interface(self, index: int) -> str:
        """The node-side end, inside the node's namespace."""
        return f"v{self.tag}{index}"

    def build(self, count: int) -> None:
        ip("netns", "add", self.switch)
        self.created.append(self.switch)
        ip("-n", self.switch, "link", "set", "lo", "up")
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(count):
            namespace = f"{PREFIX}-{self.tag}-n{i}"
            ip("netns", "add", namespace)
            self.created.append(namespace)
            ip("-n", self.switch, "link", "add", self.port(i), "type", "veth",
               "peer", "name", self.interface(i), "netns", namespace)  # fmt: skip
            ip("-n", self.switch, "link", "set", self.port(i), "master", "br0", "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "addr", "add", f"{self.address(i)}/24", "dev", self.interface(i))
            ip("-n", namespace, "link", "set", self.interface(i), "up")
            self.nodes.append(namespace)

    def set_port(self, index: int, up: bool) -> None:
        """Plug or unplug node `index`'s cable at the bridge (its own interface stays up)."""
        ip("-n", self.switch, "link", "set", self.port(index), "up" if up else "down")

    def tear_down(self) -> list[str]:
        """Delete every namespace we made (after killing anything still running in it, which
        only the demo started) and the temporary directory; return the namespaces still listed
        afterwards."""
        for namespace in reversed(self.created):
            for pid in ip("netns", "pids", namespace, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", namespace, check=False)
        if self.workdir.name.startswith(PREFIX):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return [n for n in self.created if n in listed_namespaces()]


def listed_namespaces() -> list[str]:
    listing = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Nodes and their command line


class CommandError(Exception):
    """An `s2s-node` command exited non-zero where success was required."""


@dataclass
class Node:
    """One `s2s-node run` in its namespace, with its data directory and settings."""

    index: int
    name: str
    namespace: str
    data_dir: Path
    settings: list[str]
    python: str
    verbose: bool = False
    narrator: Narrator | None = None
    process: subprocess.Popen[bytes] | None = None
    identifier: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    log_path: Path = field(init=False)
    _pump: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    # -- the process

    def start(self) -> None:
        """Start `s2s-node run` (in a session of its own, so a Ctrl-C reaches only the demo,
        which then stops the node itself) and wait for its node.json."""
        command = [
            *("ip", "netns", "exec", self.namespace, self.python, "-m", "s2s_node.cli", "run"),
            *("--data-dir", str(self.data_dir), *self.settings),
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy_log, args=(self.process,), daemon=True)
        self._pump.start()
        process = self.process

        def node_file() -> dict[str, Any] | None:
            if process.poll() is not None:
                raise WaitTimeoutError(
                    f"{self.name}: s2s-node run exited with {process.returncode}: "
                    f"{self.log_tail(5)}"
                )
            path = self.data_dir / "node.json"
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return info if isinstance(info, dict) and info.get("pid") == process.pid else None

        self.info, _ = wait_until(
            node_file, timeout=START_TIMEOUT_S, what=f"{self.name}'s node.json", interval=0.05
        )
        self.identifier = str(self.info["identifier"])

    def _copy_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        with self.log_path.open("ab") as log:
            for raw in process.stderr:
                log.write(raw)
                log.flush()
                if self.verbose and self.narrator is not None:
                    self.narrator.say(f"  {self.name}| {raw.decode(errors='replace').rstrip()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye, no clean shutdown of the store."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
        self._join_pump()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self._join_pump()

    def _join_pump(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=2)

    def log_tail(self, lines: int) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- its command line

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`s2s-node ARGS... --data-dir DIR`, run inside the node's namespace."""
        command = [
            *("ip", "netns", "exec", self.namespace, self.python, "-m", "s2s_node.cli", *args),
            *("--data-dir", str(self.data_dir)),
        ]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def cli_json(self, *args: str) -> Any:
        """Run a command with --json; it must succeed; return its parsed output."""
        result = self.cli(*args, "--json")
        if result.returncode != 0:
            raise CommandError(
                f"{self.name}: s2s-node {' '.join(args)}: exit {result.returncode}: "
                f"{result.stderr.strip()}"
            )
        return json.loads(result.stdout)

    # -- what the demo reads and writes through it

    def peers(self) -> dict[str, dict[str, Any]]:
        """`peers --json` by identifier."""
        return {p["identifier"]: p for p in self.cli_json("peers")}

    def joined_room(self, room_id: str) -> dict[str, Any] | None:
        """The `rooms --json` entry of the room once both server users joined it, else None."""
        for room in self.cli_json("rooms"):
            if room["room_id"] == room_id and len(room["joined_members"]) == 2:
                return dict(room)
        return None

    def state_content(self, room_id: str, event_type: str, key: str) -> Any:
        """The content of one state event, or None if the node has none."""
        result = self.cli("state", room_id, event_type, key, "--json")
        return json.loads(result.stdout) if result.returncode == 0 else None

    def state_ids(self, room_id: str) -> dict[tuple[str, str], str]:
        """The room's current state here: (type, state_key) -> event ID."""
        events = self.cli_json("state", room_id)
        return {(e["type"], e["state_key"]): e["event_id"] for e in events}

    def dag_ids(self, room_id: str) -> set[str]:
        """The IDs of the accepted events the node holds in the room (`dag --format json`)."""
        dag = self.cli_json("dag", room_id, "--format", "json")
        return {n["id"] for n in dag["nodes"] if n["status"] == "accepted"}

    def is_peer_down(self, identifier: str) -> bool:
        """The node no longer lists the peer as alive (unreachable, or departed and gone)."""
        peer = self.peers().get(identifier)
        return peer is None or not peer["alive"]

    def send(self, room_id: str, event_type: str, content: Any, key: str | None) -> str:
        """`send` (a state event with `key`); the event ID."""
        args = ["send", room_id, event_type, json.dumps(content)]
        if key is not None:
            args += ["--state-key", key]
        return str(self.cli_json(*args)["event_id"])


def in_parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run `calls` in threads (each is a subprocess wait) and return their results in order;
    the first exception is raised."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------------
# The end


def tear_down(narrator: Narrator, lan: Lan, nodes: list[Node]) -> bool:
    narrator.step("teardown")
    in_parallel([node.stop for node in nodes])
    left = lan.tear_down()
    ours = [n for n in listed_namespaces() if lan.tag in n]
    done = not left and not ours and not lan.workdir.exists()
    narrator.verdict(
        "teardown",
        done,
        f"{len(nodes)} nodes stopped, {len(lan.created)} namespaces deleted with the bridge "
        f"and veths (none of ours in `ip netns list`: {not ours}), {lan.workdir} removed: "
        f"{not lan.workdir.exists()}",
    )
    return done


def keep(narrator: Narrator, lan: Lan, nodes: list[Node]) -> None:
    narrator.step("--keep: everything left running")
    for node in nodes:
        pid = node.process.pid if node.process else None
        narrator.say(
            f"{node.name}: pid {pid}; try: ip netns exec {node.namespace} "
            f"{node.python} -m s2s_node.cli peers --data-dir {node.data_dir}"
        )
    pids = " ".join(str(n.process.pid) for n in nodes if n.process)
    narrator.say(
        f"clean up: kill {pids}; for n in {' '.join(lan.created)}; do ip netns del $n; done"
    )
    narrator.say(f"          rm -rf {lan.workdir}")


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGINT, SIGTERM and SIGHUP raise `DemoInterruptError` in the main
    thread (so the caller's `finally` tears down); the old handlers come back afterwards."""

    def interrupt(signum: int, _frame: object) -> None:
        raise DemoInterruptError(signal.Signals(signum).name)

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, interrupt) for s in caught}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """While the block runs (the teardown), the same signals are noted, not acted on: a second
    Ctrl-C must not leave namespaces behind."""
    noted: list[int] = []
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, _f: noted.append(signum)) for s in caught}
    try:
        yield noted
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
