"""Power levels: a user's level, the named levels and the level an event type requires.

Owns: reading an auth state's `m.room.create` and `m.room.power_levels` into integers, with the
room-version differences (v10: the creator is `content.creator`; v11: the create `sender`; v12:
every room creator is infinitely powerful). Must not: decide whether an event is allowed or
validate power-levels content (the auth rule "power levels" does that before an event can enter
any state; see `auth`).

Spec: server-server API "Definitions" (power level, required power level, invite/kick/ban
levels); the m.room.power_levels schema (defaults); rooms/v12.md "room creators" (MSC4289).
Digest sections 5.1 and 5.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from s2s_node.core.events import Pdu

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, Pdu]

CREATE_KEY: Final[StateKey] = ("m.room.create", "")
POWER_LEVELS_KEY: Final[StateKey] = ("m.room.power_levels", "")

INFINITE_POWER: Final = 2**53
"""A v12 room creator's power level. Legal levels are canonical-JSON integers (at most
2**53 - 1), so this sorts above all of them, and two creators compare equal (neither can kick or
ban the other: "target < sender" is false)."""

# Levels a room without an m.room.power_levels event (or a content without the key) uses.
NAMED_LEVEL_DEFAULTS: Final[Mapping[str, int]] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

# v10/v11 without a power-levels event: the creator has 100, everyone else 0.
_CREATOR_LEVEL_WITHOUT_POWER_LEVELS = 100


def compute_creators(create: Pdu) -> tuple[str, ...]:
    """v12: the room creators (the create `sender`, then `additional_creators` in order).

    v10/v11: the single creator whose special case the join rule and the power defaults use
    (`content.creator` in v10, which may be missing or not a string in a malformed event).
    """
    rules = create.rules
    content = create.content
    if rules.creator_in_content:
        creator = content.get("creator")
        return (creator,) if isinstance(creator, str) else ()
    if rules.additional_creators:
        extra = content.get("additional_creators")
        if isinstance(extra, list):
            return (create.sender, *(user for user in extra if isinstance(user, str)))
    return (create.sender,)


def compute_user_level(user_id: str, create: Pdu | None, power_levels: Pdu | None) -> int:
    """A user's power level, given the state's create and power-levels events.

    Values of an accepted power-levels event are integers (auth rule "power levels"); anything
    else falls back to the default rather than raising, so a malformed state cannot crash state
    resolution. This is on the hot path of `auth.check_auth`: no allocation.
    """
    if create is not None:
        if create.rules.creators_have_infinite_power:
            if user_id == create.sender:
                return INFINITE_POWER
            # Create rule 1.4 (v12) validated the list when the create event was accepted.
            extra = create.content.get("additional_creators")
            if create.rules.additional_creators and isinstance(extra, list) and user_id in extra:
                return INFINITE_POWER
        elif power_levels is None and user_id in compute_creators(create):
            return _CREATOR_LEVEL_WITHOUT_POWER_LEVELS
    if power_levels is None:
        return 0
    content = power_levels.content
    users = content.get("users")
    if isinstance(users, dict):
        level = users.get(user_id)
        if type(level) is int:
            return level
    default = content.get("users_default")
    return default if type(default) is int else 0


def compute_named_level(power_levels: Pdu | None, name: str) -> int:
    """`invite`, `kick`, `ban`, `redact`, `state_default`, ... with the schema's defaults."""
    if power_levels is not None:
        value = power_levels.content.get(name)
        if type(value) is int:
            return value
    return NAMED_LEVEL_DEFAULTS[name]


def compute_required_level(event_type: str, is_state: bool, power_levels: Pdu | None) -> int:
    """The *required power level* of an event type: `events[type]`, else `state_default` for
    state events, else `events_default`."""
    if power_levels is None:
        return NAMED_LEVEL_DEFAULTS["state_default" if is_state else "events_default"]
    content = power_levels.content
    events = content.get("events")
    if isinstance(events, dict):
        level = events.get(event_type)
        if type(level) is int:
            return level
    value = content.get("state_default" if is_state else "events_default")
    if type(value) is int:
        return value
    return NAMED_LEVEL_DEFAULTS["state_default" if is_state else "events_default"]


def get_power_level(user_id: str, auth_state: StateMap) -> int:
    """A user's power level in `auth_state`.

    v12 creators: `INFINITE_POWER`. Without a power-levels event: v10/v11 creator 100 (v10
    creator = content.creator, v11 = the create sender), everyone else 0. Without a create event
    in the map, nobody is a creator.
    """
    return compute_user_level(user_id, auth_state.get(CREATE_KEY), auth_state.get(POWER_LEVELS_KEY))
