"""The receive pipeline: each check on receipt of a PDU, in the spec's order, with its outcome.

Spec: server-server API "Checks performed on receipt of a PDU" (digest 8.3). Rooms are built by
tests/room_fixtures.py; the benchmark rooms come from tests/vectors/rooms.
"""

from __future__ import annotations

import dataclasses
import gzip
from typing import Any

import pytest
from room_fixtures import (
    ALICE,
    BOB,
    ROOMS,
    RoomFixture,
    bench_room_names,
    load_bench_room,
    server_key,
)

from s2s_node.core.auth import AuthRule
from s2s_node.core.canonical import encode_canonical_json, parse_json
from s2s_node.core.events import MAX_PDU_BYTES, Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.ingest import (
    Outcome,
    Verdict,
    VerdictReason,
    _check_received,
    _Checked,
    ingest_batch,
    ingest_create_event,
    ingest_pdu,
)
from s2s_node.core.redaction import redact
from s2s_node.core.room import EventStatus
from s2s_node.core.signing import (
    add_hashes_and_signature,
    derived_keys,
    is_content_hash_valid,
    sign_json,
)

UNKNOWN_EVENT = EventId("$" + "A" * 43)


def forged(pdu: Pdu) -> dict[str, Any]:
    """The event signed under its sender's server name with another server's key."""
    unsigned = {k: v for k, v in pdu.json.items() if k not in ("signatures", "hashes")}
    server = pdu.sender.split(":", 1)[1]
    return add_hashes_and_signature(unsigned, pdu.rules, server, server_key(7))


def tampered(pdu: Pdu) -> dict[str, Any]:
    """The event with its (redactable) content changed: signature fine, content hash not."""
    obj = dict(pdu.json)
    obj["content"] = {**pdu.content, "body": "tampered", "extra": 1}
    return obj


def without(pdu: Pdu, key: str) -> dict[str, Any]:
    return {k: v for k, v in pdu.json.items() if k != key}


@pytest.fixture(params=["10", "11", "12"])
def room(request: pytest.FixtureRequest) -> RoomFixture:
    return RoomFixture(request.param)


def ingest(room: RoomFixture, obj: object) -> Verdict:
    return ingest_pdu(obj, room.graph, derived_keys)


# -- each check, in order ----------------------------------------------------------------------


def test_a_good_event_is_accepted_and_becomes_the_extremity(room: RoomFixture) -> None:
    pdu = room.message(BOB, "hello")
    verdict = ingest(room, pdu.json)
    assert verdict == Verdict(outcome=Outcome.ACCEPTED, event_id=pdu.event_id)
    assert room.graph.forward_extremities == {pdu.event_id}


def test_step1_a_badly_formatted_event_is_dropped(room: RoomFixture) -> None:
    pdu = room.message(BOB, "hello")
    verdict = ingest(room, without(pdu, "depth"))
    assert (verdict.outcome, verdict.reason, verdict.event_id) == (
        Outcome.DROPPED,
        VerdictReason.FORMAT,
        None,
    )
    assert pdu.event_id not in room.graph
    assert ingest(room, ["not", "an", "object"]).reason is VerdictReason.FORMAT


def test_step1_comes_before_step2(room: RoomFixture) -> None:
    assert ingest(room, without(room.message(BOB, "x"), "signatures")).reason is (
        VerdictReason.FORMAT
    )


def test_step2_a_forged_signature_is_dropped(room: RoomFixture) -> None:
    pdu = room.message(BOB, "hello")
    verdict = ingest(room, forged(pdu))
    assert (verdict.outcome, verdict.reason) == (Outcome.DROPPED, VerdictReason.SIGNATURE)
    assert verdict.event_id == pdu.event_id
    assert pdu.event_id not in room.graph


def test_step2_comes_before_the_auth_checks(room: RoomFixture) -> None:
    # Cites the join rules, which a message may not: it would be rejected at step 4.
    bad_auth = room.message(BOB, "x", auth_events=[room.state_id("m.room.join_rules")])
    assert ingest(room, forged(bad_auth)).reason is VerdictReason.SIGNATURE


def test_step3_a_hash_mismatch_is_processed_redacted(room: RoomFixture) -> None:
    pdu = room.message(BOB, "hello")
    verdict = ingest(room, tampered(pdu))
    assert (verdict.outcome, verdict.redacted, verdict.event_id) == (
        Outcome.ACCEPTED,
        True,
        pdu.event_id,
    )
    stored = room.graph.get_event(pdu.event_id)
    assert stored.content == {}
    assert room.graph.forward_extremities == {pdu.event_id}


def test_step3_other_spellings_of_the_content_hash(room: RoomFixture) -> None:
    # The usual spelling is compared without decoding; a padded one is decoded (as
    # `is_content_hash_valid` does) and passes too; a wrong hash of a valid spelling does not.
    pdu = room.message(BOB, "spelled")
    claimed = pdu.json["hashes"]["sha256"]
    padded = _resigned({**pdu.json, "hashes": {"sha256": claimed + "="}}, room)
    assert is_content_hash_valid(padded)
    verdict = ingest(room, padded)
    assert (verdict.outcome, verdict.reason, verdict.redacted) == (Outcome.ACCEPTED, None, False)
    other = ("B" if claimed[0] != "B" else "C") + claimed[1:]
    wrong = _resigned({**pdu.json, "hashes": {"sha256": other}}, room)
    assert not is_content_hash_valid(wrong)
    verdict = ingest(room, wrong)
    assert (verdict.outcome, verdict.redacted) == (Outcome.ACCEPTED, True)


def _resigned(obj: dict[str, Any], room: RoomFixture) -> dict[str, Any]:
    """`obj` signed again by BOB's server (after a change to a signed member)."""
    signing_form = redact(obj, room.graph.rules)
    signing_form.pop("signatures", None)
    signing_form.pop("unsigned", None)
    signed = sign_json(signing_form, BOB.split(":", 1)[1], server_key(1))
    return {**obj, "signatures": signed["signatures"]}


def test_step3_a_redacted_state_event_still_changes_state(room: RoomFixture) -> None:
    pdu = room.build("m.room.member", BOB, {"membership": "leave"}, state_key=BOB)
    verdict = ingest(room, tampered(pdu))
    assert verdict.redacted and verdict.outcome is Outcome.ACCEPTED
    assert room.graph.current_state()[("m.room.member", BOB)] == pdu.event_id
    assert room.graph.get_event(pdu.event_id).content == {"membership": "leave"}


def test_step3_comes_before_the_auth_checks(room: RoomFixture) -> None:
    pdu = room.message(BOB, "x", auth_events=[room.state_id("m.room.join_rules")])
    verdict = ingest(room, tampered(pdu))
    assert (verdict.outcome, verdict.reason, verdict.redacted) == (
        Outcome.REJECTED,
        VerdictReason.AUTH_EVENTS,
        True,
    )
    assert room.graph.get_event(pdu.event_id).content == {}


def test_step4_an_event_citing_a_wrong_auth_event_is_rejected(room: RoomFixture) -> None:
    extremities = room.graph.forward_extremities
    pdu = room.message(BOB, "x", auth_events=[room.state_id("m.room.join_rules")])
    verdict = ingest(room, pdu.json)
    assert (verdict.outcome, verdict.reason, verdict.rule) == (
        Outcome.REJECTED,
        VerdictReason.AUTH_EVENTS,
        AuthRule.AUTH_EVENTS_NOT_SELECTABLE,
    )
    assert room.graph.status(pdu.event_id) is EventStatus.REJECTED
    assert room.graph.forward_extremities == extremities


def test_step4_an_event_its_own_auth_events_forbid_is_rejected(room: RoomFixture) -> None:
    # Bob (power 0) sets the room name: his auth events do not allow it.
    pdu = room.build("m.room.name", BOB, {"name": "mine"}, state_key="")
    verdict = ingest(room, pdu.json)
    assert (verdict.reason, verdict.rule) == (
        VerdictReason.AUTH_EVENTS,
        AuthRule.INSUFFICIENT_POWER,
    )
    assert ("m.room.name", "") not in room.graph.current_state()


def test_step5_allowed_by_auth_events_but_not_by_state_before_is_rejected(
    room: RoomFixture,
) -> None:
    bob_join = room.state_id("m.room.member", BOB)
    ban = room.add(room.build("m.room.member", ALICE, {"membership": "ban"}, state_key=BOB))
    # Cites the ban as prev_event (state before: banned) but his old join as auth event.
    auth = [e for e in room.message(BOB, "x").auth_events if e != ban.event_id] + [bob_join]
    pdu = room.message(BOB, "still here", prev_events=[ban.event_id], auth_events=auth)
    verdict = ingest(room, pdu.json)
    assert (verdict.outcome, verdict.reason, verdict.rule) == (
        Outcome.REJECTED,
        VerdictReason.AUTH_STATE_BEFORE,
        AuthRule.SENDER_NOT_JOINED,
    )
    assert room.graph.forward_extremities == {ban.event_id}
    # A rejected event's state after is its state before.
    assert room.graph.state_after(pdu.event_id) == room.graph.state_before(pdu.event_id)


def test_step6_ban_evasion_is_soft_failed(room: RoomFixture) -> None:
    before_ban = room.graph.forward_extremities
    ban = room.add(room.build("m.room.member", ALICE, {"membership": "ban"}, state_key=BOB))
    current = dict(room.graph.current_state())
    # Bob cites the DAG from before the ban: a message, and a state event (a new name).
    message = room.message(BOB, "evading", prev_events=sorted(before_ban))
    rename = room.build(
        "m.room.member",
        BOB,
        {"membership": "join", "displayname": "Bobby"},
        state_key=BOB,
        prev_events=sorted(before_ban),
    )
    for pdu, rule in (
        (message, AuthRule.SENDER_NOT_JOINED),
        (rename, AuthRule.MEMBER_JOIN_BANNED),
    ):
        verdict = ingest(room, pdu.json)
        assert (verdict.outcome, verdict.reason, verdict.rule) == (
            Outcome.SOFT_FAILED,
            VerdictReason.AUTH_CURRENT_STATE,
            rule,
        )
    assert room.graph.forward_extremities == {ban.event_id}
    assert dict(room.graph.current_state()) == current
    # The soft-failed state event is in the state after it (it takes part in state res).
    assert room.graph.state_after(rename.event_id)[("m.room.member", BOB)] == rename.event_id
    # New local events never cite it.
    assert room.message(ALICE, "next").prev_events == (ban.event_id,)


# -- other outcomes ----------------------------------------------------------------------------


def test_an_event_with_unknown_prev_events_is_deferred_not_stored(room: RoomFixture) -> None:
    pdu = room.message(BOB, "x", prev_events=[UNKNOWN_EVENT], depth=10)
    verdict = ingest(room, pdu.json)
    assert (verdict.outcome, verdict.reason, verdict.missing) == (
        Outcome.DEFERRED,
        VerdictReason.MISSING_EVENTS,
        (UNKNOWN_EVENT,),
    )
    assert pdu.event_id not in room.graph


def test_an_event_of_another_room_is_dropped(room: RoomFixture) -> None:
    other = RoomFixture(room.rules.version, name="other")
    pdu = other.message(ALICE, "elsewhere")
    assert pdu.room_id != room.graph.room_id
    verdict = ingest(room, pdu.json)
    assert (verdict.outcome, verdict.reason) == (Outcome.DROPPED, VerdictReason.WRONG_ROOM)


def test_a_duplicate_repeats_the_stored_outcome(room: RoomFixture) -> None:
    pdu = room.message(BOB, "x", auth_events=[room.state_id("m.room.join_rules")])
    first = ingest(room, pdu.json)
    again = ingest(room, pdu.json)
    assert first.outcome is again.outcome is Outcome.REJECTED
    assert (first.duplicate, again.duplicate, again.rule) == (False, True, first.rule)


def test_a_create_event_of_an_unknown_room_version_is_dropped() -> None:
    room = RoomFixture("12")
    obj = dict(room.create.json)
    obj["content"] = {"room_version": "9"}
    verdict, graph = ingest_create_event(obj, derived_keys)
    assert (verdict.outcome, verdict.reason, graph) == (
        Outcome.DROPPED,
        VerdictReason.UNKNOWN_ROOM_VERSION,
        None,
    )


def test_a_room_starts_from_its_create_event(room: RoomFixture) -> None:
    verdict, graph = ingest_create_event(room.create.json, derived_keys)
    assert verdict.outcome is Outcome.ACCEPTED
    assert graph is not None and graph.room_id == room.create.room_id
    assert graph.forward_extremities == {room.create.event_id}


# -- batches -----------------------------------------------------------------------------------


def test_a_batch_keeps_going_and_orders_events_that_cite_each_other(room: RoomFixture) -> None:
    parent = room.message(BOB, "parent")
    child = room.message(ALICE, "child", prev_events=[parent.event_id], depth=parent.depth + 1)
    grandchild = room.message(BOB, "grandchild", prev_events=[child.event_id], depth=99)
    orphan = room.message(BOB, "orphan", prev_events=[UNKNOWN_EVENT], depth=99)
    waits_for_orphan = room.message(ALICE, "waits", prev_events=[orphan.event_id], depth=100)
    bad_auth = room.message(BOB, "x", auth_events=[room.state_id("m.room.join_rules")])
    verdicts = ingest_batch(
        [
            grandchild.json,
            without(parent, "content"),  # a broken copy first
            child.json,
            waits_for_orphan.json,
            forged(room.message(BOB, "forged")),
            bad_auth.json,
            parent.json,
            orphan.json,
        ],
        room.graph,
        derived_keys,
    )
    assert [(v.outcome, v.reason) for v in verdicts] == [
        (Outcome.ACCEPTED, None),
        (Outcome.DROPPED, VerdictReason.FORMAT),
        (Outcome.ACCEPTED, None),
        (Outcome.DEFERRED, VerdictReason.MISSING_EVENTS),
        (Outcome.DROPPED, VerdictReason.SIGNATURE),
        (Outcome.REJECTED, VerdictReason.AUTH_EVENTS),
        (Outcome.ACCEPTED, None),
        (Outcome.DEFERRED, VerdictReason.MISSING_EVENTS),
    ]
    assert verdicts[3].missing == (orphan.event_id,)
    assert verdicts[7].missing == (UNKNOWN_EVENT,)
    assert room.graph.forward_extremities == {grandchild.event_id}


def test_a_batch_with_the_same_event_twice() -> None:
    room = RoomFixture("12")
    pdu = room.message(BOB, "twice")
    verdicts = ingest_batch([pdu.json, pdu.json], room.graph, derived_keys)
    assert [(v.outcome, v.duplicate) for v in verdicts] == [
        (Outcome.ACCEPTED, False),
        (Outcome.ACCEPTED, True),
    ]


# -- the benchmark rooms -----------------------------------------------------------------------


@pytest.mark.parametrize("name", bench_room_names())
def test_ingesting_a_bench_room_reaches_synapses_state(name: str) -> None:
    bench = load_bench_room(name)
    verdict, graph = ingest_create_event(bench.events[0], derived_keys)
    assert graph is not None and verdict.outcome is Outcome.ACCEPTED
    verdicts = [verdict, *ingest_batch(bench.events[1:], graph, derived_keys)]
    assert [v.event_id for v in verdicts] == list(bench.event_ids)
    # Forks may soft-fail each other's events (e.g. a join of a user the other fork banned);
    # nothing is dropped, rejected or deferred.
    assert {v.outcome for v in verdicts} <= {Outcome.ACCEPTED, Outcome.SOFT_FAILED}
    assert graph.forward_extremities == bench.tips
    assert dict(graph.current_state()) == bench.expected


# -- values checked by the strict decoder ------------------------------------------------------


def decoded(obj: object) -> Any:
    """`obj` as the federation layer hands it over: through the strict decoder."""
    return parse_json(encode_canonical_json(obj))


def test_values_checked_gives_the_same_verdicts(room: RoomFixture) -> None:
    parent = room.message(BOB, "parent")
    big = room.message(ALICE, "x" * 100, prev_events=[parent.event_id], depth=parent.depth + 1)
    objs = [
        parent.json,
        without(parent, "depth"),
        forged(room.message(BOB, "forged")),
        tampered(room.message(ALICE, "tampered")),
        {**big.json, "unsigned": {"pad": "x" * (MAX_PDU_BYTES - 200)}},  # over the limit
        {**big.json, "unsigned": {"age": 5}},
        parent.json,
    ]
    strict = RoomFixture(room.rules.version)
    default = ingest_batch(objs, room.graph, derived_keys)
    checked = ingest_batch(
        [decoded(obj) for obj in objs], strict.graph, derived_keys, values_checked=True
    )
    assert checked == default
    assert [(v.outcome, v.reason, v.redacted) for v in checked] == [
        (Outcome.ACCEPTED, None, False),
        (Outcome.DROPPED, VerdictReason.FORMAT, False),
        (Outcome.DROPPED, VerdictReason.SIGNATURE, False),
        (Outcome.ACCEPTED, None, True),
        (Outcome.DROPPED, VerdictReason.FORMAT, False),
        (Outcome.ACCEPTED, None, False),
        (Outcome.ACCEPTED, None, False),
    ]
    assert "too_large" in checked[4].detail


@pytest.mark.parametrize("name", bench_room_names()[:2])
def test_a_strictly_decoded_bench_room_with_values_checked(name: str) -> None:
    with gzip.open(ROOMS / name, "rb") as f:
        loaded = parse_json(f.read())
    assert isinstance(loaded, dict)
    room: dict[str, Any] = loaded
    events = room["events"]
    verdict, graph = ingest_create_event(events[0], derived_keys, values_checked=True)
    assert graph is not None and verdict.outcome is Outcome.ACCEPTED
    verdicts = ingest_batch(events[1:], graph, derived_keys, values_checked=True)
    assert [verdict.event_id, *(v.event_id for v in verdicts)] == list(room["event_ids"])
    assert {v.outcome for v in verdicts} <= {Outcome.ACCEPTED, Outcome.SOFT_FAILED}
    assert dict(graph.current_state()) == load_bench_room(name).expected


def test_verdicts_made_without_init_equal_verdicts_made_with_it(room: RoomFixture) -> None:
    # `ingest` builds verdicts by setting their slots (a cheaper `Verdict(...)`): every field
    # must be set, and the value must be the one the dataclass `__init__` makes.
    accepted = room.message(ALICE, "hi")
    rejected = room.message(BOB, "x", auth_events=[room.state_id("m.room.join_rules")])
    verdicts = [
        ingest(room, accepted.json),
        ingest(room, accepted.json),  # duplicate
        ingest(room, rejected.json),
        ingest(room, tampered(room.message(ALICE, "y"))),  # redacted
        ingest(room, forged(room.message(ALICE, "z"))),  # dropped
    ]
    assert {v.outcome for v in verdicts} >= {Outcome.ACCEPTED, Outcome.REJECTED, Outcome.DROPPED}
    # The same for what passed steps 1-3 (kept, or redacted on a content-hash mismatch).
    for obj, redacted in (
        (room.message(ALICE, "c").json, False),
        (tampered(room.message(ALICE, "d")), True),
    ):
        checked = _check_received(obj, room.graph, derived_keys, False)
        assert isinstance(checked, _Checked)
        assert checked.redacted is redacted
        assert _Checked(pdu=checked.pdu, redacted=checked.redacted) == checked
    for verdict in verdicts:
        rebuilt = Verdict(**{f.name: getattr(verdict, f.name) for f in dataclasses.fields(Verdict)})
        assert rebuilt == verdict
        with pytest.raises(dataclasses.FrozenInstanceError):
            verdict.detail = ""  # type: ignore[misc]
