"""The node's peers: static peers and mDNS discovery feeding the address book.

Owns: `Peering`, which verifies and probes the static `peers` of the config, runs discovery
(`discovery.open_discovery`) and turns what both see into the node's address book (verified
peers are added with `add_address`, departed ones removed, a peer usable again is woken),
`node.peers()` (a merged `PeerInfo` per identifier, with the channel's TLS status) and
`node.peer_changes()` (`PeerChangeStream`). It logs each change at INFO in one stable line:
`peer verified <identifier> at <host>:<port>`, `peer unreachable <identifier>`,
`peer departed <identifier>` (the namespace test reads them). Must not: send room traffic, know
about rooms or queues (the node's `add_address`/`wake` do), or start discovery on interfaces
the config did not name.

Design: DESIGN.md section 8 (discovery, static peers), 7 (TLS); issues 6 and 11.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio

from s2s_node.core.ids import ServerName
from s2s_node.core.peers import ChangeKind, Liveness, Peer, PeerAdvert, PeerChange, PeerTable
from s2s_node.discovery import (
    Discovery,
    DiscoveryTiming,
    Interfaces,
    KeyFetchError,
    VerificationError,
    open_discovery,
    verify_endpoint,
    verify_static_peer,
)
from s2s_node.discovery.changes import ChangeStream, Subscribers
from s2s_node.discovery.verify import now_ms
from s2s_node.net.peer_fetch import PeerFetcher
from s2s_node.net.peers import PeerBook, parse_encodings
from s2s_node.net.tls_channels import ChannelLog, Direction
from s2s_node.peerinfo import PeerInfo, PeerInfoChange

logger = logging.getLogger(__name__)

# Changes a slow `peer_changes()` subscriber may have waiting; past it the newest are dropped
# for that subscriber (counted in `changes_dropped`) — `peers()` stays the truth.
CHANGES_BUFFER = 256
# A static peer is never removed: probes only mark it unreachable (and usable again).
STATIC_LIVENESS = Liveness(unreachable_after=2, depart_after=sys.maxsize)

AddAddress = Callable[[str, str, int, bool], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeeringTiming:
    """How often static peers are retried and probed; discovery's own timing."""

    # First retry of an unverified static peer, doubling ...: short, because peers started
    # together (a test, a LAN booting) usually answer within a second or two.
    static_retry_s: float = 0.25
    static_retry_max_s: float = 30.0  # ... up to this
    static_probe_interval_s: float = 5.0
    static_timeout_s: float = 5.0  # one verification or probe of a static peer
    discovery: DiscoveryTiming = field(default_factory=DiscoveryTiming)


# One subscriber's `PeerInfoChange`s, from subscription on (an async iterator); ends when the
# node stops or `close()` is called.
PeerChangeStream = ChangeStream[PeerInfoChange]


class Peering:
    """Static peers and discovery -> the address book, `peers()` and the change stream."""

    def __init__(
        self,
        *,
        identifier: str,
        book: PeerBook,
        channels: ChannelLog,
        fetch: PeerFetcher,
        add_address: AddAddress,
        wake: Callable[[str], None],
        tls: bool,
        cbor: bool,
        room_versions: Iterable[str],
        timing: PeeringTiming = PeeringTiming(),
    ) -> None:
        self.identifier = identifier
        self.timing = timing
        self.discovery: Discovery | None = None
        self.changes_dropped = 0
        self._book = book
        self._channels = channels
        self._fetch = fetch
        self._add_address = add_address
        self._wake = wake
        self._tls = tls
        self._encodings = ("json", "cbor") if cbor else ("json",)
        self._room_versions = tuple(room_versions)
        self._static = PeerTable(liveness=STATIC_LIVENESS)
        self._subscribers: Subscribers[PeerInfoChange] = Subscribers(CHANGES_BUFFER)

    # -- reading ---------------------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        """Every static and discovered peer, by identifier (departed ones are gone)."""
        merged: dict[str, PeerInfo] = {
            peer.identifier: self._info(peer, static=True) for peer in self._static.snapshot()
        }
        discovered = self.discovery.peers() if self.discovery is not None else ()
        for peer in discovered:
            info = self._info(peer, static=False)
            known = merged.get(peer.identifier)
            merged[peer.identifier] = info if known is None else _merge(known, info)
        return [merged[identifier] for identifier in sorted(merged)]

    def peer(self, identifier: str) -> PeerInfo | None:
        return next((p for p in self.peers() if p.identifier == identifier), None)

    def changes(self) -> PeerChangeStream:
        """Every change from now on: `async for change in node.peer_changes()`."""
        return self._subscribers.subscribe()

    def close(self) -> None:
        """End every change stream (the node is stopping)."""
        self._subscribers.close()

    def _info(self, peer: Peer, *, static: bool) -> PeerInfo:
        encrypted, pinned = self._channel_state(peer.identifier)
        return PeerInfo(
            identifier=peer.identifier,
            addresses=peer.addresses,
            port=peer.port,
            verified=peer.verified,
            alive=peer.alive,
            encrypted=encrypted,
            pinned=pinned,
            static=static,
            discovered=not static,
            endpoint=peer.endpoint,
            encodings=tuple(sorted(peer.encodings)),
            tls=peer.tls,
            last_seen_ms=peer.last_seen_ms,
        )

    def _channel_state(self, identifier: str) -> tuple[bool, bool]:
        """(encrypted, pinned): the last handshake either way succeeded, and was pinned."""
        good = [
            status
            for status in (self._channels.status(identifier, d) for d in Direction)
            if status is not None and status.failure is None
        ]
        return any(s.encrypted for s in good), any(s.encrypted and s.pinned for s in good)

    # -- emitting --------------------------------------------------------------------------

    def _emit(self, change: PeerChange | None, *, static: bool) -> None:
        if change is None:
            return
        peer = change.peer
        if change.kind is ChangeKind.VERIFIED and peer.endpoint is not None:
            host, port = peer.endpoint
            logger.info("peer verified %s at %s:%d", peer.identifier, host, port)
        else:
            logger.info("peer %s %s", change.kind.value, peer.identifier)
        item = PeerInfoChange(kind=change.kind, peer=self._info(peer, static=static))
        self.changes_dropped += self._subscribers.publish(item)

    # -- static peers ----------------------------------------------------------------------

    async def _verify_static(self, host: str, port: int) -> tuple[ServerName, bool]:
        """Retry until `host:port` proves an identifier; returns it and whether it reads CBOR."""
        delay = self.timing.static_retry_s
        while True:
            try:
                identifier = await verify_static_peer(
                    host, port, fetch=self._fetch, timeout_s=self.timing.static_timeout_s
                )
                with trio.fail_after(self.timing.static_timeout_s):
                    version = await self._fetch.version(host, port)
            except (VerificationError, KeyFetchError, trio.TooSlowError) as exc:
                logger.info("static peer %s:%d not verified yet: %s", host, port, exc)
            else:
                return identifier, "cbor" in parse_encodings(version)
            await trio.sleep(delay)
            delay = min(delay * 2, self.timing.static_retry_max_s)

    async def run_static(self, host: str, port: int) -> None:
        """Verify a configured `host:port`, add it to the address book, then probe it for good
        (a failing static peer is marked unreachable, never removed)."""
        identifier, cbor = await self._verify_static(host, port)
        if identifier == self.identifier:
            logger.info("static peer %s:%d is this node; ignored", host, port)
            return
        endpoint = (host, port)
        advert = PeerAdvert(
            identifier=identifier,
            addresses=(host,),
            port=port,
            encodings=frozenset(["json", "cbor"] if cbor else ["json"]),
            room_versions=(),
            tls=self._tls,
        )
        self._emit(self._static.observe(advert, now_ms()), static=True)
        await self._add_address(identifier, host, port, cbor)
        self._emit(self._static.mark_verified(identifier, endpoint, now_ms()), static=True)
        while True:
            await trio.sleep(self.timing.static_probe_interval_s)
            try:
                with trio.fail_after(self.timing.static_timeout_s):
                    await verify_endpoint(host, port, self._fetch, expected=identifier)
            except (VerificationError, trio.TooSlowError):
                change = self._static.mark_probe_failed(identifier, now_ms())
            else:
                change = self._static.mark_probe_ok(identifier, now_ms())
                if change is not None:  # usable again
                    self._wake(identifier)
            self._emit(change, static=True)

    # -- discovery -------------------------------------------------------------------------

    async def run_discovery(
        self,
        *,
        port: int,
        interfaces: Interfaces,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Advertise our federation `port` on `interfaces` and follow what discovery sees."""
        async with open_discovery(
            self.identifier,
            port,
            interfaces=interfaces,
            encodings=self._encodings,
            room_versions=self._room_versions,
            tls=self._tls,
            fetch_key_document=self._fetch,
            on_wake=self._wake,
            timing=self.timing.discovery,
        ) as discovery:
            changes = discovery.changes()  # before any checkpoint: nothing is missed
            self.discovery = discovery
            task_status.started()
            try:
                async with changes:
                    async for change in changes:
                        await self._on_discovery_change(change)
            finally:
                self.discovery = None

    async def _on_discovery_change(self, change: PeerChange) -> None:
        peer = change.peer
        if change.kind is ChangeKind.VERIFIED and peer.endpoint is not None:
            host, port = peer.endpoint
            # TXT `enc` says whether it reads CBOR; add_address wakes its queue.
            await self._add_address(peer.identifier, host, port, "cbor" in peer.encodings)
        elif change.kind is ChangeKind.DEPARTED and self._static.get(peer.identifier) is None:
            self._book.remove(peer.identifier)
        self._emit(change, static=False)


def _merge(static: PeerInfo, discovered: PeerInfo) -> PeerInfo:
    """A peer both configured and discovered: the usable view wins; both flags set."""
    base = discovered if discovered.alive or not static.alive else static
    return PeerInfo(
        identifier=base.identifier,
        addresses=tuple(dict.fromkeys([*discovered.addresses, *static.addresses])),
        port=base.port,
        verified=static.verified or discovered.verified,
        alive=static.alive or discovered.alive,
        encrypted=base.encrypted,
        pinned=base.pinned,
        static=True,
        discovered=True,
        endpoint=base.endpoint,
        encodings=base.encodings,
        tls=base.tls,
        last_seen_ms=max(static.last_seen_ms, discovered.last_seen_ms),
    )


__all__ = ["PeerChangeStream", "Peering", "PeeringTiming"]
