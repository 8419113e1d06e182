"""The trio side of the store: one writer at a time, reads beside it, nothing lost on cancel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from s2s_node.store import Store, open_async_store
from s2s_node.store.federation import PeerRecord


@pytest.mark.parametrize("kind", ["file", "memory"])
async def test_writes_are_serialised_and_reads_see_commits(tmp_path: Path, kind: str) -> None:
    data_dir = tmp_path / "node" if kind == "file" else None
    async with open_async_store(data_dir) as astore:
        inside = 0
        overlap = False
        guard = threading.Lock()

        def put(i: int) -> None:
            nonlocal inside, overlap
            with guard:
                inside += 1
                overlap |= inside > 1
            try:
                astore.store.peers.put(PeerRecord(server_name=f"p{i:03}"))
            finally:
                with guard:
                    inside -= 1

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(astore.write, lambda s, i=i: put(i))
                nursery.start_soon(astore.read, lambda s: s.peers.all())
        assert not overlap
        names = await astore.read(lambda s: [p.server_name for p in s.peers.all()])
        assert names == [f"p{i:03}" for i in range(30)]
    if data_dir is not None:
        with Store.open(data_dir) as store:  # closed and unlocked by the context manager
            assert len(store.peers.all()) == 30


async def test_reads_run_beside_a_long_write(tmp_path: Path) -> None:
    async with open_async_store(tmp_path) as astore:
        await astore.write(lambda s: s.peers.put(PeerRecord(server_name="old")))
        release = threading.Event()
        in_write = threading.Event()

        def slow_write(store: Store) -> None:
            with store.transaction():
                store.peers.put(PeerRecord(server_name="new"))
                in_write.set()
                release.wait(10)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(astore.write, slow_write)
            await trio.to_thread.run_sync(in_write.wait, 10)
            # The writer holds an open transaction; a reader sees the last commit at once.
            names = await astore.read(lambda s: [p.server_name for p in s.peers.all()])
            assert names == ["old"]
            release.set()
        names = await astore.read(lambda s: [p.server_name for p in s.peers.all()])
        assert names == ["new", "old"]


async def test_a_cancelled_caller_does_not_abandon_a_started_write(tmp_path: Path) -> None:
    async with open_async_store(tmp_path) as astore:
        started = threading.Event()
        release = threading.Event()

        def write(store: Store) -> None:
            started.set()
            release.wait(10)
            store.peers.put(PeerRecord(server_name="committed"))

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(astore.write, write)
                await trio.to_thread.run_sync(started.wait, 10)
                scope.cancel()  # the caller gives up while the write is blocked in its thread
                threading.Timer(0.05, release.set).start()
        # The cancelled call returned only after the write finished and committed.
        assert astore.store.peers.get("committed") is not None
