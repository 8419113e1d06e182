"""Power levels: a user's level, and the rules after the member rules (v11 rules 5-9, v12 6-10).

Spec: rooms v10/v11/v12 "Authorisation rules"; m.room.power_levels schema; MSC4289 (v12
creators). Digest 5.1, 5.3-5.5.
"""

from __future__ import annotations

from typing import Any

import pytest
from auth_fixtures import ALICE, BOB, CAROL, DAVE, VERSIONS, RoomBuilder, default_power_levels

from s2s_node.core.auth import INFINITE_POWER, AuthError, AuthRule, check_auth, get_power_level
from s2s_node.core.events import Pdu

ERIN = "@erin:example.org"
PL_KEY = ("m.room.power_levels", "")


def rejected(room: RoomBuilder, pdu: Pdu, rule: AuthRule) -> None:
    with pytest.raises(AuthError) as exc:
        room.check(pdu)
    assert exc.value.rule is rule, exc.value


def pl_event(room: RoomBuilder, sender: str, content: dict[str, Any]) -> Pdu:
    return room.build(sender, "m.room.power_levels", content, state_key="")


# ----------------------------------------------------------------------------------------------
# a user's power level


@pytest.mark.parametrize("version", ["10", "11"])
def test_power_level_without_power_levels_creator_100_v10_v11(version: str) -> None:
    room = RoomBuilder(version, with_power_levels=False)
    assert get_power_level(ALICE, room.state) == 100
    assert get_power_level(BOB, room.state) == 0


def test_power_level_without_power_levels_uses_content_creator_v10() -> None:
    room = RoomBuilder(
        "10",
        creator_joins=False,
        with_power_levels=False,
        join_rule=None,
        create_content={"creator": BOB},
    )
    assert get_power_level(BOB, room.state) == 100
    assert get_power_level(ALICE, room.state) == 0


def test_power_level_creators_infinite_v12() -> None:
    room = RoomBuilder(
        "12", create_content={"additional_creators": [BOB]}, power_users={CAROL: 100}
    )
    assert get_power_level(ALICE, room.state) == INFINITE_POWER
    assert get_power_level(BOB, room.state) == INFINITE_POWER
    assert get_power_level(CAROL, room.state) == 100
    assert get_power_level(DAVE, room.state) == 0
    assert INFINITE_POWER > 2**53 - 1


def test_power_level_without_power_levels_v12() -> None:
    room = RoomBuilder("12", with_power_levels=False)
    assert get_power_level(ALICE, room.state) == INFINITE_POWER
    assert get_power_level(BOB, room.state) == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_power_level_users_default(version: str) -> None:
    pl = default_power_levels(RoomBuilder(version).rules, ALICE, {CAROL: 7})
    pl["users_default"] = 3
    room = RoomBuilder(version, power_levels=pl)
    assert get_power_level(CAROL, room.state) == 7
    assert get_power_level(BOB, room.state) == 3


def test_power_level_without_create_has_no_creator() -> None:
    room = RoomBuilder("11", with_power_levels=False)
    state = {k: v for k, v in room.state.items() if k != ("m.room.create", "")}
    assert get_power_level(ALICE, state) == 0


# ----------------------------------------------------------------------------------------------
# 5. [6.] sender joined


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("membership", [None, "invite", "leave", "ban", "knock"])
def test_sender_not_joined_rejected(version: str, membership: str | None) -> None:
    room = RoomBuilder(version, join_rule="knock")
    if membership == "invite":
        room.invite(ALICE, BOB)
    elif membership == "leave":
        room.invite(ALICE, BOB)
        room.join(BOB)
        room.member(BOB, BOB, "leave")
    elif membership == "ban":
        room.member(ALICE, BOB, "ban")
    elif membership == "knock":
        room.member(BOB, BOB, "knock")
    rejected(room, room.build(BOB, "m.room.message", {"body": "hi"}), AuthRule.SENDER_NOT_JOINED)


@pytest.mark.parametrize("version", VERSIONS)
def test_sender_joined_message_allowed(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    room.add(BOB, "m.room.message", {"body": "hi"})


# ----------------------------------------------------------------------------------------------
# 6. [7.] m.room.third_party_invite


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_event_needs_invite_level(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    room.add(BOB, "m.room.third_party_invite", {"public_key": "a"}, state_key="t1")
    pl = room.power_levels_content()
    pl["invite"] = 10
    room.set_power_levels(ALICE, pl)
    pdu = room.build(BOB, "m.room.third_party_invite", {"public_key": "a"}, state_key="t2")
    rejected(room, pdu, AuthRule.THIRD_PARTY_INVITE_INSUFFICIENT_POWER)


@pytest.mark.parametrize("version", VERSIONS)
def test_third_party_invite_event_skips_required_level(version: str) -> None:
    # Rule 6 allows outright: the event type's own level (state_default 50) does not apply.
    room = RoomBuilder(version)
    room.join(BOB)
    pl = room.power_levels_content()
    pl["events"]["m.room.third_party_invite"] = 100
    room.set_power_levels(ALICE, pl)
    room.add(BOB, "m.room.third_party_invite", {}, state_key="t")


# ----------------------------------------------------------------------------------------------
# 7. [8.] required power level


@pytest.mark.parametrize("version", VERSIONS)
def test_insufficient_power_for_state_event(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    pdu = room.build(BOB, "m.room.topic", {"topic": "t"}, state_key="")
    rejected(room, pdu, AuthRule.INSUFFICIENT_POWER)
    room.add(ALICE, "m.room.topic", {"topic": "t"}, state_key="")


@pytest.mark.parametrize("version", VERSIONS)
def test_insufficient_power_uses_events_override(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    pl = room.power_levels_content()
    pl["events"]["m.room.message"] = 20
    pl["events"]["m.room.topic"] = 0
    room.set_power_levels(ALICE, pl)
    rejected(room, room.build(BOB, "m.room.message", {}), AuthRule.INSUFFICIENT_POWER)
    room.add(BOB, "m.room.topic", {"topic": "t"}, state_key="")
    room.add(BOB, "m.reaction", {})


@pytest.mark.parametrize("version", VERSIONS)
def test_insufficient_power_events_default(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    pl = room.power_levels_content()
    pl["events_default"] = 1
    room.set_power_levels(ALICE, pl)
    rejected(room, room.build(BOB, "m.room.message", {}), AuthRule.INSUFFICIENT_POWER)


@pytest.mark.parametrize("version", VERSIONS)
def test_required_power_without_power_levels_state_default_50(version: str) -> None:
    room = RoomBuilder(version, with_power_levels=False)
    room.join(BOB)
    room.add(BOB, "m.room.message", {})
    pdu = room.build(BOB, "m.room.name", {"name": "n"}, state_key="")
    rejected(room, pdu, AuthRule.INSUFFICIENT_POWER)
    room.add(ALICE, "m.room.name", {"name": "n"}, state_key="")


def test_tombstone_only_for_creators_v12() -> None:
    room = RoomBuilder("12", power_users={CAROL: 100})
    room.join(CAROL)
    pdu = room.build(CAROL, "m.room.tombstone", {"replacement_room": "!x"}, state_key="")
    rejected(room, pdu, AuthRule.INSUFFICIENT_POWER)
    room.add(ALICE, "m.room.tombstone", {"replacement_room": "!x"}, state_key="")


# ----------------------------------------------------------------------------------------------
# 8. [9.] state keys starting with "@"


@pytest.mark.parametrize("version", VERSIONS)
def test_state_key_is_other_user_rejected(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.custom", {}, state_key=BOB)
    rejected(room, pdu, AuthRule.STATE_KEY_IS_OTHER_USER)
    room.add(ALICE, "m.custom", {}, state_key=ALICE)
    room.add(ALICE, "m.custom", {}, state_key="bob")
    room.add(ALICE, "m.custom", {}, state_key="")


# ----------------------------------------------------------------------------------------------
# 9. [10.] power levels: content validation


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "name", ["users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"]
)
@pytest.mark.parametrize("value", ["50", True, None, [50], {"a": 1}])
def test_power_levels_rejected_when_named_level_not_integer(
    version: str, name: str, value: object
) -> None:
    room = RoomBuilder(version)
    content = room.power_levels_content()
    content[name] = value
    rejected(room, pl_event(room, ALICE, content), AuthRule.POWER_LEVELS_NOT_INTEGER)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["events", "notifications"])
@pytest.mark.parametrize("value", [[], "x", {"m.room.name": "50"}, {"room": False}])
def test_power_levels_rejected_when_level_map_bad(version: str, name: str, value: object) -> None:
    room = RoomBuilder(version)
    content = room.power_levels_content()
    content[name] = value
    rejected(room, pl_event(room, ALICE, content), AuthRule.POWER_LEVELS_BAD_LEVEL_MAP)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "users",
    [[], "x", {"bob": 50}, {"@bob": 50}, {BOB: "50"}, {BOB: True}, {"@bob:bad_server!": 1}],
)
def test_power_levels_rejected_when_users_bad(version: str, users: object) -> None:
    room = RoomBuilder(version)
    content = room.power_levels_content()
    content["users"] = users
    rejected(room, pl_event(room, ALICE, content), AuthRule.POWER_LEVELS_BAD_USERS)


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_allowed_with_valid_content(version: str) -> None:
    room = RoomBuilder(version)
    content = room.power_levels_content()
    content["notifications"] = {"room": 50}
    content["users"][BOB] = 10
    content["users"]["@:example.org"] = 10  # a server user is a (historical) user ID
    room.set_power_levels(ALICE, content)


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_missing_users_reads_as_empty(version: str) -> None:
    # UNCONFIRMED (digest open point 5): rule 9.3 as if `users` had to exist; as Synapse, absent
    # means {}. Only the first power-levels event, so nobody's entry is removed.
    room = RoomBuilder(version, with_power_levels=False)
    room.set_power_levels(ALICE, {"users_default": 0})


def test_power_levels_rejected_when_creator_in_users_v12() -> None:
    room = RoomBuilder("12", create_content={"additional_creators": [BOB]})
    for creator in (ALICE, BOB):
        content = room.power_levels_content()
        content["users"][creator] = 100
        rejected(room, pl_event(room, ALICE, content), AuthRule.POWER_LEVELS_CREATOR_IN_USERS)


@pytest.mark.parametrize("version", ["10", "11"])
def test_power_levels_creator_in_users_allowed_v10_v11(version: str) -> None:
    room = RoomBuilder(version)
    assert room.state[PL_KEY].content["users"][ALICE] == 100


# ----------------------------------------------------------------------------------------------
# 9.4-9.10 [10.5-10.11] what a sender may change


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_first_event_allowed_whatever_the_levels(version: str) -> None:
    room = RoomBuilder(version, with_power_levels=False)
    room.join(BOB)
    # BOB (level 0) may not send state, so the first event must come from the creator...
    content = default_power_levels(room.rules, ALICE, {BOB: 100, CAROL: 9000})
    content["kick"] = 9000
    room.set_power_levels(ALICE, content)


def mod_room(version: str, **levels: Any) -> RoomBuilder:
    """A room where CAROL and ERIN are moderators (50) and BOB is at 10."""
    rules = RoomBuilder(version).rules
    pl = default_power_levels(rules, ALICE, {CAROL: 50, ERIN: 50, BOB: 10})
    pl.update(levels)
    pl["events"] = {
        **pl["events"],
        "m.room.power_levels": 50,
        "m.room.name": 50,
        "m.room.avatar": 60,
    }
    pl["notifications"] = {"room": 50, "high": 100}
    room = RoomBuilder(version, power_levels=pl)
    for user in (BOB, CAROL, ERIN):
        room.join(user)
    return room


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_named_level_change_allowed_up_to_sender(version: str) -> None:
    room = mod_room(version)
    content = room.power_levels_content()
    content["ban"] = 40
    content["kick"] = 50
    del content["redact"]  # old 50 is not above the sender's 50
    room.set_power_levels(CAROL, content)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("name", "old", "new"),
    [("kick", 50, 51), ("state_default", 60, 0), ("invite", 70, None), ("users_default", None, 51)],
)
def test_power_levels_rejected_when_named_level_above_sender(
    version: str, name: str, old: int | None, new: int | None
) -> None:
    room = mod_room(version, **({} if old is None else {name: old}))
    if old is None:
        content = room.power_levels_content()
        del content[name]
        room.set_power_levels(ALICE, content)
    content = room.power_levels_content()
    if new is None:
        del content[name]
    else:
        content[name] = new
    rejected(room, pl_event(room, CAROL, content), AuthRule.POWER_LEVELS_NAMED_LEVEL_ABOVE_SENDER)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "key"), [("events", "m.room.avatar"), ("notifications", "high")])
@pytest.mark.parametrize("change", ["lower", "remove"])
def test_power_levels_rejected_when_old_event_level_above_sender(
    version: str, name: str, key: str, change: str
) -> None:
    room = mod_room(version)
    content = room.power_levels_content()
    if change == "lower":
        content[name][key] = 0
    else:
        del content[name][key]
    rejected(
        room, pl_event(room, CAROL, content), AuthRule.POWER_LEVELS_OLD_EVENT_LEVEL_ABOVE_SENDER
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "key"), [("events", "m.room.name"), ("notifications", "room")])
def test_power_levels_rejected_when_new_event_level_above_sender(
    version: str, name: str, key: str
) -> None:
    room = mod_room(version)
    content = room.power_levels_content()
    content[name][key] = 51
    rejected(
        room, pl_event(room, CAROL, content), AuthRule.POWER_LEVELS_NEW_EVENT_LEVEL_ABOVE_SENDER
    )
    content[name] = {**content[name], key: 50, "m.new": 50}
    room.set_power_levels(CAROL, content)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("change", ["demote", "remove"])
def test_power_levels_rejected_when_changing_a_peer(version: str, change: str) -> None:
    room = mod_room(version)
    content = room.power_levels_content()
    if change == "demote":
        content["users"][ERIN] = 0
    else:
        del content["users"][ERIN]
    rejected(room, pl_event(room, CAROL, content), AuthRule.POWER_LEVELS_USER_NOT_BELOW_SENDER)


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_changing_lower_users_and_self_allowed(version: str) -> None:
    room = mod_room(version)
    content = room.power_levels_content()
    content["users"][BOB] = 50  # below-sender user raised up to the sender's level
    content["users"][DAVE] = 20  # added
    room.set_power_levels(CAROL, content)
    content = room.power_levels_content()
    del content["users"][DAVE]
    content["users"][CAROL] = 0  # the sender demotes itself
    room.set_power_levels(CAROL, content)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", [BOB, CAROL, DAVE])
def test_power_levels_rejected_when_new_user_level_above_sender(version: str, target: str) -> None:
    room = mod_room(version)
    content = room.power_levels_content()
    content["users"][target] = 51
    rejected(
        room, pl_event(room, CAROL, content), AuthRule.POWER_LEVELS_NEW_USER_LEVEL_ABOVE_SENDER
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_power_levels_require_state_level_first(version: str) -> None:
    room = mod_room(version)
    content = room.power_levels_content()
    rejected(room, pl_event(room, BOB, content), AuthRule.INSUFFICIENT_POWER)


def test_power_levels_creator_changes_anything_v12() -> None:
    room = mod_room("12")
    content = room.power_levels_content()
    content["users"] = {CAROL: 2**53 - 1, BOB: 0}
    content["kick"] = 2**53 - 1
    content["events"]["m.room.tombstone"] = 0
    room.set_power_levels(ALICE, content)


def test_power_levels_additional_creator_is_infinite_v12() -> None:
    room = RoomBuilder("12", create_content={"additional_creators": [BOB]}, join_rule="invite")
    room.invite(ALICE, BOB)
    room.join(BOB)
    content = room.power_levels_content()
    content["users"][CAROL] = 100
    content["ban"] = 500
    room.set_power_levels(BOB, content)


@pytest.mark.parametrize("version", ["10", "11"])
def test_power_levels_peer_admin_cannot_demote_creator_v10_v11(version: str) -> None:
    room = RoomBuilder(version, power_users={CAROL: 100})
    room.join(CAROL)
    content = room.power_levels_content()
    content["users"][ALICE] = 0
    rejected(room, pl_event(room, CAROL, content), AuthRule.POWER_LEVELS_USER_NOT_BELOW_SENDER)


@pytest.mark.parametrize("version", VERSIONS)
def test_check_auth_against_other_state_uses_that_state(version: str) -> None:
    # The same event is judged by the state given: allowed before BOB is demoted, not after.
    room = mod_room(version)
    before = dict(room.state)
    pdu = room.build(CAROL, "m.room.name", {"name": "n"}, state_key="")
    content = room.power_levels_content()
    content["users"][CAROL] = 0
    room.set_power_levels(ALICE, content)
    check_auth(pdu, before)
    with pytest.raises(AuthError) as exc:
        check_auth(pdu, room.state)
    assert exc.value.rule is AuthRule.INSUFFICIENT_POWER
