"""What the node tells embedders, the client API and `s2s-node peers` about one peer.

Owns: `PeerInfo` (one row of `node.peers()`: where a peer is, whether it is verified and alive,
whether the channel to it is encrypted and pinned, whether it comes from the static `peers`
config) with its JSON form, and `PeerInfoChange` (one item of `node.peer_changes()`). Must not:
find, verify or probe peers (net.peering and discovery do) or do any I/O.

Design: DESIGN.md sections 8 and 10 (`node.peers()`, `peers --json`); issues 6 and 11.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s_node.core.peers import ChangeKind


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """One peer as the node sees it now.

    `verified`: its key document, fetched from `endpoint`, certified `identifier` (over TLS the
    server certificate's key is that identifier's key too). `alive`: its last probe answered.
    `encrypted`/`pinned`: the last TLS handshake with it (either direction) succeeded with its
    certificate key checked against the identifier; both False with `federation.tls = false`.
    `static`: it comes from the `peers` config (never removed, only marked not alive).
    `discovered`: it is in the mDNS peer table.
    """

    identifier: str
    addresses: tuple[str, ...]
    port: int
    verified: bool
    alive: bool
    encrypted: bool
    pinned: bool
    static: bool
    discovered: bool = False
    endpoint: tuple[str, int] | None = None
    encodings: tuple[str, ...] = ()
    tls: bool = False  # TLS is what it advertises (mDNS TXT `tls=1`, or its static endpoint)
    last_seen_ms: int = 0

    def to_json(self) -> dict[str, object]:
        """The documented keys (`identifier`, `addresses`, `port`, `verified`, `alive`,
        `encrypted`) first, then the extra ones."""
        return {
            "identifier": self.identifier,
            "addresses": list(self.addresses),
            "port": self.port,
            "verified": self.verified,
            "alive": self.alive,
            "encrypted": self.encrypted,
            "pinned": self.pinned,
            "static": self.static,
            "discovered": self.discovered,
            "endpoint": None if self.endpoint is None else f"{self.endpoint[0]}:{self.endpoint[1]}",
            "encodings": list(self.encodings),
            "tls": self.tls,
            "last_seen_ms": self.last_seen_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfoChange:
    """A peer was added, verified (usable, again), updated, became unreachable or departed."""

    kind: ChangeKind
    peer: PeerInfo

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind.value, "peer": self.peer.to_json()}


__all__ = ["ChangeKind", "PeerInfo", "PeerInfoChange"]
