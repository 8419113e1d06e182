"""Verifying a peer at an address: fetch its key document and check it certifies the identifier.

Owns: fetching `GET /_matrix/key/v2/server` over HTTP with httpcore (`fetch_json`: a deadline
and a size cap on every fetch; `net.peer_fetch` uses it over TLS too), and `verify_endpoint` /
`verify_static_peer`, which turn whatever a fetcher returns or raises into an identifier or a
typed `VerificationError`. The fetcher is injectable (the node passes one that speaks TLS with
its pinning). Must not: decide what to do with a failure (the discovery service counts and
retries).

Spec: matrix-digest section 2.3; DESIGN.md sections 3 and 8.
KNOWN LIMIT: a key document is public, so over plain HTTP anyone can replay a peer's document
from their own address. Verification proves the address answers *for* the identifier only with
TLS pinned to the identifier's key (DESIGN.md section 7); without TLS it stops honest mistakes,
foreign services and forged documents, not a replaying attacker. Requests stay X-Matrix signed
either way, so a replayer can intercept traffic meant for the peer but cannot forge its events.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpcore
import trio

from s2s_node.core.canonical import JsonValue
from s2s_node.core.ids import ServerName
from s2s_node.core.peers import (
    MAX_KEY_DOCUMENT_BYTES,
    KeyDocumentError,
    KeyDocumentReason,
    check_key_document,
)
from s2s_node.core.wire import WireError, decode_body

logger = logging.getLogger(__name__)

KEY_DOCUMENT_PATH = "/_matrix/key/v2/server"

# (host, port) -> the decoded key document. Should raise `KeyFetchError` when it cannot get
# one; any other exception is counted as a bad response, never propagated.
FetchKeyDocument = Callable[[str, int], Awaitable[JsonValue]]


class KeyFetchError(Exception):
    """The key document could not be fetched or decoded."""


class VerifyReason(enum.Enum):
    UNREACHABLE = "unreachable"  # connect/read failed, timed out, or a non-200 answer
    BAD_RESPONSE = "bad_response"  # not JSON, or too large
    KEY_DOCUMENT = "key_document"  # fetched, but it does not certify the identifier


class VerificationError(Exception):
    def __init__(
        self,
        reason: VerifyReason,
        detail: str,
        key_document_reason: KeyDocumentReason | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.key_document_reason = key_document_reason


def now_ms() -> int:
    return int(time.time() * 1000)


def build_url(host: str, port: int, path: str, *, https: bool) -> httpcore.URL:
    """The URL of `path` at `host:port` (an IPv6 literal bracketed)."""
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    authority = (f"[{host}]" if is_v6 else host).encode("ascii")
    return httpcore.URL(
        scheme=b"https" if https else b"http", host=authority, port=port, target=path
    )


async def fetch_json(
    pool: httpcore.AsyncConnectionPool,
    url: httpcore.URL,
    *,
    timeout_s: float,
    on_response: Callable[[httpcore.Response], None] | None = None,
) -> JsonValue:
    """GET `url` from `pool` within `timeout_s` and decode its JSON answer, at most
    MAX_KEY_DOCUMENT_BYTES. `on_response` sees the response (its connection still open) before
    the status is checked; what it raises propagates. Raises `KeyFetchError` otherwise."""
    timeouts = {name: timeout_s for name in ("connect", "read", "write", "pool")}
    try:
        with trio.fail_after(timeout_s):
            async with pool.stream(
                "GET",
                url,
                headers=[("accept", "application/json")],
                extensions={"timeout": timeouts},
            ) as response:
                if on_response is not None:
                    on_response(response)
                if response.status != 200:
                    raise KeyFetchError(f"status {response.status}")
                data = bytearray()
                async for chunk in response.aiter_stream():
                    data += chunk
                    if len(data) > MAX_KEY_DOCUMENT_BYTES:
                        raise KeyFetchError(f"answer over {MAX_KEY_DOCUMENT_BYTES} bytes")
    except trio.TooSlowError:
        raise KeyFetchError("timed out") from None
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise KeyFetchError(repr(exc)[:300]) from None
    try:
        return decode_body("application/json", bytes(data), max_bytes=MAX_KEY_DOCUMENT_BYTES)
    except WireError as exc:
        raise KeyFetchError(f"undecodable: {exc}") from None


class HttpKeyFetcher:
    """Fetches key documents over plain HTTP from one small connection pool."""

    def __init__(self, *, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=64, keepalive_expiry=5.0, http1=True, http2=False
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def __call__(self, host: str, port: int) -> JsonValue:
        url = build_url(host, port, KEY_DOCUMENT_PATH, https=False)
        return await fetch_json(self._pool, url, timeout_s=self.timeout_s)


@asynccontextmanager
async def open_key_fetcher(*, timeout_s: float = 2.0) -> AsyncIterator[HttpKeyFetcher]:
    fetcher = HttpKeyFetcher(timeout_s=timeout_s)
    try:
        yield fetcher
    finally:
        with trio.CancelScope(shield=True):
            await fetcher.aclose()


async def verify_endpoint(
    host: str,
    port: int,
    fetch: FetchKeyDocument,
    *,
    expected: str | None,
    now: int | None = None,
) -> ServerName:
    """Fetch the key document at host:port and check it certifies `expected` (or any
    identifier, when None); return the identifier. Raises `VerificationError` only."""
    try:
        document = await fetch(host, port)
    except KeyFetchError as exc:
        raise VerificationError(VerifyReason.UNREACHABLE, str(exc)) from None
    except (OSError, trio.TooSlowError) as exc:
        raise VerificationError(VerifyReason.UNREACHABLE, repr(exc)) from None
    except Exception as exc:  # an injected fetcher's bug must not crash discovery
        logger.warning("key fetcher failed for %s:%d: %r", host, port, exc)
        raise VerificationError(VerifyReason.BAD_RESPONSE, repr(exc)) from None
    try:
        return check_key_document(
            document, expected=expected, now_ms=now_ms() if now is None else now
        )
    except KeyDocumentError as exc:
        raise VerificationError(VerifyReason.KEY_DOCUMENT, exc.detail, exc.reason) from None


async def verify_static_peer(
    host: str, port: int, *, fetch: FetchKeyDocument | None = None, timeout_s: float = 5.0
) -> ServerName:
    """The identifier of the node at a configured `host:port`, verified by its key document.

    Raises `VerificationError`. With no `fetch`, a one-off plain-HTTP fetcher is used.
    """
    if fetch is not None:
        with trio.move_on_after(timeout_s) as scope:
            return await verify_endpoint(host, port, fetch, expected=None)
        assert scope.cancelled_caught
        raise VerificationError(VerifyReason.UNREACHABLE, "timed out")
    async with open_key_fetcher(timeout_s=timeout_s) as fetcher:
        return await verify_endpoint(host, port, fetcher, expected=None)
