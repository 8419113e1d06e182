"""Drop rules: parsing MSC2313 and m.s2s.drop rules, and matching events (DESIGN section 6)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.policy import (
    DROP_RULE,
    SERVER_RULE,
    USER_RULE,
    DropRule,
    RuleError,
    RuleReason,
    find_matching_rule,
    is_glob_match,
    is_rule_match,
    parse_rule,
)

PURPLE = "purple.example"
ROOM = "!s2s:purple.example"


def invite(sender: str, target: str) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "sender": sender,
        "state_key": target,
        "content": {"membership": "invite"},
    }


def drop(match: dict[str, Any], state_key: str = "r1") -> DropRule:
    return parse_rule(DROP_RULE, state_key, ROOM, {"match": match, "reason": "spam"})


def test_seed_scenario_drop_invites_to_smith_from_john() -> None:
    rule = drop(
        {
            "type": "m.room.member",
            "content.membership": "invite",
            "sender": "@john:*",
            "state_key": f"@smith:{PURPLE}",
        }
    )
    assert is_rule_match(rule, invite("@john:blue.example", f"@smith:{PURPLE}"))
    assert not is_rule_match(rule, invite("@jane:blue.example", f"@smith:{PURPLE}"))
    assert not is_rule_match(rule, invite("@john:blue.example", f"@smythe:{PURPLE}"))
    join = invite("@john:blue.example", f"@smith:{PURPLE}")
    join["content"] = {"membership": "join"}
    assert not is_rule_match(rule, join)
    assert "m.room.member" in rule.describe()


def test_missing_or_non_string_field_does_not_match() -> None:
    rule = drop({"content.body": "*"})
    assert not is_rule_match(rule, {"type": "m.room.message", "content": {}})
    assert not is_rule_match(rule, {"type": "m.room.message", "content": {"body": 3}})
    assert is_rule_match(rule, {"type": "m.room.message", "content": {"body": ""}})


def test_user_rule_matches_sender_and_member_target() -> None:
    rule = parse_rule(USER_RULE, "u1", ROOM, {"entity": "@john:*", "recommendation": "m.ban"})
    assert is_rule_match(rule, {"type": "m.room.message", "sender": "@john:blue.example"})
    assert is_rule_match(rule, invite("@alice:blue.example", "@john:blue.example"))
    assert not is_rule_match(rule, {"type": "m.room.message", "sender": "@jo:blue.example"})
    # A message's state_key is not a target.
    assert not is_rule_match(
        rule, {"type": "x", "sender": "@a:b.example", "state_key": "@john:b.example"}
    )


def test_server_rule_matches_the_server_part() -> None:
    rule = parse_rule(SERVER_RULE, "s1", ROOM, {"entity": "*.evil", "recommendation": "m.ban"})
    assert is_rule_match(rule, {"type": "m.room.message", "sender": "@a:x.evil"})
    assert is_rule_match(rule, invite("@a:good.example", "@b:x.evil"))
    assert not is_rule_match(rule, {"type": "m.room.message", "sender": "@a:good.example"})


@pytest.mark.parametrize(
    ("rule_type", "content", "reason"),
    [
        ("m.room.topic", {}, RuleReason.NOT_A_RULE_TYPE),
        (USER_RULE, {"recommendation": "m.ban"}, RuleReason.BAD_GLOB),
        (USER_RULE, {"entity": "@a:*", "recommendation": "m.mute"}, RuleReason.NOT_BAN),
        (
            USER_RULE,
            {"entity": "@a:*", "recommendation": "m.ban", "reason": 3},
            RuleReason.BAD_REASON,
        ),
        (DROP_RULE, {"match": {}}, RuleReason.BAD_MATCH),
        (DROP_RULE, {"match": "type"}, RuleReason.BAD_MATCH),
        (DROP_RULE, {"match": {"type": ""}}, RuleReason.BAD_GLOB),
        (DROP_RULE, {"match": {"type": 5}}, RuleReason.BAD_GLOB),
        (DROP_RULE, {"match": {"content..x": "a"}}, RuleReason.BAD_FIELD),
        (DROP_RULE, {"match": {"a.b.c.d.e": "a"}}, RuleReason.BAD_FIELD),
        (DROP_RULE, {"match": {"type": "x" * 256}}, RuleReason.BAD_GLOB),
        (DROP_RULE, {"match": {f"f{i}": "a" for i in range(9)}}, RuleReason.BAD_MATCH),
    ],
)
def test_unusable_rules_are_typed_errors(
    rule_type: str, content: dict[str, Any], reason: RuleReason
) -> None:
    with pytest.raises(RuleError) as info:
        parse_rule(rule_type, "k", ROOM, content)
    assert info.value.reason is reason


def test_first_matching_rule_is_stable() -> None:
    rules = [drop({"type": "m.room.*"}, "b"), drop({"type": "m.room.member"}, "a")]
    found = find_matching_rule(rules, {"type": "m.room.member"})
    assert found is not None
    assert found.state_key == "a"
    assert find_matching_rule(reversed(rules), {"type": "m.room.member"}) == found
    assert find_matching_rule(rules, {"type": "org.example"}) is None


@pytest.mark.parametrize(
    ("glob", "value", "expected"),
    [
        ("*", "", True),
        ("@john:*", "@john:x", True),
        ("@john:*", "@johnny:x", False),
        ("?", "a", True),
        ("?", "", False),
        ("a.b", "axb", False),
        ("[a]", "[a]", True),
        ("a*b*c", "aXXbYYc", True),
        ("*.evil", "evil", False),
    ],
)
def test_glob_semantics(glob: str, value: str, expected: bool) -> None:
    assert is_glob_match(glob, value) is expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_literal_glob_without_wildcards_matches_only_itself(text: str) -> None:
    literal = text.replace("*", "").replace("?", "")
    assert is_glob_match(literal, literal)
    assert not is_glob_match(literal, literal + "x")
