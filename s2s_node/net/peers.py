"""Where peers are: identifier -> address, and what each can read.

Owns: `PeerBook` (the addresses discovery or static config gave for each identifier, used by
the federation client's network backend, and whether a peer reads CBOR) and `parse_encodings`
(what a `/version` answer says the peer reads). Must not: find or verify peers (net.peering
does, through net.peer_fetch) or send requests.

Design: DESIGN.md sections 7 (network backend mapping identifiers to addresses; enc=cbor) and 8
(static peers).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s_node.core.canonical import JsonValue

# The key of the version answer under which this node advertises the body encodings it reads
# (the TXT record's `enc` for peers that are not found by mDNS).
ENCODINGS_FIELD = "support.feline.s2s.enc"


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

    def remove(self, identifier: str) -> bool:
        """Forget where `identifier` is (it departed); True if it was known."""
        return self._peers.pop(identifier, None) is not None

    def reads_cbor(self, identifier: str) -> bool:
        peer = self._peers.get(identifier)
        return peer is not None and peer.cbor


def parse_encodings(version: JsonValue) -> frozenset[str]:
    """The encodings a `/version` answer advertises (JSON only when it says nothing)."""
    if isinstance(version, dict):
        server = version.get("server")
        listed = server.get(ENCODINGS_FIELD) if isinstance(server, dict) else None
        if isinstance(listed, list) and all(isinstance(e, str) for e in listed):
            return frozenset(str(e) for e in listed)
    return frozenset({"json"})
