"""Drop rules a peer publishes, and matching events against them.

Owns: parsing the rule state events a node publishes in the s2s room it shares with a peer —
MSC2313 `m.policy.rule.user` / `m.policy.rule.server` (`entity` glob, `recommendation` `m.ban`,
`reason`) and the finer `m.s2s.drop` (`match`: {field: glob}, `reason`) — and deciding whether an
event matches one. Must not: know rooms, peers or the node (the policy module applies the rules).

Design: DESIGN.md section 6. Globs are MSC2313's: `*` any run of characters, `?` one character,
everything else literal, matched against the whole value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from s2s_node.core.ids import server_of

USER_RULE = "m.policy.rule.user"
SERVER_RULE = "m.policy.rule.server"
DROP_RULE = "m.s2s.drop"
RULE_TYPES = frozenset({USER_RULE, SERVER_RULE, DROP_RULE})
BAN = "m.ban"

# Bounds on untrusted rule content: a glob is matched with a regex built from it, and every
# event sent towards the peer is matched against every rule.
MAX_GLOB_LENGTH = 255
MAX_MATCH_FIELDS = 8
MAX_FIELD_PATH_DEPTH = 4
MAX_REASON_LENGTH = 1024


class RuleReason(enum.Enum):
    """Why a rule event's content is not a usable rule (it is then ignored)."""

    NOT_A_RULE_TYPE = "not_a_rule_type"
    NO_ENTITY = "no_entity"
    NOT_BAN = "not_ban"
    BAD_MATCH = "bad_match"
    BAD_FIELD = "bad_field"
    BAD_GLOB = "bad_glob"
    BAD_REASON = "bad_reason"


class RuleError(ValueError):
    """Rule content that cannot be used; `reason` says why."""

    def __init__(self, reason: RuleReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class DropRule:
    """One rule, as published: where it lives and what it matches.

    `match` maps a field path (`type`, `sender`, `state_key`, `content.membership`, ...) to a
    glob; an event matches when every listed field exists, is a string, and matches its glob.
    User and server rules are turned into the same form (see `parse_rule`).
    """

    rule_type: str
    state_key: str
    room_id: str
    match: tuple[tuple[str, str], ...]
    reason: str
    entity: str | None = None

    def describe(self) -> str:
        """A one-line description for error messages."""
        if self.entity is not None:
            return f"{self.rule_type} {self.entity!r}"
        fields = ", ".join(f"{path}={glob}" for path, glob in self.match)
        return f"{self.rule_type} [{fields}]"


@lru_cache(maxsize=4096)
def _compile_glob(glob: str) -> re.Pattern[str]:
    parts = []
    for char in glob:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def is_glob_match(glob: str, value: str) -> bool:
    """MSC2313 glob match of the whole value."""
    return _compile_glob(glob).fullmatch(value) is not None


def _check_glob(glob: object, what: str) -> str:
    if not isinstance(glob, str) or not glob or len(glob) > MAX_GLOB_LENGTH:
        raise RuleError(RuleReason.BAD_GLOB, f"{what} must be a glob of 1-{MAX_GLOB_LENGTH} chars")
    return glob


def _check_reason(content: Mapping[str, Any]) -> str:
    reason = content.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
        raise RuleError(RuleReason.BAD_REASON, "reason must be a string")
    return reason


def parse_rule(
    rule_type: str, state_key: str, room_id: str, content: Mapping[str, Any]
) -> DropRule:
    """Turn a rule state event's content into a `DropRule`; `RuleError` if it is not usable.

    A user rule drops events sent by a matching user and membership events about one; a server
    rule does the same for users of a matching server. Only `m.ban` recommendations are rules.
    """
    if rule_type in (USER_RULE, SERVER_RULE):
        entity = _check_glob(content.get("entity"), "entity")
        if content.get("recommendation") != BAN:
            raise RuleError(RuleReason.NOT_BAN, "only the m.ban recommendation is enforced")
        return DropRule(
            rule_type=rule_type,
            state_key=state_key,
            room_id=room_id,
            match=(("entity", entity),),
            reason=_check_reason(content),
            entity=entity,
        )
    if rule_type == DROP_RULE:
        raw = content.get("match")
        if not isinstance(raw, Mapping) or not raw or len(raw) > MAX_MATCH_FIELDS:
            raise RuleError(
                RuleReason.BAD_MATCH, f"match must be an object of 1-{MAX_MATCH_FIELDS} fields"
            )
        match = []
        for path, glob in sorted(raw.items()):
            if (
                not isinstance(path, str)
                or not path
                or path.count(".") >= MAX_FIELD_PATH_DEPTH
                or any(not part for part in path.split("."))
            ):
                raise RuleError(RuleReason.BAD_FIELD, f"{path!r} is not a field path")
            match.append((path, _check_glob(glob, f"match[{path!r}]")))
        return DropRule(
            rule_type=rule_type,
            state_key=state_key,
            room_id=room_id,
            match=tuple(match),
            reason=_check_reason(content),
        )
    raise RuleError(RuleReason.NOT_A_RULE_TYPE, f"{rule_type} is not a rule type")


def _field(event: Mapping[str, Any], path: str) -> object:
    value: object = event
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _entity_values(rule_type: str, event: Mapping[str, Any]) -> list[str]:
    values = []
    sender = event.get("sender")
    if isinstance(sender, str):
        values.append(sender)
    if event.get("type") == "m.room.member" and isinstance(event.get("state_key"), str):
        values.append(event["state_key"])
    if rule_type == SERVER_RULE:
        return [server_of(user) for user in values if ":" in user]
    return values


def is_rule_match(rule: DropRule, event: Mapping[str, Any]) -> bool:
    """True if `event` (federation JSON, or the fields of one about to be built) matches."""
    if rule.entity is not None:
        return any(
            is_glob_match(rule.entity, value) for value in _entity_values(rule.rule_type, event)
        )
    for path, glob in rule.match:
        value = _field(event, path)
        if not isinstance(value, str) or not is_glob_match(glob, value):
            return False
    return True


def find_matching_rule(rules: Iterable[DropRule], event: Mapping[str, Any]) -> DropRule | None:
    """The first rule (in a stable order: type, then state key) that `event` matches."""
    for rule in sorted(rules, key=lambda r: (r.rule_type, r.state_key)):
        if is_rule_match(rule, event):
            return rule
    return None
