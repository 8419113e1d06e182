"""The commands that talk to a running node, without one: help, bad usage, "no node is running".

Every case runs `s2s-node` as a subprocess, as a user or a script would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_fixtures import cli

REMOTE_COMMANDS = [
    ["peers"],
    ["rooms"],
    ["room", "create", "--s2s"],
    ["send", "!r:x", "org.example.t", "{}"],
    ["state", "!r:x"],
    ["upgrade", "!r:x"],
    ["negotiations", "!r:x"],
    ["rules", "list"],
    ["rules", "add", "PEER", "--user", "@a:*"],
    ["rules", "remove", "PEER", "m.s2s.drop", "k"],
    ["token", "create"],
    ["dag", "!r:x"],
]


@pytest.mark.parametrize("command", REMOTE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_without_a_running_node_each_command_says_so_in_one_line(
    command: list[str], tmp_path: Path
) -> None:
    result = cli(*command, data_dir=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"s2s-node: no node is running for {tmp_path} (start one with `s2s-node run`)\n"
    )


def test_a_left_over_node_file_of_a_dead_process_is_no_running_node(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid = int(dead.stdout)
    (tmp_path / "node.json").write_text(
        json.dumps(
            {
                "pid": pid,
                "identifier": "x",
                "client_url": "http://127.0.0.1:1",
                "federation_url": "http://127.0.0.1:2",
            }
        )
    )
    result = cli("rooms", "--json", data_dir=tmp_path)
    assert result.returncode == 2
    assert "no node is running for" in result.stderr
    assert f"process {pid}, which is gone" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_node_that_does_not_answer_is_one_line_exit_2(tmp_path: Path) -> None:
    # node.json names a live process (this test) but nothing listens on the port.
    (tmp_path / "node.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "identifier": "x",
                "client_url": "http://127.0.0.1:9",
                "federation_url": "http://127.0.0.1:9",
            }
        )
    )
    (tmp_path / "access_token").write_text("s2s_token\n")
    result = cli("peers", data_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("s2s-node: http://127.0.0.1:9 did not answer")
    assert result.stderr.count("\n") == 1


def test_data_dir_before_the_subcommand_is_used(tmp_path: Path) -> None:
    result = cli("--data-dir", str(tmp_path), "rooms")
    assert result.returncode == 2
    assert f"no node is running for {tmp_path} " in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "!r:x", "t", "{not json"], "the content is not JSON"),
        (["send", "!r:x", "t", "[1]"], "the content must be a JSON object"),
        (["upgrade", "!r:x", "--versions", "12"], "is not VERSION:RATING"),
        (["upgrade", "!r:x", "--versions", "12:101"], "over 100"),
        (["upgrade", "!r:x", "--versions", "12:1,12:2"], "given twice"),
        (["rules", "add", "P", "--match", "type"], "expected FIELD=GLOB"),
        (["rules", "add", "P", "--match", "=x"], "expected FIELD=GLOB"),
        (["rules", "add", "P", "--match", "a=1", "--match", "a=2"], "given twice"),
        (["room"], "room needs a subcommand"),
        (["rules"], "rules needs a subcommand"),
        (["token"], "token needs a subcommand"),
    ],
)
def test_bad_input_is_exit_2_before_any_node_is_needed(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = cli(*args, data_dir=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["rules", "add", "P"],  # one of --match/--user/--server is required
        ["rules", "add", "P", "--user", "a", "--server", "b"],
        ["dag", "!r:x", "--format", "png"],
        ["state"],
        ["send", "!r:x", "t"],
    ],
)
def test_argparse_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = cli(*args, data_dir=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["peers"],
        ["rooms"],
        ["room", "create"],
        ["send"],
        ["state"],
        ["upgrade"],
        ["negotiations"],
        ["rules", "add"],
        ["rules", "list"],
        ["rules", "remove"],
        ["token", "create"],
        ["dag"],
        ["run"],
        ["init"],
        ["id"],
    ],
    ids=" ".join,
)
def test_every_command_has_help_with_examples_and_json(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0
    assert "example" in result.stdout
    assert f"s2s-node {command[0]}" in result.stdout
    if command[0] not in ("run",):
        assert "--json" in result.stdout
