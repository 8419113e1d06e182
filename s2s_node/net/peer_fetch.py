"""Unauthenticated fetches from a peer's address: its key document and its `/version`.

Owns: `PeerFetcher`, the `FetchKeyDocument` the node gives discovery and uses for static peers.
Over TLS it dials with the node's client context and binds what it fetched to the channel: the
key document must name the identifier the server certificate's key encodes, so a verified
document proves the address answers *for* that identifier (not merely that it replays a public
document). The routes it fetches are unauthenticated: the TLS listener serves them to clients
with or without a certificate. Must not: decide which peers exist or retry (net.peering and
discovery do), send signed requests (net.client does).

Design: DESIGN.md sections 3, 7 and 8; issues 6 and 11 ("the key-document fetch of discovery and
of static peers works over TLS too").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpcore
import trio

from s2s_node.core.canonical import JsonValue
from s2s_node.core.ids import ServerName
from s2s_node.discovery.verify import KEY_DOCUMENT_PATH, KeyFetchError, build_url, fetch_json
from s2s_node.net.tls import ClientTls, PinError, parse_certificate_identifier
from s2s_node.net.tls_channels import Direction

VERSION_PATH = "/_matrix/federation/v1/version"
# Connections kept to peers' key servers (discovery probes every verified peer each second).
MAX_CONNECTIONS = 64
KEEPALIVE_S = 5.0
# Deadline of one fetch unless the caller's is shorter.
FETCH_TIMEOUT_S = 2.0


class PeerFetcher:
    """GETs unauthenticated JSON from `host:port` over one small pool (TLS when `tls` is set)."""

    def __init__(self, *, tls: ClientTls | None, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.tls = tls
        self.timeout_s = timeout_s
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls.context if tls is not None else None,
            max_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_S,
            http1=True,
            http2=False,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def get(self, host: str, port: int, path: str) -> tuple[JsonValue, ServerName | None]:
        """The decoded JSON answer and, over TLS, the identifier the server certificate's key
        encodes. Raises `KeyFetchError`."""
        url = build_url(host, port, path, https=self.tls is not None)
        certificate: ServerName | None = None

        def read_certificate(response: httpcore.Response) -> None:
            nonlocal certificate
            certificate = _certificate_identifier(response)

        answer = await fetch_json(
            self._pool,
            url,
            timeout_s=self.timeout_s,
            on_response=read_certificate if self.tls is not None else None,
        )
        return answer, certificate

    async def __call__(self, host: str, port: int) -> JsonValue:
        """The key document at `host:port` (a `discovery.FetchKeyDocument`).

        Over TLS the document's `server_name` must be the identifier of the server certificate;
        `check_key_document` then checks it is the expected identifier, so the certificate is
        pinned to the advertised identifier. The pinned channel is recorded for `peers`.
        """
        document, certificate = await self.get(host, port, KEY_DOCUMENT_PATH)
        if self.tls is None:
            return document
        claimed = document.get("server_name") if isinstance(document, dict) else None
        if certificate is None or claimed != certificate:
            self.tls.channels.record_failure(
                f"{host}:{port}", direction=Direction.OUTBOUND, reason="key_document_not_tls_peer"
            )
            raise KeyFetchError(
                f"the TLS certificate is {certificate}, the key document names {str(claimed)[:60]}"
            )
        self.tls.channels.record_success(
            certificate, identifier=certificate, direction=Direction.OUTBOUND, pinned=True
        )
        return document

    async def version(self, host: str, port: int) -> JsonValue:
        """The `/version` answer at `host:port` (it advertises the body encodings it reads)."""
        answer, _ = await self.get(host, port, VERSION_PATH)
        return answer


def _certificate_identifier(response: httpcore.Response) -> ServerName:
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    try:
        return parse_certificate_identifier(der)
    except PinError as exc:
        raise KeyFetchError(f"server certificate: {exc}") from None


@asynccontextmanager
async def open_peer_fetcher(
    *, tls: ClientTls | None, timeout_s: float = FETCH_TIMEOUT_S
) -> AsyncIterator[PeerFetcher]:
    """A `PeerFetcher` whose connections are closed on exit."""
    fetcher = PeerFetcher(tls=tls, timeout_s=timeout_s)
    try:
        yield fetcher
    finally:
        with trio.CancelScope(shield=True):
            await fetcher.aclose()
