"""The s2s layer of a running node: s2s rooms with peers and their negotiation drivers.

Owns: `S2sRooms`, which creates the two-party s2s room with a peer (at most one live room per
pair), joins s2s rooms a verified peer invites this node's server user to, opens rooms with
newly verified peers when `s2s.auto_open` is set, runs one `RoomDriver` per s2s room (started
from the DAG at start, fed from the node's accepted events), and serves `propose_upgrade` and
`negotiations`. Must not: implement the negotiation (core/negotiation*), the upgrade steps
(`upgrade`) or any federation handshake (the node's `join`/`invite` do).

Design: DESIGN.md sections 4 and 5; docs/design.md section 9.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from s2s_node.core.auth import S2S_ROOM_TYPES
from s2s_node.core.canonical import JsonValue
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId, RoomId, server_of, server_user
from s2s_node.core.negotiation import Agreement, NegotiationSettings
from s2s_node.core.negotiation_vendor import VendorMethod, VendorRegistry
from s2s_node.core.peers import ChangeKind
from s2s_node.core.room import EventStatus, RoomGraph
from s2s_node.core.rules import rules_for
from s2s_node.core.upgrade_choice import UpgradeMode
from s2s_node.rooms import LocalEvent, SubscriptionLagError, UnknownRoomError
from s2s_node.s2s.driver import DriverHooks, RoomDriver, is_negotiation_event
from s2s_node.s2s.summary import TOMBSTONE, RoomSummary, Tombstone, read_summary
from s2s_node.s2s.upgrade import FollowError, follow_upgrade, perform_upgrade
from s2s_node.s2s.values import (
    NegotiationInfo,
    UpgradeError,
    UpgradeOutcome,
    UpgradeRefusal,
)
from s2s_node.store import Store

if TYPE_CHECKING:
    from s2s_node.node import Node

logger = logging.getLogger(__name__)

ROOM_TYPES = {"unstable": "support.feline.s2s", "stable": "m.s2s"}
# With `s2s.auto_open` on both sides, the node whose identifier sorts first opens the room at
# once; the other waits this long and opens one only if none appeared (no duplicate rooms).
AUTO_OPEN_DEFER_S = 5.0
# An automatic join (an invite, a tombstone to follow) is tried after each of these delays
# until one succeeds: a refusal is often a race with the inviter's own commit.
JOIN_RETRY_DELAYS_S = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


class S2sRooms:
    """See the module docstring. Made by the node; `run` is started in its nursery."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.vendor_methods = VendorRegistry()
        self._drivers: dict[RoomId, RoomDriver] = {}
        self._not_s2s: set[RoomId] = set()
        self._nursery: trio.Nursery | None = None
        self._open_lock = trio.Lock()
        self._driver_lock = trio.Lock()
        self._following: set[str] = set()

    # -- settings

    def settings(self) -> NegotiationSettings:
        upgrade = self.node.config.upgrade
        return NegotiationSettings(
            our_server=self.node.identifier,
            ratings=dict(upgrade.versions),
            mode=UpgradeMode(upgrade.mode),
            timeout_ms=upgrade.timeout_s * 1000,
        )

    def register_vendor_method(self, method: VendorMethod) -> None:
        """Add a vendor upgrade method (modules do, when the node is composed)."""
        self.vendor_methods = self.vendor_methods.with_method(method)
        for driver in self._drivers.values():
            driver.mark_dirty()

    # -- the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        subscription = self.node.rooms.subscribe(None)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for room_id in await self.node.rooms.room_ids():
                await self._driver(room_id)
            if self.node.config.s2s.auto_open:
                nursery.start_soon(self._watch_peers)
            task_status.started()
            while True:
                try:
                    async for pdu in subscription:
                        await self._on_event(pdu)
                    return
                except SubscriptionLagError:
                    logger.warning("s2s: fell behind the room events; reloading the drivers")
                    subscription = self.node.rooms.subscribe(None)
                    for room_id in list(self._drivers):
                        await self._reload(room_id)

    async def _on_event(self, pdu: Pdu) -> None:
        driver = self._drivers.get(pdu.room_id)
        if driver is None:
            if pdu.room_id in self._not_s2s or not _may_start_driver(pdu, self.node.server_user):
                # Starting a driver reads the room's whole DAG: only an event the driver
                # acts on, or our own membership, is worth it (a catch-up of thousands of
                # events before our join completes would otherwise read it per event).
                return
            if await self.node.rooms.room_rules(pdu.room_id) is None:
                return  # an invite to a room we are not in (see on_invite)
            await self._driver(pdu.room_id)
            return
        if is_negotiation_event(pdu):
            driver.add(pdu)
        elif pdu.type == TOMBSTONE and pdu.state_key == "":
            replacement = pdu.content.get("replacement_room")
            driver.set_tombstone(
                Tombstone(
                    event_id=pdu.event_id,
                    sender=pdu.sender,
                    replacement_room=replacement if isinstance(replacement, str) else None,
                )
            )

    async def _driver(self, room_id: RoomId) -> RoomDriver | None:
        """The room's driver, started from the DAG if needed; None for a room that is not an
        s2s room we are joined to."""
        async with self._driver_lock:
            driver = self._drivers.get(room_id)
            if driver is not None or room_id in self._not_s2s:
                return driver
            summary, events = await self.node.astore.read(lambda store: _load_room(store, room_id))
            if not summary.is_s2s:
                self._not_s2s.add(room_id)
                return None
            if summary.membership_of(self.node.server_user) != "join":
                return None
            driver = RoomDriver(
                room_id=room_id,
                version=summary.version,
                our_server=self.node.identifier,
                hooks=self._hooks(),
                events=events,
                tombstone=summary.tombstone,
            )
            self._drivers[room_id] = driver
            assert self._nursery is not None
            self._nursery.start_soon(driver.run)
            return driver

    async def _reload(self, room_id: RoomId) -> None:
        summary, events = await self.node.astore.read(lambda store: _load_room(store, room_id))
        driver = self._drivers[room_id]
        for pdu in events:
            driver.add(pdu)
        if summary.tombstone is not None:
            driver.set_tombstone(summary.tombstone)

    def _hooks(self) -> DriverHooks:
        return DriverHooks(
            settings=self.settings,
            registry=lambda: self.vendor_methods,
            now_ms=self.node.now_ms,
            send=self._send,
            perform=self._perform,
            follow=self._follow,
        )

    async def _send(self, room_id: RoomId, event_type: str, content: dict[str, object]) -> Pdu:
        return await self.node.send_event(room_id, event_type, content)

    async def _perform(self, room_id: RoomId, agreement: Agreement, peer: str) -> RoomId:
        return await perform_upgrade(self.node, room_id, agreement, peer)

    def _follow(self, room_id: RoomId, tombstone: Tombstone, agreement: Agreement) -> None:
        self._spawn(self._follow_task, room_id, tombstone, agreement)

    async def _follow_task(self, old: RoomId, tombstone: Tombstone, agreement: Agreement) -> None:
        new = tombstone.replacement_room
        if new is None or new in self._following:
            return
        self._following.add(new)
        try:
            for delay in JOIN_RETRY_DELAYS_S:
                await trio.sleep(delay)
                try:
                    await follow_upgrade(self.node, old, tombstone, agreement)
                    return
                except FollowError as exc:
                    logger.warning("%s: not following the tombstone to %s: %s", old, new, exc)
                    return
                except Exception as exc:
                    logger.info("%s: following the upgrade to %s failed: %s", old, new, exc)
            logger.warning("%s: gave up following the upgrade to %s", old, new)
        finally:
            self._following.discard(new)

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # -- s2s rooms

    async def _summaries(self) -> list[RoomSummary]:
        found = []
        for room_id in await self.node.rooms.room_ids():
            if room_id in self._not_s2s:
                continue
            try:
                summary = await self.node.rooms.read(room_id, read_summary)
            except (UnknownRoomError, KeyError):
                continue
            if summary.is_s2s:
                found.append(summary)
        return found

    async def s2s_rooms(self) -> list[RoomId]:
        """Live s2s rooms: joined, not replaced."""
        us = self.node.server_user
        return sorted(s.room_id for s in await self._summaries() if s.is_live_for(us))

    async def room_with(self, peer: str) -> RoomId | None:
        """The live s2s room shared with `peer` (the first by room ID if there are two)."""
        us = self.node.server_user
        rooms = [
            s.room_id
            for s in await self._summaries()
            if s.is_live_for(us) and peer in s.servers() and peer != self.node.identifier
        ]
        return min(rooms) if rooms else None

    async def create_room_with(self, peer: str) -> RoomId:
        """DESIGN §4: the two-party s2s room with `peer` (the existing live one if any)."""
        if peer == self.node.identifier:
            raise ValueError("an s2s room is shared with another node")
        async with self._open_lock:
            existing = await self.room_with(peer)
            peer_user = server_user(peer)
            if existing is not None:
                summary = await self.node.rooms.read(existing, read_summary)
                if summary.membership_of(peer_user) is None:
                    await self.node.invite(existing, peer_user)
                return existing
            node = self.node
            version = node.config.rooms.default_version
            rules = rules_for(version)
            room_id = await node.rooms.create_room(
                creator=node.server_user,
                room_version=version,
                room_type=ROOM_TYPES[node.config.s2s.room_type],
                join_rule="invite",
                create_content={"additional_creators": [peer_user]}
                if rules.additional_creators
                else None,
                power_users={} if rules.creators_have_infinite_power else {peer_user: 100},
                extra_state=[
                    LocalEvent(
                        event_type="m.room.history_visibility",
                        content={"history_visibility": "shared"},
                        sender=node.server_user,
                        state_key="",
                    )
                ],
            )
            await node.invite(room_id, peer_user)
            return room_id

    def is_verified_peer(self, identifier: str) -> bool:
        """A static or discovered peer the node verified (`node.peers()`), or one whose
        address the embedder gave (`add_peer_address`, which vouches for it)."""
        info = self.node.peering.peer(identifier)
        if info is not None:
            return info.verified
        return self.node.peer_book.resolve(identifier) is not None

    # -- hooks

    def on_invite(self, pdu: Pdu, invite_room_state: list[JsonValue]) -> None:
        """An invite reached us: join it if it invites our server user into an s2s room and
        comes from a verified peer; a successor room only through a matching agreement."""
        if pdu.state_key != self.node.server_user:
            return
        create = _find_create(invite_room_state)
        if create is None or create.get("type") not in S2S_ROOM_TYPES:
            return
        inviter = server_of(pdu.sender)
        if not self.is_verified_peer(inviter):
            logger.info("%s: invite from %s, not a verified peer: ignored", pdu.room_id, inviter)
            return
        predecessor = create.get("predecessor")
        if isinstance(predecessor, Mapping) and isinstance(predecessor.get("room_id"), str):
            self._spawn(self._follow_invite, RoomId(predecessor["room_id"]), pdu)
        else:
            self._spawn(self._join_invited, pdu.room_id, inviter)

    async def _join_invited(self, room_id: RoomId, via: str) -> None:
        for delay in JOIN_RETRY_DELAYS_S:
            # The inviter stores its invite only after our countersignature is back, so a
            # join sent at once may find no invite there yet: wait, and retry a refusal.
            await trio.sleep(delay)
            if room_id in self.node._joining or await self.node.rooms.room_rules(room_id):
                return  # the embedder is joining it already, or we are in
            try:
                await self.node.join(room_id, via=via)
                return
            except Exception as exc:
                logger.info("%s: auto-join via %s failed: %s", room_id, via, exc)
        logger.warning("%s: gave up joining via %s", room_id, via)

    async def _follow_invite(self, old: RoomId, invite: Pdu) -> None:
        """An invite into a successor: follow only an agreement the inviter initiated."""
        driver = self._drivers.get(old)
        agreement = driver.agreement_with(server_of(invite.sender)) if driver else None
        if agreement is None:
            logger.info("%s: invite to a successor of %s without an agreement", invite.room_id, old)
            return
        tombstone = Tombstone(
            event_id=invite.event_id, sender=invite.sender, replacement_room=invite.room_id
        )
        await self._follow_task(old, tombstone, agreement)

    def on_peer_verified(self, identifier: str) -> None:
        """`s2s.auto_open`: open the s2s room with a newly verified peer."""
        if self.node.config.s2s.auto_open and identifier != self.node.identifier:
            self._spawn(self._auto_open, identifier)

    async def _watch_peers(self) -> None:
        async with self.node.peer_changes() as changes:
            async for change in changes:
                if change.kind is ChangeKind.VERIFIED:
                    self.on_peer_verified(change.peer.identifier)

    async def _auto_open(self, peer: str) -> None:
        if peer < self.node.identifier:
            await trio.sleep(AUTO_OPEN_DEFER_S)
            invited = any(server_of(i.event.sender) == peer for i in self.node.invites.values())
            if invited or await self.room_with(peer) is not None:
                return
        try:
            await self.create_room_with(peer)
        except Exception as exc:
            logger.warning("auto-open of an s2s room with %s failed: %s", peer, exc)

    # -- negotiations

    async def _live_driver(self, room: str) -> RoomDriver:
        rules = await self.node.rooms.room_rules(room)
        if rules is None:
            raise UnknownRoomError(room)
        driver = await self._driver(RoomId(room))
        if driver is None:
            summary = await self.node.rooms.read(room, read_summary)
            if not summary.is_s2s:
                raise UpgradeError(UpgradeRefusal.NOT_S2S_ROOM, f"{room} is not an s2s room")
            raise UpgradeError(UpgradeRefusal.NOT_JOINED, f"not joined to {room}")
        return driver

    async def propose_upgrade(
        self,
        room: str,
        versions: Mapping[str, int] | None = None,
        *,
        room_type: str | None = None,
        vendor: tuple[str, Mapping[str, Any]] | None = None,
        wait: bool = True,
    ) -> UpgradeOutcome:
        driver = await self._live_driver(room)
        if room_type is None and vendor is None:
            room_type = await self._default_room_type(room)
        opening = await driver.open(
            versions=dict(versions) if versions is not None else None,
            room_type=room_type,
            vendor=(vendor[0], dict(vendor[1])) if vendor is not None else None,
        )
        if not wait:
            return driver.outcome(opening)
        return await driver.wait_outcome(opening)

    async def _default_room_type(self, room: str) -> str | None:
        """A node configured for stable s2s rooms migrates an unstable one when upgrading."""
        summary = await self.node.rooms.read(room, read_summary)
        wanted = ROOM_TYPES[self.node.config.s2s.room_type]
        if summary.room_type == ROOM_TYPES["unstable"] and wanted == ROOM_TYPES["stable"]:
            return wanted
        return None

    async def negotiations(self, room: str) -> list[NegotiationInfo]:
        return (await self._live_driver(room)).infos()

    async def outcome(self, room: str, negotiation_id: str) -> UpgradeOutcome:
        return (await self._live_driver(room)).outcome(EventId(negotiation_id))

    async def wait_outcome(self, room: str, negotiation_id: str) -> UpgradeOutcome:
        """Wait until a negotiation of `room` failed or its upgrade was done."""
        return await (await self._live_driver(room)).wait_outcome(EventId(negotiation_id))


def _load_room(store: Store, room_id: RoomId) -> tuple[RoomSummary, list[Pdu]]:
    """The room's summary and its accepted negotiation events (reader thread)."""
    room = store.room(room_id)
    if room is None:
        raise UnknownRoomError(room_id)
    graph = RoomGraph(room.rules, room.room_id, room)
    summary = read_summary(graph)
    events = []
    if summary.is_s2s:
        for event_id in room.event_ids():
            admission = room.get_admission(event_id)
            pdu = room.get_pdu(event_id)
            if admission is None or admission.status is not EventStatus.ACCEPTED or pdu is None:
                continue
            if is_negotiation_event(pdu):
                events.append(pdu)
    return summary, events


def _may_start_driver(pdu: Pdu, server_user: str) -> bool:
    """Whether an event can make a room we have no driver for need one: a negotiation event,
    a tombstone, or a membership event of our server user (we may have just joined)."""
    if is_negotiation_event(pdu):
        return True
    if pdu.state_key is None:
        return False
    return (pdu.type == TOMBSTONE and pdu.state_key == "") or (
        pdu.type == "m.room.member" and pdu.state_key == server_user
    )


def _find_create(stripped: list[JsonValue]) -> Mapping[str, Any] | None:
    for obj in stripped:
        if isinstance(obj, dict) and obj.get("type") == "m.room.create":
            content = obj.get("content")
            return content if isinstance(content, dict) else None
    return None
