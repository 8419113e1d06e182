"""The m.room.power_levels auth rule (v11 rule 9, v12 rule 10).

Owns: validating a new power-levels content (integers only since room version 10, user IDs as
`users` keys, v12 creators never in `users`) and the checks of what a sender may change. Must
not: compute levels from a state (see `power`) or run the rules every event shares (see `auth`,
which calls `check_power_levels_rules` last).

Spec: rooms/v10.md, v11.md, v12.md "Authorisation rules", power-levels rule; digest 5.3 rule 9,
5.5 rule 10.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from s2s_node.core.auth_errors import AuthError, AuthRule
from s2s_node.core.events import Pdu
from s2s_node.core.ids import IdError, parse_user_id
from s2s_node.core.power import compute_creators

_NAMED_LEVELS: Final = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)
_LEVEL_MAPS: Final = ("events", "notifications")


def check_power_levels_rules(
    event: Pdu, create: Pdu, old_power_levels: Pdu | None, sender_level: int
) -> None:
    event_id = event.event_id
    content = event.content
    # 9.1 named levels are integers (v10+: no strings, and a bool is not an integer)
    for name in _NAMED_LEVELS:
        if name in content and type(content[name]) is not int:
            raise AuthError(
                AuthRule.POWER_LEVELS_NOT_INTEGER, f"{name} is not an integer", event_id
            )
    # 9.2 events and notifications map to integers
    for name in _LEVEL_MAPS:
        if name in content and not _is_level_map(content[name]):
            raise AuthError(
                AuthRule.POWER_LEVELS_BAD_LEVEL_MAP,
                f"{name} is not an object of integers",
                event_id,
            )
    # 9.3 users maps user IDs to integers.
    # UNCONFIRMED (digest 5.3 rule 9.3, open point 5): the rule reads as if `users` had to be
    # present; as Synapse, a missing `users` is taken as {}.
    users = content.get("users", {})
    if not _is_level_map(users):
        raise AuthError(
            AuthRule.POWER_LEVELS_BAD_USERS, "users is not an object of integers", event_id
        )
    for user_id in users:
        try:
            parse_user_id(user_id)
        except IdError as exc:
            raise AuthError(AuthRule.POWER_LEVELS_BAD_USERS, str(exc), event_id) from None
    # [10.4] (v12) creators never appear in users
    if create.rules.creators_have_infinite_power:
        for creator in compute_creators(create):
            if creator in users:
                raise AuthError(
                    AuthRule.POWER_LEVELS_CREATOR_IN_USERS,
                    f"creator {creator} is listed in users",
                    event_id,
                )
    # 9.4 the first power-levels event is allowed
    if old_power_levels is None:
        return
    old = old_power_levels.content
    sender = event.sender
    # 9.5 named levels added, changed or removed
    for name in _NAMED_LEVELS:
        old_value = _level_or_none(old, name)
        new_value = _level_or_none(content, name)
        if old_value == new_value:
            continue
        if (old_value is not None and old_value > sender_level) or (
            new_value is not None and new_value > sender_level
        ):
            raise AuthError(
                AuthRule.POWER_LEVELS_NAMED_LEVEL_ABOVE_SENDER,
                f"{name}: {old_value} -> {new_value} with level {sender_level}",
                event_id,
            )
    for name in _LEVEL_MAPS:
        old_map = _map_or_empty(old, name)
        new_map = _map_or_empty(content, name)
        # 9.6 entries changed or removed: the old value is at most the sender's level
        for key, old_value in old_map.items():
            if new_map.get(key) != old_value and _above(old_value, sender_level):
                raise AuthError(
                    AuthRule.POWER_LEVELS_OLD_EVENT_LEVEL_ABOVE_SENDER,
                    f"{name}[{key!r:.60}] was {old_value}",
                    event_id,
                )
        # 9.7 entries added or changed: the new value is at most the sender's level
        for key, new_value in new_map.items():
            if old_map.get(key) != new_value and new_value > sender_level:
                raise AuthError(
                    AuthRule.POWER_LEVELS_NEW_EVENT_LEVEL_ABOVE_SENDER,
                    f"{name}[{key!r:.60}] becomes {new_value}",
                    event_id,
                )
    old_users = _map_or_empty(old, "users")
    # 9.8 users changed or removed, except the sender's own entry: below the sender
    for user_id, old_value in old_users.items():
        if (
            user_id != sender
            and users.get(user_id) != old_value
            and _at_least(old_value, sender_level)
        ):
            raise AuthError(
                AuthRule.POWER_LEVELS_USER_NOT_BELOW_SENDER,
                f"{user_id} has {old_value}, not below {sender_level}",
                event_id,
            )
    # 9.9 users added or changed: at most the sender's level (the sender's own entry too)
    for user_id, new_value in users.items():
        if old_users.get(user_id) != new_value and new_value > sender_level:
            raise AuthError(
                AuthRule.POWER_LEVELS_NEW_USER_LEVEL_ABOVE_SENDER,
                f"{user_id} becomes {new_value}, above {sender_level}",
                event_id,
            )
    # 9.10 [10.11] otherwise allow


def _is_level_map(value: object) -> bool:
    return isinstance(value, dict) and all(type(level) is int for level in value.values())


def _level_or_none(content: Mapping[str, Any], name: str) -> int | None:
    value = content.get(name)
    return value if type(value) is int else None


def _map_or_empty(content: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = content.get(name)
    return value if isinstance(value, dict) else {}


def _above(value: object, level: int) -> bool:
    """`value > level` for a value of an old (accepted) power-levels event; a non-integer,
    which an accepted event cannot hold, is not above anything."""
    return type(value) is int and value > level


def _at_least(value: object, level: int) -> bool:
    """`value >= level`, with `_above`'s reading of non-integers."""
    return type(value) is int and value >= level
