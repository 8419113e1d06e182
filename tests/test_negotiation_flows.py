"""Whole negotiations between two nodes' `RoomNegotiations` sharing one simulated DAG: the
standard flows, no match, strict mode, vendor methods, crossing proposals, timeout, malformed
and late events, and rebuilding from the event list."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from negotiation_fixtures import (
    PIN_REGISTRY,
    SERVER_A,
    SERVER_B,
    SERVER_C,
    T0,
    Dag,
    Ev,
    make_event,
    settings,
)
from room_fixtures import RoomFixture, server_key

from s2s_node.core.negotiation import (
    EventView,
    LocalNegotiationError,
    Negotiation,
    NegotiationRule,
    NegotiationState,
    ReceiptStatus,
)
from s2s_node.core.negotiation_messages import ContentReason, Side
from s2s_node.core.negotiation_room import RoomNegotiations
from s2s_node.core.negotiation_vendor import VendorRegistry
from s2s_node.core.upgrade_choice import UpgradeMode

S = NegotiationState
PROPOSAL, REPLY, ACCEPT, ACK, FAIL, VENDOR = (
    "m.s2s.upgrade.proposal",
    "m.s2s.upgrade.reply",
    "m.s2s.upgrade.accept",
    "m.s2s.upgrade.ack",
    "m.s2s.upgrade.fail",
    "m.s2s.upgrade",
)


def room(
    server: str,
    ratings: Mapping[str, int],
    *,
    mode: UpgradeMode = UpgradeMode.COMPATIBLE,
    current: str = "10",
    registry: VendorRegistry | None = None,
    timeout_ms: int = 60_000,
) -> RoomNegotiations:
    return RoomNegotiations(
        settings=settings(server, ratings, mode=mode, timeout_ms=timeout_ms),
        current_version=current,
        registry=registry,
    )


def trace(dag: Dag) -> list[tuple[str, str]]:
    """(type, sending server) of every event in the DAG."""
    return [(e.type, e.sender[2:]) for e in dag.log]


def only(dag: Dag, server: str) -> Negotiation:
    (negotiation,) = dag.node(server).room.negotiations
    return negotiation


def rebuilt(dag: Dag, server: str, template: RoomNegotiations) -> RoomNegotiations:
    fresh = RoomNegotiations(
        settings=template.settings,
        current_version=template.current_version,
        registry=template.registry,
    )
    for event in dag.log:
        fresh.receive(event)
    return fresh


def assert_rebuilds(dag: Dag) -> None:
    for server, node in dag.nodes.items():
        fresh = rebuilt(dag, server, node.room)
        # The same negotiations in the same states (insertion order may differ when two
        # openings crossed and this node saw them in the other order).
        assert {n.opening: n.snapshot() for n in fresh.negotiations} == {
            n.opening: n.snapshot() for n in node.room.negotiations
        }
        assert fresh.next_actions() == ()


def test_identical_lists_proposal_accept_ack_ack() -> None:
    dag = Dag(room(SERVER_A, {"12": 100, "11": 50}), room(SERVER_B, {"11": 50, "12": 100}))
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose(room_type="m.s2s"))
    dag.pump()
    assert trace(dag) == [
        (PROPOSAL, SERVER_A),
        (ACCEPT, SERVER_B),
        (ACK, SERVER_A),
        (ACK, SERVER_B),
    ]
    for server in (SERVER_A, SERVER_B):
        negotiation = only(dag, server)
        assert negotiation.state is S.DONE
        agreement = negotiation.agreement
        assert agreement is not None
        assert (agreement.version, agreement.room_type) == ("12", "m.s2s")
    assert only(dag, SERVER_A).role is Side.INITIATOR
    assert dag.node(SERVER_B).room.agreements()[0].opening == dag.log[0].event_id
    assert dag.log[2].content["accept"] == dag.log[1].event_id
    assert_rebuilds(dag)


def test_different_lists_proposal_reply_accept_ack_ack() -> None:
    dag = Dag(room(SERVER_A, {"12": 100, "11": 50}), room(SERVER_B, {"12": 10, "11": 60}))
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.pump()
    assert trace(dag) == [
        (PROPOSAL, SERVER_A),
        (REPLY, SERVER_B),
        (ACCEPT, SERVER_A),
        (ACK, SERVER_B),
        (ACK, SERVER_A),
    ]
    assert dag.log[1].content["versions"] == {"12": 10, "11": 60}
    assert dag.log[2].content["version"] == "11"
    for server in (SERVER_A, SERVER_B):
        assert only(dag, server).state is S.DONE
        assert only(dag, server).agreement.version == "11"  # type: ignore[union-attr]
    assert_rebuilds(dag)


def test_no_match() -> None:
    dag = Dag(room(SERVER_A, {"12": 100, "11": 50}), room(SERVER_B, {"10": 100}))
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.pump()
    assert trace(dag) == [(PROPOSAL, SERVER_A), (REPLY, SERVER_B), (FAIL, SERVER_A)]
    assert dag.log[-1].content["error"] == "no match"
    for server in (SERVER_A, SERVER_B):
        negotiation = only(dag, server)
        assert negotiation.state is S.FAILED and negotiation.agreement is None
        assert negotiation.failed_by is Side.INITIATOR
    assert_rebuilds(dag)


@pytest.mark.parametrize("strict_side", [SERVER_A, SERVER_B])
def test_strict_mode_against_an_older_peer_is_no_match(strict_side: str) -> None:
    older = {"11": 100, "10": 50}
    strict = {"12": 100, "11": 90}
    a_ratings, b_ratings = (strict, older) if strict_side == SERVER_A else (older, strict)
    a_mode, b_mode = (
        (UpgradeMode.STRICT, UpgradeMode.COMPATIBLE)
        if strict_side == SERVER_A
        else (UpgradeMode.COMPATIBLE, UpgradeMode.STRICT)
    )
    dag = Dag(room(SERVER_A, a_ratings, mode=a_mode), room(SERVER_B, b_ratings, mode=b_mode))
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.pump()
    strict_event = dag.log[0] if strict_side == SERVER_A else dag.log[1]
    assert strict_event.content["versions"] == {"12": 100}
    assert trace(dag)[-1] == (FAIL, SERVER_A)
    assert dag.log[-1].content["error"] == "no match"


def test_downgrade_guard_never_lists_older_versions() -> None:
    dag = Dag(
        room(SERVER_A, {"12": 10, "10": 100}, current="11"),
        room(SERVER_B, {"12": 10, "10": 100}, current="11"),
    )
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.pump()
    assert dag.log[0].content["versions"] == {"12": 10}
    assert only(dag, SERVER_B).agreement.version == "12"  # type: ignore[union-attr]


def test_unknown_vendor_method_fails_invalid_method() -> None:
    dag = Dag(room(SERVER_A, {"12": 100}, registry=PIN_REGISTRY), room(SERVER_B, {"12": 100}))
    dag.emit(SERVER_A, dag.node(SERVER_A).room.start_vendor("org.example.pin", {"version": "12"}))
    dag.pump()
    assert trace(dag) == [(VENDOR, SERVER_A), (FAIL, SERVER_B)]
    assert dag.log[-1].content["error"] == "invalid method"
    assert {only(dag, s).state for s in (SERVER_A, SERVER_B)} == {S.FAILED}
    assert_rebuilds(dag)


def test_registered_vendor_method_runs_to_done() -> None:
    dag = Dag(
        room(SERVER_A, {"12": 100}, registry=PIN_REGISTRY),
        room(SERVER_B, {"12": 100}, registry=PIN_REGISTRY),
    )
    dag.emit(SERVER_A, dag.node(SERVER_A).room.start_vendor("org.example.pin", {"version": "11"}))
    dag.pump()
    assert trace(dag) == [(VENDOR, SERVER_A), (VENDOR, SERVER_B)]
    assert dag.log[1].content["agree"] is True
    for server in (SERVER_A, SERVER_B):
        agreement = only(dag, server).agreement
        assert agreement is not None
        assert (agreement.version, agreement.method) == ("11", "org.example.pin")
    assert_rebuilds(dag)


def test_vendor_method_settling_on_a_downgrade_is_a_bad_request() -> None:
    dag = Dag(
        room(SERVER_A, {"12": 100}, registry=PIN_REGISTRY, current="11"),
        room(SERVER_B, {"12": 100}, registry=PIN_REGISTRY, current="11"),
    )
    # A's node would not start it (begin accepts any version string), so it arrives as if
    # from a careless peer: B opens with version 10 in a v11 room.
    opening = make_event("v", VENDOR, SERVER_B, {"method": "org.example.pin", "version": "10"})
    dag.deliver(opening)
    dag.pump()
    assert trace(dag) == [(VENDOR, SERVER_A), (FAIL, SERVER_B)]
    assert dag.log[-1].content["error"] == "bad request"
    assert only(dag, SERVER_A).state is S.FAILED


def test_both_propose_at_once_the_first_by_ts_and_id_wins() -> None:
    dag = Dag(room(SERVER_A, {"12": 100}), room(SERVER_B, {"12": 100}))
    # Each builds its proposal before seeing the other's; each sees its own first.
    p_a = dag.emit(SERVER_A, dag.node(SERVER_A).room.propose(), deliver=False)
    p_b = dag.emit(SERVER_B, dag.node(SERVER_B).room.propose(), deliver=False)
    dag.deliver(p_a, to=(SERVER_A,))
    dag.deliver(p_b, to=(SERVER_B,))
    dag.deliver(p_b, to=(SERVER_A,))
    dag.deliver(p_a, to=(SERVER_B,))
    winner, loser = sorted([p_a, p_b], key=lambda e: (e.origin_server_ts, e.event_id))
    dag.pump()
    for server in (SERVER_A, SERVER_B):
        negotiations = dag.node(server).room
        lost = negotiations.get(loser.event_id)
        won = negotiations.get(winner.event_id)
        assert lost is not None and won is not None
        assert lost.state is S.FAILED
        assert lost.fail is not None and lost.fail.error.value == "superseded"
        assert lost.failed_by is Side.INITIATOR
        assert lost.superseded_by == winner.event_id
        assert won.state is S.DONE
    fails = [e for e in dag.log if e.type == FAIL]
    assert [f.sender for f in fails] == [loser.sender]
    assert_rebuilds(dag)


def test_crossing_proposals_resolve_the_same_with_a_later_ts_winner_id() -> None:
    # B's proposal has the earlier timestamp this time: B wins on both nodes.
    dag = Dag(room(SERVER_A, {"12": 100}), room(SERVER_B, {"12": 100, "11": 1}))
    p_b = make_event("pb", PROPOSAL, SERVER_B, {"versions": {"12": 100, "11": 1}}, ts=T0)
    dag.node(SERVER_B).room.propose()
    p_a = dag.emit(SERVER_A, dag.node(SERVER_A).room.propose(), deliver=False)
    dag.log.insert(0, p_b)
    dag.deliver(p_a, to=(SERVER_A,))
    dag.deliver(p_b, to=(SERVER_B,))
    dag.deliver(p_b, to=(SERVER_A,))
    dag.deliver(p_a, to=(SERVER_B,))
    assert dag.node(SERVER_A).room.get(p_a.event_id).state is S.SUPERSEDED  # type: ignore[union-attr]
    dag.pump()
    assert dag.node(SERVER_A).room.get(p_b.event_id).state is S.DONE  # type: ignore[union-attr]
    assert dag.node(SERVER_B).room.get(p_a.event_id).state is S.FAILED  # type: ignore[union-attr]


def test_timeout_initiator_fails_it() -> None:
    dag = Dag(room(SERVER_A, {"12": 100}, timeout_ms=5_000), room(SERVER_B, {"12": 100}))
    proposal = dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.pump(silent=frozenset({SERVER_B}))
    a = dag.node(SERVER_A).room
    deadline = proposal.origin_server_ts + 5_000
    assert a.next_deadline_ms() == deadline
    assert a.on_timeout(deadline - 1) == ()
    # The responder never fails on time; only the initiator does.
    assert dag.node(SERVER_B).room.on_timeout(deadline + 10**6) != ()  # it still owes its accept
    (fail,) = a.on_timeout(deadline)
    assert fail.content["error"] == "timeout"
    dag.emit(SERVER_A, fail)
    assert {only(dag, s).state for s in (SERVER_A, SERVER_B)} == {S.FAILED}
    assert a.next_deadline_ms() is None
    # The responder's answer, late: ignored on both nodes, reported.
    late = make_event(
        "late",
        ACCEPT,
        SERVER_B,
        {
            "version": "12",
            "m.relates_to": {"rel_type": "m.reference", "event_id": proposal.event_id},
        },
    )
    dag.deliver(late)
    for server in (SERVER_A, SERVER_B):
        receipt = dag.node(server).receipts[-1]
        assert receipt.status is ReceiptStatus.IGNORED
        assert receipt.error is not None and receipt.error.reason is NegotiationRule.ENDED
    assert dag.node(SERVER_B).room.next_actions() == ()


def test_malformed_proposal_gets_fail_bad_request() -> None:
    dag = Dag(room(SERVER_A, {"12": 100}), room(SERVER_B, {"12": 100}))
    bad = make_event("bad", PROPOSAL, SERVER_B, {"versions": {"12": 101}})
    dag.deliver(bad)
    for server in (SERVER_A, SERVER_B):
        receipt = dag.node(server).receipts[-1]
        assert receipt.status is ReceiptStatus.MALFORMED
        assert receipt.error is not None
        assert receipt.error.content_reason is ContentReason.BAD_RATING
    dag.pump()
    assert trace(dag) == [(FAIL, SERVER_A)]
    assert dag.log[-1].content["error"] == "bad request"
    assert {only(dag, s).state for s in (SERVER_A, SERVER_B)} == {S.FAILED}
    # A malformed opening does not block a new proposal.
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.pump()
    assert dag.node(SERVER_B).room.agreements()


def test_accept_contradicting_the_choice_is_a_bad_request() -> None:
    dag = Dag(room(SERVER_A, {"12": 100, "11": 50}), room(SERVER_B, {"12": 100, "11": 50}))
    proposal = dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    relation = {"rel_type": "m.reference", "event_id": proposal.event_id}
    dag.deliver(make_event("wrong", ACCEPT, SERVER_B, {"version": "11", "m.relates_to": relation}))
    receipt = dag.node(SERVER_A).receipts[-1]
    assert receipt.error is not None
    assert receipt.error.content_reason is ContentReason.WRONG_CHOICE
    (fail,) = dag.node(SERVER_A).room.next_actions()
    assert fail.content["error"] == "bad request"


def test_malformed_reply_answered_by_the_initiator() -> None:
    dag = Dag(room(SERVER_A, {"12": 100}), room(SERVER_B, {"11": 100}))
    proposal = dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    relation = {"rel_type": "m.reference", "event_id": proposal.event_id}
    dag.deliver(
        make_event("r", REPLY, SERVER_B, {"versions": {"11": True}, "m.relates_to": relation})
    )
    assert dag.node(SERVER_B).room.next_actions() == ()
    dag.pump()
    assert trace(dag)[-1] == (FAIL, SERVER_A)


def test_late_and_stray_events_are_reported_not_applied() -> None:
    dag = Dag(room(SERVER_A, {"12": 100}), room(SERVER_B, {"12": 100}))
    proposal = dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.pump()
    relation = {"rel_type": "m.reference", "event_id": proposal.event_id}
    late = make_event("f", FAIL, SERVER_B, {"error": "timeout", "m.relates_to": relation})
    orphan = make_event(
        "o",
        ACK,
        SERVER_B,
        {"m.relates_to": {"rel_type": "m.reference", "event_id": late.event_id}},
    )
    other = make_event("x", "m.room.message", SERVER_B, {"body": "hi"})
    a = dag.node(SERVER_A).room
    assert a.receive(late).status is ReceiptStatus.IGNORED
    assert a.receive(orphan).error.reason is NegotiationRule.NOT_RELATED  # type: ignore[union-attr]
    assert a.receive(other).error.reason is NegotiationRule.NOT_NEGOTIATION_EVENT  # type: ignore[union-attr]
    duplicate = a.receive(dag.log[1])
    assert duplicate.error is not None and duplicate.error.reason is NegotiationRule.DUPLICATE
    assert only(dag, SERVER_A).state is S.DONE


def test_senders_must_be_the_peer_server_user() -> None:
    negotiation = Negotiation(settings=settings(SERVER_A, {"12": 100}), current_version="10")
    proposal = make_event("p", PROPOSAL, SERVER_B, {"versions": {"12": 100}})
    relation = {"rel_type": "m.reference", "event_id": proposal.event_id}
    negotiation.receive(proposal)
    intruder = make_event("c", FAIL, SERVER_C, {"error": "timeout", "m.relates_to": relation})
    assert negotiation.receive(intruder).error.reason is NegotiationRule.NOT_PEER  # type: ignore[union-attr]
    person = Ev(
        event_id=make_event("u", FAIL, SERVER_B, {}).event_id,
        type=FAIL,
        sender=f"@bob:{SERVER_B}",
        origin_server_ts=T0,
        content={"error": "timeout", "m.relates_to": relation},
    )
    assert negotiation.receive(person).error.reason is NegotiationRule.NOT_SERVER_USER  # type: ignore[union-attr]
    assert negotiation.state is S.PROPOSED


def test_local_refusals() -> None:
    a = room(SERVER_A, {"12": 100})
    first = a.propose()
    with pytest.raises(LocalNegotiationError) as caught:
        a.propose()
    assert caught.value.reason is NegotiationRule.IN_PROGRESS
    a.send(first)
    a.forget_opening_in_flight()
    with pytest.raises(LocalNegotiationError) as caught:
        room(SERVER_A, {"11": 100}, current="12").propose()
    assert caught.value.reason is NegotiationRule.NOTHING_TO_PROPOSE
    with pytest.raises(LocalNegotiationError) as caught:
        room(SERVER_A, {"12": 100}).start_vendor("org.example.nope", {})
    assert caught.value.reason is NegotiationRule.UNKNOWN_METHOD
    with pytest.raises(LocalNegotiationError) as caught:
        room(SERVER_A, {"12": 100}, registry=PIN_REGISTRY).start_vendor("org.example.pin", {})
    assert caught.value.reason is NegotiationRule.MALFORMED
    assert caught.value.content_reason is ContentReason.VENDOR_REJECTED


def test_next_actions_are_not_offered_twice_while_in_flight() -> None:
    dag = Dag(room(SERVER_A, {"12": 100}), room(SERVER_B, {"12": 100}))
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    b = dag.node(SERVER_B).room
    (accept,) = b.next_actions()
    b.send(accept)
    assert b.next_actions() == ()
    # After a restart (rebuild without the echo) the owed accept is offered again.
    assert rebuilt(dag, SERVER_B, b).next_actions() == (accept,)


def test_rebuild_mid_negotiation_continues_to_the_same_outcome() -> None:
    ratings_a, ratings_b = {"12": 100, "11": 50}, {"12": 10, "11": 60}
    dag = Dag(room(SERVER_A, ratings_a), room(SERVER_B, ratings_b))
    dag.emit(SERVER_A, dag.node(SERVER_A).room.propose())
    dag.emit(SERVER_B, dag.node(SERVER_B).room.next_actions()[0])  # reply
    # Both nodes restart: rebuilt from the DAG, they carry on.
    for server in (SERVER_A, SERVER_B):
        node = dag.node(server)
        node.room = rebuilt(dag, server, node.room)
    dag.pump()
    assert [t for t, _ in trace(dag)] == [PROPOSAL, REPLY, ACCEPT, ACK, ACK]
    assert only(dag, SERVER_B).agreement.version == "11"  # type: ignore[union-attr]


def test_a_pdu_is_an_event_view() -> None:
    fixture = RoomFixture("12", name="negotiation")
    server = server_key(0).identifier
    pdu = fixture.build(PROPOSAL, f"@:{server}", {"versions": {"12": 100}})
    view: EventView = pdu
    negotiation = Negotiation(settings=settings(SERVER_B, {"12": 100}), current_version="11")
    assert negotiation.receive(view).status is ReceiptStatus.APPLIED
    assert negotiation.role is Side.RESPONDER and negotiation.peer == server
