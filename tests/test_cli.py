"""The `s2s-node` command, run as a real subprocess like a user or a script would."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from s2s_node.core.keys import is_identifier


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s2s_node.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_init_creates_key_and_prints_identifier_then_id_agrees(tmp_path: Path) -> None:
    data_dir = tmp_path / "n1"
    first = run("init", "--data-dir", str(data_dir))
    assert first.returncode == 0, first.stderr
    identifier = first.stdout.strip()
    assert is_identifier(identifier)
    assert stat.S_IMODE((data_dir / "signing.key").stat().st_mode) == 0o600
    # --data-dir before the subcommand works too; init again keeps the same key
    again = run("--data-dir", str(data_dir), "init")
    assert again.returncode == 0
    assert again.stdout.strip() == identifier
    shown = run("id", "--json", "--data-dir", str(data_dir))
    assert shown.returncode == 0
    assert json.loads(shown.stdout) == {"identifier": identifier, "server_user": f"@:{identifier}"}


def test_id_without_init_is_a_one_line_usage_error(tmp_path: Path) -> None:
    result = run("id", "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "s2s-node init" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_dir_comes_from_config_then_xdg(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-config"}"\n')
    result = run("init", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-config" / "signing.key").exists()
    xdg = run("init", env={"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert xdg.returncode == 0, xdg.stderr
    assert (tmp_path / "xdg" / "s2s-node" / "signing.key").exists()


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[upgrade]\nmode = "lax"\n')
    result = run("init", "--config", str(config))
    assert result.returncode == 2
    assert "upgrade.mode" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_has_examples_and_bad_usage_exits_2() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    for command in ("init", "id"):
        sub = run(command, "--help")
        assert sub.returncode == 0
        assert "example" in sub.stdout
    assert run("no-such-command").returncode == 2
    assert run().returncode == 2
