"""The HTTP/1.1 server: h11 on trio, one task per connection, keep-alive, deadlines and caps.

Owns: accepting connections (`serve_http`), reading requests with h11 under a deadline per
request (headers and body) and an idle keep-alive timeout, the caps on header size, body size and
connections (in total and per remote address), answering malformed HTTP with 400 and closing,
`Expect: 100-continue`, calling the handler and turning its exceptions into Matrix error
responses (typed errors through net.errors' table, anything else a logged 500), and running
each connection through net.tls's handshake when the listener speaks TLS. Must not: know
about routes, X-Matrix or federation; never crash on what a client sends.

Pattern: h11's own trio example (p2p-prior-art section 4.1), with the caps made explicit.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import h11
import trio

from s2s_node.core.wire import MAX_BODY_BYTES
from s2s_node.net.errors import (
    INTERNAL_ERROR,
    M_INVALID_PARAM,
    M_LIMIT_EXCEEDED,
    M_TOO_LARGE,
    M_UNKNOWN,
    M_UNRECOGNIZED,
    build_error_body_for,
)
from s2s_node.net.http import (
    Handler,
    Request,
    Response,
    build_error_response,
    build_response,
    parse_query,
)
from s2s_node.net.tls import (
    AcceptError,
    AcceptReason,
    ConnectionSecurity,
    ServerTls,
    accept_tls,
    bind_connection_security,
)

logger = logging.getLogger(__name__)

# Bytes asked of the socket at once.
RECEIVE_SIZE = 64 * 1024
# After deciding to close, how long unread input is drained so the client sees our response
# rather than a reset, and how much of it.
CLOSE_DRAIN_S = 0.5
CLOSE_DRAIN_BYTES = 256 * 1024
# How long a refusal (over the connection caps) may take to write.
REFUSAL_WRITE_S = 1.0
SERVER_HEADER = "s2s-node"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """Caps and deadlines of the server; every one bounds what a client can make us hold."""

    # Request line plus headers (h11's max_incomplete_event_size): beyond it, 431 and close.
    max_header_bytes: int = 16 * 1024
    # Request body: Content-Length checked before reading, streamed bytes counted; 413 beyond.
    max_body_bytes: int = MAX_BODY_BYTES
    # From the first byte of a request (from accepting, for the first one) to its last body byte.
    request_timeout_s: float = 30.0
    # How long a kept-alive connection may sit between requests.
    idle_timeout_s: float = 60.0
    # How long a handler may take; then 500 (a stuck handler must not hold a connection forever).
    handler_timeout_s: float = 120.0
    # How long writing one response may take (a client that stops reading is dropped).
    response_timeout_s: float = 30.0
    max_connections: int = 512
    max_connections_per_address: int = 32


class _ConnectionSlots:
    """Counts open connections, in total and per remote address."""

    def __init__(self, limits: HttpLimits) -> None:
        self._limits = limits
        self._total = 0
        self._per_address: Counter[str] = Counter()

    def acquire(self, address: str) -> str | None:
        """None when a slot was taken, else why not."""
        if self._total >= self._limits.max_connections:
            return "too many connections"
        if self._per_address[address] >= self._limits.max_connections_per_address:
            return "too many connections from your address"
        self._total += 1
        self._per_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self._total -= 1
        self._per_address[address] -= 1
        if not self._per_address[address]:
            del self._per_address[address]


def remote_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The peer's (host, port) of a socket stream, through wrapping streams (TLS)."""
    inner: Any = stream
    while not isinstance(inner, trio.SocketStream):
        inner = getattr(inner, "transport_stream", None)
        if inner is None:
            return None
    try:
        peer = inner.socket.getpeername()
    except OSError:
        return None
    return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None


class _ClientGoneError(Exception):
    """The connection is over: closed, broken, idle too long, or answered with an error."""


class _Connection:
    """One HTTP/1.1 connection: reads requests and writes responses through h11."""

    def __init__(
        self, stream: trio.abc.Stream, limits: HttpLimits, remote: tuple[str, int] | None
    ) -> None:
        self.stream = stream
        self.limits = limits
        self.remote = remote
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        # Per request: whether its first byte has arrived, and the scope holding its deadline.
        self.started = False
        self.scope = trio.CancelScope()

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self.conn.send(event) or b"" for event in events)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.conn.send_failed()
            raise _ClientGoneError("connection broken while writing") from None

    async def _receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def read_request(self, *, first: bool) -> Request:
        """The next request with its whole body, or `_ClientGoneError` (after answering if need be).

        Before the request's first byte the deadline is the idle timeout (the request timeout on
        a new connection); from the first byte it is the request timeout, headers and body.
        """
        limits = self.limits
        self.started = bool(self.conn.trailing_data[0])
        wait = limits.request_timeout_s if first or self.started else limits.idle_timeout_s
        failure: tuple[int, str, str] | None = None
        with trio.move_on_after(wait) as self.scope:
            try:
                head = await self._next_event()
                if isinstance(head, h11.ConnectionClosed):
                    raise _ClientGoneError("closed by the client")
                assert isinstance(head, h11.Request)  # h11: a server's first event
                self._check_declared_length(head)
                body = await self._read_body()
                return self._build_request(head, body)
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    failure = (431, M_TOO_LARGE, "request headers too large")
                else:
                    failure = (exc.error_status_hint, M_UNRECOGNIZED, "malformed HTTP request")
            except _BodyTooLargeError:
                failure = (413, M_TOO_LARGE, "request body too large")
            except _BadQueryError:
                failure = (400, M_INVALID_PARAM, "bad query string")
        if failure is None:  # the deadline passed
            if not self.started:
                raise _ClientGoneError("idle")
            failure = (408, M_UNKNOWN, "request not received in time")
        await self.send_error_and_close(*failure)
        raise _ClientGoneError(failure[2])

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self._receive()
            if data and not self.started:
                self.started = True
                self.scope.deadline = trio.current_time() + self.limits.request_timeout_s
            self.conn.receive_data(data)

    def _check_declared_length(self, head: h11.Request) -> None:
        for name, value in head.headers:
            if name == b"content-length" and int(value) > self.limits.max_body_bytes:
                raise _BodyTooLargeError
        # (h11 has already refused malformed or conflicting Content-Length values.)

    async def _read_body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.max_body_bytes:
                    raise _BodyTooLargeError
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed in the middle of a body
                raise _ClientGoneError("closed during the body")

    def _build_request(self, head: h11.Request, body: bytes) -> Request:
        target = head.target.decode("latin-1")
        path, _, query = target.partition("?")
        try:
            parsed_query = parse_query(query)
        except ValueError:
            raise _BadQueryError from None
        return Request(
            method=head.method.decode("latin-1"),
            target=target,
            path=path,
            query=parsed_query,
            headers=tuple(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers
            ),
            body=body,
            remote=self.remote,
        )

    async def send_error_and_close(self, status: int, errcode: str, error: str) -> None:
        """Answer with an error if a response can still be sent; the caller then closes."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = build_error_response(status, errcode, error)
        with trio.move_on_after(self.limits.response_timeout_s):
            with contextlib.suppress(_ClientGoneError):
                await self.send_response(response, close=True)

    async def send_response(
        self, response: Response, *, close: bool = False, head: bool = False
    ) -> None:
        """Write a response; for a HEAD request its headers only."""
        headers = [(name, value) for name, value in response.headers]
        headers.append(("content-length", str(len(response.body))))
        headers.append(("server", SERVER_HEADER))
        if close:
            headers.append(("connection", "close"))
        response_head = h11.Response(status_code=response.status, headers=headers)
        if head:
            await self._send(response_head, h11.EndOfMessage())
        else:
            await self._send(response_head, h11.Data(data=response.body), h11.EndOfMessage())

    def next_cycle(self) -> bool:
        """Prepare for the next request on this connection; False when it must close."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


class _BodyTooLargeError(Exception):
    pass


class _BadQueryError(Exception):
    pass


async def _call_handler(handler: Handler, request: Request, limits: HttpLimits) -> Response:
    with trio.move_on_after(limits.handler_timeout_s):
        try:
            return await handler(request)
        except Exception as exc:
            mapped = build_error_body_for(exc)
            if mapped is not None:
                status, body = mapped
                return build_response(body, status=status)
            logger.exception("handler failed on %s %s", request.method, request.path[:200])
            return build_error_response(
                INTERNAL_ERROR.status, INTERNAL_ERROR.errcode, "internal server error"
            )
    logger.warning("handler timed out on %s %s", request.method, request.path[:200])
    return build_error_response(500, M_UNKNOWN, "the request took too long to process")


async def _close_gracefully(stream: trio.abc.Stream) -> None:
    """Half-close, drain a little of what the client still sends, then close."""
    with trio.move_on_after(CLOSE_DRAIN_S):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < CLOSE_DRAIN_BYTES:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


async def _refuse(
    stream: trio.abc.Stream, reason: str, status: int = 429, errcode: str = M_LIMIT_EXCEEDED
) -> None:
    conn = _Connection(stream, HttpLimits(response_timeout_s=REFUSAL_WRITE_S), None)
    await conn.send_error_and_close(status, errcode, reason)
    await _close_gracefully(stream)


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    limits: HttpLimits = HttpLimits(),
    *,
    security: ConnectionSecurity | None = None,
) -> None:
    """Serve HTTP/1.1 requests on one connection until it closes (no connection caps).

    `security` (TLS or not, and the client's certificate identifier) is what handlers read
    through `net.tls.CONNECTION_SECURITY` / `current_tls_peer()` while serving this connection.
    """
    if security is not None:
        with bind_connection_security(security):
            await _serve_connection(stream, handler, limits)
    else:
        await _serve_connection(stream, handler, limits)


async def _serve_connection(stream: trio.abc.Stream, handler: Handler, limits: HttpLimits) -> None:
    connection = _Connection(stream, limits, remote_address(stream))
    first = True
    while True:
        try:
            request = await connection.read_request(first=first)
        except _ClientGoneError:
            break
        first = False
        response = await _call_handler(handler, request, limits)
        # After a response that the client did not let us read the whole body for, h11 knows
        # the connection cannot be reused; `next_cycle` then says so.
        try:
            with trio.fail_after(limits.response_timeout_s):
                await connection.send_response(response, head=request.method == "HEAD")
        except (_ClientGoneError, trio.TooSlowError):
            break
        if not connection.next_cycle():
            break
    await _close_gracefully(stream)


async def serve_http(
    handler: Handler,
    *,
    listeners: Sequence[trio.abc.Listener[Any]] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: HttpLimits = HttpLimits(),
    tls: ServerTls | None = None,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve HTTP on `listeners` (or on new TCP listeners at host:port; port 0 picks one).

    With `tls` (from `net.tls.build_transport_security`), every connection starts with a TLS
    1.3 handshake under its deadline; plain HTTP is answered 400 and closed; handlers see the
    client's certificate identifier through `net.tls.current_tls_peer()`. Runs until
    cancelled. `task_status.started` receives the listeners (for the bound port).
    """
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    slots = _ConnectionSlots(limits)

    async def accept(stream: trio.abc.Stream) -> None:
        remote = remote_address(stream)
        address = remote[0] if remote else ""
        refusal = slots.acquire(address)
        if refusal is not None:
            logger.info("refusing a connection from %s: %s", address, refusal)
            await _refuse(stream, refusal)
            return
        try:
            if tls is None:
                await serve_connection(
                    stream, handler, limits, security=ConnectionSecurity(tls=False, peer=None)
                )
            else:
                await _serve_tls_connection(stream, handler, limits, tls, address)
        except Exception:  # never let one connection take the server down
            logger.exception("connection from %s failed", address)
        finally:
            slots.release(address)

    await trio.serve_listeners(accept, list(listeners), task_status=task_status)
    raise AssertionError("trio.serve_listeners returned")  # pragma: no cover


async def _serve_tls_connection(
    stream: trio.abc.Stream, handler: Handler, limits: HttpLimits, tls: ServerTls, address: str
) -> None:
    try:
        channel = await accept_tls(stream, tls, address)
    except AcceptError as exc:
        if exc.reason is AcceptReason.PLAIN_HTTP:
            await _refuse(exc.stream, "this listener speaks TLS 1.3 only", 400, M_UNRECOGNIZED)
        else:
            await trio.aclose_forcefully(exc.stream)
        return
    await serve_connection(
        channel.stream, handler, limits, security=ConnectionSecurity(tls=True, peer=channel.peer)
    )


def bound_port(listeners: Sequence[trio.abc.Listener[Any]]) -> int:
    """The TCP port of the first socket listener (for port 0)."""
    for listener in listeners:
        if isinstance(listener, trio.SocketListener):
            return int(listener.socket.getsockname()[1])
    raise ValueError("no socket listener")
