"""The negotiation driver of one s2s room: the pure machine fed from the room's DAG.

Owns: `RoomDriver`, one trio task per s2s room that keeps the room's accepted negotiation
events, rebuilds `RoomNegotiations` from them in one deterministic order whenever they change,
sends what the machine says we owe (as the server user), applies deadlines, and asks the
upgrade step to run once an agreement we initiated is done (or to follow the peer's tombstone
once an agreement it initiated is). Must not: keep anything the DAG does not hold (after a
restart it is rebuilt from the DAG alone), decide any protocol step itself (the machine
does), or create rooms (see `upgrade`).

Design: DESIGN.md section 5; docs/design.md section 9.

The order: events are replayed sorted by (depth, origin_server_ts, event_id). Depth grows
along every DAG edge, so this is a topological order, and both nodes holding the same events
replay them identically, whatever order they arrived in (crossing proposals included).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId, RoomId, server_of
from s2s_node.core.negotiation import (
    Agreement,
    LocalNegotiationError,
    Negotiation,
    NegotiationRule,
    NegotiationSettings,
    NegotiationState,
    Outgoing,
    ReceiptStatus,
)
from s2s_node.core.negotiation_messages import Side, parse_kind
from s2s_node.core.negotiation_room import RoomNegotiations
from s2s_node.core.negotiation_vendor import VendorRegistry
from s2s_node.s2s.summary import Tombstone
from s2s_node.s2s.values import (
    NegotiationInfo,
    UpgradeError,
    UpgradeOutcome,
    UpgradeRefusal,
    build_negotiation_info,
)

logger = logging.getLogger(__name__)

# After a failed send (the room refused our event, the store is closing), wait this long
# before trying again, so a persistent refusal does not spin.
SEND_RETRY_S = 1.0

_REFUSALS = {
    NegotiationRule.IN_PROGRESS: UpgradeRefusal.IN_PROGRESS,
    NegotiationRule.NOTHING_TO_PROPOSE: UpgradeRefusal.NOTHING_TO_PROPOSE,
    NegotiationRule.UNKNOWN_METHOD: UpgradeRefusal.UNKNOWN_METHOD,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverHooks:
    """What a driver needs from the node."""

    settings: Callable[[], NegotiationSettings]
    registry: Callable[[], VendorRegistry]
    now_ms: Callable[[], int]
    send: Callable[[RoomId, str, dict[str, object]], Awaitable[Pdu]]
    #: perform the upgrade of an agreement we initiated; returns the successor room
    perform: Callable[[RoomId, Agreement, str], Awaitable[RoomId]]
    #: follow the peer's tombstone (an agreement it initiated and we acked)
    follow: Callable[[RoomId, Tombstone, Agreement], None]


def sort_key(pdu: Pdu) -> tuple[int, int, str]:
    return (pdu.depth, pdu.origin_server_ts, pdu.event_id)


def is_negotiation_event(pdu: Pdu) -> bool:
    return pdu.state_key is None and parse_kind(pdu.type) is not None


class RoomDriver:
    """Drives the negotiations of one room. `add` events, `wake` it; `run` is its task."""

    def __init__(
        self,
        *,
        room_id: RoomId,
        version: str,
        our_server: str,
        hooks: DriverHooks,
        events: list[Pdu],
        tombstone: Tombstone | None,
    ) -> None:
        self.room_id = room_id
        self.version = version
        self.our_server = our_server
        self.hooks = hooks
        self.tombstone = tombstone
        self._events: dict[EventId, Pdu] = {p.event_id: p for p in events}
        self._reported: set[str] = set()
        self._machine = self._rebuild()
        self._dirty = False
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._changed = trio.Event()
        # Upgrades performed by this process (opening -> successor) or that failed: only
        # the outcome reported to a waiting caller; the DAG's tombstone is the record.
        self._performed: dict[EventId, RoomId] = {}
        self._upgrade_errors: dict[EventId, str] = {}
        self._followed: set[str] = set()

    # -- input

    def add(self, pdu: Pdu) -> None:
        if is_negotiation_event(pdu) and pdu.event_id not in self._events:
            self._events[pdu.event_id] = pdu
            self._dirty = True
            self.wake()

    def set_tombstone(self, tombstone: Tombstone) -> None:
        self.tombstone = tombstone
        self.wake()

    def mark_dirty(self) -> None:
        """Rebuild on the next step (e.g. the vendor registry changed)."""
        self._dirty = True
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    # -- the machine

    def _rebuild(self) -> RoomNegotiations:
        machine = RoomNegotiations(
            settings=self.hooks.settings(),
            current_version=self.version,
            registry=self.hooks.registry(),
        )
        for pdu in sorted(self._events.values(), key=sort_key):
            receipt = machine.receive(pdu)
            if receipt.status is not ReceiptStatus.APPLIED and pdu.event_id not in self._reported:
                self._reported.add(pdu.event_id)
                logger.info(
                    "%s: negotiation event %s %s: %s",
                    self.room_id,
                    pdu.event_id,
                    receipt.status.value,
                    receipt.error,
                )
        return machine

    def _current(self) -> RoomNegotiations:
        if self._dirty:
            self._machine = self._rebuild()
            self._dirty = False
        return self._machine

    # -- the task

    async def run(self) -> None:
        while True:
            self._wake = trio.Event()
            try:
                while await self._step():
                    pass
            except Exception:
                logger.exception("%s: negotiation step failed", self.room_id)
                await trio.sleep(SEND_RETRY_S)
            self._changed.set()
            self._changed = trio.Event()
            deadline = self._current().next_deadline_ms()
            if deadline is None:
                await self._wake.wait()
            else:
                delay_s = max(0.0, (deadline - self.hooks.now_ms()) / 1000)
                with trio.move_on_after(delay_s):
                    await self._wake.wait()

    async def _step(self) -> bool:
        """Send one owed event, or perform/follow an upgrade; True if there may be more."""
        async with self._lock:
            machine = self._current()
            actions = machine.on_timeout(self.hooks.now_ms())
            if actions:
                await self._send(machine, actions[0])
                return True
            agreement, negotiation = self._latest_agreement(machine)
            if agreement is None or negotiation is None:
                return False
            if negotiation.role is Side.INITIATOR:
                if (
                    agreement.opening in self._performed
                    or agreement.opening in self._upgrade_errors
                ):
                    return False
                assert negotiation.peer is not None
                try:
                    successor = await self.hooks.perform(self.room_id, agreement, negotiation.peer)
                except Exception as exc:
                    logger.exception("%s: performing the upgrade failed", self.room_id)
                    self._upgrade_errors[agreement.opening] = f"upgrade failed: {exc}"
                    return False
                self._performed[agreement.opening] = successor
                return False
            tombstone = self.tombstone
            if (
                tombstone is not None
                and tombstone.event_id not in self._followed
                and server_of(tombstone.sender) == negotiation.peer
            ):
                self._followed.add(tombstone.event_id)
                self.hooks.follow(self.room_id, tombstone, agreement)
            return False

    async def _send(self, machine: RoomNegotiations, outgoing: Outgoing) -> None:
        machine.send(outgoing)
        pdu = await self.hooks.send(self.room_id, outgoing.type, dict(outgoing.content))
        self.add(pdu)

    @staticmethod
    def _latest_agreement(
        machine: RoomNegotiations,
    ) -> tuple[Agreement | None, Negotiation | None]:
        agreements = machine.agreements()
        if not agreements:
            return None, None
        latest = agreements[-1]
        return latest, machine.get(latest.opening)

    def agreement_with(self, peer: str) -> Agreement | None:
        """The latest agreement, if `peer` initiated it (and so we acked it)."""
        agreement, negotiation = self._latest_agreement(self._current())
        if negotiation is None or negotiation.role is not Side.RESPONDER:
            return None
        return agreement if negotiation.peer == peer else None

    # -- the API

    async def open(
        self,
        *,
        versions: dict[str, int] | None = None,
        room_type: str | None = None,
        vendor: tuple[str, dict[str, object]] | None = None,
    ) -> EventId:
        """Send our opening (a proposal, or a vendor method's opening); its event ID."""
        async with self._lock:
            if self.tombstone is not None:
                raise UpgradeError(UpgradeRefusal.TOMBSTONED, f"{self.room_id} was replaced")
            machine = self._current()
            try:
                if vendor is None:
                    outgoing = machine.propose(versions=versions, room_type=room_type)
                else:
                    outgoing = machine.start_vendor(*vendor)
                machine.send(outgoing)
            except LocalNegotiationError as exc:
                reason = _REFUSALS.get(exc.reason, UpgradeRefusal.MALFORMED)
                raise UpgradeError(reason, exc.detail) from None
            try:
                pdu = await self.hooks.send(self.room_id, outgoing.type, dict(outgoing.content))
            except BaseException:
                machine.forget_opening_in_flight()
                raise
            self.add(pdu)
        self.wake()
        return pdu.event_id

    def outcome(self, opening: EventId) -> UpgradeOutcome:
        negotiation = self._current().get(opening)
        if negotiation is None:
            return UpgradeOutcome(status="pending", negotiation_id=opening)
        if negotiation.state is NegotiationState.FAILED:
            error = negotiation.fail.error.value if negotiation.fail is not None else None
            return UpgradeOutcome(status="failed", negotiation_id=opening, error=error)
        agreement = negotiation.agreement
        if agreement is None:
            return UpgradeOutcome(status="pending", negotiation_id=opening)
        successor = self.successor_of(negotiation)
        if successor is not None:
            return UpgradeOutcome(
                status="upgraded",
                negotiation_id=opening,
                version=agreement.version,
                new_room_id=successor,
            )
        error = self._upgrade_errors.get(opening)
        if error is not None:
            return UpgradeOutcome(
                status="failed", negotiation_id=opening, version=agreement.version, error=error
            )
        return UpgradeOutcome(status="pending", negotiation_id=opening, version=agreement.version)

    def successor_of(self, negotiation: Negotiation) -> RoomId | None:
        opening = negotiation.opening
        if opening is None or negotiation.state is not NegotiationState.DONE:
            return None
        performed = self._performed.get(opening)
        if performed is not None:
            return performed
        latest, _ = self._latest_agreement(self._current())
        tombstone = self.tombstone
        if (
            latest is not None
            and latest.opening == opening
            and tombstone is not None
            and tombstone.replacement_room is not None
            and negotiation.role is not Side.INITIATOR
        ):
            return RoomId(tombstone.replacement_room)
        return None

    async def wait_outcome(self, opening: EventId) -> UpgradeOutcome:
        while True:
            outcome = self.outcome(opening)
            if outcome.status != "pending":
                return outcome
            await self._changed.wait()

    def infos(self) -> list[NegotiationInfo]:
        machine = self._current()
        return [
            build_negotiation_info(self.room_id, n, self.successor_of(n))
            for n in machine.negotiations
            if n.opening is not None
        ]
