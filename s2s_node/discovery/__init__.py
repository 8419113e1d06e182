"""LAN discovery: mDNS advertisement and browsing, verified by key documents, probed over HTTP.

`open_discovery(identifier, port, interfaces=...)` is the entry point; `verify_static_peer`
verifies a configured `host:port`. Design: DESIGN.md section 8.
"""

from s2s_node.core.peers import ChangeKind, Liveness, Peer, PeerChange
from s2s_node.discovery.changes import ChangeStream
from s2s_node.discovery.mdns import RECORD_TTL_S, Interfaces
from s2s_node.discovery.service import (
    Discovery,
    DiscoveryStats,
    DiscoveryTiming,
    open_discovery,
)
from s2s_node.discovery.verify import (
    FetchKeyDocument,
    HttpKeyFetcher,
    KeyFetchError,
    VerificationError,
    VerifyReason,
    open_key_fetcher,
    verify_endpoint,
    verify_static_peer,
)

__all__ = [
    "RECORD_TTL_S",
    "ChangeKind",
    "ChangeStream",
    "Discovery",
    "DiscoveryStats",
    "DiscoveryTiming",
    "FetchKeyDocument",
    "HttpKeyFetcher",
    "Interfaces",
    "KeyFetchError",
    "Liveness",
    "Peer",
    "PeerChange",
    "VerificationError",
    "VerifyReason",
    "open_discovery",
    "open_key_fetcher",
    "verify_endpoint",
    "verify_static_peer",
]
