"""`s2s-node run` as a real subprocess: node.json, /version, SIGTERM, the data-dir lock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpcore

RUN = [sys.executable, "-m", "s2s_node.cli", "run"]
SETTINGS = [
    *("--set", "federation.listen=127.0.0.1:0", "--set", "discovery.enabled=false"),
    *("--set", "federation.tls=false"),  # plain, so that the test can read /version simply
    *("--set", "client.listen=127.0.0.1:0"),
]
START_DEADLINE_S = 20.0


def wait_for_node_file(data_dir: Path, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + START_DEADLINE_S
    path = data_dir / "node.json"
    while time.monotonic() < deadline:
        if path.exists():
            info = json.loads(path.read_text())
            assert isinstance(info, dict)
            return info
        if process.poll() is not None:
            raise AssertionError(f"run exited with {process.returncode}")
        time.sleep(0.05)
    raise AssertionError("no node.json")


@contextlib.contextmanager
def run_node(data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`s2s-node run` on `data_dir` with stdout and stderr piped; killed if still running on
    exit."""
    process = subprocess.Popen(
        [*RUN, "--data-dir", str(data_dir), *SETTINGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
        assert process.stdout is not None
        process.stdout.close()


def test_run_writes_node_json_answers_version_and_stops_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    with run_node(data_dir) as process:
        info = wait_for_node_file(data_dir, process)
        assert info["pid"] == process.pid
        assert str(info["client_url"]).startswith("http://127.0.0.1:")
        assert not str(info["client_url"]).endswith(":0")
        url = str(info["federation_url"])
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        assert port != 0
        assert len(str(info["identifier"])) == 52
        assert (data_dir / "signing.key").exists()

        response = httpcore.request("GET", f"{url}/_matrix/federation/v1/version")
        assert response.status == 200
        assert json.loads(response.content)["server"]["name"] == "s2s-node"

        # A second node on the same data directory fails at once, with one clear line.
        second = subprocess.run(
            [*RUN, "--data-dir", str(data_dir), *SETTINGS],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 2
        lines = second.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "lock" in lines[0].lower()
        assert (data_dir / "node.json").exists()  # the running node's file is untouched

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        assert not (data_dir / "node.json").exists()


def test_run_logs_the_tls_warning_and_sigint_also_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    with run_node(data_dir) as process:
        wait_for_node_file(data_dir, process)
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert process.stderr is not None
        log = process.stderr.read().decode()
        assert "federation traffic is PLAIN HTTP" in log
        assert process.stdout is not None
        assert process.stdout.read() == b""


def test_run_with_an_invalid_setting_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [*RUN, "--data-dir", str(tmp_path / "n"), "--set", "federation.listen=nowhere"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "federation.listen" in result.stderr.decode()
