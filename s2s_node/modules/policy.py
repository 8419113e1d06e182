"""The built-in policy module: a peer's drop rules are honoured at the source.

Owns: the index of the rules published as state in the s2s rooms this node shares with its
peers (MSC2313 `m.policy.rule.user` / `.server` and `m.s2s.drop`, parsed by `core.policy`),
refusing a local event that a peer's rule matches before it is built (`PolicyRefusal`),
refusing or withholding a peer's event that breaks a rule this node published, and
publishing / removing / listing rules (`publish_rule`, `remove_rule`, `rules`, which the node
exposes). Must not: match events itself (`core.policy` does) or reach into the node beyond the
`ModuleContext`.

Which rules apply (DESIGN.md section 6):
- A rule's owner is the server of the sender of its state event. A peer's rules ("theirs")
  apply to what this node sends towards that peer: every local event whose destinations include
  the peer (the room's joined servers, and the target's server for a membership event).
- Only live s2s rooms count: a room with an `m.room.tombstone` is replaced by its successor
  (into which the upgrade copies the policy state).
- Events in s2s rooms, and events sent by or about a server user, are never matched: the s2s
  room is the channel rules are published, removed and negotiated in, and a rule must not be
  able to cut it.
- A rule state event whose content is not a usable rule (empty content is MSC2313's removal)
  is no rule.

Design: DESIGN.md section 6; docs/design.md section 10.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from s2s_node.core.canonical import encode_base64_urlsafe, encode_canonical_json
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId, RoomId, is_server_user, server_of
from s2s_node.core.policy import (
    RULE_TYPES,
    DropRule,
    RuleError,
    RuleReason,
    find_matching_rule,
    parse_rule,
)
from s2s_node.modules.api import Module, ModuleContext, ModuleVeto, OutgoingEvent, VetoReason

logger = logging.getLogger(__name__)

Direction = Literal["ours", "theirs"]
_MEMBER = "m.room.member"
_TOMBSTONE = ("m.room.tombstone", "")
# State changes that can change a room's rules or who it is shared with.
_INDEXED_TYPES = frozenset({"m.room.create", _MEMBER, "m.room.tombstone", *RULE_TYPES})


class PolicyRefusal(ModuleVeto):
    """A rule matches: the event was not built (outgoing) or is refused (incoming).

    Its message names the rule type, state key and room; `to_json()` is the `rule` object of
    the 403 body (DESIGN.md section 11).
    """

    reason = VetoReason.POLICY_RULE

    def __init__(self, rule: DropRule, *, owner: str) -> None:
        why = f" ({rule.reason})" if rule.reason else ""
        super().__init__(
            "policy",
            f"{rule.rule_type} rule {rule.state_key!r} in {rule.room_id}, published by "
            f"{owner}, matches: {rule.describe()}{why}",
        )
        self.rule = rule
        self.owner = owner

    def to_json(self) -> dict[str, Any]:
        rule = self.rule
        return {
            "rule": {"type": rule.rule_type, "state_key": rule.state_key, "room_id": rule.room_id}
        }


class PolicyDisabledError(Exception):
    """The policy module is off (`[policy] enabled = false`)."""


class NoS2SRoomError(LookupError):
    """This node shares no live s2s room with that peer (create one first)."""


class RuleConflictError(Exception):
    """The rule's state key holds the peer's own rule (pick another state key)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleInfo:
    """A rule in force, as `node.rules()` lists it."""

    peer: str
    room_id: RoomId
    type: str
    state_key: str
    content: Mapping[str, Any]
    direction: Direction

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "room_id": self.room_id,
            "type": self.type,
            "state_key": self.state_key,
            "content": dict(self.content),
            "direction": self.direction,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    owner: str
    content: Mapping[str, Any]
    rule: DropRule


@dataclass(frozen=True, slots=True, kw_only=True)
class _RoomRules:
    """What the index keeps of one s2s room."""

    room_id: RoomId
    servers: frozenset[str]  # servers whose server user is joined
    live: bool
    entries: tuple[_Entry, ...]
    occupants: Mapping[tuple[str, str], str]  # (type, state_key) -> sender server, any content


def compute_room_rules(room_id: RoomId, state: Mapping[tuple[str, str], Pdu]) -> _RoomRules:
    """The index entry of an s2s room from its current state."""
    servers = frozenset(
        server_of(key)
        for (event_type, key), pdu in state.items()
        if event_type == _MEMBER and is_server_user(key) and pdu.membership == "join"
    )
    entries = []
    occupants = {}
    for (event_type, key), pdu in sorted(state.items()):
        if event_type not in RULE_TYPES:
            continue
        occupants[(event_type, key)] = server_of(pdu.sender)
        if not pdu.content:
            continue  # removed (MSC2313)
        try:
            rule = parse_rule(event_type, key, room_id, pdu.content)
        except RuleError as exc:
            logger.info("ignoring rule %s %r in %s: %s", event_type, key, room_id, exc)
            continue
        entries.append(_Entry(owner=server_of(pdu.sender), content=pdu.content, rule=rule))
    return _RoomRules(
        room_id=room_id,
        servers=servers,
        live=_TOMBSTONE not in state,
        entries=tuple(entries),
        occupants=occupants,
    )


def compute_state_key(rule_type: str, content: Mapping[str, Any]) -> str:
    """The default state key of a rule: a hash of its type and content (publishing the same
    rule twice is one rule)."""
    digest = hashlib.sha256(encode_canonical_json({"type": rule_type, "content": content}))
    return "rule." + encode_base64_urlsafe(digest.digest()[:12])


class PolicyModule(Module):
    """DESIGN.md section 6. Built in; on unless `[policy] enabled = false`."""

    name: ClassVar[str] = "policy"
    event_types: ClassVar[frozenset[str]] = _INDEXED_TYPES

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self._context: ModuleContext | None = None
        self._rooms: dict[RoomId, _RoomRules] = {}
        self.refused_outgoing = 0
        self.refused_incoming = 0

    @property
    def context(self) -> ModuleContext:
        if self._context is None:
            raise RuntimeError("the policy module has not started")
        return self._context

    # -- the index

    async def start(self, context: ModuleContext) -> None:
        self._context = context
        for room_id in await context.s2s_rooms():
            await self.refresh(room_id)

    async def on_event(self, event: Pdu) -> None:
        if event.state_key is not None:
            await self.refresh(event.room_id)

    async def refresh(self, room_id: str) -> None:
        """Re-read one s2s room's rules from its current state."""
        state = await self.context.room_state(room_id)
        self._rooms[RoomId(room_id)] = compute_room_rules(RoomId(room_id), state)

    def _shared_rooms(self, peer: str) -> list[_RoomRules]:
        us = self.context.identifier
        return [
            r
            for _, r in sorted(self._rooms.items())
            if r.live and peer in r.servers and us in r.servers
        ]

    def _rules_of(self, peer: str, owner: str) -> list[DropRule]:
        return [e.rule for r in self._shared_rooms(peer) for e in r.entries if e.owner == owner]

    def _is_exempt(self, room_id: str, sender: str, target: str | None) -> bool:
        return (
            room_id in self._rooms
            or is_server_user(sender)
            or (target is not None and is_server_user(target))
        )

    # -- enforcement

    async def check_outgoing(self, event: OutgoingEvent) -> None:
        """A peer's rule matching a local event towards it: `PolicyRefusal`, nothing built."""
        target = event.state_key if event.event_type == _MEMBER else None
        if event.s2s or self._is_exempt(event.room_id, event.sender, target):
            return
        fields = event.to_matchable()
        for peer in sorted(event.destinations):
            rule = find_matching_rule(self._rules_of(peer, peer), fields)
            if rule is not None:
                self.refused_outgoing += 1
                raise PolicyRefusal(rule, owner=peer)

    async def check_incoming(self, event: Pdu) -> None:
        """A peer's event that breaks a rule this node published for that peer."""
        origin = server_of(event.sender)
        target = event.state_key if event.type == _MEMBER else None
        if origin == self.context.identifier or self._is_exempt(
            event.room_id, event.sender, target
        ):
            return
        rules = self._rules_of(origin, self.context.identifier)
        if not rules or await self.context.is_s2s_room(event.room_id):
            return
        rule = find_matching_rule(rules, event.json)
        if rule is not None:
            self.refused_incoming += 1
            raise PolicyRefusal(rule, owner=self.context.identifier)

    # -- publishing and listing (exposed as node.publish_rule / remove_rule / rules)

    def room_with(self, peer: str) -> RoomId | None:
        """The live s2s room shared with `peer` as the index knows it (the first by room ID if
        there are several)."""
        rooms = self._shared_rooms(peer)
        return rooms[0].room_id if rooms else None

    async def _room_for(self, peer: str) -> RoomId:
        room_id = await self.context.s2s_room_with(peer)
        if room_id is None:
            raise NoS2SRoomError(f"no live s2s room shared with {peer[:60]}")
        if room_id not in self._rooms:
            await self.refresh(room_id)
        return room_id

    async def publish_rule(
        self,
        peer: str,
        rule_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
    ) -> EventId:
        """Publish a rule for `peer` in the s2s room shared with it, as `@policy:<us>`.

        `RuleError` if the content is not a usable rule; `NoS2SRoomError`; `RuleConflictError`
        if the state key holds the peer's rule.
        """
        room_id = await self._room_for(peer)
        key = state_key if state_key is not None else compute_state_key(rule_type, content)
        parse_rule(rule_type, key, room_id, content)  # RuleError: refuse unusable rules
        return await self._put(room_id, rule_type, key, content)

    async def remove_rule(self, peer: str, rule_type: str, state_key: str) -> EventId:
        """Remove one of our rules: the same state key with empty content (MSC2313)."""
        if rule_type not in RULE_TYPES:
            raise RuleError(RuleReason.NOT_A_RULE_TYPE, f"{rule_type} is not a rule type")
        return await self._put(await self._room_for(peer), rule_type, state_key, {})

    async def _put(
        self, room_id: RoomId, rule_type: str, state_key: str, content: Mapping[str, Any]
    ) -> EventId:
        owner = self._rooms[room_id].occupants.get((rule_type, state_key))
        if owner is not None and owner != self.context.identifier:
            raise RuleConflictError(
                f"{rule_type} {state_key!r} in {room_id} is {owner[:60]}'s; use another state key"
            )
        pdu = await self.context.send_event(room_id, rule_type, content, state_key=state_key)
        await self.refresh(room_id)
        return pdu.event_id

    def rules(self, peer: str | None = None) -> list[RuleInfo]:
        """The rules in force: ours (we ask the peer to drop) and theirs (we drop for them)."""
        us = self.context.identifier
        found = []
        for room in sorted(self._rooms.values(), key=lambda r: r.room_id):
            if not room.live or us not in room.servers:
                continue
            for entry in room.entries:
                others = sorted(room.servers - {us})
                if entry.owner == us:
                    peers, direction = others, "ours"
                elif entry.owner in room.servers:
                    peers, direction = [entry.owner], "theirs"
                else:
                    continue
                for other in peers:
                    if peer is not None and other != peer:
                        continue
                    found.append(
                        RuleInfo(
                            peer=other,
                            room_id=room.room_id,
                            type=entry.rule.rule_type,
                            state_key=entry.rule.state_key,
                            content=entry.content,
                            direction=direction,  # type: ignore[arg-type]
                        )
                    )
        return found


__all__ = [
    "NoS2SRoomError",
    "PolicyDisabledError",
    "PolicyModule",
    "PolicyRefusal",
    "RuleConflictError",
    "RuleInfo",
    "compute_room_rules",
    "compute_state_key",
]
