"""Outbound delivery: one sender per peer over its persisted queue, one transaction in flight.

Owns: `OutboundSenders`, which runs a task per destination that takes the oldest queued items
(`store.outbound.next_batch`: <= 50 PDUs, <= 100 EDUs), sends them as `PUT
/_matrix/federation/v1/send/{txnId}`, and drops them from the queue only once the peer answered
200; on failure it backs off exponentially up to a cap; `wake(peer)` (discovery saw the peer
again, or its address changed) resets the back-off and retries at once. A restarted node finds
its queues in the store and resends them. Must not: build events or choose destinations (the
rooms do), or resolve addresses (the client's network backend does).

Transaction IDs are the queue's last sequence number in the batch: the queue is FIFO and its
sequence numbers are never reused (SQLite AUTOINCREMENT), so a retried batch is the same
transaction under the same ID, which the receiver deduplicates.

Spec: server-server API `PUT /send/{txnId}` (digest 8.2: one transaction in flight per
destination, retried with the same ID); DESIGN.md section 7 ("Outbound").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from s2s_node.core.canonical import JsonDict, parse_json_object
from s2s_node.net.client import (
    BadResponse,
    FederationClient,
    PeerUnreachable,
    RemoteError,
    build_path,
)
from s2s_node.store import AsyncStore, Store
from s2s_node.store.federation import OutboundBatch

logger = logging.getLogger(__name__)

SEND_PATH = "/_matrix/federation/v1/send/{}"
# Statuses after which a transaction is tried again; any other 4xx means the peer will never
# take it (malformed for it), and the batch is dropped so the queue does not stall forever.
RETRYABLE_CLIENT_ERRORS = frozenset({401, 404, 408, 425, 429})


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    """Exponential back-off after failed deliveries: initial_s * factor**(n-1), capped."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0
    # Deadline of one transaction request.
    request_timeout_s: float = 30.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return float(min(self.max_s, self.initial_s * self.factor ** (failures - 1)))


class _Sender:
    """The state of one destination's sender task."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.poked = trio.Event()
        self.failures = 0
        self.retry_at = 0.0  # trio clock
        self.sent_transactions = 0
        self.started = False


class OutboundSenders:
    """Delivery to every destination with something queued; `run` owns the sender tasks."""

    def __init__(
        self,
        astore: AsyncStore,
        client: FederationClient,
        *,
        origin: str,
        now_ms: Callable[[], int],
        reads_cbor: Callable[[str], bool] = lambda _: False,
        policy: BackoffPolicy = BackoffPolicy(),
    ) -> None:
        self._astore = astore
        self._client = client
        self._origin = origin
        self._now_ms = now_ms
        self._reads_cbor = reads_cbor
        self.policy = policy
        self._senders: dict[str, _Sender] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start a sender for every queue found in the store, then serve until cancelled."""
        destinations = await self._astore.read(lambda store: store.outbound.destinations())
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for destination in destinations:
                    self._sender(destination)
                for sender in self._senders.values():  # also those poked before `run` started
                    self._start(sender)
                task_status.started()
                await trio.sleep_forever()
            finally:
                # Shutting down: a wake() or notify() from a task that is still being cancelled
                # must not start a sender in a nursery that is closing.
                self._nursery = None

    def _sender(self, destination: str) -> _Sender:
        sender = self._senders.get(destination)
        if sender is None:
            sender = _Sender(destination)
            self._senders[destination] = sender
            self._start(sender)
        return sender

    def _start(self, sender: _Sender) -> None:
        if self._nursery is not None and not sender.started:
            sender.started = True
            name = f"outbound:{sender.destination[:12]}"
            self._nursery.start_soon(self._deliver, sender, name=name)

    def notify(self, destinations: Iterable[str]) -> None:
        """New items are queued for these destinations (back-off still applies)."""
        for destination in destinations:
            self._sender(destination).poked.set()

    def wake(self, destination: str) -> None:
        """Retry `destination` now: reset its back-off (discovery saw it again)."""
        sender = self._sender(destination)
        sender.failures = 0
        sender.retry_at = 0.0
        sender.poked.set()

    def failures(self, destination: str) -> int:
        sender = self._senders.get(destination)
        return 0 if sender is None else sender.failures

    async def _wait(self, sender: _Sender, until: float | None) -> None:
        with trio.move_on_at(until if until is not None else float("inf")):
            await sender.poked.wait()
        sender.poked = trio.Event()

    async def _deliver(self, sender: _Sender) -> None:
        destination = sender.destination
        while True:
            if trio.current_time() < sender.retry_at:
                await self._wait(sender, sender.retry_at)
                continue
            batch = await self._astore.read(lambda store: store.outbound.next_batch(destination))
            if batch is None:
                await self._wait(sender, None)
                continue
            delivered = await self._send(sender, batch)
            if delivered:
                await self._astore.write(functools.partial(_ack, batch=batch))
                sender.failures = 0
                sender.retry_at = 0.0
                sender.sent_transactions += 1
            else:
                sender.failures += 1
                sender.retry_at = trio.current_time() + self.policy.delay(sender.failures)

    async def _send(self, sender: _Sender, batch: OutboundBatch) -> bool:
        """True if the batch may leave the queue (delivered, or refused for good)."""
        destination = batch.destination
        body: JsonDict = {
            "origin": self._origin,
            "origin_server_ts": self._now_ms(),
            "pdus": [parse_json_object(data) for _, data in batch.pdus],
        }
        if batch.edus:
            body["edus"] = list(batch.edus)
        try:
            _, answer = await self._client.request(
                destination,
                "PUT",
                build_path(SEND_PATH, str(batch.last_seq)),
                body=body,
                cbor=self._reads_cbor(destination),
                timeout_s=self.policy.request_timeout_s,
            )
        except PeerUnreachable as exc:
            logger.info("cannot reach %s (%s); will retry", destination[:12], exc.reason.value)
            return False
        except RemoteError as exc:
            if 400 <= exc.status < 500 and exc.status not in RETRYABLE_CLIENT_ERRORS:
                logger.warning(
                    "%s refused transaction %d for good (%s); dropping it",
                    destination[:12],
                    batch.last_seq,
                    exc,
                )
                return True
            logger.info("%s answered %s; will retry", destination[:12], exc)
            return False
        except BadResponse as exc:
            logger.info("bad answer from %s (%s); will retry", destination[:12], exc)
            return False
        _log_refusals(destination, answer)
        return True


def _ack(store: Store, *, batch: OutboundBatch) -> int:
    return store.outbound.ack(batch.destination, batch.last_seq)


def _log_refusals(destination: str, answer: Any) -> None:
    results = answer.get("pdus") if isinstance(answer, dict) else None
    if not isinstance(results, dict):
        return
    for event_id, result in results.items():
        if isinstance(result, dict) and "error" in result:
            logger.info("%s did not take %s: %s", destination[:12], event_id, result["error"])
