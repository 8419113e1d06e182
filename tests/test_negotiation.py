"""The negotiation machine, exhaustively: every state x every event type x direction (and both
roles) either moves to the state `TRANSITIONS` declares or is refused with a typed error; the
same for `send`; and random event sequences are deterministic (rebuild = same state)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from negotiation_fixtures import (
    PIN_REGISTRY,
    SERVER_A,
    SERVER_B,
    Ev,
    make_event,
    settings,
)

from s2s_node.core.negotiation import (
    CONTENDING_STATES,
    ENDED_STATES,
    LIVE_STATES,
    TRANSITIONS,
    Direction,
    LocalNegotiationError,
    Negotiation,
    NegotiationError,
    NegotiationRule,
    NegotiationState,
    Outgoing,
    ReceiptStatus,
    RemoteNegotiationError,
    replay,
)
from s2s_node.core.negotiation_messages import MessageKind, Side
from s2s_node.core.upgrade_choice import compute_choice

S = NegotiationState
K = MessageKind
INIT, RESP = Side.INITIATOR, Side.RESPONDER
RATINGS = {"12": 100, "11": 50}
PIN = "org.example.pin"

# How to reach each state: (sender side, kind, content without m.relates_to). The accept/ack
# contents are filled from the record as the path is walked.
PATHS: dict[NegotiationState, list[tuple[Side, MessageKind, dict[str, Any]]]] = {
    S.IDLE: [],
    S.PROPOSED: [(INIT, K.PROPOSAL, {"versions": RATINGS})],
    S.REPLIED: [
        (INIT, K.PROPOSAL, {"versions": RATINGS}),
        (RESP, K.REPLY, {"versions": {"11": 60}}),
    ],
    S.RESPONDER_ACCEPTED: [(INIT, K.PROPOSAL, {"versions": RATINGS}), (RESP, K.ACCEPT, {})],
    S.INITIATOR_ACKED: [
        (INIT, K.PROPOSAL, {"versions": RATINGS}),
        (RESP, K.ACCEPT, {}),
        (INIT, K.ACK, {}),
    ],
    S.INITIATOR_ACCEPTED: [
        (INIT, K.PROPOSAL, {"versions": RATINGS}),
        (RESP, K.REPLY, {"versions": {"11": 60}}),
        (INIT, K.ACCEPT, {}),
    ],
    S.RESPONDER_ACKED: [
        (INIT, K.PROPOSAL, {"versions": RATINGS}),
        (RESP, K.REPLY, {"versions": {"11": 60}}),
        (INIT, K.ACCEPT, {}),
        (RESP, K.ACK, {}),
    ],
    S.DONE: [
        (INIT, K.PROPOSAL, {"versions": RATINGS}),
        (RESP, K.ACCEPT, {}),
        (INIT, K.ACK, {}),
        (RESP, K.ACK, {}),
    ],
    S.FAILED: [(INIT, K.PROPOSAL, {"versions": RATINGS}), (RESP, K.FAIL, {"error": "no match"})],
    S.VENDOR: [(INIT, K.VENDOR, {"method": PIN, "version": "12"})],
    S.BAD_REQUEST: [(INIT, K.PROPOSAL, {"versions": {"12": 500}})],
    S.SUPERSEDED: [(INIT, K.PROPOSAL, {"versions": RATINGS})],
}


class Walk:
    """A machine for server A in role `role`, and a counter for fresh event IDs."""

    def __init__(self, role: Side) -> None:
        self.role = role
        self.machine = Negotiation(
            settings=settings(SERVER_A, RATINGS), current_version="10", registry=PIN_REGISTRY
        )
        self.count = 0
        self.events: list[Ev] = []

    def server(self, side: Side) -> str:
        return SERVER_A if side is self.role else SERVER_B

    def content(self, kind: MessageKind, base: dict[str, Any]) -> dict[str, Any]:
        m = self.machine
        content = dict(base)
        if kind is K.ACCEPT and "version" not in content:
            choice = None
            if m.proposal is not None:
                theirs = m.reply.versions if m.reply is not None else m.proposal.versions
                choice = compute_choice(m.proposal.versions, theirs, current_version="10")
            content["version"] = choice or "12"
        if kind is K.ACK and m.accept_event is not None:
            content["accept"] = m.accept_event
        is_vendor_opening = kind is K.VENDOR and m.opening is None
        if kind is not K.PROPOSAL and not is_vendor_opening and m.opening is not None:
            content["m.relates_to"] = {"rel_type": "m.reference", "event_id": m.opening}
        return content

    def event(self, side: Side, kind: MessageKind, base: dict[str, Any]) -> Ev:
        self.count += 1
        event = make_event(
            f"walk:{self.count}", kind.value, self.server(side), self.content(kind, base)
        )
        self.events.append(event)
        return event


def walk_to(state: NegotiationState, role: Side) -> Walk:
    walk = Walk(role)
    for side, kind, base in PATHS[state]:
        walk.machine.receive(walk.event(side, kind, base))
    if state is S.SUPERSEDED:
        walk.machine.mark_superseded(walk.event(RESP, K.PROPOSAL, {}).event_id)  # type: ignore[arg-type]
    assert walk.machine.state is state
    assert state is S.IDLE or walk.machine.role is role
    return walk


def probe_content(kind: MessageKind, state: NegotiationState) -> dict[str, Any]:
    """A well-formed probe of `kind` (neutral for a vendor method in progress)."""
    if kind is K.PROPOSAL:
        return {"versions": {"12": 100}}
    if kind is K.REPLY:
        return {"versions": {"11": 5}}
    if kind is K.FAIL:
        return {"error": "timeout"}
    if kind is K.VENDOR:
        return {"method": PIN, "version": "12"} if state is S.IDLE else {"method": PIN, "note": 1}
    return {}


CROSS = list(itertools.product(list(S), list(K), list(Direction), [INIT, RESP]))


@pytest.mark.parametrize(
    ("state", "kind", "direction", "role"),
    CROSS,
    ids=[f"{s.name}-{k.name}-{d.name}-we-{r.name}" for s, k, d, r in CROSS],
)
def test_every_state_event_and_direction(
    state: NegotiationState, kind: MessageKind, direction: Direction, role: Side
) -> None:
    walk = walk_to(state, role)
    # In IDLE the sender of the opening is the initiator by definition.
    sender_side = INIT if state is S.IDLE else (role if direction is Direction.OURS else role.other)
    server_side = role if direction is Direction.OURS else role.other
    event = walk.event(server_side, kind, probe_content(kind, state))
    receipt = walk.machine.receive(event)
    target = TRANSITIONS.get((state, kind, sender_side))
    error_type = LocalNegotiationError if direction is Direction.OURS else RemoteNegotiationError
    if state in ENDED_STATES:
        assert receipt.status is ReceiptStatus.IGNORED
        assert receipt.error is not None and receipt.error.reason is NegotiationRule.ENDED
        assert walk.machine.state is state
    elif target is None:
        assert receipt.status is ReceiptStatus.REFUSED
        assert isinstance(receipt.error, error_type)
        assert receipt.error.reason is NegotiationRule.NOT_ALLOWED
        assert walk.machine.state is state
    else:
        assert receipt.status is ReceiptStatus.APPLIED, receipt.error
        assert receipt.error is None
        assert receipt.after is target and walk.machine.state is target
    assert walk.machine.state in set(S)


SEND_CROSS = list(itertools.product(list(S), list(K), [INIT, RESP]))


@pytest.mark.parametrize(
    ("state", "kind", "role"),
    SEND_CROSS,
    ids=[f"{s.name}-{k.name}-we-{r.name}" for s, k, r in SEND_CROSS],
)
def test_send_validates_against_the_table(
    state: NegotiationState, kind: MessageKind, role: Side
) -> None:
    walk = walk_to(state, role)
    content = walk.content(kind, probe_content(kind, state))
    outgoing = Outgoing(type=kind.value, content=content, opening=walk.machine.opening)
    allowed = (state, kind, role) in TRANSITIONS and state is not S.IDLE
    if allowed:
        walk.machine.send(outgoing)
        assert walk.machine.next_actions() == ()  # in flight until its echo
        return
    with pytest.raises(LocalNegotiationError) as caught:
        walk.machine.send(outgoing)
    expected = NegotiationRule.ENDED if state in ENDED_STATES else NegotiationRule.NOT_ALLOWED
    assert caught.value.reason is expected


def test_table_shape() -> None:
    targets = set(TRANSITIONS.values())
    assert targets <= set(S)
    # Every live state can be ended by a fail from either side; nothing leaves an ended state.
    for state in LIVE_STATES:
        assert TRANSITIONS[(state, K.FAIL, INIT)] is S.FAILED
        assert TRANSITIONS[(state, K.FAIL, RESP)] is S.FAILED
    assert not [key for key in TRANSITIONS if key[0] in ENDED_STATES]
    # Only the initiator opens.
    assert not [key for key in TRANSITIONS if key[0] is S.IDLE and key[2] is RESP]
    assert CONTENDING_STATES < LIVE_STATES


def test_base_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        NegotiationError(NegotiationRule.NOT_ALLOWED, "x")


# -- determinism over random sequences (h2-style property test)

STEPS = st.lists(
    st.tuples(st.sampled_from([INIT, RESP]), st.sampled_from(list(K)), st.booleans()),
    max_size=8,
)


@hsettings(max_examples=200, deadline=None)
@given(role=st.sampled_from([INIT, RESP]), steps=STEPS)
def test_random_sequences_rebuild_to_the_same_state(
    role: Side, steps: list[tuple[Side, MessageKind, bool]]
) -> None:
    walk = Walk(role)
    for side, kind, well_formed in steps:
        base = probe_content(kind, walk.machine.state)
        if not well_formed:
            base = {**base, "unexpected": True}
        before = walk.machine.state
        receipt = walk.machine.receive(walk.event(side, kind, base))
        # Every receipt is one of the four outcomes, and only APPLIED/MALFORMED move.
        if receipt.status in (ReceiptStatus.REFUSED, ReceiptStatus.IGNORED):
            assert walk.machine.state is before and receipt.error is not None
        if receipt.status is ReceiptStatus.MALFORMED:
            assert walk.machine.state is S.BAD_REQUEST
    rebuilt = replay(
        walk.events,
        settings=settings(SERVER_A, RATINGS),
        current_version="10",
        registry=PIN_REGISTRY,
    )
    assert rebuilt.snapshot() == walk.machine.snapshot()
    assert rebuilt.next_actions() == walk.machine.next_actions()


def test_a_continuation_cannot_open() -> None:
    walk = Walk(INIT)
    relates = {
        "m.relates_to": {
            "rel_type": "m.reference",
            "event_id": walk.event(INIT, K.PROPOSAL, {}).event_id,
        }
    }
    receipt = walk.machine.receive(walk.event(RESP, K.VENDOR, {"method": PIN, **relates}))
    assert receipt.status is ReceiptStatus.REFUSED
    assert receipt.error is not None and receipt.error.reason is NegotiationRule.NOT_ALLOWED
    assert walk.machine.state is S.IDLE and walk.machine.role is None
