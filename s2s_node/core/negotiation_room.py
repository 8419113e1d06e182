"""All upgrade negotiations of one room: routing events, supersession, and opening new ones.

Owns: `RoomNegotiations`, which takes every negotiation event of a room in DAG order, opens a
`Negotiation` per opening event, routes the others by their `m.relates_to`, decides which of
concurrent openings wins, and builds the openings this node sends (`propose`, `start_vendor`).
Must not: do I/O or read a clock; decide anything a single negotiation decides (see
`negotiation`).

Spec: DESIGN.md section 5, "Edge cases" (concurrent proposals: the one that sorts first by
`(origin_server_ts, event_id)` wins; the other is failed "superseded" by its own sender).

Supersession is decided when an opening arrives: among the openings whose negotiations are
still contending (live, not malformed, not already superseded), every one but the first by
`(origin_server_ts, event_id)` is superseded. Both nodes hold the same contending set when two
openings cross (neither side answers the other's opening while its own runs, and `propose`
refuses while one runs), so both pick the same winner whatever order the two arrive in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from s2s_node.core.ids import EventId, server_of
from s2s_node.core.negotiation import (
    CONTENDING_STATES,
    Agreement,
    Direction,
    EventView,
    LocalNegotiationError,
    Negotiation,
    NegotiationRule,
    NegotiationSettings,
    Outgoing,
    Receipt,
    ReceiptStatus,
    RemoteNegotiationError,
)
from s2s_node.core.negotiation_messages import (
    PROPOSAL,
    VENDOR,
    NegotiationContentError,
    Side,
    build_proposal_content,
    build_vendor_content,
    is_opening,
    parse_kind,
    parse_proposal,
    parse_vendor,
    relation_of,
)
from s2s_node.core.negotiation_vendor import VendorRegistry
from s2s_node.core.upgrade_choice import build_advertised_versions


class RoomNegotiations:
    """The negotiations of one room, fed in DAG order. A fresh one fed the same events in the
    same order ends in the same state (the node rebuilds it from the DAG after a restart)."""

    def __init__(
        self,
        *,
        settings: NegotiationSettings,
        current_version: str,
        registry: VendorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.current_version = current_version
        self.registry = registry if registry is not None else VendorRegistry()
        # Opening event ID -> its negotiation, in the order the openings arrived.
        self._by_opening: dict[EventId, Negotiation] = {}
        self._sort_keys: dict[EventId, tuple[int, str]] = {}
        # An opening we built and validated whose echo has not arrived yet.
        self._opening_in_flight: Outgoing | None = None

    # -- reading

    @property
    def negotiations(self) -> tuple[Negotiation, ...]:
        return tuple(self._by_opening.values())

    def get(self, opening: str) -> Negotiation | None:
        return self._by_opening.get(EventId(opening))

    def live(self) -> tuple[Negotiation, ...]:
        return tuple(n for n in self._by_opening.values() if n.is_live)

    def agreements(self) -> tuple[Agreement, ...]:
        """Every DONE negotiation's outcome, oldest first (a tombstone must match one)."""
        found = (n.agreement for n in self._by_opening.values())
        return tuple(a for a in found if a is not None)

    def next_deadline_ms(self) -> int | None:
        """The earliest deadline of a live negotiation we initiated (when to call on_timeout)."""
        deadlines = [
            n.deadline_ms
            for n in self._by_opening.values()
            if n.is_live and n.role is Side.INITIATOR
        ]
        return min((d for d in deadlines if d is not None), default=None)

    # -- events in

    def receive(self, event: EventView) -> Receipt:
        """Route one negotiation event (in DAG order) to its negotiation."""
        theirs = server_direction(event.sender, self.settings.our_server) is Direction.THEIRS
        error_type = RemoteNegotiationError if theirs else LocalNegotiationError
        if parse_kind(event.type) is None:
            return _ignored(event, error_type(NegotiationRule.NOT_NEGOTIATION_EVENT, event.type))
        if is_opening(event.type, event.content):
            opening = EventId(event.event_id)
            if opening in self._by_opening:
                return self._by_opening[opening].receive(event)
            negotiation = Negotiation(
                settings=self.settings,
                current_version=self.current_version,
                registry=self.registry,
            )
            receipt = negotiation.receive(event)
            if negotiation.opening is None:
                return receipt
            if not theirs:
                self._opening_in_flight = None
            self._by_opening[opening] = negotiation
            self._sort_keys[opening] = (event.origin_server_ts, event.event_id)
            self._settle_contention()
            return receipt
        cited = relation_of(event.content)
        target = self._by_opening.get(cited) if cited is not None else None
        if target is None:
            return _ignored(
                event, error_type(NegotiationRule.NOT_RELATED, "cites no known opening")
            )
        return target.receive(event)

    def _settle_contention(self) -> None:
        contending = [
            opening
            for opening, negotiation in self._by_opening.items()
            if negotiation.state in CONTENDING_STATES
        ]
        if len(contending) < 2:
            return
        winner = min(contending, key=self._sort_keys.__getitem__)
        for opening in contending:
            if opening != winner:
                self._by_opening[opening].mark_superseded(winner)

    # -- events out

    def next_actions(self) -> tuple[Outgoing, ...]:
        """Everything this node owes in this room now, oldest negotiation first."""
        return tuple(a for n in self._by_opening.values() for a in n.next_actions())

    def on_timeout(self, now_ms: int) -> tuple[Outgoing, ...]:
        """Apply deadlines at `now_ms`; returns `next_actions()`."""
        for negotiation in self._by_opening.values():
            negotiation.on_timeout(now_ms)
        return self.next_actions()

    def send(self, outgoing: Outgoing) -> None:
        """Validate an event about to be sent (openings come from propose/start_vendor)."""
        if outgoing.opening is None:
            if outgoing is not self._opening_in_flight:
                raise LocalNegotiationError(
                    NegotiationRule.NOT_ALLOWED, "openings are built by propose/start_vendor"
                )
            return
        negotiation = self._by_opening.get(outgoing.opening)
        if negotiation is None:
            raise LocalNegotiationError(NegotiationRule.WRONG_NEGOTIATION, outgoing.opening)
        negotiation.send(outgoing)

    def propose(
        self,
        *,
        versions: Mapping[str, int] | None = None,
        room_type: str | None = None,
    ) -> Outgoing:
        """Our proposal (our configured ratings unless `versions` overrides them).

        The map goes through the same support, downgrade and mode filter as always. Raises
        `LocalNegotiationError` (IN_PROGRESS, NOTHING_TO_PROPOSE, MALFORMED).
        """
        self._check_can_open()
        advertised = build_advertised_versions(
            self.settings.ratings if versions is None else versions,
            mode=self.settings.mode,
            current_version=self.current_version,
        )
        if not advertised:
            raise LocalNegotiationError(
                NegotiationRule.NOTHING_TO_PROPOSE, "no supported version at or above current"
            )
        content = build_proposal_content(advertised, room_type)
        _check_local(lambda: parse_proposal(content))
        return self._opening(Outgoing(type=PROPOSAL, content=content, opening=None))

    def start_vendor(self, method: str, fields: Mapping[str, Any]) -> Outgoing:
        """Our vendor opening. The method must be registered here (and begin() accept it)."""
        self._check_can_open()
        handler = self.registry.get(method)
        if handler is None:
            raise LocalNegotiationError(NegotiationRule.UNKNOWN_METHOD, method)
        content = build_vendor_content(method, fields, None)
        _check_local(lambda: handler.begin(parse_vendor(content)))
        return self._opening(Outgoing(type=VENDOR, content=content, opening=None))

    def _check_can_open(self) -> None:
        if self._opening_in_flight is not None or any(
            n.state in CONTENDING_STATES for n in self._by_opening.values()
        ):
            raise LocalNegotiationError(
                NegotiationRule.IN_PROGRESS, "a negotiation is already running in this room"
            )

    def _opening(self, outgoing: Outgoing) -> Outgoing:
        self._opening_in_flight = outgoing
        return outgoing

    def forget_opening_in_flight(self) -> None:
        """The driver could not send the opening it asked for (so a new one may be built)."""
        self._opening_in_flight = None


def server_direction(sender: str, our_server: str) -> Direction:
    """OURS when the sender is a user of our server."""
    return Direction.OURS if server_of(sender) == our_server else Direction.THEIRS


def _check_local(check: Callable[[], object]) -> None:
    try:
        check()
    except NegotiationContentError as exc:
        raise LocalNegotiationError(NegotiationRule.MALFORMED, exc.detail, exc.reason) from None


def _ignored(event: EventView, error: LocalNegotiationError | RemoteNegotiationError) -> Receipt:
    return Receipt(
        event_id=event.event_id, status=ReceiptStatus.IGNORED, before=None, after=None, error=error
    )
