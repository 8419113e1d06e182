"""TLS 1.3 between nodes, each side pinning the other's certificate key to its identifier.

Owns: the node's certificate (its public key is the node's ed25519 identity key; built in
memory at start, deterministic, never managed by the user), the SSL contexts of the server and
the client, the pin check (`check_pinned`: the certificate's key must be the key the dialled
identifier encodes), the server side of the handshake (`accept_tls`, under a deadline, telling
plain HTTP apart), the binding of a connection's client certificate to the X-Matrix origin of
each request on it (`check_origin_is_tls_peer`), and `build_transport_security`, the one call
that turns `federation.tls` into server and client options. Must not: speak HTTP, route, or
decide which peers exist.

Design: DESIGN.md section 7; issue 11. No certificate authority, no DNS: a peer is who its key
says it is.

Why the certificates are signed by a public anchor rather than self-signed: Python's `ssl`
cannot ask for a client certificate without verifying it against trusted CAs (CERT_OPTIONAL and
CERT_REQUIRED both verify the chain; there is no verify callback), so an unknown self-signed
client certificate aborts the handshake. Every node therefore signs its leaf certificate (whose
key is its identity key) with one well-known "anchor" key derived from a public constant, and
servers trust that anchor. The anchor carries no trust at all (anyone can sign with it): it only
gets OpenSSL to accept and hand over the client's certificate. Identity comes from pinning the
leaf's key, and TLS 1.3's CertificateVerify proves the peer holds that key's private half
(OpenSSL checks it whatever the verify mode). The client side does not verify chains at all
(CERT_NONE) and pins the server's leaf key after the handshake.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import enum
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from s2s_node.core.ids import ServerName
from s2s_node.core.keys import (
    IdentityError,
    SigningKey,
    identifier_from_verify_key,
    verify_key_bytes_from_identifier,
)
from s2s_node.net.errors import M_UNAUTHORIZED, HttpError
from s2s_node.net.tls_channels import ChannelLog, Direction

logger = logging.getLogger(__name__)

# The anchor's key is derived from this public constant: it is not a secret and proves nothing.
ANCHOR_SEED_LABEL = b"s2s-node public TLS anchor v1: not a secret, carries no trust"
ANCHOR_NAME = "s2s-node public TLS anchor"
# Validity of every certificate: wide, because LAN nodes' clocks may be anywhere, and the key
# (the identity) is what is checked, not dates.
NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
# A peer's certificate larger than this is refused before parsing.
MAX_CERTIFICATE_BYTES = 16 * 1024
# Deadline of a TLS handshake (server side; the client's is its connect deadline, capped by it).
HANDSHAKE_TIMEOUT_S = 10.0
# The first byte of a TLS record carrying a handshake message (a ClientHello).
TLS_HANDSHAKE_RECORD = 0x16

WARNING_PLAIN_HTTP = (
    "federation.tls = false: federation traffic is PLAIN HTTP. Anyone on the network can read "
    "rooms, policy rules and negotiations, and peers' channels are not pinned to their keys. "
    "Use this for debugging only."
)


# ----------------------------------------------------------------------------------------------
# Certificates


def _anchor_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(ANCHOR_SEED_LABEL).digest())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def build_anchor_certificate() -> x509.Certificate:
    """The public anchor's certificate (the same bytes on every node: ed25519 is deterministic)."""
    key = _anchor_key()
    name = _name(ANCHOR_NAME)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, None)
    )


def _private_key(key: SigningKey) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(key.seed)


def build_certificate(key: SigningKey) -> x509.Certificate:
    """The node's certificate: its identity key, CN and SAN the identifier, signed by the anchor.

    Deterministic for a key, so it is rebuilt at every start and never stored.
    """
    identifier = key.identifier
    public_key = _private_key(key).public_key()
    serial = int.from_bytes(hashlib.sha256(key.verify_key_bytes).digest()[:16], "big") >> 1
    return (
        x509.CertificateBuilder()
        .subject_name(_name(identifier))
        .issuer_name(_name(ANCHOR_NAME))
        .public_key(public_key)
        .serial_number(serial or 1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identifier)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(_anchor_key(), None)
    )


# ----------------------------------------------------------------------------------------------
# Pinning


class PinReason(enum.Enum):
    """Why a peer's certificate does not establish the identity we need."""

    NO_CERTIFICATE = "no_certificate"  # the peer presented none (a server must)
    MALFORMED_CERTIFICATE = "malformed_certificate"  # not parseable X.509, or too large
    NOT_ED25519 = "not_ed25519"  # its key is not an ed25519 key, so it encodes no identifier
    KEY_MISMATCH = "key_mismatch"  # its key is not the key the expected identifier encodes


class PinError(Exception):
    """A peer's certificate failed the pin check; the connection must be aborted."""

    def __init__(self, reason: PinReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_certificate_identifier(der: bytes | None) -> ServerName:
    """The identifier a peer certificate's key encodes (its names are not trusted)."""
    if not der:
        raise PinError(PinReason.NO_CERTIFICATE, "the peer presented no certificate")
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise PinError(PinReason.MALFORMED_CERTIFICATE, f"certificate over {MAX_CERTIFICATE_BYTES}")
    try:
        public_key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise PinError(PinReason.MALFORMED_CERTIFICATE, str(exc)[:200]) from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise PinError(PinReason.NOT_ED25519, f"certificate key is {type(public_key).__name__}")
    return identifier_from_verify_key(public_key.public_bytes_raw())


def check_pinned(der: bytes | None, expected: str) -> ServerName:
    """Check a peer's certificate carries the key `expected` (an identifier) encodes.

    Returns the identifier; raises `PinError`. The comparison is on the raw keys.
    """
    try:
        expected_key = verify_key_bytes_from_identifier(expected)
    except IdentityError:
        raise PinError(PinReason.KEY_MISMATCH, f"{expected[:60]!r} is not an identifier") from None
    found = parse_certificate_identifier(der)
    if verify_key_bytes_from_identifier(found) != expected_key:
        raise PinError(PinReason.KEY_MISMATCH, f"expected {expected}, certificate is {found}")
    return found


# ----------------------------------------------------------------------------------------------
# Contexts and options


def _harden(context: ssl.SSLContext) -> None:
    # TLS 1.3 only: AEAD suites only, forward secrecy, no renegotiation (1.3 has none).
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION


def _load_identity(contexts: list[ssl.SSLContext], key: SigningKey) -> None:
    """Load the node's key and certificate into `contexts`.

    `SSLContext.load_cert_chain` reads only files: the PEM goes into a private temporary
    directory (0700, file 0600) and is removed at once.
    """
    private_pem = _private_key(key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = build_certificate(key).public_bytes(serialization.Encoding.PEM)
    with tempfile.TemporaryDirectory(prefix="s2s-tls-") as directory:
        path = os.path.join(directory, "identity.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(private_pem + cert_pem)
        for context in contexts:
            context.load_cert_chain(path)


def _build_contexts(key: SigningKey) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(server)
    # Ask for the client's certificate; accept it only chained to the public anchor (see the
    # module docstring); a client without one is let through with no TLS identity.
    server.verify_mode = ssl.CERT_OPTIONAL
    server.load_verify_locations(
        cadata=build_anchor_certificate().public_bytes(serialization.Encoding.DER)
    )
    # No session tickets: every connection is a full handshake that shows the client's certificate.
    server.num_tickets = 0
    server.set_alpn_protocols(["http/1.1"])

    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(client)
    client.check_hostname = False  # no DNS names: the pin check replaces it
    client.verify_mode = ssl.CERT_NONE  # no chains: the pin check replaces it
    _load_identity([server, client], key)
    return server, client


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    """What `serve_http(tls=...)` needs: the context, the handshake deadline, the channel log."""

    context: ssl.SSLContext
    identifier: ServerName
    channels: ChannelLog
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """What `FederationClient(tls=...)` needs: the context, the handshake cap, the channel log."""

    context: ssl.SSLContext
    identifier: ServerName
    channels: ChannelLog
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportSecurity:
    """Server and client TLS options from `federation.tls`; both None when TLS is off.

    `warning` is the text the node must log loudly at start when TLS is off (else None).
    `channels` is shared by both sides and read by the `peers` command.
    """

    server: ServerTls | None
    client: ClientTls | None
    channels: ChannelLog
    warning: str | None


def build_transport_security(
    key: SigningKey, *, tls: bool, handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
) -> TransportSecurity:
    """The TLS options of a node whose identity key is `key`, from the `federation.tls` flag."""
    channels = ChannelLog(tls_enabled=tls)
    if not tls:
        return TransportSecurity(
            server=None, client=None, channels=channels, warning=WARNING_PLAIN_HTTP
        )
    server_context, client_context = _build_contexts(key)
    identifier = key.identifier
    return TransportSecurity(
        server=ServerTls(
            context=server_context,
            identifier=identifier,
            channels=channels,
            handshake_timeout_s=handshake_timeout_s,
        ),
        client=ClientTls(
            context=client_context,
            identifier=identifier,
            channels=channels,
            handshake_timeout_s=handshake_timeout_s,
        ),
        channels=channels,
        warning=None,
    )


# ----------------------------------------------------------------------------------------------
# Server side: the handshake


class AcceptReason(enum.Enum):
    """Why an incoming connection did not become a TLS channel."""

    PLAIN_HTTP = "plain_http"  # the first byte is not a TLS handshake record
    HANDSHAKE = "handshake"  # the handshake failed (bad version, untrusted chain, closed, ...)
    TIMEOUT = "timeout"  # the handshake did not finish in time
    PIN = "pin"  # the client's certificate encodes no identifier


class AcceptError(Exception):
    """An incoming connection was not accepted as TLS; `stream` is what to answer or close."""

    def __init__(self, reason: AcceptReason, detail: str, stream: trio.abc.Stream) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stream = stream


class _PrefixedStream(trio.abc.Stream):
    """A stream that first yields bytes already read from `transport_stream`."""

    def __init__(self, transport_stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream = transport_stream  # `server.remote_address` looks through it
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsChannel:
    """An accepted TLS connection: its stream and the client's identifier if it showed a cert."""

    stream: trio.SSLStream[Any]
    peer: ServerName | None


async def accept_tls(stream: trio.abc.Stream, tls: ServerTls, address: str) -> TlsChannel:
    """Run the server side of the handshake on a new connection; raises `AcceptError`.

    A first byte that is not a TLS handshake record is plain HTTP (or noise): `AcceptError`
    with PLAIN_HTTP carries a stream that still yields that byte, for a plain-text refusal.
    """
    with trio.move_on_after(tls.handshake_timeout_s):
        try:
            first = await stream.receive_some(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            first = b""
        if not first:
            raise AcceptError(AcceptReason.HANDSHAKE, "closed before the handshake", stream)
        prefixed = _PrefixedStream(stream, bytes(first))
        if first[0] != TLS_HANDSHAKE_RECORD:
            logger.info("refusing a connection from %s: plain HTTP on the TLS listener", address)
            raise AcceptError(AcceptReason.PLAIN_HTTP, "not a TLS handshake", prefixed)
        tls_stream = trio.SSLStream(prefixed, tls.context, server_side=True, https_compatible=True)
        try:
            await tls_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            detail = repr(exc.__cause__ or exc)[:200]
            logger.info("TLS handshake with %s failed: %s", address, detail)
            raise AcceptError(AcceptReason.HANDSHAKE, detail, prefixed) from None
        der = tls_stream.getpeercert(binary_form=True)
        if der is None:
            return TlsChannel(stream=tls_stream, peer=None)
        try:
            peer = parse_certificate_identifier(der)
        except PinError as exc:
            logger.warning("refusing TLS client %s: %s", address, exc)
            tls.channels.record_failure(
                address, direction=Direction.INBOUND, reason=exc.reason.value
            )
            raise AcceptError(AcceptReason.PIN, str(exc), tls_stream) from None
        tls.channels.record_success(peer, identifier=peer, direction=Direction.INBOUND, pinned=True)
        return TlsChannel(stream=tls_stream, peer=peer)
    logger.info("TLS handshake with %s timed out", address)
    raise AcceptError(AcceptReason.TIMEOUT, "handshake deadline", stream)


# ----------------------------------------------------------------------------------------------
# Binding X-Matrix to the channel


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSecurity:
    """How the connection a request arrived on is secured (set by net.server per connection)."""

    tls: bool
    peer: ServerName | None  # the identifier the client's certificate key encodes


# The security of the connection the current task serves; None outside net.server.
CONNECTION_SECURITY: contextvars.ContextVar[ConnectionSecurity | None] = contextvars.ContextVar(
    "s2s_connection_security", default=None
)


def current_tls_peer() -> ServerName | None:
    """The identifier of the TLS client certificate on the connection being served, if any."""
    security = CONNECTION_SECURITY.get()
    return security.peer if security is not None else None


class BindingReason(enum.Enum):
    """Why an authenticated request does not match the TLS channel it came on."""

    NO_CLIENT_CERTIFICATE = "no_client_certificate"  # TLS, but the client showed no certificate
    ORIGIN_NOT_TLS_PEER = "origin_not_tls_peer"  # X-Matrix origin != the certificate's identifier


class ChannelBindingError(HttpError):
    """An X-Matrix origin is not the TLS peer of its connection (401 M_UNAUTHORIZED)."""

    def __init__(self, reason: BindingReason, detail: str) -> None:
        super().__init__(401, M_UNAUTHORIZED, f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def check_origin_is_tls_peer(origin: str, security: ConnectionSecurity | None = None) -> None:
    """Check the X-Matrix `origin` of a request is the TLS peer of its connection.

    `security` defaults to the connection being served. On a plain connection (TLS off by
    config) there is nothing to bind and the check passes. On TLS the client must have shown a
    certificate whose key encodes `origin`. Raises `ChannelBindingError` (logged).
    """
    if security is None:
        security = CONNECTION_SECURITY.get()
    if security is None or not security.tls:
        return
    if security.peer is None:
        logger.warning("refusing a request from %s: no TLS client certificate", origin[:60])
        raise ChannelBindingError(
            BindingReason.NO_CLIENT_CERTIFICATE,
            "signed requests over TLS need the origin's client certificate",
        )
    if security.peer != origin:
        logger.warning(
            "refusing a request: X-Matrix origin %s, TLS client %s", origin[:60], security.peer
        )
        raise ChannelBindingError(
            BindingReason.ORIGIN_NOT_TLS_PEER,
            f"origin {origin[:60]} is not the TLS client {security.peer}",
        )


@contextlib.contextmanager
def bind_connection_security(security: ConnectionSecurity) -> Iterator[None]:
    """Make `security` the `CONNECTION_SECURITY` of the current task while in the block."""
    token = CONNECTION_SECURITY.set(security)
    try:
        yield
    finally:
        CONNECTION_SECURITY.reset(token)
