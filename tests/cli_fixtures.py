"""`s2s-node run` as a subprocess for the CLI tests, and `s2s-node` commands run against it.

`running_node` starts a node on 127.0.0.1 (ports 0, discovery off) and waits for its
`node.json`; `cli` runs one command as a user or a script would, with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "s2s_node.cli"]
LOOPBACK = [
    "--set",
    "federation.listen=127.0.0.1:0",
    "--set",
    "client.listen=127.0.0.1:0",
    "--set",
    "discovery.enabled=false",
]
START_DEADLINE_S = 30.0
COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningNode:
    data_dir: Path
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    log: Path

    @property
    def identifier(self) -> str:
        return str(self.info["identifier"])

    @property
    def federation_hostport(self) -> str:
        return str(self.info["federation_url"]).split("//", 1)[1]


def cli(
    *args: str,
    data_dir: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `s2s-node ARGS... [--data-dir DIR]`."""
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run(
        [*CLI, *args, *extra],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


def cli_json(*args: str, data_dir: Path) -> Any:
    """Run a command with --json; it must succeed; its stdout parsed."""
    result = cli(*args, "--json", data_dir=data_dir)
    assert result.returncode == 0, f"{args}: {result.returncode} {result.stderr}"
    return json.loads(result.stdout)


def wait_for_node_file(
    data_dir: Path, process: subprocess.Popen[bytes], log: Path
) -> dict[str, Any]:
    deadline = time.monotonic() + START_DEADLINE_S
    path = data_dir / "node.json"
    while time.monotonic() < deadline:
        if path.exists():
            info = json.loads(path.read_text())
            if info.get("pid") == process.pid:
                assert isinstance(info, dict)
                return info
        if process.poll() is not None:
            stderr = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"run exited with {process.returncode}: {stderr}")
        time.sleep(0.05)
    raise AssertionError("no node.json")


@contextlib.contextmanager
def running_node(data_dir: Path, settings: Sequence[str] = ()) -> Iterator[RunningNode]:
    """`s2s-node run` on loopback until the block ends (SIGTERM, then kill after 10 s).

    Its log (stderr) goes to `<data_dir>.log` beside the data directory."""
    log = data_dir.with_name(data_dir.name + ".log")
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [*CLI, "run", "--data-dir", str(data_dir), *LOOPBACK, *settings],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        info = wait_for_node_file(data_dir, process, log)
        yield RunningNode(data_dir=data_dir, process=process, info=info, log=log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
