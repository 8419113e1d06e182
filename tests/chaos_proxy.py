"""A fault-injecting HTTP relay for one directed link between two nodes (plain HTTP, loopback).

Owns: `ChaosLink`, a trio listener on 127.0.0.1 that node A's address book names as node B's
address. It reads each request whole (h11), decides with its own seeded RNG what the network
does to it, and relays it to B on a fresh connection:

- **partition**: the connection is closed as soon as it is accepted (connection refused/reset);
- **loss**: the request is dropped (connection closed, nothing reaches B), or it reaches B and
  the answer is dropped (B processed it; A sees a broken connection and retries);
- **duplication**: the request is delivered twice, back to back (A sees the second answer);
- **delay**: the request is held for a random time before it is relayed;
- **reordering**: a `PUT /send` transaction is answered `200 {"pdus": {}}` at once by the
  relay (A drops it from its queue, as if B had it) and held; held transactions are released
  to B later in random order, and some of them a second time (a late duplicate). `flush()`
  delivers everything still held. This models a buffering network: nothing A was told is
  delivered is lost once the link heals.

Must not: change request bodies or signatures (B checks them), or be used outside tests.
Counts what it did per fault in `stats` (reported by the chaos tests and the soak).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field

import h11
import trio

RECEIVE = 65536
SEND_PREFIX = "/_matrix/federation/v1/send/"


@dataclass(slots=True, kw_only=True)
class Faults:
    """What a link does to requests; probabilities are per request."""

    partitioned: bool = False
    drop_request: float = 0.0
    drop_answer: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0  # probability of holding a request up to `max_delay_s`
    max_delay_s: float = 0.3
    reorder: float = 0.0  # probability of answering a /send at once and holding it
    replay: float = 0.0  # probability a held transaction is delivered twice


HEALTHY = Faults()


@dataclass(slots=True)
class _Held:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    release_at: float
    copies: int = 1


@dataclass(slots=True)
class _Exchange:
    """One request read whole from A."""

    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    keep_alive: bool = True


@dataclass(slots=True)
class _Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True, kw_only=True)
class ChaosLink:
    """The relay from one node to another (`upstream` = the real address of the receiver)."""

    name: str
    upstream: tuple[str, int]
    rng: random.Random
    faults: Faults = field(default_factory=Faults)
    stats: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _held: list[_Held] = field(default_factory=list)
    _releasing: int = 0
    _wake: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._release_loop)
            task_status.started(self.port)
            await trio.serve_listeners(self._serve, listeners, handler_nursery=nursery)

    # -- releasing held transactions

    def held(self) -> int:
        """Transactions held, or being released."""
        return len(self._held) + self._releasing

    async def flush(self) -> None:
        """Deliver every held transaction now (the link healed)."""
        await self._release(list(self._held))

    async def _release_loop(self) -> None:
        while True:
            with trio.move_on_after(0.05):
                await self._wake.wait()
            self._wake = trio.Event()
            if not self.faults.partitioned:
                now = trio.current_time()
                await self._release([h for h in self._held if h.release_at <= now])

    async def _release(self, items: list[_Held]) -> None:
        """Deliver `items` in random order (each taken from the held list before any await)."""
        self.rng.shuffle(items)
        for item in items:
            self._held.remove(item)
        self._releasing += len(items)
        for item in items:
            try:
                for _ in range(item.copies):
                    await self._deliver_held(item)
            finally:
                self._releasing -= 1

    async def _deliver_held(self, item: _Held) -> None:
        self.stats["released"] += 1
        with contextlib.suppress(OSError, h11.ProtocolError, trio.BrokenResourceError):
            await self._relay(_Exchange(item.method, item.target, item.headers, item.body))

    # -- serving A

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self.faults.partitioned:
                self.stats["refused"] += 1
                return
            conn = h11.Connection(h11.SERVER)
            while True:
                exchange = await _read_request(stream, conn)
                if exchange is None:
                    return
                answer = await self._decide(exchange)
                if answer is None:
                    return  # dropped: A sees the connection close
                await _write_answer(stream, conn, answer)
                if not exchange.keep_alive or conn.our_state is not h11.DONE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.ProtocolError:
                    return

    async def _decide(self, exchange: _Exchange) -> _Answer | None:
        faults, rng = self.faults, self.rng
        self.stats["requests"] += 1
        if faults.partitioned:
            self.stats["refused"] += 1
            return None
        if rng.random() < faults.drop_request:
            self.stats["dropped_requests"] += 1
            return None
        is_send = exchange.method == "PUT" and exchange.target.startswith(SEND_PREFIX)
        if is_send and rng.random() < faults.reorder:
            copies = 2 if rng.random() < faults.replay else 1
            self.stats["held"] += 1
            self.stats["replayed"] += copies - 1
            self._held.append(
                _Held(
                    exchange.method,
                    exchange.target,
                    exchange.headers,
                    exchange.body,
                    trio.current_time() + rng.uniform(0.05, 1.0),
                    copies,
                )
            )
            self._wake.set()
            body = b'{"pdus":{}}'
            headers = [(b"content-type", b"application/json")]
            return _Answer(200, headers, body)
        if rng.random() < faults.delay:
            self.stats["delayed"] += 1
            await trio.sleep(rng.uniform(0.0, faults.max_delay_s))
        try:
            answer = await self._relay(exchange)
            if rng.random() < faults.duplicate:
                self.stats["duplicated"] += 1
                answer = await self._relay(exchange)
        except (OSError, h11.ProtocolError, trio.BrokenResourceError):
            self.stats["upstream_errors"] += 1
            return None
        if rng.random() < faults.drop_answer:
            self.stats["dropped_answers"] += 1
            return None
        self.stats["relayed"] += 1
        return answer

    async def _relay(self, exchange: _Exchange) -> _Answer:
        """Send the request to the receiver on a new connection and read its whole answer."""
        stream = await trio.open_tcp_stream(*self.upstream)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            headers = [(k, v) for k, v in exchange.headers if k.lower() != b"connection"]
            headers.append((b"connection", b"close"))
            data = conn.send(
                h11.Request(method=exchange.method, target=exchange.target, headers=headers)
            )
            data += conn.send(h11.Data(data=exchange.body)) if exchange.body else b""
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            status, resp_headers, body = 0, [], bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(RECEIVE)
                    conn.receive_data(bytes(chunk))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    resp_headers = [
                        (bytes(k), bytes(v))
                        for k, v in event.headers
                        if bytes(k).lower() not in (b"connection", b"content-length")
                    ]
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            return _Answer(status, resp_headers, bytes(body))


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> _Exchange | None:
    exchange: _Exchange | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.NEED_DATA:
            try:
                chunk = await stream.receive_some(RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            conn.receive_data(bytes(chunk))
            continue
        if isinstance(event, h11.Request):
            exchange = _Exchange(
                method=event.method.decode(),
                target=event.target.decode(),
                headers=[(bytes(k), bytes(v)) for k, v in event.headers],
            )
            continue
        if isinstance(event, h11.Data) and exchange is not None:
            exchange.body += bytes(event.data)
            continue
        if isinstance(event, h11.EndOfMessage) and exchange is not None:
            exchange.keep_alive = conn.their_state is h11.DONE
            return exchange
        return None  # ConnectionClosed or anything unexpected


async def _write_answer(stream: trio.SocketStream, conn: h11.Connection, answer: _Answer) -> None:
    headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
    data = conn.send(h11.Response(status_code=answer.status, headers=headers))
    data += conn.send(h11.Data(data=answer.body)) if answer.body else b""
    data += conn.send(h11.EndOfMessage())
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
