"""The store's failure handling: each failure is a typed `StoreError` naming the file.

Lock, corrupt and foreign files, a read-only directory (`chattr +i`, since root ignores mode
bits) and a full disk (both SQLite's `max_page_count`, in process, and a real 256 KiB tmpfs in a
private mount namespace made with `unshare -m`).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from s2s_node.store import (
    DB_FILE,
    Store,
    StoreCorruptError,
    StoreErrorReason,
    StoreForeignError,
    StoreFullError,
    StoreLockedError,
    StoreNotWritableError,
)
from s2s_node.store.federation import PeerRecord
from s2s_node.store.lock import LOCK_FILE
from s2s_node.store.schema import APPLICATION_ID

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_opener_gets_a_clear_error(tmp_path: Path) -> None:
    with Store.open(tmp_path):
        with pytest.raises(StoreLockedError) as info:
            Store.open(tmp_path)
        assert info.value.reason is StoreErrorReason.LOCKED
        assert info.value.path == str(tmp_path / LOCK_FILE)
        assert f"pid {os.getpid()}" in str(info.value)
    with Store.open(tmp_path):  # released by close
        pass


def test_the_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    child = subprocess.Popen(
        _python(
            f"""
            import sys, time
            from s2s_node.store import Store
            store = Store.open({str(tmp_path)!r})
            print("ready", flush=True)
            time.sleep(60)
            """
        ),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=f"pid {child.pid}"):
            Store.open(tmp_path)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    with Store.open(tmp_path) as store:  # no stale lock after kill -9
        assert store.schema_version() > 0


# -- corrupt and foreign files -----------------------------------------------------------------


def test_garbage_in_node_db_is_a_corrupt_error_and_is_left_alone(tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 64
    (tmp_path / DB_FILE).write_bytes(garbage)
    with pytest.raises(StoreCorruptError) as info:
        Store.open(tmp_path)
    assert info.value.reason is StoreErrorReason.CORRUPT
    assert info.value.path == str(tmp_path / DB_FILE)
    assert (tmp_path / DB_FILE).read_bytes() == garbage
    # The lock was released on the way out.
    (tmp_path / DB_FILE).unlink()
    Store.open(tmp_path).close()


def test_damaged_pages_are_a_corrupt_error(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        for i in range(200):
            store.peers.put(PeerRecord(server_name=f"peer{i}", info={"pad": "x" * 200}))
    path = tmp_path / DB_FILE
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[page : len(data)] = bytes([0xA5]) * (len(data) - page)  # keep the header page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError) as info, Store.open(tmp_path) as store:
        store.peers.all()
    assert info.value.path == str(path)


def test_a_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreForeignError) as info:
        Store.open(tmp_path)
    assert info.value.reason is StoreErrorReason.FOREIGN
    assert info.value.path == str(path)
    assert "contacts" in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("application_id", "user_version", "words"),
    [(0x12345678, 0, "application_id"), (APPLICATION_ID, 99, "newer"), (0, 3, "another")],
)
def test_a_wrong_header_is_refused(
    tmp_path: Path, application_id: int, user_version: int, words: str
) -> None:
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute(f"PRAGMA application_id = {application_id}")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreForeignError, match=words) as info:
        Store.open(tmp_path)
    assert info.value.path == str(tmp_path / DB_FILE)


def test_a_directory_in_place_of_node_db(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).mkdir()
    with pytest.raises(StoreCorruptError, match="not a regular file"):
        Store.open(tmp_path)


# -- read-only ---------------------------------------------------------------------------------


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Paths put here get `chattr +i` (immutable even for root) and lose it at teardown."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    paths: list[Path] = []
    yield paths
    for path in reversed(paths):
        subprocess.run(["chattr", "-i", str(path)], check=False)


def _chattr(paths: list[Path], path: Path) -> None:
    result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {result.stderr.decode().strip()}")
    paths.append(path)


def test_a_read_only_directory_names_the_lock_file(tmp_path: Path, immutable: list[Path]) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    _chattr(immutable, data_dir)
    with pytest.raises(StoreNotWritableError) as info:
        Store.open(data_dir)
    assert info.value.reason is StoreErrorReason.NOT_WRITABLE
    assert info.value.path == str(data_dir / LOCK_FILE)


def test_a_read_only_database_file_is_a_clear_error(tmp_path: Path, immutable: list[Path]) -> None:
    with Store.open(tmp_path) as store:
        store.peers.put(PeerRecord(server_name="kept"))
    _chattr(immutable, tmp_path / DB_FILE)
    # SQLite falls back to opening the file read-only; the first write (WAL setup) fails.
    with pytest.raises(StoreNotWritableError) as info:
        Store.open(tmp_path)
    assert info.value.path == str(tmp_path / DB_FILE)


def test_a_read_only_directory_with_a_database_in_it(tmp_path: Path, immutable: list[Path]) -> None:
    with Store.open(tmp_path) as store:
        store.peers.put(PeerRecord(server_name="kept"))
    # The files stay writable, but the WAL and shared-memory files cannot be created.
    _chattr(immutable, tmp_path)
    with pytest.raises(StoreNotWritableError) as info:
        Store.open(tmp_path)
    assert info.value.path == str(tmp_path / DB_FILE)


# -- full disk ---------------------------------------------------------------------------------


def test_a_full_database_is_a_typed_error_and_keeps_what_was_committed(tmp_path: Path) -> None:
    """Simulated with `PRAGMA max_page_count`: SQLite reports SQLITE_FULL as for a full disk."""
    with Store.open(tmp_path) as store:
        conn = store.database.conn
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages + 8}")
        stored = 0
        with pytest.raises(StoreFullError) as info:
            for i in range(10_000):
                store.peers.put(PeerRecord(server_name=f"peer{i}", info={"pad": "y" * 500}))
                stored += 1
        assert info.value.reason is StoreErrorReason.FULL
        assert info.value.path == str(tmp_path / DB_FILE)
        assert 0 < stored < 10_000
        assert len(store.peers.all()) == stored  # nothing half-written, nothing lost
    with Store.open(tmp_path) as store:
        assert len(store.peers.all()) == stored


def test_a_full_file_system_is_a_typed_error(tmp_path: Path) -> None:
    """A real ENOSPC: a 512 KiB tmpfs mounted in a private mount namespace (needs root)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    script = textwrap.dedent(
        f"""
        from s2s_node.store import Store, StoreError
        from s2s_node.store.federation import PeerRecord
        stored = 0
        try:
            with Store.open({str(mount_point / "node")!r}) as store:
                for i in range(100_000):
                    store.peers.put(PeerRecord(server_name=f"peer{{i}}", info={{"pad": "z" * 900}}))
                    stored += 1
        except StoreError as exc:
            print(type(exc).__name__, exc.reason.value, exc.path, stored, sep="|")
        """
    )
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=512k tmpfs "$1" && exec "$2" -c "$3"',
            "sh",
            str(mount_point),
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "mount" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    name, reason, path, stored = result.stdout.strip().split("|")
    assert (name, reason) == ("StoreFullError", "full")
    assert path == str(mount_point / "node" / DB_FILE)
    assert int(stored) > 0
