"""The m.room.member auth rules (v11 rule 4, v12 rule 5) and the s2s membership rule.

Spec: rooms v10/v11/v12 "Authorisation rules" (digest 5.3-5.5); DESIGN.md section 4.
"""

from __future__ import annotations

from typing import Any

import pytest
from auth_fixtures import ALICE, BOB, CAROL, DAVE, VERSIONS, RoomBuilder, default_power_levels

from s2s_node.core.auth import AuthError, AuthRule, check_auth
from s2s_node.core.canonical import encode_base64
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.signing import sign_json

SERVER_USER = "@:example.org"
PEER_SERVER_USER = "@:peer.example"
ERIN = "@erin:example.org"


def rejected(room: RoomBuilder, pdu: Any, rule: AuthRule) -> None:
    with pytest.raises(AuthError) as exc:
        room.check(pdu)
    assert exc.value.rule is rule, exc.value
    assert exc.value.event_id == pdu.event_id


def member(room: RoomBuilder, sender: str, target: str, membership: str, **content: Any) -> Any:
    return room.member(sender, target, membership, apply=False, **content)


# ----------------------------------------------------------------------------------------------
# 4.1 format


@pytest.mark.parametrize("version", VERSIONS)
def test_member_rejected_without_state_key(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.member", {"membership": "join"})
    with pytest.raises(AuthError) as exc:
        check_auth(pdu, room.state)
    assert exc.value.rule is AuthRule.MEMBER_NO_STATE_KEY


@pytest.mark.parametrize("version", VERSIONS)
def test_member_rejected_without_membership(version: str) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.member", {"displayname": "A"}, state_key=ALICE)
    rejected(room, pdu, AuthRule.MEMBER_NO_MEMBERSHIP)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("membership", ["foo", "JOIN", 1])
def test_member_rejected_when_membership_unknown(version: str, membership: object) -> None:
    room = RoomBuilder(version)
    pdu = room.build(ALICE, "m.room.member", {"membership": membership}, state_key=ALICE)
    rejected(room, pdu, AuthRule.MEMBER_UNKNOWN_MEMBERSHIP)


# ----------------------------------------------------------------------------------------------
# 4.3 join


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_allowed_for_creator_first_join(version: str) -> None:
    room = RoomBuilder(version, join_rule=None, with_power_levels=False)
    assert room.state[("m.room.member", ALICE)].prev_events == (room.create.event_id,)


def test_member_join_first_join_uses_content_creator_v10() -> None:
    # v10: the creator is content.creator, not the sender of the create event.
    builder = _bare_room("10", create_content={"creator": BOB})
    alice_first = builder.build(ALICE, "m.room.member", {"membership": "join"}, state_key=ALICE)
    rejected(builder, alice_first, AuthRule.MEMBER_JOIN_NOT_ALLOWED)
    bob_first = builder.build(BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    builder.check(bob_first)


@pytest.mark.parametrize("version", ["11", "12"])
def test_member_join_first_join_uses_create_sender_v11_v12(version: str) -> None:
    builder = _bare_room(version)
    bob_first = builder.build(BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    rejected(builder, bob_first, AuthRule.MEMBER_JOIN_NOT_ALLOWED)
    alice_first = builder.build(ALICE, "m.room.member", {"membership": "join"}, state_key=ALICE)
    builder.check(alice_first)


def test_member_join_first_join_not_special_for_additional_creator_v12() -> None:
    builder = _bare_room("12", create_content={"additional_creators": [BOB]})
    bob_first = builder.build(BOB, "m.room.member", {"membership": "join"}, state_key=BOB)
    rejected(builder, bob_first, AuthRule.MEMBER_JOIN_NOT_ALLOWED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_creator_rejoin_not_special_after_other_events(version: str) -> None:
    room = RoomBuilder(version, join_rule="invite")
    room.member(ALICE, ALICE, "leave")
    rejected(room, member(room, ALICE, ALICE, "join"), AuthRule.MEMBER_JOIN_NOT_ALLOWED)


def _bare_room(version: str, **kwargs: Any) -> RoomBuilder:
    """A room with only its create event (no creator join yet)."""
    return RoomBuilder(
        version, creator_joins=False, with_power_levels=False, join_rule=None, **kwargs
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_rejected_when_sender_is_not_state_key(version: str) -> None:
    room = RoomBuilder(version)
    rejected(room, member(room, ALICE, BOB, "join"), AuthRule.MEMBER_JOIN_SENDER_NOT_STATE_KEY)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_rejected_when_banned(version: str) -> None:
    room = RoomBuilder(version)
    room.member(ALICE, BOB, "ban")
    rejected(room, member(room, BOB, BOB, "join"), AuthRule.MEMBER_JOIN_BANNED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_allowed_when_public(version: str) -> None:
    RoomBuilder(version, join_rule="public").join(BOB)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("join_rule", ["invite", "knock"])
def test_member_join_invite_rule_needs_invite(version: str, join_rule: str) -> None:
    room = RoomBuilder(version, join_rule=join_rule)
    rejected(room, member(room, BOB, BOB, "join"), AuthRule.MEMBER_JOIN_NOT_ALLOWED)
    room.invite(ALICE, BOB)
    room.join(BOB)
    room.join(BOB, displayname="Bob")  # already joined: allowed


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_rejected_when_join_rule_unknown(version: str) -> None:
    room = RoomBuilder(version, join_rule="private")
    room.invite(ALICE, BOB)
    rejected(room, member(room, BOB, BOB, "join"), AuthRule.MEMBER_JOIN_NOT_ALLOWED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_without_join_rules_reads_as_invite(version: str) -> None:
    # UNCONFIRMED (digest open point 6): no m.room.join_rules reads as `invite`, as Synapse:
    # uninvited users are rejected, invited ones may join.
    room = RoomBuilder(version, join_rule=None)
    rejected(room, member(room, BOB, BOB, "join"), AuthRule.MEMBER_JOIN_NOT_ALLOWED)
    room.invite(ALICE, BOB)
    room.join(BOB)


# -- restricted joins (4.2, 4.3.5)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_member_join_restricted_allowed_via_authoriser(version: str, join_rule: str) -> None:
    room = RoomBuilder(version, join_rule=join_rule)
    content = {"membership": "join", "join_authorised_via_users_server": ALICE}
    room.add(DAVE, "m.room.member", content, state_key=DAVE, cosigners=["example.org"])


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_restricted_allowed_when_invited(version: str) -> None:
    room = RoomBuilder(version, join_rule="restricted")
    room.invite(ALICE, BOB)
    room.join(BOB)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_restricted_rejected_without_authoriser(version: str) -> None:
    room = RoomBuilder(version, join_rule="restricted")
    rejected(room, member(room, BOB, BOB, "join"), AuthRule.MEMBER_JOIN_NO_AUTHORISER)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_restricted_rejected_when_authoriser_not_joined(version: str) -> None:
    room = RoomBuilder(version, join_rule="restricted")
    pdu = member(room, BOB, BOB, "join", join_authorised_via_users_server=CAROL)
    rejected(room, pdu, AuthRule.MEMBER_JOIN_AUTHORISER_NOT_JOINED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_join_restricted_rejected_when_authoriser_cannot_invite(version: str) -> None:
    room = RoomBuilder(version, join_rule="public")
    room.join(CAROL)
    pl = room.power_levels_content()
    pl["invite"] = 50
    room.set_power_levels(ALICE, pl)
    room.set_join_rule(ALICE, "restricted")
    pdu = member(room, BOB, BOB, "join", join_authorised_via_users_server=CAROL)
    rejected(room, pdu, AuthRule.MEMBER_JOIN_AUTHORISER_CANNOT_INVITE)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_rejected_when_authoriser_server_did_not_sign(version: str) -> None:
    room = RoomBuilder(version, join_rule="restricted", power_users={DAVE: 50})
    room.append(member(room, DAVE, DAVE, "join"))
    pdu = member(room, BOB, BOB, "join", join_authorised_via_users_server=DAVE)
    rejected(room, pdu, AuthRule.MEMBER_AUTHORISER_NOT_SIGNED)
    signed = room.build(
        BOB,
        "m.room.member",
        {"membership": "join", "join_authorised_via_users_server": DAVE},
        state_key=BOB,
        cosigners=["other.example"],
    )
    room.check(signed)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_authoriser_signature_rule_applies_to_any_membership(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    pdu = member(room, BOB, BOB, "leave", join_authorised_via_users_server=DAVE)
    rejected(room, pdu, AuthRule.MEMBER_AUTHORISER_NOT_SIGNED)
    bad_id = member(room, BOB, BOB, "leave", join_authorised_via_users_server="not-a-user")
    rejected(room, bad_id, AuthRule.MEMBER_AUTHORISER_NOT_SIGNED)


# ----------------------------------------------------------------------------------------------
# 4.4 invite


@pytest.mark.parametrize("version", VERSIONS)
def test_member_invite_allowed(version: str) -> None:
    RoomBuilder(version).invite(ALICE, BOB)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_invite_rejected_when_sender_not_joined(version: str) -> None:
    room = RoomBuilder(version)
    rejected(room, member(room, CAROL, BOB, "invite"), AuthRule.MEMBER_INVITE_SENDER_NOT_JOINED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_invite_rejected_when_target_joined(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    rejected(room, member(room, ALICE, BOB, "invite"), AuthRule.MEMBER_INVITE_TARGET_JOINED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_invite_rejected_when_target_banned(version: str) -> None:
    room = RoomBuilder(version)
    room.member(ALICE, BOB, "ban")
    rejected(room, member(room, ALICE, BOB, "invite"), AuthRule.MEMBER_INVITE_TARGET_BANNED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_invite_rejected_when_insufficient_power(version: str) -> None:
    room = RoomBuilder(version)
    room.join(CAROL)
    pl = room.power_levels_content()
    pl["invite"] = 10
    room.set_power_levels(ALICE, pl)
    rejected(room, member(room, CAROL, BOB, "invite"), AuthRule.MEMBER_INVITE_INSUFFICIENT_POWER)
    room.invite(ALICE, BOB)


# -- third-party invites (4.4.1)

IDENTITY_KEY = signing_key_from_seed(bytes(range(32)), "ed25519:0")
OTHER_KEY = signing_key_from_seed(bytes(32), "ed25519:0")
TOKEN = "abc123"


def third_party_room(version: str, *, key_field: str = "public_key") -> RoomBuilder:
    room = RoomBuilder(version)
    public_key = encode_base64(IDENTITY_KEY.verify_key_bytes)
    content: dict[str, Any] = {"display_name": "b...@example.com"}
    if key_field == "public_key":
        content["public_key"] = public_key
    else:
        content["public_keys"] = [{"public_key": public_key}]
    room.add(ALICE, "m.room.third_party_invite", content, state_key=TOKEN)
    return room


def signed_block(mxid: str = BOB, token: str = TOKEN, key: Any = IDENTITY_KEY) -> dict[str, Any]:
    return sign_json({"mxid": mxid, "token": token}, "id.example.org", key)


def third_party_invite(room: RoomBuilder, sender: str = ALICE, **invite: Any) -> Any:
    content = {"membership": "invite", "third_party_invite": {"display_name": "b", **invite}}
    return room.build(sender, "m.room.member", content, state_key=BOB)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("key_field", ["public_key", "public_keys"])
def test_member_third_party_invite_allowed(version: str, key_field: str) -> None:
    room = third_party_room(version, key_field=key_field)
    room.check(third_party_invite(room, signed=signed_block()))


@pytest.mark.parametrize("version", VERSIONS)
def test_member_third_party_invite_rejected_when_target_banned(version: str) -> None:
    room = third_party_room(version)
    room.member(ALICE, BOB, "ban")
    pdu = third_party_invite(room, signed=signed_block())
    rejected(room, pdu, AuthRule.MEMBER_THIRD_PARTY_INVITE_TARGET_BANNED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_third_party_invite_rejected_without_signed(version: str) -> None:
    room = third_party_room(version)
    rejected(room, third_party_invite(room), AuthRule.MEMBER_THIRD_PARTY_INVITE_NO_SIGNED)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("drop", ["mxid", "token"])
def test_member_third_party_invite_rejected_without_mxid_or_token(version: str, drop: str) -> None:
    room = third_party_room(version)
    signed = {k: v for k, v in signed_block().items() if k != drop}
    pdu = third_party_invite(room, signed=signed)
    rejected(room, pdu, AuthRule.MEMBER_THIRD_PARTY_INVITE_NO_MXID_OR_TOKEN)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_third_party_invite_rejected_when_mxid_mismatch(version: str) -> None:
    room = third_party_room(version)
    pdu = third_party_invite(room, signed=signed_block(mxid=CAROL))
    rejected(room, pdu, AuthRule.MEMBER_THIRD_PARTY_INVITE_MXID_MISMATCH)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_third_party_invite_rejected_without_invite_event(version: str) -> None:
    room = third_party_room(version)
    pdu = third_party_invite(room, signed=signed_block(token="unknown"))
    rejected(room, pdu, AuthRule.MEMBER_THIRD_PARTY_INVITE_NO_INVITE_EVENT)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_third_party_invite_rejected_when_sender_mismatch(version: str) -> None:
    room = third_party_room(version)
    room.join(CAROL)
    pdu = third_party_invite(room, sender=CAROL, signed=signed_block())
    rejected(room, pdu, AuthRule.MEMBER_THIRD_PARTY_INVITE_SENDER_MISMATCH)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_third_party_invite_rejected_when_signature_bad(version: str) -> None:
    room = third_party_room(version)
    wrong_key = third_party_invite(room, signed=signed_block(key=OTHER_KEY))
    rejected(room, wrong_key, AuthRule.MEMBER_THIRD_PARTY_INVITE_BAD_SIGNATURE)
    tampered = dict(signed_block())
    tampered["extra"] = "changed after signing"
    pdu = third_party_invite(room, signed=tampered)
    rejected(room, pdu, AuthRule.MEMBER_THIRD_PARTY_INVITE_BAD_SIGNATURE)
    unsigned = {"mxid": BOB, "token": TOKEN}
    rejected(
        room,
        third_party_invite(room, signed=unsigned),
        AuthRule.MEMBER_THIRD_PARTY_INVITE_BAD_SIGNATURE,
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_member_third_party_invite_any_matching_signature_allows(version: str) -> None:
    room = third_party_room(version)
    signed = sign_json(signed_block(key=OTHER_KEY), "other-id.example", IDENTITY_KEY)
    room.check(third_party_invite(room, signed=signed))


# ----------------------------------------------------------------------------------------------
# 4.5 leave


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("before", ["join", "invite", "knock"])
def test_member_leave_allowed_for_self(version: str, before: str) -> None:
    room = RoomBuilder(version, join_rule="knock")
    if before == "join":
        room.invite(ALICE, BOB)
        room.join(BOB)
    elif before == "invite":
        room.invite(ALICE, BOB)
    else:
        room.member(BOB, BOB, "knock")
    room.member(BOB, BOB, "leave")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("before", [None, "leave", "ban"])
def test_member_leave_rejected_for_self_when_not_in_room(version: str, before: str | None) -> None:
    room = RoomBuilder(version)
    if before == "leave":
        room.join(BOB)
        room.member(BOB, BOB, "leave")
    elif before == "ban":
        room.member(ALICE, BOB, "ban")
    rejected(room, member(room, BOB, BOB, "leave"), AuthRule.MEMBER_LEAVE_SELF_NOT_IN_ROOM)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_kick_rejected_when_sender_not_joined(version: str) -> None:
    room = RoomBuilder(version, power_users={CAROL: 100} if version != "12" else {CAROL: 90})
    room.join(BOB)
    rejected(room, member(room, CAROL, BOB, "leave"), AuthRule.MEMBER_LEAVE_SENDER_NOT_JOINED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_kick_allowed_when_sender_above_target(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    room.member(ALICE, BOB, "leave")


@pytest.mark.parametrize("version", VERSIONS)
def test_member_kick_rejected_when_insufficient_power(version: str) -> None:
    room = RoomBuilder(version, power_users={CAROL: 50, ERIN: 50})
    for user in (BOB, CAROL, ERIN):
        room.join(user)
    rejected(room, member(room, BOB, CAROL, "leave"), AuthRule.MEMBER_KICK_INSUFFICIENT_POWER)
    # equal levels: target < sender is false
    rejected(room, member(room, ERIN, CAROL, "leave"), AuthRule.MEMBER_KICK_INSUFFICIENT_POWER)
    room.member(CAROL, BOB, "leave")  # at the kick level and above the target


@pytest.mark.parametrize("version", VERSIONS)
def test_member_unban_rejected_without_ban_level(version: str) -> None:
    pl = default_power_levels(RoomBuilder(version).rules, ALICE, {CAROL: 60})
    pl["ban"] = 75
    room = RoomBuilder(version, power_levels=pl)
    room.join(CAROL)
    room.member(ALICE, BOB, "ban")
    rejected(room, member(room, CAROL, BOB, "leave"), AuthRule.MEMBER_UNBAN_INSUFFICIENT_POWER)
    room.member(ALICE, BOB, "leave")


# ----------------------------------------------------------------------------------------------
# 4.6 ban


@pytest.mark.parametrize("version", VERSIONS)
def test_member_ban_allowed(version: str) -> None:
    room = RoomBuilder(version)
    room.join(BOB)
    room.member(ALICE, BOB, "ban")
    room.member(ALICE, CAROL, "ban")  # not in the room: still allowed


@pytest.mark.parametrize("version", VERSIONS)
def test_member_ban_rejected_when_sender_not_joined(version: str) -> None:
    room = RoomBuilder(version, power_users={CAROL: 90})
    rejected(room, member(room, CAROL, BOB, "ban"), AuthRule.MEMBER_BAN_SENDER_NOT_JOINED)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_ban_rejected_when_insufficient_power(version: str) -> None:
    room = RoomBuilder(version, power_users={CAROL: 50, ERIN: 50})
    for user in (BOB, CAROL, ERIN):
        room.join(user)
    rejected(room, member(room, BOB, CAROL, "ban"), AuthRule.MEMBER_BAN_INSUFFICIENT_POWER)
    rejected(room, member(room, ERIN, CAROL, "ban"), AuthRule.MEMBER_BAN_INSUFFICIENT_POWER)
    room.member(CAROL, BOB, "ban")


@pytest.mark.parametrize("version", ["10", "11"])
def test_member_ban_of_creator_allowed_by_peer_v10_v11(version: str) -> None:
    # v10/v11: the creator is an ordinary 100; a second 100 cannot ban them, a demoted
    # creator can be banned.
    room = RoomBuilder(version, power_users={CAROL: 100})
    room.join(CAROL)
    rejected(room, member(room, CAROL, ALICE, "ban"), AuthRule.MEMBER_BAN_INSUFFICIENT_POWER)
    pl = room.power_levels_content()
    pl["users"][ALICE] = 50
    room.set_power_levels(ALICE, pl)
    room.member(CAROL, ALICE, "ban")


def test_member_creator_cannot_be_kicked_or_banned_v12() -> None:
    room = RoomBuilder("12", power_users={CAROL: 100})
    room.join(CAROL)
    rejected(room, member(room, CAROL, ALICE, "ban"), AuthRule.MEMBER_BAN_INSUFFICIENT_POWER)
    rejected(room, member(room, CAROL, ALICE, "leave"), AuthRule.MEMBER_KICK_INSUFFICIENT_POWER)


def test_member_creators_cannot_ban_each_other_v12() -> None:
    room = RoomBuilder("12", create_content={"additional_creators": [BOB]})
    room.join(BOB)
    rejected(room, member(room, BOB, ALICE, "ban"), AuthRule.MEMBER_BAN_INSUFFICIENT_POWER)
    rejected(room, member(room, ALICE, BOB, "ban"), AuthRule.MEMBER_BAN_INSUFFICIENT_POWER)
    room.member(BOB, CAROL, "ban")


# ----------------------------------------------------------------------------------------------
# 4.7 knock


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("join_rule", ["knock", "knock_restricted"])
def test_member_knock_allowed(version: str, join_rule: str) -> None:
    RoomBuilder(version, join_rule=join_rule).member(BOB, BOB, "knock")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("join_rule", ["public", "invite", "restricted", None])
def test_member_knock_rejected_when_join_rule_not_knock(
    version: str, join_rule: str | None
) -> None:
    room = RoomBuilder(version, join_rule=join_rule)
    rejected(room, member(room, BOB, BOB, "knock"), AuthRule.MEMBER_KNOCK_JOIN_RULE)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_knock_rejected_when_sender_not_state_key(version: str) -> None:
    room = RoomBuilder(version, join_rule="knock")
    rejected(room, member(room, ALICE, BOB, "knock"), AuthRule.MEMBER_KNOCK_SENDER_NOT_STATE_KEY)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("before", ["ban", "invite", "join"])
def test_member_knock_rejected_when_banned_invited_or_joined(version: str, before: str) -> None:
    room = RoomBuilder(version, join_rule="knock")
    if before == "ban":
        room.member(ALICE, BOB, "ban")
    else:
        room.invite(ALICE, BOB)
        if before == "join":
            room.join(BOB)
    rejected(room, member(room, BOB, BOB, "knock"), AuthRule.MEMBER_KNOCK_CURRENT_MEMBERSHIP)


@pytest.mark.parametrize("version", VERSIONS)
def test_member_knock_allowed_after_leave(version: str) -> None:
    room = RoomBuilder(version, join_rule="knock")
    room.member(BOB, BOB, "knock")
    room.member(BOB, BOB, "leave")
    room.member(BOB, BOB, "knock")


# ----------------------------------------------------------------------------------------------
# the s2s membership rule (DESIGN.md section 4)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("room_type", ["m.s2s", "support.feline.s2s"])
def test_s2s_server_user_allowed_in_s2s_room(version: str, room_type: str) -> None:
    room = RoomBuilder(version, creator=SERVER_USER, room_type=room_type, join_rule="invite")
    room.invite(SERVER_USER, PEER_SERVER_USER)
    room.join(PEER_SERVER_USER)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("room_type", [None, "m.space", "m.s2s.other", ["m.s2s"]])
def test_s2s_server_user_invite_rejected_outside_s2s_room(version: str, room_type: Any) -> None:
    room = RoomBuilder(version, room_type=room_type)
    pdu = member(room, ALICE, PEER_SERVER_USER, "invite")
    rejected(room, pdu, AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM)


@pytest.mark.parametrize("version", VERSIONS)
def test_s2s_server_user_join_and_knock_rejected_outside_s2s_room(version: str) -> None:
    public = RoomBuilder(version, join_rule="public")
    rejected(
        public,
        member(public, PEER_SERVER_USER, PEER_SERVER_USER, "join"),
        AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM,
    )
    knock = RoomBuilder(version, join_rule="knock")
    rejected(
        knock,
        member(knock, PEER_SERVER_USER, PEER_SERVER_USER, "knock"),
        AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM,
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_s2s_server_user_cannot_join_the_ordinary_room_it_created(version: str) -> None:
    with pytest.raises(AuthError) as exc:
        RoomBuilder(version, creator=SERVER_USER)
    assert exc.value.rule is AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM


@pytest.mark.parametrize("version", VERSIONS)
def test_s2s_ordinary_user_allowed_in_ordinary_room(version: str) -> None:
    room = RoomBuilder(version, join_rule="invite")
    room.invite(ALICE, BOB)
    room.join(BOB)


@pytest.mark.parametrize("version", VERSIONS)
def test_s2s_server_user_can_still_be_removed_from_ordinary_room(version: str) -> None:
    # Leave and ban are not guarded: a server user that got in (e.g. before the node ran
    # this rule) can be kicked or banned.
    room = RoomBuilder(version)
    room.append(member(room, PEER_SERVER_USER, PEER_SERVER_USER, "join"))
    room.member(ALICE, PEER_SERVER_USER, "leave")
    room.member(ALICE, PEER_SERVER_USER, "ban")


@pytest.mark.parametrize("version", VERSIONS)
def test_s2s_module_user_invited_by_server_user_in_s2s_room(version: str) -> None:
    room = RoomBuilder(version, creator=SERVER_USER, room_type="m.s2s", join_rule="invite")
    room.invite(SERVER_USER, "@policy:example.org")
    room.join("@policy:example.org")
