"""The core stays sans-IO: `s2s_node/core` imports no I/O library and no shell module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "s2s_node" / "core"

FORBIDDEN_TOP_LEVEL = {
    "trio",
    "h11",
    "httpcore",
    "zeroconf",
    "sqlite3",
    "socket",
    "asyncio",
    "os",
    "time",
    "random",
    "threading",
    "subprocess",
    "selectors",
    "ssl",
    "secrets",
    "pathlib",
    "io",
    "shutil",
    "tempfile",
    "logging",
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path.name}:{node.lineno}: use absolute imports in core")
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.append((node.lineno, "__import__"))
    return found


def violations(path: Path) -> list[str]:
    bad = []
    for lineno, module in imported_modules(path):
        top = module.split(".")[0]
        parts = module.split(".")
        if module == "__import__" or top == "importlib":
            bad.append(f"{path.name}:{lineno}: dynamic import")
        elif top in FORBIDDEN_TOP_LEVEL:
            bad.append(f"{path.name}:{lineno}: imports {module}")
        elif top == "s2s_node" and len(parts) > 1 and parts[1] != "core":
            bad.append(f"{path.name}:{lineno}: imports the shell module {module}")
    return bad


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_exists() -> None:
    assert len(core_files()) >= 5


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_is_sans_io(path: Path) -> None:
    assert violations(path) == []


def test_checker_catches_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "import trio\nfrom time import monotonic\nfrom s2s_node.store import x\n"
        "import os.path\nfrom s2s_node.core import ids\n",
        encoding="utf-8",
    )
    assert len(violations(sample)) == 4
