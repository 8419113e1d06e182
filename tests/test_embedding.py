"""The embedding API: what `s2s_node` exports, and scripts/embed_example.py run as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import s2s_node

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "scripts" / "embed_example.py"
IDENTIFIER = r"[a-z2-7]{52}"


def test_every_exported_name_resolves_and_is_documented() -> None:
    embedding_doc = (ROOT / "docs" / "embedding.md").read_text(encoding="utf-8")
    for name in s2s_node.__all__:
        value = getattr(s2s_node, name)
        assert value is not None, name
        if name != "__version__":
            assert f"`{name}" in embedding_doc, f"{name} is not in docs/embedding.md"
    assert set(s2s_node.__all__) <= set(dir(s2s_node))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = s2s_node.no_such_name


def test_importing_the_package_does_not_load_the_node() -> None:
    # `s2s-node id` and friends import the package; trio and the store load only when used.
    code = "import sys, s2s_node; print('trio' in sys.modules, 's2s_node.node' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_exports_are_the_defining_modules_objects() -> None:
    from s2s_node.config import load_config
    from s2s_node.node import Node, open_node

    assert s2s_node.open_node is open_node
    assert s2s_node.Node is Node
    assert s2s_node.load_config is load_config


def test_embed_example_runs_and_both_nodes_receive_the_others_events(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--count", "2", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    alice = re.search(rf"^alice is ({IDENTIFIER})$", out, re.MULTILINE)
    bob = re.search(rf"^bob   is ({IDENTIFIER})$", out, re.MULTILINE)
    assert alice and bob and alice.group(1) != bob.group(1)
    room = re.search(r"^alice opened the s2s room (!\S+) and invited bob$", out, re.MULTILINE)
    assert room
    assert f"bob joined {room.group(1)}\n" in out
    for n in range(2):
        assert f"bob got org.example.ping {{'from': 'alice', 'n': {n}}}" in out
        assert f"alice got org.example.ping {{'from': 'bob', 'n': {n}}}" in out
    assert "alice got org.example.ping {'from': 'alice'" not in out
    assert "and 2 members; done" in out
    # The nodes kept their data where they were told to.
    assert (tmp_path / "alice" / "signing.key").exists()
    assert (tmp_path / "bob" / "signing.key").exists()
