"""Running modules inside a node: deadlines, isolation, and the node's hook points.

Owns: `ModuleHost`, which starts the loaded modules, feeds each one the accepted events it asked
for (one subscription and one task per module), and is the single place the node calls
modules from: `check_local` (before a local event is built), `check_join` (before a join
handshake), `filter_remote` (accepted remote events, before local subscribers see them),
`check_invite` (an invite received over `/invite`). Every hook call runs under the module's
deadline; a module that raises or times out is logged and, after `MAX_CONSECUTIVE_FAILURES` in
a row, disabled. Also `ModuleUser`, the `ModuleContext` a module gets (sending as
`@<name>:<identifier>`, DESIGN.md section 4). Must not: know what any module decides.

Design: docs/design.md section 10; limits in `s2s_node.modules.api`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from s2s_node.core.auth import StateKey, is_s2s_room
from s2s_node.core.events import Pdu
from s2s_node.core.ids import RoomId, UserId, server_of
from s2s_node.core.negotiation_vendor import VendorMethod
from s2s_node.core.room import RoomGraph
from s2s_node.modules.api import MAX_CONSECUTIVE_FAILURES, Module, ModuleVeto, OutgoingEvent
from s2s_node.modules.loader import LoadedModule
from s2s_node.net.errors import M_FORBIDDEN, HttpError
from s2s_node.rooms import (
    LocalEvent,
    Subscription,
    SubscriptionLagError,
    UnknownRoomError,
    compute_servers_in_room,
    is_room_s2s,
)

if TYPE_CHECKING:
    from s2s_node.node import Node

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Module)
_MEMBER = "m.room.member"
_POWER = ("m.room.power_levels", "")


class ModuleUserError(Exception):
    """A module user cannot send there (module users act only in s2s rooms)."""


@dataclass(slots=True)
class _Running:
    """A loaded module and its health."""

    loaded: LoadedModule
    failures: int = 0
    disabled: bool = False
    subscription: Subscription | None = None

    @property
    def module(self) -> Module:
        return self.loaded.module

    @property
    def label(self) -> str:
        return f"{self.module.name} ({self.loaded.path})"


class ModuleHost:
    """The node's modules. Hooks are no-ops until `run` has started them."""

    def __init__(self, node: Node, loaded: Sequence[LoadedModule]) -> None:
        self._node = node
        self._running = [_Running(loaded=item) for item in loaded]
        self._s2s: dict[RoomId, bool] = {}
        self.withheld = 0  # remote events kept from local subscribers by a module's veto
        self._started = False

    # -- introspection

    @property
    def modules(self) -> list[Module]:
        return [r.module for r in self._running]

    def find(self, cls: type[_M]) -> _M | None:
        """The running module of class `cls`, or None."""
        for running in self._running:
            if isinstance(running.module, cls) and not running.disabled:
                return running.module
        return None

    def is_disabled(self, module: Module) -> bool:
        return any(r.disabled for r in self._running if r.module is module)

    def vendor_methods(self) -> list[VendorMethod]:
        """Every module's vendor upgrade methods (collected once, before the node runs)."""
        methods: list[VendorMethod] = []
        for running in self._running:
            try:
                methods.extend(running.module.vendor_methods())
            except Exception:
                logger.exception("module %s: vendor_methods failed", running.label)
        return methods

    # -- running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every module (each under its deadline), then feed them events until cancelled."""
        async with trio.open_nursery() as nursery:
            for running in self._running:
                if running.module.event_types:
                    # Subscribed before `start`, so nothing accepted during start is missed.
                    running.subscription = self._node.subscribe()
                context = ModuleUser(self._node, running.module.name, self._is_s2s)
                await self._guarded(running, "start", running.module.start, context)
                if running.subscription is not None:
                    nursery.start_soon(self._feed, running)
            self._started = True
            task_status.started()

    async def _feed(self, running: _Running) -> None:
        wanted = running.module.event_types
        while not running.disabled:
            subscription = running.subscription or self._node.subscribe()
            running.subscription = None
            try:
                async for pdu in subscription:
                    if running.disabled:
                        break
                    if "*" not in wanted and pdu.type not in wanted:
                        continue
                    if not await self._is_s2s(pdu.room_id):
                        continue
                    await self._guarded(running, "on_event", running.module.on_event, pdu)
            except SubscriptionLagError:
                logger.error("module %s fell behind and missed events", running.label)
                continue
            finally:
                subscription.close()
            return

    async def _guarded(
        self,
        running: _Running,
        hook: str,
        fn: Callable[..., Awaitable[None]],
        *args: Any,
        vetoes: bool = False,
    ) -> None:
        """Call one hook under the module's deadline; exceptions are logged, not raised, except
        a `ModuleVeto` from a hook that may veto."""
        if running.disabled:
            return
        try:
            with trio.move_on_after(running.loaded.deadline_s) as scope:
                await fn(*args)
        except ModuleVeto:
            if not vetoes:
                logger.error("module %s raised a veto from %s; ignored", running.label, hook)
                return
            running.failures = 0
            raise
        except Exception:
            logger.exception("module %s failed in %s", running.label, hook)
            self._count_failure(running)
            return
        if scope.cancelled_caught:
            logger.error(
                "module %s: %s did not finish within %.1f s; cancelled",
                running.label,
                hook,
                running.loaded.deadline_s,
            )
            self._count_failure(running)
            return
        running.failures = 0

    def _count_failure(self, running: _Running) -> None:
        running.failures += 1
        if running.failures >= MAX_CONSECUTIVE_FAILURES and not running.disabled:
            running.disabled = True
            logger.error(
                "module %s disabled after %d failures in a row", running.label, running.failures
            )

    async def _is_s2s(self, room_id: str) -> bool:
        known = self._s2s.get(RoomId(room_id))
        if known is not None:
            return known
        try:
            s2s = await self._node.rooms.read(room_id, is_room_s2s)
        except UnknownRoomError:
            return False  # an invite to a room we are not in
        self._s2s[RoomId(room_id)] = s2s
        return s2s

    # -- hooks the node calls

    @property
    def _active(self) -> bool:
        """Started, with at least one module not disabled (else every hook is a no-op)."""
        return self._started and any(not r.disabled for r in self._running)

    async def check_local(self, room_id: str, event: LocalEvent) -> None:
        """Before a local event is built: each module may veto it (`ModuleVeto` propagates)."""
        if not self._active:
            return

        def run(graph: RoomGraph) -> tuple[set[str], bool]:
            return compute_servers_in_room(graph), is_room_s2s(graph)

        try:
            servers, s2s = await self._node.rooms.read(room_id, run)
        except UnknownRoomError:
            return  # the send itself reports it
        if event.event_type == _MEMBER and event.state_key is not None and ":" in event.state_key:
            servers.add(server_of(event.state_key))
        servers.discard(self._node.identifier)
        outgoing = OutgoingEvent(
            room_id=RoomId(room_id),
            event_type=event.event_type,
            sender=event.sender,
            state_key=event.state_key,
            content=event.content,
            destinations=frozenset(servers),
            s2s=s2s,
        )
        await self._check_outgoing(outgoing)

    async def check_join(self, room_id: str, user: str, via: str) -> None:
        """Before a join handshake through `via` (the room's servers are not known yet)."""
        if not self._active:
            return
        outgoing = OutgoingEvent(
            room_id=RoomId(room_id),
            event_type=_MEMBER,
            sender=user,
            state_key=user,
            content={"membership": "join"},
            destinations=frozenset({via} - {self._node.identifier}),
            s2s=False,
        )
        await self._check_outgoing(outgoing)

    async def _check_outgoing(self, outgoing: OutgoingEvent) -> None:
        for running in self._running:
            await self._guarded(
                running, "check_outgoing", running.module.check_outgoing, outgoing, vetoes=True
            )

    async def _check_incoming(self, pdu: Pdu) -> ModuleVeto | None:
        for running in self._running:
            try:
                await self._guarded(
                    running, "check_incoming", running.module.check_incoming, pdu, vetoes=True
                )
            except ModuleVeto as veto:
                return veto
        return None

    async def filter_remote(self, accepted: list[Pdu]) -> list[Pdu]:
        """Accepted events minus the remote ones a module refuses: those stay in the DAG as
        accepted (docs/design.md section 10) but no local subscriber sees them."""
        if not self._active:
            return accepted
        kept = []
        for pdu in accepted:
            if server_of(pdu.sender) != self._node.identifier:
                veto = await self._check_incoming(pdu)
                if veto is not None:
                    self.withheld += 1
                    logger.info("withheld %s from local subscribers: %s", pdu.event_id, veto)
                    continue
            kept.append(pdu)
        return kept

    async def visible_to_local_users(self, pdus: Sequence[Pdu]) -> list[Pdu]:
        """`pdus` minus the remote ones a module refuses now: what readers of stored history
        (initial sync, `/messages`) may show. Like `filter_remote`, without counting."""
        if not self._active:
            return list(pdus)
        return [
            pdu
            for pdu in pdus
            if server_of(pdu.sender) == self._node.identifier
            or await self._check_incoming(pdu) is None
        ]

    async def check_invite(self, pdu: Pdu) -> None:
        """An invite received over `/invite`: a veto is 403 M_FORBIDDEN (with the veto's keys)."""
        if not self._active:
            return
        veto = await self._check_incoming(pdu)
        if veto is not None:
            logger.info("refused invite %s: %s", pdu.event_id, veto)
            raise HttpError(403, M_FORBIDDEN, str(veto), extra=veto.to_json())


class ModuleUser:
    """The `ModuleContext` of one module: its user `@<name>:<identifier>` on this node."""

    def __init__(self, node: Node, name: str, is_s2s: Callable[[str], Awaitable[bool]]) -> None:
        self._node = node
        self.is_s2s_room = is_s2s
        self._user = UserId(f"@{name}:{node.identifier}")
        self._setup = trio.Lock()

    @property
    def identifier(self) -> str:
        return self._node.identifier

    @property
    def user_id(self) -> UserId:
        return self._user

    async def room_state(self, room: str) -> dict[StateKey, Pdu]:
        return await self._node.room_state(room)

    async def s2s_rooms(self) -> list[RoomId]:
        return await self._node.s2s_rooms()

    async def s2s_room_with(self, peer: str) -> RoomId | None:
        return await self._node.s2s_room_with(peer)

    async def run_sync(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), abandon_on_cancel=True)

    async def send_event(
        self,
        room: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
    ) -> Pdu:
        """Send as the module user. DESIGN.md section 4: the server user invites it into the s2s
        room (it then joins itself) and, for an event its power level does not allow, raises
        its level to what the event type needs (never above the server user's own)."""
        async with self._setup:
            await self._ensure_member(room)
            await self._ensure_power(room, event_type, state=state_key is not None)
        return await self._node.send_event(
            room, event_type, content, state_key=state_key, sender=self._user
        )

    async def _ensure_member(self, room: str) -> None:
        state = await self._node.room_state(room)
        create = state.get(("m.room.create", ""))
        if create is None or not is_s2s_room(create):
            raise ModuleUserError(f"{self._user} acts only in s2s rooms; {room[:100]} is not one")
        member = state.get((_MEMBER, self._user))
        membership = None if member is None else member.membership
        if membership == "join":
            return
        if membership != "invite":
            await self._node.invite(room, self._user)
        await self._node.send_event(
            room, _MEMBER, {"membership": "join"}, state_key=self._user, sender=self._user
        )

    async def _ensure_power(self, room: str, event_type: str, *, state: bool) -> None:
        levels = await self._node.room_state(room)
        power = levels.get(_POWER)
        content: dict[str, Any] = dict(power.content) if power is not None else {}
        users = content.get("users") if isinstance(content.get("users"), dict) else {}
        assert isinstance(users, dict)
        events = content.get("events") if isinstance(content.get("events"), dict) else {}
        assert isinstance(events, dict)
        default = content.get("state_default", 50) if state else content.get("events_default", 0)
        needed = events.get(event_type, default)
        have = users.get(self._user, content.get("users_default", 0))
        if not isinstance(needed, int) or not isinstance(have, int) or have >= needed:
            return
        content["users"] = {**users, self._user: needed}
        await self._node.send_event(room, "m.room.power_levels", content, state_key="")


__all__ = ["ModuleHost", "ModuleUser", "ModuleUserError"]
