"""The redaction algorithm of room versions 10, 11 and 12.

Owns: `redact` (the redacted form of an event: what its reference hash and signatures cover)
and the lists of keys it keeps (`TOP_LEVEL_KEPT`, `TOP_LEVEL_KEPT_LEGACY`, `redact_content`'s
per-type content keys). Must not: hash, sign or check anything (`core.signing` does), or
mutate its input.

Spec: rooms/fragments/v9-redactions.md (v10) and v11-redactions.md (v11, v12).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from s2s_node.core.canonical import JsonDict
from s2s_node.core.rules import RoomVersionRules

# Top-level keys redaction keeps (room versions 11 and 12; v10 also keeps the legacy three).
TOP_LEVEL_KEPT = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
TOP_LEVEL_KEPT_LEGACY = TOP_LEVEL_KEPT | {"origin", "membership", "prev_state"}

# Content keys kept by redaction, per event type (room versions 10-12; flags add the rest).
_CONTENT_KEPT: dict[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": frozenset(
        {"ban", "events", "events_default", "kick", "redact", "state_default", "users"}
        | {"users_default"}
    ),
    "m.room.history_visibility": frozenset({"history_visibility"}),
}
_POWER_LEVELS_KEPT_WITH_INVITE = _CONTENT_KEPT["m.room.power_levels"] | {"invite"}
_REDACTION_KEPT = frozenset({"redacts"})
_NOTHING: frozenset[str] = frozenset()


def _content_kept(event_type: object, rules: RoomVersionRules) -> frozenset[str]:
    if not isinstance(event_type, str):
        return _NOTHING
    if event_type == "m.room.power_levels" and rules.redaction_keeps_power_levels_invite:
        return _POWER_LEVELS_KEPT_WITH_INVITE
    if event_type == "m.room.redaction" and rules.redaction_keeps_redacts:
        return _REDACTION_KEPT
    return _CONTENT_KEPT.get(event_type, _NOTHING)


def redact(event: Mapping[str, Any], rules: RoomVersionRules) -> JsonDict:
    """The redacted form of `event` under `rules` (a new dict; the input is not changed).

    Spec: rooms/fragments/v9-redactions.md (v10) and v11-redactions.md (v11, v12). Nested
    values that are kept are shared with the input, not copied.
    """
    # 1. Keep only the top-level keys of the room version's list.
    kept_top = (
        TOP_LEVEL_KEPT_LEGACY
        if rules.redaction_keeps_origin_membership_prev_state
        else TOP_LEVEL_KEPT
    )
    redacted: JsonDict = dict(event)
    if not kept_top.issuperset(redacted):
        for key in event.keys() - kept_top:
            del redacted[key]
    if "content" not in event:
        return redacted
    content = event["content"]
    if type(content) is not dict and not isinstance(content, Mapping):
        redacted["content"] = {}
        return redacted
    # 2. Inside `content`, keep only the keys listed for the event type.
    redacted["content"] = redact_content(content, event.get("type"), rules)
    return redacted


def redact_content(
    content: Mapping[str, Any], event_type: object, rules: RoomVersionRules
) -> JsonDict:
    """Step 2 of `redact`: the kept keys of an event's `content` (a new dict)."""
    if event_type == "m.room.create" and rules.redaction_keeps_all_create_content:
        return dict(content)
    kept_content = _content_kept(event_type, rules)
    new_content: JsonDict = {}
    for key, value in content.items():  # (a loop: cheaper than a comprehension for few keys)
        if key in kept_content:
            new_content[key] = value
    if (
        event_type == "m.room.member"
        and rules.redaction_keeps_third_party_invite_signed
        and "third_party_invite" in content
    ):
        invite = content["third_party_invite"]
        # UNCONFIRMED in the spec; as Synapse: an object without `signed` becomes {}, and a
        # non-object is dropped.
        if isinstance(invite, Mapping):
            new_content["third_party_invite"] = (
                {"signed": invite["signed"]} if "signed" in invite else {}
            )
    return new_content


__all__ = ["TOP_LEVEL_KEPT", "TOP_LEVEL_KEPT_LEGACY", "redact", "redact_content"]
