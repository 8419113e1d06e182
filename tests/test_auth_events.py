"""Auth-events selection, the rules about an event's auth_events list, and the create rules.

Spec: server-server API "Auth events selection"; rooms v10/v11 rules 1 and 2, v12 rules 1-3
(digest 5.2-5.5).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping

import pytest
from auth_fixtures import ALICE, BOB, DAVE, VERSIONS, RoomBuilder

from s2s_node.core.auth import (
    AuthError,
    AuthRule,
    StateKey,
    _auth_events_if_valid,
    _check_auth_events_in_order,
    check_auth,
    check_auth_events,
    compute_auth_keys,
    select_auth_events,
)
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId

CREATE = ("m.room.create", "")
PL = ("m.room.power_levels", "")
JR = ("m.room.join_rules", "")


def reject(rule: AuthRule, exc: pytest.ExceptionInfo[AuthError]) -> None:
    assert exc.value.rule is rule, exc.value


# ----------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize("version", VERSIONS)
def test_compute_auth_keys_are_kept_on_the_event(version: str) -> None:
    pdu = RoomBuilder(version).build(ALICE, "m.room.message", {"body": "hi"})
    assert pdu.auth_keys_memo is None
    first = compute_auth_keys(pdu)
    assert pdu.auth_keys_memo is first
    assert compute_auth_keys(pdu) is first
    assert isinstance(first, frozenset)


@pytest.mark.parametrize("version", VERSIONS)
def test_compute_auth_keys_message(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.message", {"body": "hi"})
    assert compute_auth_keys(pdu) == {CREATE, PL, ("m.room.member", ALICE)}


@pytest.mark.parametrize("version", VERSIONS)
def test_compute_auth_keys_create_is_empty(version: str) -> None:
    assert compute_auth_keys(RoomBuilder(version).create) == set()


def test_compute_auth_keys_member_invite_with_third_party_token() -> None:
    room = RoomBuilder("11")
    content = {"membership": "invite", "third_party_invite": {"signed": {"token": "tok"}}}
    pdu = room.build(ALICE, "m.room.member", content, state_key=BOB)
    assert compute_auth_keys(pdu) == {
        CREATE,
        PL,
        ("m.room.member", ALICE),
        ("m.room.member", BOB),
        JR,
        ("m.room.third_party_invite", "tok"),
    }


def test_compute_auth_keys_join_with_authoriser() -> None:
    room = RoomBuilder("12")
    content = {"membership": "join", "join_authorised_via_users_server": ALICE}
    pdu = room.build(BOB, "m.room.member", content, state_key=BOB)
    assert compute_auth_keys(pdu) == {
        CREATE,
        PL,
        ("m.room.member", BOB),
        JR,
        ("m.room.member", ALICE),
    }


def test_compute_auth_keys_leave_has_no_join_rules() -> None:
    room = RoomBuilder("11")
    pdu = room.build(ALICE, "m.room.member", {"membership": "leave"}, state_key=BOB)
    assert compute_auth_keys(pdu) == {CREATE, PL, ("m.room.member", ALICE), ("m.room.member", BOB)}


@pytest.mark.parametrize("version", ["10", "11"])
def test_select_auth_events_lists_create_first_v10_v11(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    ids = room.state_ids
    selected = select_auth_events(
        "m.room.member", ALICE, BOB, {"membership": "ban"}, room.rules, ids
    )
    assert selected == [
        ids[CREATE],
        ids[PL],
        ids[("m.room.member", ALICE)],
        ids[("m.room.member", BOB)],
    ]


def test_select_auth_events_omits_create_v12() -> None:
    room = RoomBuilder("12")
    ids = room.state_ids
    selected = select_auth_events(
        "m.room.member", BOB, BOB, {"membership": "join"}, room.rules, ids
    )
    assert selected == [ids[PL], ids[JR]]
    assert ids[CREATE] not in selected


# ----------------------------------------------------------------------------------------------
# rules about the auth_events list (v11 2.x, v12 2 and 3.x)


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_events_allowed(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.message", {"body": "hi"})
    auth_map = check_auth_events(pdu, room.events, lambda _: False)
    assert auth_map[CREATE] == room.create
    assert set(auth_map) == {CREATE, PL, ("m.room.member", ALICE)}


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_events_rejected_when_duplicate(version: str) -> None:
    room = RoomBuilder(version)
    first = room.state[("m.room.member", ALICE)].event_id
    room.add(ALICE, "m.room.member", {"membership": "join", "displayname": "A"}, state_key=ALICE)
    second = room.state[("m.room.member", ALICE)].event_id
    wanted = room.build(ALICE, "m.room.message", {}).auth_events
    pdu = room.build(ALICE, "m.room.message", {}, auth_events=[*wanted, first])
    assert second in pdu.auth_events
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, room.events, lambda _: False)
    reject(AuthRule.AUTH_EVENTS_DUPLICATE, exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_events_rejected_when_not_selectable(version: str) -> None:
    room = RoomBuilder(version)
    wanted = room.build(ALICE, "m.room.message", {}).auth_events
    pdu = room.build(ALICE, "m.room.message", {}, auth_events=[*wanted, room.state[JR].event_id])
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, room.events, lambda _: False)
    reject(AuthRule.AUTH_EVENTS_NOT_SELECTABLE, exc)


def test_auth_events_rejected_when_listing_a_create_event_v12() -> None:
    room = RoomBuilder("12")
    other = RoomBuilder("12", creator=BOB)
    wanted = room.build(ALICE, "m.room.message", {}).auth_events
    pdu = room.build(ALICE, "m.room.message", {}, auth_events=[*wanted, other.create.event_id])
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, {**room.events, **other.events}, lambda _: False)
    reject(AuthRule.AUTH_EVENTS_NOT_SELECTABLE, exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_events_rejected_when_an_auth_event_was_rejected(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.message", {})
    pl_id = room.state[PL].event_id
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, room.events, lambda event_id: event_id == pl_id)
    reject(AuthRule.AUTH_EVENTS_REJECTED, exc)


@pytest.mark.parametrize("version", ["10", "11"])
def test_auth_events_rejected_without_create_v10_v11(version: str) -> None:
    room = RoomBuilder(version)
    wanted = room.build(ALICE, "m.room.message", {}).auth_events
    pdu = room.build(
        ALICE, "m.room.message", {}, auth_events=[e for e in wanted if e != room.create.event_id]
    )
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, room.events, lambda _: False)
    reject(AuthRule.AUTH_EVENTS_NO_CREATE, exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_events_rejected_when_from_another_room(version: str) -> None:
    room = RoomBuilder(version)
    other = RoomBuilder(version, room_id="!other:example.org", create_content={"x": 1})
    foreign_join = other.state[("m.room.member", ALICE)].event_id
    wanted = [
        e
        for e in room.build(ALICE, "m.room.message", {}).auth_events
        if e != room.state[("m.room.member", ALICE)].event_id
    ]
    pdu = room.build(ALICE, "m.room.message", {}, auth_events=[*wanted, foreign_join])
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, {**room.events, **other.events}, lambda _: False)
    reject(AuthRule.AUTH_EVENTS_WRONG_ROOM, exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_events_rejected_when_missing(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.message", {})
    known = {k: v for k, v in room.events.items() if k != room.state[PL].event_id}
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, known, lambda _: False)
    reject(AuthRule.AUTH_EVENTS_MISSING, exc)


def test_room_id_not_accepted_create_when_create_rejected_v12() -> None:
    room = RoomBuilder("12")
    pdu = room.build(ALICE, "m.room.message", {})
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, room.events, lambda event_id: event_id == room.create.event_id)
    reject(AuthRule.ROOM_ID_NOT_ACCEPTED_CREATE, exc)


def test_room_id_not_accepted_create_when_room_id_names_another_event_v12() -> None:
    room = RoomBuilder("12")
    message = room.add(ALICE, "m.room.message", {"body": "not a create"})
    fake_room = "!" + message.event_id[1:]
    pdu = room.build(ALICE, "m.room.message", {}, room_id=fake_room, auth_events=[])
    with pytest.raises(AuthError) as exc:
        check_auth_events(pdu, room.events, lambda _: False)
    reject(AuthRule.ROOM_ID_NOT_ACCEPTED_CREATE, exc)


def test_room_id_of_accepted_create_allowed_v12() -> None:
    room = RoomBuilder("12")
    pdu = room.build(ALICE, "m.room.message", {})
    assert pdu.auth_event_ids[0] == room.create.event_id
    assert room.create.event_id not in pdu.auth_events
    check_auth_events(pdu, room.events, lambda _: False)


# ----------------------------------------------------------------------------------------------
# create rules (1.x)


@pytest.mark.parametrize("version", VERSIONS)
def test_create_allowed(version: str) -> None:
    check_auth(RoomBuilder(version).create, {})


@pytest.mark.parametrize("version", VERSIONS)
def test_create_rejected_when_it_has_prev_events(version: str) -> None:
    room = RoomBuilder(version)
    content = dict(room.create.content)
    pdu = room.build(ALICE, "m.room.create", content, state_key="", auth_events=[])
    assert pdu.prev_events
    with pytest.raises(AuthError) as exc:
        check_auth(pdu, {})
    reject(AuthRule.CREATE_HAS_PREV_EVENTS, exc)


@pytest.mark.parametrize("version", ["10", "11"])
def test_create_rejected_when_room_id_domain_differs_v10_v11(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(
        ALICE,
        "m.room.create",
        dict(room.create.content),
        state_key="",
        prev_events=[],
        auth_events=[],
        room_id="!abc:elsewhere.example",
    )
    with pytest.raises(AuthError) as exc:
        check_auth(pdu, {})
    reject(AuthRule.CREATE_ROOM_ID_DOMAIN, exc)


def test_create_rejected_when_it_has_a_room_id_v12() -> None:
    create = RoomBuilder("12").create
    # The format check refuses such an event; auth still holds the rule for a Pdu made otherwise.
    with_room_id = dataclasses.replace(create, json={**create.json, "room_id": create.room_id})
    with pytest.raises(AuthError) as exc:
        check_auth(with_room_id, {})
    reject(AuthRule.CREATE_HAS_ROOM_ID, exc)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("room_version", ["9", "13", 11, None])
def test_create_rejected_when_room_version_unknown(version: str, room_version: object) -> None:
    room = RoomBuilder(version)
    pdu = room.build(
        ALICE,
        "m.room.create",
        {**room.create.content, "room_version": room_version},
        state_key="",
        prev_events=[],
        auth_events=[],
    )
    with pytest.raises(AuthError) as exc:
        check_auth(pdu, {})
    reject(AuthRule.CREATE_UNKNOWN_ROOM_VERSION, exc)


def test_create_rejected_without_creator_v10() -> None:
    room = RoomBuilder("10")
    content = {k: v for k, v in room.create.content.items() if k != "creator"}
    pdu = room.build(ALICE, "m.room.create", content, state_key="", prev_events=[], auth_events=[])
    with pytest.raises(AuthError) as exc:
        check_auth(pdu, {})
    reject(AuthRule.CREATE_NO_CREATOR, exc)


@pytest.mark.parametrize("version", ["11", "12"])
def test_create_allowed_without_creator_v11_v12(version: str) -> None:
    assert "creator" not in RoomBuilder(version).create.content
    check_auth(RoomBuilder(version).create, {})


@pytest.mark.parametrize(
    "additional",
    ["@bob:example.org", ["bob"], [BOB, 5], [BOB, "@bob"], ["@" + "a" * 250 + ":x.org"]],
)
def test_create_rejected_when_additional_creators_bad_v12(additional: object) -> None:
    with pytest.raises(AuthError) as exc:
        RoomBuilder("12", create_content={"additional_creators": additional})
    reject(AuthRule.CREATE_BAD_ADDITIONAL_CREATORS, exc)


def test_create_allowed_with_additional_creators_v12() -> None:
    room = RoomBuilder("12", create_content={"additional_creators": [BOB, DAVE, "@:example.org"]})
    check_auth(room.create, {})


def test_create_ignores_additional_creators_v11() -> None:
    room = RoomBuilder("11", create_content={"additional_creators": "not a list"})
    check_auth(room.create, {})


# ----------------------------------------------------------------------------------------------
# state that check_auth needs; m.federate


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_rejected_without_create_in_state(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.message", {})
    state = {k: v for k, v in room.state.items() if k != CREATE}
    with pytest.raises(AuthError) as exc:
        check_auth(pdu, state)
    reject(AuthRule.AUTH_EVENTS_NO_CREATE, exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_federate_false_rejects_other_servers(version: str) -> None:
    room = RoomBuilder(version, create_content={"m.federate": False})
    room.join(BOB)  # same server as the creator: allowed
    dave_join = room.member(DAVE, DAVE, "join", apply=False)
    with pytest.raises(AuthError) as exc:
        room.check(dave_join)
    reject(AuthRule.FEDERATE_FALSE, exc)
    room.append(dave_join)  # as if it had been let in: its messages are still refused
    with pytest.raises(AuthError) as exc:
        room.check(room.build(DAVE, "m.room.message", {"body": "hi"}))
    reject(AuthRule.FEDERATE_FALSE, exc)
    room.add(BOB, "m.room.message", {"body": "hi"})


@pytest.mark.parametrize("version", VERSIONS)
def test_federate_only_literal_false_counts(version: str) -> None:
    # The spec says "set to false"; a string or 0 is not `false` (Synapse differs).
    room = RoomBuilder(version, create_content={"m.federate": "false"})
    room.join(DAVE)
    room.add(DAVE, "m.room.message", {"body": "hi"})


def _outcome(
    check: Callable[..., dict[StateKey, Pdu]],
    pdu: Pdu,
    known: Mapping[EventId, Pdu],
    rejected: frozenset[EventId],
) -> object:
    try:
        return check(pdu, known, rejected.__contains__)
    except AuthError as exc:
        return exc.rule


@pytest.mark.parametrize("version", VERSIONS)
def test_auth_events_one_pass_agrees_with_the_rules_in_order(version: str) -> None:
    # `check_auth_events` tries all rules in one pass and leaves any failure to the rules in
    # the spec's order: over lists with duplicates, unselectable, foreign, missing, rejected
    # and non-state entries, in every order, the result (or the first rule broken) is the
    # same, and the one pass succeeds whenever the rules do.
    room = RoomBuilder(version)
    other = RoomBuilder(version, room_id="!other:example.org", create_content={"x": 1})
    old_join = room.state[("m.room.member", ALICE)].event_id
    room.add(ALICE, "m.room.member", {"membership": "join", "displayname": "A"}, state_key=ALICE)
    message = room.add(ALICE, "m.room.message", {"body": "not state"})
    wanted = list(room.build(ALICE, "m.room.message", {}).auth_events)
    candidates = [
        *wanted,
        old_join,  # a second sender membership: duplicate
        room.state[JR].event_id,  # not selectable for a message
        message.event_id,  # not a state event
        other.state[("m.room.member", ALICE)].event_id,  # another room
        other.create.event_id,  # another room's create event
        EventId("$" + "A" * 43),  # unknown
    ]
    known = {**room.events, **other.events}
    rejections = [frozenset(), frozenset({room.state[PL].event_id}), frozenset({old_join})]
    if room.rules.room_id_is_create_event_hash:
        rejections.append(frozenset({room.create.event_id}))
    lists = [list(p) for n in range(4) for p in itertools.permutations(candidates, n)]
    lists += [[*wanted, extra] for extra in candidates] + [wanted[::-1]]
    successes = 0
    for auth_events in lists:
        pdu = dataclasses.replace(
            room.build(ALICE, "m.room.message", {}),
            auth_events=tuple(auth_events),
            auth_event_ids=(
                (room.create.event_id, *auth_events)
                if room.rules.room_id_is_create_event_hash
                else tuple(auth_events)
            ),
        )
        for rejected in rejections:
            in_order = _outcome(_check_auth_events_in_order, pdu, known, rejected)
            assert _outcome(check_auth_events, pdu, known, rejected) == in_order
            if isinstance(in_order, dict):
                successes += 1
                assert _auth_events_if_valid(pdu, known, rejected.__contains__) == in_order
    assert successes > 0
