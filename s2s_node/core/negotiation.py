"""The upgrade-negotiation state machine of one negotiation (MSC3348, as DESIGN §5 defines it).

Owns: `NegotiationState`, the transition table `TRANSITIONS`, `Negotiation` (one per opening
event) with `receive` (an event from the room's DAG, ours echoed back or the peer's),
`next_actions` (what we owe: event type + content), `send` (validates what we are about to emit),
`on_timeout`; it re-exports the values of `negotiation_values` (states, errors, receipts).
Must not: do I/O, read a clock (`now_ms` is a parameter),
route events between negotiations or decide supersession (see `negotiation_room`).

Spec: DESIGN.md section 5; MSC3348 "Upgrade negotiation" (the reply/ack steps come from its
earlier drafts, commits 09b5d28 and dec3002).

Theory of operation (h11 style):

- Rule 1: every transition lives here, as much as possible in `TRANSITIONS`; the two exceptions
  are named: a vendor method settling moves VENDOR -> DONE, and the room arbiter's
  `mark_superseded` moves a contending negotiation to SUPERSEDED.
- Rule 2: the table does not know which side we are. It is keyed by the *sender's side*
  (INITIATOR = sent the opening, RESPONDER = the other); `receive` turns the direction (ours or
  theirs, told by the sender's server) into a side using our role. Both nodes therefore walk the
  same states on the same events; only what each *owes* (`next_actions`) differs.
- State changes only when an event arrives from the DAG, our own included: the DAG is the
  record, so a fresh machine fed the same events in the same order reaches the same state.
  `send` only validates and remembers that the owed event is in flight, so `next_actions` does
  not offer it twice before its echo arrives.
- Well-formed events the table does not allow are refused (state unchanged) with a typed error;
  malformed content (or an accept/ack that contradicts the record) moves to BAD_REQUEST, where
  the other side owes fail "bad request"; anything after DONE or FAILED is ignored as late.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from s2s_node.core.canonical import JsonDict
from s2s_node.core.ids import EventId, is_server_user, server_of
from s2s_node.core.negotiation_messages import (
    Accept,
    Ack,
    ContentReason,
    Fail,
    FailError,
    Message,
    MessageKind,
    NegotiationContentError,
    Proposal,
    Reply,
    Side,
    VendorMessage,
    build_accept_content,
    build_ack_content,
    build_fail_content,
    build_reply_content,
    build_vendor_content,
    is_opening,
    parse_kind,
    parse_message,
    relation_of,
)
from s2s_node.core.negotiation_values import (
    Agreement,
    Direction,
    EventView,
    LocalNegotiationError,
    NegotiationError,
    NegotiationRule,
    NegotiationSettings,
    NegotiationSnapshot,
    NegotiationState,
    Outgoing,
    Receipt,
    ReceiptStatus,
    RemoteNegotiationError,
)
from s2s_node.core.negotiation_vendor import VendorMethod, VendorProgress, VendorRegistry
from s2s_node.core.upgrade_choice import (
    build_advertised_versions,
    compute_choice,
    is_acceptable_version,
)

S = NegotiationState
K = MessageKind
INITIATOR, RESPONDER = Side.INITIATOR, Side.RESPONDER

ENDED_STATES = frozenset({S.DONE, S.FAILED})
LIVE_STATES = frozenset(set(S) - ENDED_STATES - {S.IDLE})
# The states in which a negotiation competes with a concurrent opening (see negotiation_room).
CONTENDING_STATES = LIVE_STATES - {S.BAD_REQUEST, S.SUPERSEDED}

# (state, message kind, sender's side) -> next state. Anything absent is refused (or, in an
# ended state, ignored as late).
TRANSITIONS: Mapping[tuple[NegotiationState, MessageKind, Side], NegotiationState] = {
    # Standard flow, equal maps:  proposal, accept (responder), ack (initiator), ack (responder).
    # Standard flow, different:   proposal, reply, accept (initiator), ack (responder), ack (i.).
    (S.IDLE, K.PROPOSAL, INITIATOR): S.PROPOSED,
    (S.PROPOSED, K.REPLY, RESPONDER): S.REPLIED,
    (S.PROPOSED, K.ACCEPT, RESPONDER): S.RESPONDER_ACCEPTED,
    (S.REPLIED, K.ACCEPT, INITIATOR): S.INITIATOR_ACCEPTED,
    (S.RESPONDER_ACCEPTED, K.ACK, INITIATOR): S.INITIATOR_ACKED,
    (S.INITIATOR_ACKED, K.ACK, RESPONDER): S.DONE,
    (S.INITIATOR_ACCEPTED, K.ACK, RESPONDER): S.RESPONDER_ACKED,
    (S.RESPONDER_ACKED, K.ACK, INITIATOR): S.DONE,
    # Vendor flow: the opening, then continuations from either side (the method may settle).
    (S.IDLE, K.VENDOR, INITIATOR): S.VENDOR,
    (S.VENDOR, K.VENDOR, INITIATOR): S.VENDOR,
    (S.VENDOR, K.VENDOR, RESPONDER): S.VENDOR,
    # Either side may end a live negotiation with a fail.
    **{(state, K.FAIL, side): S.FAILED for state in LIVE_STATES for side in Side},
}


class Negotiation:
    """One negotiation, from its opening event to DONE or FAILED. See the module docstring."""

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
        self.state = S.IDLE
        self.role: Side | None = None
        self.opening: EventId | None = None
        self.opening_ts: int | None = None
        self.peer: str | None = None
        self.proposal: Proposal | None = None
        self.reply: Reply | None = None
        self.accept: Accept | None = None
        self.accept_event: EventId | None = None
        self.acks: tuple[Side, ...] = ()
        self.vendor_opening: VendorMessage | None = None
        self.vendor_progress: VendorProgress | None = None
        self.fail: Fail | None = None
        self.failed_by: Side | None = None
        self.bad_side: Side | None = None
        self.bad_error: NegotiationError | None = None
        self.superseded_by: EventId | None = None
        self._seen: set[str] = set()
        self._timed_out = False
        self._in_flight: Outgoing | None = None

    # -- reading

    @property
    def deadline_ms(self) -> int | None:
        """When the initiator gives up: the opening's origin_server_ts + timeout."""
        if self.opening_ts is None:
            return None
        return self.opening_ts + self.settings.timeout_ms

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def agreement(self) -> Agreement | None:
        """What was agreed, once DONE."""
        if self.state is not S.DONE or self.opening is None:
            return None
        if self.vendor_opening is not None and self.vendor_progress is not None:
            assert self.vendor_progress.version is not None
            return Agreement(
                opening=self.opening,
                version=self.vendor_progress.version,
                room_type=self.vendor_progress.room_type,
                method=self.vendor_opening.method,
            )
        assert self.accept is not None and self.proposal is not None
        return Agreement(
            opening=self.opening,
            version=self.accept.version,
            room_type=self.proposal.room_type,
            method=None,
        )

    def snapshot(self) -> NegotiationSnapshot:
        return NegotiationSnapshot(
            state=self.state,
            role=self.role,
            opening=self.opening,
            peer=self.peer,
            proposal=self.proposal,
            reply=self.reply,
            accept=self.accept,
            accept_event=self.accept_event,
            acks=self.acks,
            vendor_opening=self.vendor_opening,
            vendor_progress=self.vendor_progress,
            fail=self.fail,
            failed_by=self.failed_by,
            bad_side=self.bad_side,
            superseded_by=self.superseded_by,
        )

    def direction_of(self, sender: str) -> Direction:
        return Direction.OURS if server_of(sender) == self.settings.our_server else Direction.THEIRS

    def advertised_versions(self) -> dict[str, int]:
        """The map this node lists (support, downgrade guard and mode applied)."""
        return build_advertised_versions(
            self.settings.ratings,
            mode=self.settings.mode,
            current_version=self.current_version,
        )

    # -- receiving (the one trust boundary)

    def receive(self, event: EventView) -> Receipt:
        """Take one negotiation event from the DAG, ours or the peer's, in DAG order."""
        before = self.state
        direction = self.direction_of(event.sender)
        error_type: type[NegotiationError] = (
            LocalNegotiationError if direction is Direction.OURS else RemoteNegotiationError
        )

        def answer(status: ReceiptStatus, rule: NegotiationRule, detail: str) -> Receipt:
            error = error_type(rule, detail)
            return Receipt(
                event_id=event.event_id, status=status, before=before, after=before, error=error
            )

        if event.event_id in self._seen:
            return answer(ReceiptStatus.IGNORED, NegotiationRule.DUPLICATE, "seen before")
        kind = parse_kind(event.type)
        if kind is None:
            return answer(ReceiptStatus.REFUSED, NegotiationRule.NOT_NEGOTIATION_EVENT, event.type)
        if not is_server_user(event.sender):
            return answer(ReceiptStatus.REFUSED, NegotiationRule.NOT_SERVER_USER, event.sender)
        if self.state in ENDED_STATES:
            return answer(ReceiptStatus.IGNORED, NegotiationRule.ENDED, f"after {self.state.name}")
        if direction is Direction.OURS:
            self._in_flight = None
        # 1. The sender's side: the opening's sender is the initiator by definition.
        side = INITIATOR if self.role is None else self.role
        if self.role is not None and direction is Direction.THEIRS:
            side = self.role.other
        # 2. The table.
        target = TRANSITIONS.get((self.state, kind, side))
        if target is None or (self.role is None and not is_opening(event.type, event.content)):
            return answer(
                ReceiptStatus.REFUSED,
                NegotiationRule.NOT_ALLOWED,
                f"{kind.name} from the {side.value} in {self.state.name}",
            )
        # 3. Who may speak, and about what.
        if self.role is not None:
            peer = server_of(event.sender)
            if direction is Direction.THEIRS and self.peer not in (None, peer):
                return answer(ReceiptStatus.REFUSED, NegotiationRule.NOT_PEER, peer)
            if relation_of(event.content) != self.opening:
                return answer(
                    ReceiptStatus.REFUSED, NegotiationRule.NOT_RELATED, "cites another event"
                )
        self._seen.add(event.event_id)
        if self.role is None:
            self.role = INITIATOR if direction is Direction.OURS else RESPONDER
            self.opening = EventId(event.event_id)
            self.opening_ts = event.origin_server_ts
        if direction is Direction.THEIRS and self.peer is None:
            self.peer = server_of(event.sender)
        # 4. The content, alone and against the record.
        try:
            message = parse_message(event.type, event.content)
            target = self._apply(message, side, EventId(event.event_id), target)
        except NegotiationContentError as exc:
            error = error_type(NegotiationRule.MALFORMED, exc.detail, exc.reason)
            if self.state is not S.BAD_REQUEST:
                self.state, self.bad_side, self.bad_error = S.BAD_REQUEST, side, error
            return Receipt(
                event_id=event.event_id,
                status=ReceiptStatus.MALFORMED,
                before=before,
                after=self.state,
                error=error,
            )
        except _NoMethodError as exc:
            self._seen.discard(event.event_id)
            return answer(ReceiptStatus.REFUSED, NegotiationRule.NO_METHOD, str(exc))
        self.state = target
        return Receipt(
            event_id=event.event_id, status=ReceiptStatus.APPLIED, before=before, after=target
        )

    def _apply(
        self, message: Message, side: Side, event_id: EventId, target: NegotiationState
    ) -> NegotiationState:
        """Check `message` against the record and store it; the state to move to.

        Raises `NegotiationContentError` (malformed in context) before changing anything.
        """
        match message:
            case Proposal():
                self.proposal = message
            case Reply():
                self.reply = message
            case Accept():
                self._check_accept(message)
                self.accept, self.accept_event = message, event_id
            case Ack():
                if message.accept is not None and message.accept != self.accept_event:
                    raise NegotiationContentError(
                        ContentReason.WRONG_ACCEPT_REF, "ack cites another accept"
                    )
                self.acks = (*self.acks, side)
            case Fail():
                self.fail, self.failed_by = message, side
            case VendorMessage():
                return self._apply_vendor(message, side, target)
        return target

    def _check_accept(self, accept: Accept) -> None:
        # The accepted version must be the one the choice rule gives on the published maps
        # (equal maps when the responder decided without a reply). This also enforces "never
        # accepted": compute_choice skips unsupported and downgrade versions.
        assert self.proposal is not None
        theirs = self.reply.versions if self.reply is not None else self.proposal.versions
        expected = compute_choice(
            self.proposal.versions, theirs, current_version=self.current_version
        )
        if accept.version != expected:
            raise NegotiationContentError(
                ContentReason.WRONG_CHOICE,
                f"accepted {accept.version!r}, the choice rule gives {expected!r}",
            )

    def _apply_vendor(
        self, message: VendorMessage, side: Side, target: NegotiationState
    ) -> NegotiationState:
        if self.vendor_opening is None:
            # The opening: a method unknown here is not an error yet; the responder owes fail
            # "invalid method" (next_actions), the initiator cannot start one (start_vendor).
            method = self.registry.get(message.method)
            progress = method.begin(message) if method is not None else None
            self.vendor_opening, self.vendor_progress = message, progress
        else:
            if message.method != self.vendor_opening.method:
                raise NegotiationContentError(
                    ContentReason.METHOD_MISMATCH, f"{message.method!r} in another method's run"
                )
            method = self.registry.get(message.method)
            if method is None or self.vendor_progress is None:
                raise _NoMethodError(message.method)
            self.vendor_progress = method.advance(
                self.vendor_opening, self.vendor_progress, message, side
            )
        progress = self.vendor_progress
        # The one state-triggered transition: a settled method ends the negotiation, provided
        # its version passes the same support and downgrade guard as the standard flow.
        if progress is not None and progress.settled:
            if progress.version is None or not is_acceptable_version(
                progress.version, current_version=self.current_version
            ):
                raise NegotiationContentError(
                    ContentReason.WRONG_CHOICE, f"vendor method settled on {progress.version!r}"
                )
            return S.DONE
        return target

    # -- what we owe, and sending it

    def next_actions(self) -> tuple[Outgoing, ...]:
        """The events this node owes now (empty while the last one is in flight)."""
        if self.role is None or self.opening is None or self.state in ENDED_STATES:
            return ()
        if self._in_flight is not None:
            return ()
        return self._owed(self.role, self.opening)

    def _owed(self, us: Side, opening: EventId) -> tuple[Outgoing, ...]:
        state = self.state
        if state is S.SUPERSEDED:
            return self._fail_if(us is INITIATOR, FailError.SUPERSEDED, "a concurrent proposal won")
        if state is S.BAD_REQUEST:
            detail = self.bad_error.detail if self.bad_error is not None else None
            return self._fail_if(us is not self.bad_side, FailError.BAD_REQUEST, detail)
        if self._timed_out and us is INITIATOR:
            return self._fail_if(True, FailError.TIMEOUT, "no answer before the deadline")
        if state is S.PROPOSED and us is RESPONDER:
            assert self.proposal is not None
            ours = self.advertised_versions()
            if ours == dict(self.proposal.versions):
                # Equal maps: decide at once.
                choice = compute_choice(ours, ours, current_version=self.current_version)
                if choice is not None:
                    return (self._outgoing(K.ACCEPT, build_accept_content(opening, choice)),)
            return (self._outgoing(K.REPLY, build_reply_content(opening, ours)),)
        if state is S.REPLIED and us is INITIATOR:
            assert self.proposal is not None and self.reply is not None
            choice = compute_choice(
                self.proposal.versions,
                self.reply.versions,
                current_version=self.current_version,
            )
            if choice is None:
                return self._fail_if(True, FailError.NO_MATCH, None)
            return (self._outgoing(K.ACCEPT, build_accept_content(opening, choice)),)
        if (state, us) in _ACK_OWED:
            assert self.accept_event is not None
            return (self._outgoing(K.ACK, build_ack_content(opening, self.accept_event)),)
        if state is S.VENDOR:
            return self._owed_vendor(us, opening)
        return ()

    def _owed_vendor(self, us: Side, opening: EventId) -> tuple[Outgoing, ...]:
        assert self.vendor_opening is not None
        method = self.registry.get(self.vendor_opening.method)
        if method is None or self.vendor_progress is None:
            return self._fail_if(
                us is RESPONDER, FailError.INVALID_METHOD, self.vendor_opening.method
            )
        return tuple(
            self._outgoing(K.VENDOR, build_vendor_content(method.method, fields, opening))
            for fields in method.actions(self.vendor_opening, self.vendor_progress, us)
        )

    def _fail_if(self, owed: bool, error: FailError, reason: str | None) -> tuple[Outgoing, ...]:
        if not owed:
            return ()
        assert self.opening is not None
        return (self._outgoing(K.FAIL, build_fail_content(self.opening, error, reason)),)

    def _outgoing(self, kind: MessageKind, content: JsonDict) -> Outgoing:
        return Outgoing(type=kind.value, content=content, opening=self.opening)

    def send(self, outgoing: Outgoing) -> None:
        """Validate an event we are about to send; remember it as in flight until its echo.

        Raises `LocalNegotiationError` if the table, the schema or the record forbids it.
        """
        if self.role is None or self.opening is None:
            raise LocalNegotiationError(NegotiationRule.NOT_ALLOWED, "no opening yet")
        if self.state in ENDED_STATES:
            raise LocalNegotiationError(NegotiationRule.ENDED, f"after {self.state.name}")
        if outgoing.opening != self.opening:
            raise LocalNegotiationError(NegotiationRule.WRONG_NEGOTIATION, str(outgoing.opening))
        kind = parse_kind(outgoing.type)
        if kind is None:
            raise LocalNegotiationError(NegotiationRule.NOT_NEGOTIATION_EVENT, outgoing.type)
        if (self.state, kind, self.role) not in TRANSITIONS:
            raise LocalNegotiationError(
                NegotiationRule.NOT_ALLOWED,
                f"{kind.name} from the {self.role.value} in {self.state.name}",
            )
        try:
            message = parse_message(outgoing.type, outgoing.content)
            if relation_of(outgoing.content) != self.opening:
                raise NegotiationContentError(ContentReason.BAD_RELATES_TO, "another opening")
            if isinstance(message, Accept):
                self._check_accept(message)
            if isinstance(message, Ack) and message.accept not in (None, self.accept_event):
                raise NegotiationContentError(ContentReason.WRONG_ACCEPT_REF, "another accept")
        except NegotiationContentError as exc:
            raise LocalNegotiationError(NegotiationRule.MALFORMED, exc.detail, exc.reason) from None
        if isinstance(message, VendorMessage):
            assert self.vendor_opening is not None
            if message.method != self.vendor_opening.method:
                raise LocalNegotiationError(
                    NegotiationRule.MALFORMED, message.method, ContentReason.METHOD_MISMATCH
                )
            if self.registry.get(message.method) is None:
                raise LocalNegotiationError(NegotiationRule.NO_METHOD, message.method)
        self._in_flight = outgoing

    # -- time, and the room arbiter's decision

    def on_timeout(self, now_ms: int) -> tuple[Outgoing, ...]:
        """Past the deadline, the initiator owes fail "timeout"; returns `next_actions()`."""
        deadline = self.deadline_ms
        if (
            self.role is INITIATOR
            and self.state in LIVE_STATES
            and deadline is not None
            and now_ms >= deadline
        ):
            self._timed_out = True
        return self.next_actions()

    def mark_superseded(self, winner: EventId) -> None:
        """The room arbiter's verdict: a concurrent opening that sorts first won."""
        if self.state not in CONTENDING_STATES:
            raise LocalNegotiationError(
                NegotiationRule.NOT_ALLOWED, f"cannot supersede in {self.state.name}"
            )
        self.state, self.superseded_by = S.SUPERSEDED, winner
        self._in_flight = None


# (state, our side) in which we owe an ack, and to which accept.
_ACK_OWED = frozenset(
    {
        (S.RESPONDER_ACCEPTED, INITIATOR),
        (S.INITIATOR_ACCEPTED, RESPONDER),
        (S.INITIATOR_ACKED, RESPONDER),
        (S.RESPONDER_ACKED, INITIATOR),
    }
)


class _NoMethodError(Exception):
    """A vendor continuation for a method this node has not registered (refused, not bad)."""


def replay(
    events: Iterable[EventView],
    *,
    settings: NegotiationSettings,
    current_version: str,
    registry: VendorRegistry | None = None,
) -> Negotiation:
    """A fresh machine fed `events` in order (the rebuild after a restart)."""
    negotiation = Negotiation(settings=settings, current_version=current_version, registry=registry)
    for event in events:
        negotiation.receive(event)
    return negotiation


__all__ = [
    "CONTENDING_STATES",
    "ENDED_STATES",
    "LIVE_STATES",
    "TRANSITIONS",
    "Agreement",
    "Direction",
    "EventView",
    "LocalNegotiationError",
    "Negotiation",
    "NegotiationError",
    "NegotiationRule",
    "NegotiationSettings",
    "NegotiationSnapshot",
    "NegotiationState",
    "Outgoing",
    "Receipt",
    "ReceiptStatus",
    "RemoteNegotiationError",
    "Side",
    "VendorMethod",
]
