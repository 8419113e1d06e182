"""The bridge from zeroconf's threads into trio: a bounded inbox that coalesces per name.

Owns: handing mDNS observations from threads trio did not create to the trio task that consumes
them, without ever blocking the zeroconf thread and without unbounded memory. Must not: parse or
judge what it carries (the consumer does), or touch trio state from the foreign thread other
than through the trio token.

Policy when full (p2p-prior-art section 3.2; DESIGN.md section 8): observations are keyed by
service instance name and only the newest per name is kept (a later observation supersedes an
earlier one: "seen" after "seen", or "gone" after "seen"), counted in `coalesced`. At most
`capacity` distinct names wait at once; an observation of another name beyond that is dropped
and counted in `dropped`. A dropped "gone" is caught later by the HTTP liveness probe; a dropped
"seen" comes back when the peer's records change or are re-announced.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass

import trio

logger = logging.getLogger(__name__)

# Distinct instance names waiting for the trio side. A LAN with more nodes than this announcing
# at the same instant loses some announcements (counted), never memory.
INBOX_CAPACITY = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class MdnsObservation:
    """What zeroconf reported about one instance name: resolved records, or that it is gone."""

    name: str
    present: bool
    port: int | None = None
    addresses: tuple[str, ...] = ()
    txt: bytes = b""


class MdnsInbox:
    """Thread-safe producer side (`put`), trio consumer side (`get_batch`)."""

    def __init__(self, token: trio.lowlevel.TrioToken, *, capacity: int = INBOX_CAPACITY) -> None:
        self._token = token
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pending: dict[str, MdnsObservation] = {}
        self._signalled = False
        self._closed = False
        self._ready = trio.Event()  # touched only in the trio thread
        self.coalesced = 0
        self.dropped = 0
        self.delivered = 0

    def put(self, observation: MdnsObservation) -> None:
        """Called from any thread; never blocks on trio and never raises."""
        with self._lock:
            if self._closed:
                return
            if observation.name in self._pending:
                self.coalesced += 1
                # Re-insert so the batch keeps arrival order of the newest observations.
                del self._pending[observation.name]
            elif len(self._pending) >= self._capacity:
                self.dropped += 1
                return
            self._pending[observation.name] = observation
            if self._signalled:
                return
            self._signalled = True
        with contextlib.suppress(trio.RunFinishedError):  # trio is gone; nobody to tell
            self._token.run_sync_soon(self._signal)

    def _signal(self) -> None:
        # Runs in the trio thread (run_sync_soon); must not raise.
        self._ready.set()

    async def get_batch(self) -> list[MdnsObservation]:
        """Wait until something is pending; return everything pending, oldest first."""
        await self._ready.wait()
        with self._lock:
            batch = list(self._pending.values())
            self._pending.clear()
            self._signalled = False
            self._ready = trio.Event()
        self.delivered += len(batch)
        return batch

    def close(self) -> None:
        """Later `put`s are discarded (zeroconf threads may outlive the consumer briefly)."""
        with self._lock:
            self._closed = True
            self._pending.clear()
