"""Fan-out of change notifications to subscribers, each with a bounded buffer.

Owns: `ChangeStream` (one subscriber's async iterator over changes) and `Subscribers` (the set
of open streams, publishing without ever blocking the publisher). Used for discovery's
`PeerChange`s and the node's `PeerInfoChange`s. Must not: know what a change means, or block:
a subscriber whose buffer is full loses the newest changes (the publisher counts them).

Design: DESIGN.md section 8 (peer changes).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class ChangeStream(Generic[T]):
    """One subscriber's changes, from subscription on (an async iterator, not a generator, so
    an abandoned stream needs no finalizer); ends when the publisher closes or `close()` is
    called."""

    def __init__(
        self,
        send: trio.MemorySendChannel[T],
        receive: trio.MemoryReceiveChannel[T],
        subscribers: set[trio.MemorySendChannel[T]],
    ) -> None:
        self._send = send
        self._receive = receive
        self._subscribers = subscribers

    def __aiter__(self) -> ChangeStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._subscribers.discard(self._send)
        self._receive.close()

    async def __aenter__(self) -> ChangeStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class Subscribers(Generic[T]):
    """The open `ChangeStream`s of one publisher; every method runs in the trio thread."""

    def __init__(self, buffer: int) -> None:
        self._buffer = buffer
        self._sends: set[trio.MemorySendChannel[T]] = set()

    def subscribe(self) -> ChangeStream[T]:
        send, receive = trio.open_memory_channel[T](self._buffer)
        self._sends.add(send)
        return ChangeStream(send, receive, self._sends)

    def publish(self, item: T) -> int:
        """Give `item` to every subscriber; returns how many had no room (they lose it)."""
        dropped = 0
        for send in list(self._sends):
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._sends.discard(send)
        return dropped

    def close(self) -> None:
        """End every stream (the publisher is stopping)."""
        for send in self._sends:
            send.close()
        self._sends.clear()


__all__ = ["ChangeStream", "Subscribers"]
