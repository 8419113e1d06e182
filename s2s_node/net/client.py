"""The federation HTTP client: httpcore's pool on trio, peers addressed by identifier.

Owns: the network backend that turns the host of a URL (a node identifier) into the address
discovery or static config knows for it (`resolve`), deadlines on every call (connect, read,
write, pool, and the whole request), signing requests with X-Matrix, content negotiation (CBOR
bodies to peers that advertise `enc=cbor`; `Accept` says what we read), a cap on response size,
typed errors for what goes wrong (`PeerUnreachable`, `RemoteError`, `BadResponse`), and, with
TLS on, the post-handshake pin check of every connection (`PinningNetworkBackend`: the server's
certificate key must be the key of the identifier dialled). Must not: retry or queue (the
outbound queues do), or decide which peers exist.

Spec: server-server API "Request Authentication" (matrix-digest 8.1); DESIGN.md section 7.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import trio

from s2s_node.core.canonical import JsonValue
from s2s_node.core.keys import SigningKey, is_identifier
from s2s_node.core.wire import (
    CBOR_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    MAX_BODY_BYTES,
    WireError,
    build_accept,
    decode_body,
    encode_body,
)
from s2s_node.core.xmatrix import sign_request
from s2s_node.net.tls import ClientTls, PinError, check_pinned, parse_certificate_identifier
from s2s_node.net.tls_channels import Direction

logger = logging.getLogger(__name__)

# identifier -> (host, port) it can be reached at, or None when unknown.
Resolve = Callable[[str], "tuple[str, int] | None"]

# Error bodies of failed requests are read up to this size (the rest is dropped).
MAX_ERROR_BODY_BYTES = 64 * 1024


class TransportReason(enum.Enum):
    """Why a peer could not be asked (the request may or may not have reached it)."""

    NO_ADDRESS = "no_address"  # `resolve` knows no address for the identifier
    CONNECT = "connect"  # refused, unreachable, reset while connecting
    TIMEOUT = "timeout"  # a deadline passed (connect, write, read, pool or the whole call)
    PROTOCOL = "protocol"  # the connection broke or the peer spoke bad HTTP
    PIN = "pin"  # TLS: the peer's certificate key is not the key its identifier encodes


class BadResponseReason(enum.Enum):
    """Why a peer's answer could not be used."""

    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"  # not strict JSON/CBOR (core.wire refused it)


class FederationClientError(Exception):
    """Base of the client's errors."""


class PeerUnreachable(FederationClientError):  # noqa: N818 -- named by the issue
    """The request could not be completed at the transport level."""

    def __init__(self, reason: TransportReason, destination: str, detail: str) -> None:
        super().__init__(f"{reason.value}: {destination[:60]}: {detail}")
        self.reason = reason
        self.destination = destination
        self.detail = detail


class RemoteError(FederationClientError):
    """The peer answered with a non-2xx status (`errcode`/`error` from its Matrix error body)."""

    def __init__(
        self, status: int, errcode: str | None, error: str | None, body: JsonValue = None
    ) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


class BadResponse(FederationClientError):  # noqa: N818 -- parallels PeerUnreachable
    """The peer answered 2xx with a body we refuse (too large, not strict JSON/CBOR)."""

    def __init__(self, reason: BadResponseReason, status: int, detail: str) -> None:
        super().__init__(f"{reason.value}: {status}: {detail}")
        self.reason = reason
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """Deadlines and caps of outgoing requests."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0  # between two reads
    write_timeout_s: float = 30.0  # between two writes
    pool_timeout_s: float = 10.0  # waiting for a free connection
    total_timeout_s: float = 60.0  # the whole request, start to last byte
    max_response_bytes: int = MAX_BODY_BYTES
    max_connections: int = 256  # in the pool, all peers together
    keepalive_expiry_s: float = 30.0


# ----------------------------------------------------------------------------------------------
# Network backend


class _NoAddressError(httpcore.ConnectError):
    pass


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class PeerNetworkBackend(httpcore.AsyncNetworkBackend):
    """Connects to `resolve(host)` instead of resolving `host` with DNS.

    A host `resolve` does not know is reached directly only if it is an IP literal (static peers
    and key fetches before the identifier is known); never through DNS.
    """

    def __init__(self, resolve: Resolve, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._resolve = resolve
        self._inner = inner if inner is not None else httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = self._resolve(host)
        if address is None:
            if not _is_ip_literal(host):
                raise _NoAddressError(f"no address known for {host[:60]}")
            address = (host.strip("[]"), port)
        return await self._inner.connect_tcp(
            address[0],
            address[1],
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("peers are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinFailedError(httpcore.ConnectError):
    pass


class _PinnedStream(httpcore.AsyncNetworkStream):
    """A TCP stream whose TLS handshake is followed by the pin check."""

    def __init__(
        self, inner: httpcore.AsyncNetworkStream, host: str, port: int, tls: ClientTls
    ) -> None:
        self._inner = inner
        self._host = host
        self._port = port
        self._tls = tls

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Handshake with the node's client context, then pin; no SNI (the name stays private)."""
        tls = self._tls
        cap = tls.handshake_timeout_s
        # A dialled identifier is pinned; a dialled IP literal (a static peer before its
        # identifier is known) is encrypted and its identifier learned from the key.
        expected = self._host if is_identifier(self._host) else None
        peer = expected if expected is not None else f"{self._host}:{self._port}"
        try:
            stream = await self._inner.start_tls(
                tls.context,
                server_hostname=None,
                timeout=cap if timeout is None else min(timeout, cap),
            )
        except httpcore.ConnectError as exc:
            tls.channels.record_failure(peer, direction=Direction.OUTBOUND, reason="handshake")
            raise httpcore.ConnectError(f"TLS handshake failed: {exc!r}"[:300]) from exc
        except httpcore.TimeoutException:
            tls.channels.record_failure(peer, direction=Direction.OUTBOUND, reason="timeout")
            raise
        ssl_object = stream.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            if expected is not None:
                identifier = check_pinned(der, expected)
            else:
                identifier = parse_certificate_identifier(der)
        except PinError as exc:
            logger.warning("refusing TLS server %s: %s", peer[:80], exc)
            tls.channels.record_failure(peer, direction=Direction.OUTBOUND, reason=exc.reason.value)
            await stream.aclose()
            raise _PinFailedError(str(exc)) from None
        tls.channels.record_success(
            peer, identifier=identifier, direction=Direction.OUTBOUND, pinned=expected is not None
        )
        return stream


class PinningNetworkBackend(httpcore.AsyncNetworkBackend):
    """Wraps a backend so that every TLS connection it opens is pinned (see `_PinnedStream`)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, tls: ClientTls) -> None:
        self._inner = inner
        self._tls = tls

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _PinnedStream(stream, host, port, self._tls)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("peers are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# ----------------------------------------------------------------------------------------------
# Requests


def build_path(template: str, *params: str) -> str:
    """Fill `{}` placeholders of a path with percent-encoded parameters (`/` encoded too).

    `build_path("/_matrix/federation/v1/event/{}", event_id)`.
    """
    return template.format(*(urllib.parse.quote(p, safe="") for p in params))


def build_target(path: str, query: Mapping[str, str | Sequence[str]] | None = None) -> str:
    """The request target (the X-Matrix `uri`): the path and the percent-encoded query."""
    if not query:
        return path
    pairs: list[tuple[str, str]] = []
    for name, value in query.items():
        values = [value] if isinstance(value, str) else list(value)
        pairs.extend((name, v) for v in values)
    return path + "?" + urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


def _split_destination(destination: str) -> tuple[str, int | None]:
    """Host and port of a server name (`host`, `host:port`, `[v6]:port`)."""
    if destination.startswith("["):
        host, _, rest = destination.partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host + "]", int(port) if port.isdigit() else None
    host, sep, port = destination.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return destination, None


class FederationClient:
    """Signed federation requests to peers named by identifier, over one connection pool."""

    def __init__(
        self,
        key: SigningKey,
        resolve: Resolve,
        *,
        limits: ClientLimits = ClientLimits(),
        read_cbor: bool = True,
        origin: str | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """`tls` (from `net.tls.build_transport_security`) makes every request HTTPS, pinned."""
        self.key = key
        self.origin = key.identifier if origin is None else origin
        self.limits = limits
        self.tls = tls
        self._accept = build_accept(read_cbor=read_cbor)
        backend = network_backend or PeerNetworkBackend(resolve)
        if tls is not None:
            backend = PinningNetworkBackend(backend, tls)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls.context if tls is not None else None,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_connections,
            keepalive_expiry=limits.keepalive_expiry_s,
            http1=True,
            http2=False,
            network_backend=backend,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    @property
    def pool(self) -> httpcore.AsyncConnectionPool:
        """The underlying pool (tests inspect its connections)."""
        return self._pool

    async def request(
        self,
        destination: str,
        method: str,
        path: str,
        query: Mapping[str, str | Sequence[str]] | None = None,
        body: JsonValue = None,
        *,
        cbor: bool = False,
        sign: bool = True,
        timeout_s: float | None = None,
    ) -> tuple[int, JsonValue]:
        """Send a request; return (status, decoded body) of a 2xx answer.

        `path` is already percent-encoded (see `build_path`); `body` None means no body. `cbor`
        sends the body as CBOR (the peer advertised `enc=cbor`). `sign=False` is for the
        unauthenticated endpoints (`/version`, `/_matrix/key/v2/server`). Raises
        `PeerUnreachable`, `RemoteError` or `BadResponse`.
        """
        method = method.upper()
        target = build_target(path, query)
        headers: list[tuple[str, str]] = [("accept", self._accept)]
        content: bytes | None = None
        if body is not None:
            content_type = CBOR_CONTENT_TYPE if cbor else JSON_CONTENT_TYPE
            content = encode_body(body, content_type)
            headers += [("content-type", content_type), ("content-length", str(len(content)))]
        elif method in ("PUT", "POST"):
            headers.append(("content-length", "0"))
        if sign:
            authorization = sign_request(
                self.key,
                method=method,
                uri=target,
                destination=destination,
                content=body,
                origin=self.origin,
            )
            headers.append(("authorization", authorization))
        host, port = _split_destination(destination)
        scheme = b"https" if self.tls is not None else b"http"
        url = httpcore.URL(scheme=scheme, host=host.encode("ascii"), port=port, target=target)
        limits = self.limits
        timeouts = {
            "connect": limits.connect_timeout_s,
            "read": limits.read_timeout_s,
            "write": limits.write_timeout_s,
            "pool": limits.pool_timeout_s,
        }
        total = limits.total_timeout_s if timeout_s is None else timeout_s
        try:
            with trio.fail_after(total):
                async with self._pool.stream(
                    method,
                    url,
                    headers=headers,
                    content=_RequestBody(content) if content is not None else None,
                    extensions={"timeout": timeouts},
                ) as response:
                    status = response.status
                    response_type = _header(response.headers, b"content-type")
                    cap = (
                        limits.max_response_bytes
                        if 200 <= status < 300
                        else min(MAX_ERROR_BODY_BYTES, limits.max_response_bytes)
                    )
                    data = await _read_capped(response, cap)
        except trio.TooSlowError:
            raise PeerUnreachable(TransportReason.TIMEOUT, destination, "deadline") from None
        except _NoAddressError as exc:
            raise PeerUnreachable(TransportReason.NO_ADDRESS, destination, str(exc)) from None
        except _PinFailedError as exc:
            raise PeerUnreachable(TransportReason.PIN, destination, str(exc)) from None
        except httpcore.TimeoutException as exc:
            raise PeerUnreachable(TransportReason.TIMEOUT, destination, repr(exc)) from None
        except httpcore.ConnectError as exc:
            raise PeerUnreachable(TransportReason.CONNECT, destination, repr(exc)) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise PeerUnreachable(TransportReason.PROTOCOL, destination, repr(exc)) from None
        if not 200 <= status < 300:
            raise _remote_error(status, response_type, data)
        if data is None:
            raise BadResponse(BadResponseReason.TOO_LARGE, status, f"over {cap} bytes")
        try:
            return status, decode_body(response_type, data, max_bytes=limits.max_response_bytes)
        except WireError as exc:
            raise BadResponse(BadResponseReason.UNDECODABLE, status, str(exc)) from None


class _RequestBody:
    """A request body as an async iterator that is not an async generator.

    httpcore wraps a `bytes` body in an async generator; when the connection breaks while it
    writes (e.g. a TLS server refusing the client's certificate after the handshake looked
    done), that generator is left unfinished and only cleaned up at garbage collection, with
    a ResourceWarning. A plain iterator object has nothing to finalize.
    """

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _read_capped(response: httpcore.Response, cap: int) -> bytes | None:
    """The body, or None if it is longer than `cap` (reading stops at once)."""
    declared = _header(response.headers, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    stream = response.aiter_stream()
    async for chunk in stream:
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _remote_error(status: int, content_type: str | None, data: bytes | None) -> RemoteError:
    body: JsonValue = None
    if data:
        try:
            body = decode_body(content_type, data)
        except WireError:
            body = None
    if isinstance(body, dict):
        errcode, error = body.get("errcode"), body.get("error")
        return RemoteError(
            status,
            errcode if isinstance(errcode, str) else None,
            error if isinstance(error, str) else None,
            body,
        )
    return RemoteError(status, None, None, body)


@asynccontextmanager
async def open_federation_client(
    key: SigningKey,
    resolve: Resolve,
    *,
    limits: ClientLimits = ClientLimits(),
    read_cbor: bool = True,
    origin: str | None = None,
    tls: ClientTls | None = None,
) -> AsyncIterator[FederationClient]:
    """A `FederationClient` whose connections are closed on exit."""
    client = FederationClient(
        key, resolve, limits=limits, read_cbor=read_cbor, origin=origin, tls=tls
    )
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
