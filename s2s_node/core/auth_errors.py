"""The error of the authorisation rules: `AuthError` and its reason, `AuthRule`.

Owns: one `AuthRule` member per auth rule of room versions 10-12 (named after the rule, with the
room version 11 number in a comment and the room version 12 number in brackets where it
differs), plus the s2s membership rule. Must not: decide anything (see `auth`).

Spec: rooms/v10.md, v11.md, v12.md "Authorisation rules"; digest sections 5.3-5.5.
"""

from __future__ import annotations

import enum


class AuthRule(enum.Enum):
    """The auth rule an event breaks; one member per rule (v11 numbering, [v12] in brackets)."""

    # 1. m.room.create
    CREATE_HAS_PREV_EVENTS = "create_has_prev_events"  # 1.1
    CREATE_ROOM_ID_DOMAIN = "create_room_id_domain"  # 1.2 (v10, v11)
    CREATE_HAS_ROOM_ID = "create_has_room_id"  # [1.2] (v12)
    CREATE_UNKNOWN_ROOM_VERSION = "create_unknown_room_version"  # 1.3
    CREATE_NO_CREATOR = "create_no_creator"  # 1.4 (v10)
    CREATE_BAD_ADDITIONAL_CREATORS = "create_bad_additional_creators"  # [1.4] (v12)
    # [2] (v12) the room ID names an accepted create event
    ROOM_ID_NOT_ACCEPTED_CREATE = "room_id_not_accepted_create"
    # 2. [3.] auth_events
    AUTH_EVENTS_MISSING = "auth_events_missing"  # an auth event the caller could not supply
    AUTH_EVENTS_DUPLICATE = "auth_events_duplicate"  # 2.1 [3.1]
    AUTH_EVENTS_NOT_SELECTABLE = "auth_events_not_selectable"  # 2.2 [3.2]
    AUTH_EVENTS_REJECTED = "auth_events_rejected"  # 2.3 [3.3]
    AUTH_EVENTS_NO_CREATE = "auth_events_no_create"  # 2.4 (v10, v11); no create in a state
    AUTH_EVENTS_WRONG_ROOM = "auth_events_wrong_room"  # 2.5 [3.4]
    # 3. [4.] m.federate
    FEDERATE_FALSE = "federate_false"
    # 4. [5.] m.room.member
    MEMBER_NO_STATE_KEY = "member_no_state_key"  # 4.1
    MEMBER_NO_MEMBERSHIP = "member_no_membership"  # 4.1
    MEMBER_AUTHORISER_NOT_SIGNED = "member_authoriser_not_signed"  # 4.2.1
    MEMBER_JOIN_SENDER_NOT_STATE_KEY = "member_join_sender_not_state_key"  # 4.3.2
    MEMBER_JOIN_BANNED = "member_join_banned"  # 4.3.3
    MEMBER_JOIN_NO_AUTHORISER = "member_join_no_authoriser"  # 4.3.5.2 (key missing)
    MEMBER_JOIN_AUTHORISER_NOT_JOINED = "member_join_authoriser_not_joined"  # 4.3.5.2
    MEMBER_JOIN_AUTHORISER_CANNOT_INVITE = "member_join_authoriser_cannot_invite"  # 4.3.5.2
    MEMBER_JOIN_NOT_ALLOWED = "member_join_not_allowed"  # 4.3.7
    MEMBER_THIRD_PARTY_INVITE_TARGET_BANNED = "member_third_party_invite_target_banned"  # 4.4.1.1
    MEMBER_THIRD_PARTY_INVITE_NO_SIGNED = "member_third_party_invite_no_signed"  # 4.4.1.2
    MEMBER_THIRD_PARTY_INVITE_NO_MXID_OR_TOKEN = "member_third_party_invite_no_mxid_or_token"
    MEMBER_THIRD_PARTY_INVITE_MXID_MISMATCH = "member_third_party_invite_mxid_mismatch"  # 4.4.1.4
    MEMBER_THIRD_PARTY_INVITE_NO_INVITE_EVENT = "member_third_party_invite_no_invite_event"
    MEMBER_THIRD_PARTY_INVITE_SENDER_MISMATCH = "member_third_party_invite_sender_mismatch"
    MEMBER_THIRD_PARTY_INVITE_BAD_SIGNATURE = "member_third_party_invite_bad_signature"  # 4.4.1.8
    MEMBER_INVITE_SENDER_NOT_JOINED = "member_invite_sender_not_joined"  # 4.4.2
    MEMBER_INVITE_TARGET_JOINED = "member_invite_target_joined"  # 4.4.3
    MEMBER_INVITE_TARGET_BANNED = "member_invite_target_banned"  # 4.4.3
    MEMBER_INVITE_INSUFFICIENT_POWER = "member_invite_insufficient_power"  # 4.4.5
    MEMBER_LEAVE_SELF_NOT_IN_ROOM = "member_leave_self_not_in_room"  # 4.5.1
    MEMBER_LEAVE_SENDER_NOT_JOINED = "member_leave_sender_not_joined"  # 4.5.2
    MEMBER_UNBAN_INSUFFICIENT_POWER = "member_unban_insufficient_power"  # 4.5.3
    MEMBER_KICK_INSUFFICIENT_POWER = "member_kick_insufficient_power"  # 4.5.5
    MEMBER_BAN_SENDER_NOT_JOINED = "member_ban_sender_not_joined"  # 4.6.1
    MEMBER_BAN_INSUFFICIENT_POWER = "member_ban_insufficient_power"  # 4.6.3
    MEMBER_KNOCK_JOIN_RULE = "member_knock_join_rule"  # 4.7.1
    MEMBER_KNOCK_SENDER_NOT_STATE_KEY = "member_knock_sender_not_state_key"  # 4.7.2
    MEMBER_KNOCK_CURRENT_MEMBERSHIP = "member_knock_current_membership"  # 4.7.4
    MEMBER_UNKNOWN_MEMBERSHIP = "member_unknown_membership"  # 4.8
    # DESIGN.md section 4: the s2s membership rule (MSC3348)
    S2S_SERVER_USER_OUTSIDE_S2S_ROOM = "s2s_server_user_outside_s2s_room"
    # 5. [6.]
    SENDER_NOT_JOINED = "sender_not_joined"
    # 6. [7.] m.room.third_party_invite
    THIRD_PARTY_INVITE_INSUFFICIENT_POWER = "third_party_invite_insufficient_power"
    # 7. [8.]
    INSUFFICIENT_POWER = "insufficient_power"
    # 8. [9.]
    STATE_KEY_IS_OTHER_USER = "state_key_is_other_user"
    # 9. [10.] m.room.power_levels
    POWER_LEVELS_NOT_INTEGER = "power_levels_not_integer"  # 9.1
    POWER_LEVELS_BAD_LEVEL_MAP = "power_levels_bad_level_map"  # 9.2 (events, notifications)
    POWER_LEVELS_BAD_USERS = "power_levels_bad_users"  # 9.3
    POWER_LEVELS_CREATOR_IN_USERS = "power_levels_creator_in_users"  # [10.4] (v12)
    POWER_LEVELS_NAMED_LEVEL_ABOVE_SENDER = "power_levels_named_level_above_sender"  # 9.5
    POWER_LEVELS_OLD_EVENT_LEVEL_ABOVE_SENDER = "power_levels_old_event_level_above_sender"  # 9.6
    POWER_LEVELS_NEW_EVENT_LEVEL_ABOVE_SENDER = "power_levels_new_event_level_above_sender"  # 9.7
    POWER_LEVELS_USER_NOT_BELOW_SENDER = "power_levels_user_not_below_sender"  # 9.8
    POWER_LEVELS_NEW_USER_LEVEL_ABOVE_SENDER = "power_levels_new_user_level_above_sender"  # 9.9


class AuthError(Exception):
    """An event is not allowed by the auth rules (or by the s2s membership rule)."""

    def __init__(self, rule: AuthRule, detail: str = "", event_id: str | None = None) -> None:
        super().__init__(f"{rule.value}: {detail}" if detail else rule.value)
        self.rule = rule
        self.detail = detail
        self.event_id = event_id
