"""The data directory and the key file: created once, mode 0600, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from s2s_node.core.keys import is_identifier
from s2s_node.datadir import (
    KEY_FILE,
    DataDirError,
    create_signing_key,
    default_data_dir,
    load_signing_key,
    resolve_data_dir,
)


def test_key_is_created_with_mode_0600_and_reloaded(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    key, created = create_signing_key(data_dir)
    assert created
    mode = stat.S_IMODE((data_dir / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert is_identifier(key.identifier)
    again, created_again = create_signing_key(data_dir)
    assert not created_again
    assert again.identifier == key.identifier
    assert load_signing_key(data_dir).identifier == key.identifier


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    key_path = tmp_path / KEY_FILE
    key_path.write_bytes(b"short")
    with pytest.raises(DataDirError, match="refusing"):
        create_signing_key(tmp_path)
    assert key_path.read_bytes() == b"short"


def test_missing_key_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="s2s-node init"):
        load_signing_key(tmp_path)


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataDirError, match=str(path)):
        create_signing_key(path)


def test_default_data_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "s2s-node"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".local" / "share" / "s2s-node"
    assert resolve_data_dir("~/x") == tmp_path / "x"
