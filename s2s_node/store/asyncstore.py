"""The store seen from trio: blocking calls run in worker threads, one writer at a time.

Owns: `AsyncStore` and `open_async_store`. Writes go through one `trio.Lock` and run in a
worker thread with `trio.to_thread.run_sync`; a cancelled caller does not abandon a write that
has started (the thread finishes and commits or rolls back), so "acknowledged" keeps meaning
"committed". Reads run in worker threads on a small pool of read-only connections, beside the
writer (WAL lets readers see the last commit while a write is in progress). Must not: do any
store logic itself.

Design: DESIGN.md section 9; issue 4, item 2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio

from s2s_node.store.database import Durability
from s2s_node.store.store import Store

_T = TypeVar("_T")

# Reader connections (and reads in flight). Two cores; a few readers cover the client API.
MAX_READERS = 4


class AsyncStore:
    """A `Store` for trio code: `await write(fn)` and `await read(fn)`, `fn(store) -> value`."""

    def __init__(self, store: Store, *, max_readers: int = MAX_READERS) -> None:
        self.store = store
        self._write_lock = trio.Lock()
        self._readers_limit = trio.CapacityLimiter(max_readers)
        self._idle_readers: list[Store] = []
        self._all_readers: list[Store] = []
        self._closed = False

    async def write(self, fn: Callable[[Store], _T]) -> _T:
        """Run `fn(store)` in a worker thread as the only writer; return its result once its
        transactions committed."""
        async with self._write_lock:
            return await trio.to_thread.run_sync(fn, self.store)

    async def read(self, fn: Callable[[Store], _T]) -> _T:
        """Run `fn(reader)` in a worker thread on a read-only connection (concurrently with
        other reads and with the writer). `fn` must not write."""
        async with self._readers_limit:
            reader = self._idle_readers.pop() if self._idle_readers else None
            if reader is None:
                reader = await trio.to_thread.run_sync(self.store.open_reader)
                if reader is not self.store:
                    self._all_readers.append(reader)
            try:
                if reader is self.store:
                    # An in-memory store has one connection: reads take turns with writes.
                    async with self._write_lock:
                        return await trio.to_thread.run_sync(fn, reader)
                return await trio.to_thread.run_sync(fn, reader)
            finally:
                self._idle_readers.append(reader)

    async def aclose(self) -> None:
        """Wait for the write in progress, then close every connection and the lock."""
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            for reader in self._all_readers:
                reader.close()
            self._all_readers.clear()
            self._idle_readers.clear()
            self.store.close()


@asynccontextmanager
async def open_async_store(
    data_dir: str | Path | None, *, durability: Durability = Durability.PROCESS_CRASH
) -> AsyncIterator[AsyncStore]:
    """`async with open_async_store(data_dir) as store:`; None opens an in-memory store."""
    if data_dir is None:
        store = Store.open_memory()
    else:
        store = await trio.to_thread.run_sync(lambda: Store.open(data_dir, durability=durability))
    async_store = AsyncStore(store)
    try:
        yield async_store
    finally:
        with trio.CancelScope(shield=True):
            await async_store.aclose()
