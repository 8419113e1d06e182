"""The discovery service: mDNS observations in, a verified and probed peer table out.

Owns: the tasks that turn `MdnsObservation`s into `PeerTable` events (parse, observe, verify),
retrying verification of unverified peers, probing verified peers over HTTP so a crashed node
is noticed in seconds rather than when its mDNS records expire, re-probing peers removed that
way for a while ("dormant", since mDNS will not announce them again while their records are
cached), the counters of what was ignored and why, the stream of `PeerChange`s, and calling
`on_wake` when a peer becomes usable. Must not: know about rooms, queues or the node's config
file; contact peers by anything but their key document.

Design: DESIGN.md section 8; issue 6. Liveness: p2p-prior-art section 3.4.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from s2s_node.core.ids import ServerName
from s2s_node.core.keys import is_identifier
from s2s_node.core.peers import (
    AdvertError,
    AdvertReason,
    KeyDocumentReason,
    Liveness,
    Peer,
    PeerAdvert,
    PeerChange,
    PeerTable,
    build_txt,
    parse_advert,
    parse_instance_identifier,
)
from s2s_node.discovery.bridge import MdnsInbox, MdnsObservation
from s2s_node.discovery.changes import ChangeStream, Subscribers
from s2s_node.discovery.mdns import (
    Interfaces,
    MdnsService,
    Registration,
    check_interfaces,
    open_mdns,
)
from s2s_node.discovery.verify import (
    FetchKeyDocument,
    VerificationError,
    VerifyReason,
    now_ms,
    open_key_fetcher,
    verify_endpoint,
)

logger = logging.getLogger(__name__)

# Changes a slow subscriber may have waiting; past it changes are dropped for that subscriber
# (counted) — `peers()` stays the truth.
CHANGES_BUFFER = 256
# Recent ignored advertisements kept for inspection (`stats.recent_ignored`).
RECENT_IGNORED = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryTiming:
    """How fast peers are verified, probed and given up on."""

    verify_timeout_s: float = 2.0  # one key-document fetch during verification
    verify_retry_s: float = 1.0  # first retry of a failed verification, doubling ...
    verify_retry_max_s: float = 10.0  # ... up to this
    probe_interval_s: float = 1.0  # how often a verified peer is probed
    probe_timeout_s: float = 1.0
    # Failures in a row: unreachable after 2, removed after 5.
    liveness: Liveness = field(default_factory=Liveness)
    dormant_probe_interval_s: float = 5.0  # probing a peer removed for failing probes ...
    dormant_for_s: float = 600.0  # ... for this long (or until mDNS says it is gone)


@dataclass(slots=True)
class DiscoveryStats:
    """Counters; tests and `s2s-node peers` read them."""

    ignored: Counter[AdvertReason] = field(default_factory=Counter)
    recent_ignored: deque[tuple[str, AdvertReason]] = field(
        default_factory=lambda: deque(maxlen=RECENT_IGNORED)
    )
    own_records: int = 0  # our own advertisement coming back (not counted as ignored)
    verify_failed: Counter[VerifyReason] = field(default_factory=Counter)
    key_document_rejected: Counter[KeyDocumentReason] = field(default_factory=Counter)
    probes_failed: int = 0
    changes_dropped: int = 0
    wake_errors: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Dormant:
    advert: PeerAdvert
    endpoint: tuple[str, int]
    since: float


class Discovery:
    """What `open_discovery` yields. All methods run in the trio thread."""

    def __init__(
        self,
        *,
        identifier: str,
        port: int,
        fetch: FetchKeyDocument,
        timing: DiscoveryTiming,
        on_wake: Callable[[str], None] | None,
        inbox: MdnsInbox,
    ) -> None:
        self.identifier = identifier
        self.port = port
        self.stats = DiscoveryStats()
        self.timing = timing
        self.mdns: MdnsService | None = None
        self._inbox = inbox
        self._fetch = fetch
        self._on_wake = on_wake
        self._table = PeerTable(liveness=timing.liveness)
        self._subscribers: Subscribers[PeerChange] = Subscribers(CHANGES_BUFFER)
        self._verifying: set[ServerName] = set()
        self._dormant: dict[ServerName, _Dormant] = {}
        self._nursery: trio.Nursery | None = None

    # -- reading ---------------------------------------------------------------------------

    def peers(self) -> tuple[Peer, ...]:
        """Snapshot of the table (unverified and unreachable peers included; see `Peer.usable`)."""
        return self._table.snapshot()

    def peer(self, identifier: str) -> Peer | None:
        return self._table.get(identifier)

    def resolve(self, identifier: str) -> tuple[str, int] | None:
        """The verified endpoint of a usable peer (a `net.client.Resolve`)."""
        return self._table.endpoint_of(identifier)

    def changes(self) -> ChangeStream[PeerChange]:
        """Every change from now on, in order: `async for change in discovery.changes()`.

        The stream ends when discovery closes; `close()` it (or use `async with`) to stop
        earlier. A subscriber more than CHANGES_BUFFER changes behind loses the newest ones
        (counted in `stats.changes_dropped`).
        """
        return self._subscribers.subscribe()

    # -- emitting --------------------------------------------------------------------------

    def _emit(self, change: PeerChange | None) -> None:
        if change is None:
            return
        logger.info("peer %s %s", change.peer.identifier, change.kind.value)
        self.stats.changes_dropped += self._subscribers.publish(change)
        if change.wake and self._on_wake is not None:
            try:
                self._on_wake(change.peer.identifier)
            except Exception:
                self.stats.wake_errors += 1
                logger.exception("on_wake(%s) failed", change.peer.identifier)

    # -- mDNS ------------------------------------------------------------------------------

    def _ignore(self, observation: MdnsObservation, reason: AdvertReason) -> None:
        name = observation.name
        if reason is AdvertReason.OWN_IDENTIFIER and observation.port == self.port:
            self.stats.own_records += 1  # our own record (or a spoof of us at our own port)
            return
        self.stats.ignored[reason] += 1
        self.stats.recent_ignored.append((name[:120], reason))
        logger.debug("ignored advertisement %r: %s", name[:120], reason.value)

    def handle_observation(self, observation: MdnsObservation) -> None:
        """One mDNS observation (public for tests that feed observations without zeroconf)."""
        if not observation.present:
            try:
                identifier = parse_instance_identifier(observation.name)
            except AdvertError:
                return
            self._dormant.pop(identifier, None)
            self._emit(self._table.remove(identifier))
            return
        try:
            advert = parse_advert(
                observation.name,
                observation.txt,
                observation.port,
                observation.addresses,
                own_identifier=self.identifier,
            )
            change = self._table.observe(advert, now_ms())
        except AdvertError as exc:
            self._ignore(observation, exc.reason)
            return
        self._dormant.pop(advert.identifier, None)
        self._emit(change)
        self._start_verification(advert.identifier)

    async def _consume_mdns(self) -> None:
        while True:
            for observation in await self._inbox.get_batch():
                self.handle_observation(observation)

    # -- verification ----------------------------------------------------------------------

    def _start_verification(self, identifier: ServerName) -> None:
        peer = self._table.get(identifier)
        if peer is None or not peer.needs_verification() or identifier in self._verifying:
            return
        assert self._nursery is not None
        self._verifying.add(identifier)
        self._nursery.start_soon(self._verify_until_done, identifier)

    def _count_failure(self, exc: VerificationError) -> None:
        self.stats.verify_failed[exc.reason] += 1
        if exc.key_document_reason is not None:
            self.stats.key_document_rejected[exc.key_document_reason] += 1

    async def _verify_once(
        self, identifier: ServerName, endpoints: Iterable[tuple[str, int]], timeout_s: float
    ) -> tuple[str, int] | None:
        for host, port in endpoints:
            try:
                with trio.fail_after(timeout_s):
                    await verify_endpoint(host, port, self._fetch, expected=identifier)
            except trio.TooSlowError:
                self._count_failure(VerificationError(VerifyReason.UNREACHABLE, "timed out"))
            except VerificationError as exc:
                self._count_failure(exc)
                logger.debug("%s at %s:%d not verified: %s", identifier, host, port, exc)
            else:
                return (host, port)
        return None

    async def _verify_until_done(self, identifier: ServerName) -> None:
        """Try the advertised endpoints until one verifies or the peer is gone."""
        delay = self.timing.verify_retry_s
        try:
            while True:
                peer = self._table.get(identifier)
                if peer is None or not peer.needs_verification():
                    return
                endpoint = await self._verify_once(
                    identifier, _endpoints(peer), self.timing.verify_timeout_s
                )
                if endpoint is not None and self._table.get(identifier) is not None:
                    self._emit(self._table.mark_verified(identifier, endpoint, now_ms()))
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, self.timing.verify_retry_max_s)
        finally:
            self._verifying.discard(identifier)

    # -- liveness --------------------------------------------------------------------------

    async def _probe(self, peer: Peer) -> None:
        assert peer.endpoint is not None
        endpoint = await self._verify_once(
            peer.identifier, [peer.endpoint], self.timing.probe_timeout_s
        )
        current = self._table.get(peer.identifier)
        if current is None or current.endpoint != peer.endpoint:
            return  # replaced while we were probing
        if endpoint is not None:
            self._emit(self._table.mark_probe_ok(peer.identifier, now_ms()))
            return
        self.stats.probes_failed += 1
        change = self._table.mark_probe_failed(peer.identifier, now_ms())
        if change is not None and self._table.get(peer.identifier) is None:
            # Removed by probes: mDNS will not re-announce it while its PTR is cached.
            self._dormant[peer.identifier] = _Dormant(
                advert=_advert_of(current), endpoint=peer.endpoint, since=trio.current_time()
            )
        self._emit(change)

    async def _probe_loop(self) -> None:
        while True:
            await trio.sleep(self.timing.probe_interval_s)
            async with trio.open_nursery() as nursery:
                for peer in self._table.snapshot():
                    if peer.endpoint is not None:
                        nursery.start_soon(self._probe, peer)

    async def _probe_dormant(self, identifier: ServerName, dormant: _Dormant) -> None:
        host, port = dormant.endpoint
        try:
            with trio.fail_after(self.timing.probe_timeout_s):
                await verify_endpoint(host, port, self._fetch, expected=identifier)
        except (VerificationError, trio.TooSlowError):
            return
        if self._dormant.pop(identifier, None) is None:
            return
        try:
            self._emit(self._table.observe(dormant.advert, now_ms()))
        except AdvertError as exc:
            self.stats.ignored[exc.reason] += 1
            return
        self._emit(self._table.mark_verified(identifier, dormant.endpoint, now_ms()))

    async def _dormant_loop(self) -> None:
        while True:
            await trio.sleep(self.timing.dormant_probe_interval_s)
            now = trio.current_time()
            for identifier, dormant in list(self._dormant.items()):
                if now - dormant.since > self.timing.dormant_for_s:
                    del self._dormant[identifier]
            async with trio.open_nursery() as nursery:
                for identifier, dormant in list(self._dormant.items()):
                    nursery.start_soon(self._probe_dormant, identifier, dormant)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._consume_mdns)
            nursery.start_soon(self._probe_loop)
            nursery.start_soon(self._dormant_loop)
            task_status.started()


def _endpoints(peer: Peer) -> list[tuple[str, int]]:
    return [(address, peer.port) for address in peer.addresses]


def _advert_of(peer: Peer) -> PeerAdvert:
    return PeerAdvert(
        identifier=peer.identifier,
        addresses=peer.addresses,
        port=peer.port,
        encodings=peer.encodings,
        room_versions=peer.room_versions,
        tls=peer.tls,
    )


@asynccontextmanager
async def open_discovery(
    identifier: str,
    port: int,
    *,
    interfaces: Interfaces,
    encodings: Iterable[str] = ("json", "cbor"),
    room_versions: Iterable[str] = ("10", "11", "12"),
    tls: bool = False,
    fetch_key_document: FetchKeyDocument | None = None,
    on_wake: Callable[[str], None] | None = None,
    timing: DiscoveryTiming = DiscoveryTiming(),
    advertise: bool = True,
) -> AsyncIterator[Discovery]:
    """Advertise `identifier` at `port` over mDNS on `interfaces`, and discover peers.

    `interfaces` is "all" or a list of addresses (tests: ["127.0.0.1"], or "all" only inside a
    network namespace). `fetch_key_document(host, port)` defaults to plain HTTP. `on_wake` is
    called (in the trio thread, must not block) with an identifier whenever a peer becomes
    usable. On exit our service is unregistered (peers see a goodbye).
    """
    if not is_identifier(identifier):
        raise ValueError(f"{identifier[:60]!r} is not a node identifier")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    check_interfaces(interfaces)
    inbox = MdnsInbox(trio.lowlevel.current_trio_token())
    registration = (
        Registration(
            identifier=identifier,
            port=port,
            txt=build_txt(identifier, encodings=encodings, room_versions=room_versions, tls=tls),
        )
        if advertise
        else None
    )
    async with open_key_fetcher(timeout_s=timing.verify_timeout_s) as default_fetch:
        discovery = Discovery(
            identifier=identifier,
            port=port,
            fetch=fetch_key_document or default_fetch,
            timing=timing,
            on_wake=on_wake,
            inbox=inbox,
        )
        try:
            # zeroconf first, outside any nursery: a failure to start it is a plain exception.
            async with open_mdns(
                interfaces=interfaces, inbox=inbox, registration=registration
            ) as mdns:
                discovery.mdns = mdns
                async with trio.open_nursery() as nursery:
                    await nursery.start(discovery.run)
                    yield discovery
                    nursery.cancel_scope.cancel()
        finally:
            discovery._subscribers.close()
