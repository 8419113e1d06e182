"""Where peers are: identifier -> address, what each can read, and learning a static peer.

Owns: `PeerBook` (the addresses discovery or static config gave for each identifier, used by
the federation client's network backend, and whether a peer reads CBOR) and `learn_peer`, which
asks a `host:port` for its key document (`GET /_matrix/key/v2/server`, unsigned) and checks that
the document proves the identifier its key encodes before the address is trusted. Must not:
send federation requests about rooms or decide when to retry (the node does).

Design: DESIGN.md sections 3 ("GET /_matrix/key/v2/server still serves the self-signed key
document"), 7 (network backend mapping identifiers to addresses; enc=cbor) and 8 (static peers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from s2s_node.core.canonical import JsonValue
from s2s_node.core.ids import ServerName
from s2s_node.core.peers import check_key_document
from s2s_node.net.client import FederationClient

KEY_PATH = "/_matrix/key/v2/server"
VERSION_PATH = "/_matrix/federation/v1/version"
# The key of the version answer under which this node advertises the body encodings it reads
# (the TXT record's `enc` for peers that are not found by mDNS).
ENCODINGS_FIELD = "support.feline.s2s.enc"
# Deadline of each request made to learn a peer.
LEARN_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAddress:
    host: str
    port: int
    cbor: bool = False  # the peer advertised that it reads application/cbor bodies


class PeerBook:
    """The addresses of peers by identifier (in memory; the node also records them in the
    store's peer table)."""

    def __init__(self) -> None:
        self._peers: dict[str, PeerAddress] = {}

    def resolve(self, identifier: str) -> tuple[str, int] | None:
        """The federation client's `Resolve`: an identifier's address, or None."""
        peer = self._peers.get(identifier)
        return None if peer is None else (peer.host, peer.port)

    def get(self, identifier: str) -> PeerAddress | None:
        return self._peers.get(identifier)

    def set(self, identifier: str, address: PeerAddress) -> bool:
        """Record an address; True if it changed."""
        changed = self._peers.get(identifier) != address
        self._peers[identifier] = address
        return changed

    def reads_cbor(self, identifier: str) -> bool:
        peer = self._peers.get(identifier)
        return peer is not None and peer.cbor

    def identifiers(self) -> list[str]:
        return sorted(self._peers)


def parse_encodings(version: JsonValue) -> frozenset[str]:
    """The encodings a `/version` answer advertises (JSON only when it says nothing)."""
    if isinstance(version, dict):
        server = version.get("server")
        listed = server.get(ENCODINGS_FIELD) if isinstance(server, dict) else None
        if isinstance(listed, list) and all(isinstance(e, str) for e in listed):
            return frozenset(str(e) for e in listed)
    return frozenset({"json"})


async def learn_peer(
    client: FederationClient, host: str, port: int, now_ms: Callable[[], int]
) -> tuple[ServerName, PeerAddress]:
    """Ask `host:port` who it is: its key document, checked, and the encodings it reads.

    Raises the client's errors (`PeerUnreachable`, `RemoteError`, `BadResponse`) or
    `KeyDocumentError`.
    """
    destination = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    _, document = await client.request(
        destination, "GET", KEY_PATH, sign=False, timeout_s=LEARN_TIMEOUT_S
    )
    identifier = check_key_document(document, expected=None, now_ms=now_ms())
    _, version = await client.request(
        destination, "GET", VERSION_PATH, sign=False, timeout_s=LEARN_TIMEOUT_S
    )
    cbor = "cbor" in parse_encodings(version)
    return identifier, PeerAddress(host=host, port=port, cbor=cbor)
