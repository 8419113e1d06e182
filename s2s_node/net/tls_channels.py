"""What the node knows about the encrypted channel to each peer (for `s2s-node peers`).

Owns: `ChannelLog`, the record per peer of the last TLS handshake in each direction (pinned or
not, when, and why the last attempt failed if it did), and `ChannelStatus`, the value the `peers`
command prints. Must not: do TLS or I/O; net.client and net.server report into it.

Design: DESIGN.md section 7; issue 11 ("`s2s-node peers` shows whether each peer's channel is
encrypted and pinned").
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

# Peers remembered at most (one entry per identifier or dialled address); the oldest entry is
# forgotten beyond it, so a stream of strangers cannot grow the log without bound.
MAX_CHANNELS = 4096


class Direction(enum.Enum):
    OUTBOUND = "outbound"  # we dialled the peer
    INBOUND = "inbound"  # the peer dialled us and presented its certificate


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStatus:
    """The channel to one peer as last seen.

    `encrypted`: the last handshake completed with TLS 1.3. `pinned`: the certificate's key was
    checked against the peer's identifier (outbound: the identifier we dialled; inbound: the
    identifier is the one the key encodes, bound to X-Matrix per request). `identifier`: the
    identifier the certificate's key encodes (for a dialled IP address, what we learned).
    `failure`: why the last attempt failed, None when it succeeded; then `encrypted`/`pinned`
    describe the last success, if any.
    """

    peer: str  # the identifier, or "host:port" for a peer dialled by address
    identifier: str | None
    direction: Direction
    encrypted: bool
    pinned: bool
    at: float  # wall-clock time of the last handshake attempt
    failure: str | None = None


class ChannelLog:
    """Per peer, the last TLS handshake outcome; read by the `peers` command.

    `tls_enabled` False (plain HTTP by explicit config) makes `status` report every peer as
    neither encrypted nor pinned.
    """

    def __init__(self, *, tls_enabled: bool, clock: Callable[[], float] = time.time) -> None:
        self.tls_enabled = tls_enabled
        self._clock = clock
        self._channels: dict[tuple[str, Direction], ChannelStatus] = {}

    def record_success(
        self, peer: str, *, identifier: str, direction: Direction, pinned: bool
    ) -> None:
        self._put(
            ChannelStatus(
                peer=peer,
                identifier=identifier,
                direction=direction,
                encrypted=True,
                pinned=pinned,
                at=self._clock(),
            )
        )

    def record_failure(self, peer: str, *, direction: Direction, reason: str) -> None:
        """Keep what the last success established, with the failure and its time."""
        previous = self._channels.get((peer, direction))
        if previous is None:
            previous = ChannelStatus(
                peer=peer,
                identifier=None,
                direction=direction,
                encrypted=False,
                pinned=False,
                at=0.0,
            )
        self._put(replace(previous, at=self._clock(), failure=reason))

    def _put(self, status: ChannelStatus) -> None:
        key = (status.peer, status.direction)
        self._channels.pop(key, None)  # re-inserted last: dicts keep insertion order
        self._channels[key] = status
        while len(self._channels) > MAX_CHANNELS:
            del self._channels[next(iter(self._channels))]

    def status(self, peer: str, direction: Direction = Direction.OUTBOUND) -> ChannelStatus | None:
        """The channel to `peer` in `direction`, or None if no handshake was attempted."""
        if not self.tls_enabled:
            return None
        return self._channels.get((peer, direction))

    def is_encrypted_and_pinned(self, peer: str) -> bool:
        """True if the last handshake with `peer` (either direction) succeeded pinned."""
        return any(
            status is not None and status.failure is None and status.encrypted and status.pinned
            for status in (self.status(peer, direction) for direction in Direction)
        )

    def all(self) -> list[ChannelStatus]:
        """Every remembered channel, oldest first."""
        return list(self._channels.values()) if self.tls_enabled else []
