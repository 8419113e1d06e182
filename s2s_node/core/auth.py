"""Authorisation: the auth-events selection and the auth rules of room versions 10-12.

Owns: which (type, state_key) pairs an event's `auth_events` may cite (`compute_auth_keys`,
`select_auth_events`), the rules about that list (`check_auth_events`), and the state-dependent
rules (`check_auth`), which state resolution runs thousands of times per resolution. The member
rules and the s2s membership rule live in `auth_member`, the power-levels rule in
`auth_power_levels`, level arithmetic in `power`; this module is the public face of all of them.
Must not: verify event signatures or hashes cryptographically (`signing` does that earlier in
the pipeline), fetch events, or keep any state between calls.

Spec: server-server API "Auth events selection" and "Definitions"; rooms/v10.md, v11.md, v12.md
"Authorisation rules" (digest sections 5.1-5.6); MSC3348 security considerations and DESIGN.md
section 4 for the s2s membership rule. Comments carry the rule numbers of room version 11, and
of room version 12 in brackets where they differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from s2s_node.core.auth_errors import AuthError, AuthRule
from s2s_node.core.auth_member import (
    S2S_ROOM_TYPES,
    check_member_rules,
    is_s2s_room,
)
from s2s_node.core.auth_power_levels import check_power_levels_rules
from s2s_node.core.events import Pdu
from s2s_node.core.ids import (
    EventId,
    IdError,
    create_event_id_from_room_id,
    parse_user_id,
    server_of,
)
from s2s_node.core.power import (
    CREATE_KEY,
    INFINITE_POWER,
    POWER_LEVELS_KEY,
    StateKey,
    StateMap,
    compute_named_level,
    compute_required_level,
    compute_user_level,
    get_power_level,
)
from s2s_node.core.rules import KNOWN_ROOM_VERSIONS, RoomVersionRules

__all__ = [
    "INFINITE_POWER",
    "S2S_ROOM_TYPES",
    "AuthError",
    "AuthRule",
    "StateKey",
    "StateMap",
    "check_auth",
    "check_auth_events",
    "compute_auth_keys",
    "get_power_level",
    "is_s2s_room",
    "select_auth_events",
]

_CREATE: Final = "m.room.create"
_MEMBER: Final = "m.room.member"
_POWER_LEVELS: Final = "m.room.power_levels"
_THIRD_PARTY_INVITE: Final = "m.room.third_party_invite"
_JOIN_RULES_KEY: Final[StateKey] = ("m.room.join_rules", "")
_AUTHORISER: Final = "join_authorised_via_users_server"
# Memberships whose events also cite the join rules (selection step 4.2).
_JOIN_RULES_MEMBERSHIPS: Final = ("join", "invite", "knock")


# ----------------------------------------------------------------------------------------------
# Auth events selection (server-server API "Auth events selection"; digest 5.2)


def _auth_keys(
    event_type: str, sender: str, state_key: str | None, content: Mapping[str, Any]
) -> list[StateKey]:
    """The selectable (type, state_key) pairs in selection order, create first, no duplicates."""
    if event_type == _CREATE:
        return []
    # 1. the create event (implied in v12), 2. power levels, 3. the sender's membership
    keys: list[StateKey] = [CREATE_KEY, POWER_LEVELS_KEY, (_MEMBER, sender)]
    # 4. member events
    if event_type == _MEMBER and state_key is not None:
        if state_key != sender:
            keys.append((_MEMBER, state_key))  # 4.1 the target's membership
        membership = content.get("membership")
        if membership in _JOIN_RULES_MEMBERSHIPS:
            keys.append(_JOIN_RULES_KEY)  # 4.2
        if membership == "invite":
            invite = content.get("third_party_invite")  # 4.3
            signed = invite.get("signed") if isinstance(invite, Mapping) else None
            token = signed.get("token") if isinstance(signed, Mapping) else None
            if isinstance(token, str):
                keys.append((_THIRD_PARTY_INVITE, token))
        elif membership == "join":
            authoriser = content.get(_AUTHORISER)  # 4.4 (v8+)
            if isinstance(authoriser, str) and authoriser not in (sender, state_key):
                keys.append((_MEMBER, authoriser))
    return keys


def compute_auth_keys(event: Pdu) -> frozenset[StateKey]:
    """The (type, state_key) pairs the auth-events selection algorithm wants for `event`.

    Always includes `("m.room.create", "")` for a non-create event (also in v12, where the
    create event is implied by the room ID rather than listed); empty for a create event.
    Depends only on the event itself, so it is kept on the event (`Pdu.auth_keys_memo`).
    """
    keys = event.auth_keys_memo
    if keys is None:
        keys = frozenset(_auth_keys(event.type, event.sender, event.state_key, event.content))
        _set_auth_keys_memo(event, keys)  # a cache on a frozen value
    return keys


# (The slot's own setter: `object.__setattr__` costs more, once per event.)
_set_auth_keys_memo = Pdu.__dict__["auth_keys_memo"].__set__


def select_auth_events(
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
    rules: RoomVersionRules,
    state: Mapping[StateKey, EventId],
) -> list[EventId]:
    """The `auth_events` of a new event, as they go on the wire, taken from `state`.

    Order: create (not in v12), power levels, sender's membership, target's membership, join
    rules, third-party invite, authorising user's membership; entries absent from `state` are
    skipped.
    """
    skip_create = not rules.create_event_in_auth_events
    selected: list[EventId] = []
    for key in _auth_keys(event_type, sender, state_key, content):
        if skip_create and key == CREATE_KEY:
            continue
        event_id = state.get(key)
        if event_id is not None and event_id not in selected:
            selected.append(event_id)
    return selected


# ----------------------------------------------------------------------------------------------
# Rules about the auth_events list (v11 rules 2.1-2.5; v12 rules 2 and 3.1-3.4)


def check_auth_events(
    event: Pdu,
    auth_events: Mapping[EventId, Pdu],
    is_rejected: Callable[[EventId], bool],
) -> dict[StateKey, Pdu]:
    """Check the event's `auth_events` list and return it keyed by (type, state_key).

    `auth_events` maps every ID of `event.auth_event_ids` (the implied create event included in
    v12) to its event; an ID it lacks raises `AUTH_EVENTS_MISSING`. `is_rejected` tells whether
    an event was rejected. The result (create included) is the state `check_auth` needs. A
    create event has no auth events to check: the result is empty.
    """
    if event.type == _CREATE:
        return {}
    by_key = _auth_events_if_valid(event, auth_events, is_rejected)
    if by_key is not None:
        return by_key
    return _check_auth_events_in_order(event, auth_events, is_rejected)


def _auth_events_if_valid(
    event: Pdu,
    auth_events: Mapping[EventId, Pdu],
    is_rejected: Callable[[EventId], bool],
) -> dict[StateKey, Pdu] | None:
    """`check_auth_events`' result in one pass when every rule holds, else None.

    The usual case: each rule is tested once per entry, without keeping the order in which
    the rules are checked; any failure leaves the precise error (the first rule broken, in the
    spec's order) to `_check_auth_events_in_order`. Returns exactly what that function returns.
    """
    room_id = event.room_id
    by_key: dict[StateKey, Pdu] = {}
    allowed = compute_auth_keys(event)
    if event.rules.room_id_is_create_event_hash:
        create_id = create_event_id_from_room_id(room_id)
        create = auth_events.get(create_id)
        if (
            create is None
            or create.event_id != create_id
            or create.type != _CREATE
            or create.state_key != ""
            or is_rejected(create_id)
        ):
            return None
        by_key[CREATE_KEY] = create
        allowed = allowed - {CREATE_KEY}
    for event_id in event.auth_events:
        auth_event = auth_events.get(event_id)
        if auth_event is None or auth_event.event_id != event_id:
            return None
        key = auth_event.state_tuple
        if key is None:
            return None
        # A key already in `by_key` is a duplicate or (v12) a second create event: neither
        # is allowed.
        if key in by_key or key not in allowed or auth_event.room_id != room_id:
            return None
        if is_rejected(event_id):
            return None
        by_key[key] = auth_event
    if CREATE_KEY not in by_key:
        return None
    return by_key


def _check_auth_events_in_order(
    event: Pdu,
    auth_events: Mapping[EventId, Pdu],
    is_rejected: Callable[[EventId], bool],
) -> dict[StateKey, Pdu]:
    """`check_auth_events` rule by rule, in the spec's order (raises the first failure)."""
    rules = event.rules
    room_id = event.room_id
    by_key: dict[StateKey, Pdu] = {}
    if rules.room_id_is_create_event_hash:
        # [2] the room ID must be the ID of an accepted create event
        create_id = create_event_id_from_room_id(room_id)
        create = _lookup(event, auth_events, create_id)
        if create.type != _CREATE or create.state_key != "" or is_rejected(create_id):
            raise AuthError(
                AuthRule.ROOM_ID_NOT_ACCEPTED_CREATE,
                f"{create_id} is not an accepted m.room.create event",
                event.event_id,
            )
        by_key[CREATE_KEY] = create
    listed = [(_lookup(event, auth_events, event_id), event_id) for event_id in event.auth_events]
    # 2.1 [3.1] duplicate (type, state_key) pairs
    seen: set[object] = set()
    for auth_event, event_id in listed:
        key = auth_event.state_tuple
        if key in seen:
            raise AuthError(
                AuthRule.AUTH_EVENTS_DUPLICATE, f"{key} is cited twice ({event_id})", event.event_id
            )
        seen.add(key)
    # 2.2 [3.2] entries the selection algorithm would not pick (v12: never the create event)
    allowed = compute_auth_keys(event)
    if rules.room_id_is_create_event_hash:
        allowed = allowed - {CREATE_KEY}
    for auth_event, event_id in listed:
        key = auth_event.state_tuple
        if key is None or key not in allowed:
            raise AuthError(
                AuthRule.AUTH_EVENTS_NOT_SELECTABLE,
                f"{event_id} ({auth_event.type}, {auth_event.state_key!r}) is not selectable",
                event.event_id,
            )
        by_key[key] = auth_event
    # 2.3 [3.3] entries that were themselves rejected
    for _auth_event, event_id in listed:
        if is_rejected(event_id):
            raise AuthError(
                AuthRule.AUTH_EVENTS_REJECTED, f"{event_id} was rejected", event.event_id
            )
    # 2.4 (v10, v11) no create event among them
    if CREATE_KEY not in by_key:
        raise AuthError(AuthRule.AUTH_EVENTS_NO_CREATE, "no m.room.create", event.event_id)
    # 2.5 [3.4] entries of another room
    for auth_event, event_id in listed:
        if auth_event.room_id != room_id:
            raise AuthError(
                AuthRule.AUTH_EVENTS_WRONG_ROOM,
                f"{event_id} is in {auth_event.room_id}",
                event.event_id,
            )
    return by_key


def _lookup(event: Pdu, auth_events: Mapping[EventId, Pdu], event_id: EventId) -> Pdu:
    auth_event = auth_events.get(event_id)
    if auth_event is None or auth_event.event_id != event_id:
        raise AuthError(
            AuthRule.AUTH_EVENTS_MISSING, f"auth event {event_id} is not known", event.event_id
        )
    return auth_event


# ----------------------------------------------------------------------------------------------
# State-dependent rules


def check_auth(event: Pdu, auth_state: StateMap) -> None:
    """Raise `AuthError` unless `event` is allowed against `auth_state`.

    Runs the create rules (1.x), m.federate, the member rules (restricted joins, third-party
    invites with their ed25519 signature check), sender joined, m.room.third_party_invite,
    required power level, `@` state keys and the power-levels rules of the event's room
    version, plus the s2s membership rule (DESIGN.md section 4). `auth_state` must hold
    `("m.room.create", "")` for a non-create event. The rules about the `auth_events` list
    itself are `check_auth_events`.

    Rule 4.2.1 (`join_authorised_via_users_server` needs a valid signature by that user's
    server) is checked here only as "`signatures` has an entry for that server": the
    cryptographic check runs earlier in the pipeline, where `signing.required_signers` lists
    that server.
    """
    event_type = event.type
    if event_type == _CREATE:
        _check_create(event)
        return
    create = auth_state.get(CREATE_KEY)
    if create is None:
        raise AuthError(AuthRule.AUTH_EVENTS_NO_CREATE, "no m.room.create", event.event_id)
    if create.room_id != event.room_id:
        raise AuthError(
            AuthRule.AUTH_EVENTS_WRONG_ROOM, f"create is in {create.room_id}", event.event_id
        )
    sender = event.sender
    # 3. [4.] m.federate: false keeps other servers' users out. Only the literal `false`
    # counts (Synapse treats any value but `true` as false).
    if create.content.get("m.federate") is False and server_of(sender) != server_of(create.sender):
        raise AuthError(AuthRule.FEDERATE_FALSE, f"{sender} may not federate", event.event_id)
    power_levels = auth_state.get(POWER_LEVELS_KEY)
    # 4. [5.]
    if event_type == _MEMBER:
        check_member_rules(event, auth_state, create, power_levels)
        return
    # 5. [6.] the sender must be joined
    sender_member = auth_state.get((_MEMBER, sender))
    if sender_member is None or sender_member.content.get("membership") != "join":
        raise AuthError(AuthRule.SENDER_NOT_JOINED, f"{sender} is not joined", event.event_id)
    sender_level = compute_user_level(sender, create, power_levels)
    # 6. [7.] m.room.third_party_invite: allowed iff the sender may invite
    if event_type == _THIRD_PARTY_INVITE:
        if sender_level < compute_named_level(power_levels, "invite"):
            raise AuthError(
                AuthRule.THIRD_PARTY_INVITE_INSUFFICIENT_POWER,
                f"{sender} may not invite",
                event.event_id,
            )
        return
    state_key = event.state_key
    # 7. [8.] the required power level
    required = compute_required_level(event_type, state_key is not None, power_levels)
    if required > sender_level:
        raise AuthError(
            AuthRule.INSUFFICIENT_POWER,
            f"{event_type} needs {required}, {sender} has {sender_level}",
            event.event_id,
        )
    # 8. [9.] state keyed by another user's ID
    if state_key is not None and state_key[:1] == "@" and state_key != sender:
        raise AuthError(
            AuthRule.STATE_KEY_IS_OTHER_USER, f"{sender} may not set {state_key}", event.event_id
        )
    # 9. [10.]
    if event_type == _POWER_LEVELS:
        check_power_levels_rules(event, create, power_levels, sender_level)
    # 10. [11.] otherwise allow


def _check_create(event: Pdu) -> None:
    """1. The m.room.create rules (nothing else applies to a create event)."""
    rules = event.rules
    content = event.content
    # 1.1
    if event.prev_events:
        raise AuthError(AuthRule.CREATE_HAS_PREV_EVENTS, "create has prev_events", event.event_id)
    # 1.2 (v10, v11): the room ID's domain is the sender's
    if rules.create_room_id_domain_must_match_sender and server_of(event.room_id) != server_of(
        event.sender
    ):
        raise AuthError(
            AuthRule.CREATE_ROOM_ID_DOMAIN,
            f"{event.room_id} is not on {event.sender}'s server",
            event.event_id,
        )
    # [1.2] (v12): no room_id (its room ID is its own event ID)
    if rules.room_id_is_create_event_hash and "room_id" in event.json:
        raise AuthError(AuthRule.CREATE_HAS_ROOM_ID, "v12 create has a room_id", event.event_id)
    # 1.3
    if "room_version" in content:
        version = content["room_version"]
        if not isinstance(version, str) or version not in KNOWN_ROOM_VERSIONS:
            raise AuthError(
                AuthRule.CREATE_UNKNOWN_ROOM_VERSION,
                f"room version {version!r:.40} is not recognised",
                event.event_id,
            )
    # 1.4 (v10)
    if rules.creator_in_content and "creator" not in content:
        raise AuthError(AuthRule.CREATE_NO_CREATOR, "content has no creator", event.event_id)
    # [1.4] (v12): additional_creators is a list of valid user IDs
    if rules.additional_creators and "additional_creators" in content:
        extra = content["additional_creators"]
        if not isinstance(extra, list):
            raise AuthError(
                AuthRule.CREATE_BAD_ADDITIONAL_CREATORS,
                "additional_creators is not a list",
                event.event_id,
            )
        for user_id in extra:
            try:
                parse_user_id(user_id)
            except IdError as exc:
                raise AuthError(
                    AuthRule.CREATE_BAD_ADDITIONAL_CREATORS, str(exc), event.event_id
                ) from None
    # 1.5 otherwise allow
