"""Test rooms: a `RoomBuilder` that makes signed events of a room version and tracks its state.

A room starts with create, the creator's join, power levels and join rules (each optional
where the spec allows). `build` makes an event against the current state (prev_events = the
last event, auth_events picked by `select_auth_events`) without applying it; `add` builds,
authorises (`check_auth_events` + `check_auth`) and applies; `append` applies an event without
any check, to set up states the rules would not reach on their own. Keys are throwaway: each
server's seed is the SHA-256 of its name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from s2s_node.core.auth import StateKey, check_auth, check_auth_events, select_auth_events
from s2s_node.core.events import Pdu, build_event, parse_pdu
from s2s_node.core.ids import EventId, server_of
from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.rules import RoomVersionRules, rules_for
from s2s_node.core.signing import add_hashes_and_signature

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:other.example"
START_TS = 1_700_000_000_000
VERSIONS = ("10", "11", "12")


def key_for(server: str) -> SigningKey:
    """The throwaway signing key of a test server."""
    return signing_key_from_seed(hashlib.sha256(server.encode()).digest())


def default_power_levels(
    rules: RoomVersionRules, creator: str, users: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Power levels as a room-creation preset sets them (v12: creators are not in `users`)."""
    all_users: dict[str, int] = {} if rules.creators_have_infinite_power else {creator: 100}
    all_users.update(users or {})
    return {
        "users": all_users,
        "users_default": 0,
        "events": {"m.room.tombstone": 150} if rules.tombstone_above_state_default else {},
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
    }


class RoomBuilder:
    """A room of one version, built one signed event at a time."""

    def __init__(
        self,
        version: str = "12",
        *,
        creator: str = ALICE,
        room_type: str | None = None,
        create_content: Mapping[str, Any] | None = None,
        power_levels: Mapping[str, Any] | None = None,
        power_users: Mapping[str, int] | None = None,
        creator_joins: bool = True,
        with_power_levels: bool = True,
        join_rule: str | None = "public",
        room_id: str | None = None,
    ) -> None:
        self.rules = rules_for(version)
        self.events: dict[EventId, Pdu] = {}
        self.state: dict[StateKey, Pdu] = {}
        self.rejected: set[EventId] = set()
        self.last: Pdu | None = None
        self._ts = START_TS
        content: dict[str, Any] = {"room_version": version}
        if self.rules.creator_in_content:
            content["creator"] = creator
        if room_type is not None:
            content["type"] = room_type
        content.update(create_content or {})
        if self.rules.room_id_is_create_event_hash:
            self._room_id: str | None = None
        else:
            self._room_id = room_id or f"!test:{server_of(creator)}"
        create = self.build(creator, "m.room.create", content, state_key="", prev_events=[])
        self.check(create)
        self.create = self.append(create)
        self._room_id = self.create.room_id
        if creator_joins:
            self.add(creator, "m.room.member", {"membership": "join"}, state_key=creator)
        if with_power_levels:
            pl = power_levels or default_power_levels(self.rules, creator, power_users)
            self.add(creator, "m.room.power_levels", pl, state_key="")
        if join_rule is not None:
            self.add(creator, "m.room.join_rules", {"join_rule": join_rule}, state_key="")

    @property
    def room_id(self) -> str:
        assert self._room_id is not None
        return self._room_id

    @property
    def state_ids(self) -> dict[StateKey, EventId]:
        return {key: pdu.event_id for key, pdu in self.state.items()}

    def build(
        self,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        prev_events: Sequence[str] | None = None,
        auth_events: Sequence[str] | None = None,
        state: Mapping[StateKey, Pdu] | None = None,
        cosigners: Sequence[str] = (),
        room_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Pdu:
        """A signed event against `state` (default: the current state), not applied.

        `cosigners` are further servers that sign it (e.g. the authorising server of a
        restricted join).
        """
        if prev_events is None:
            prev_events = [] if self.last is None else [self.last.event_id]
        if auth_events is None:
            current = self.state if state is None else state
            auth_events = select_auth_events(
                event_type,
                sender,
                state_key,
                content,
                self.rules,
                {key: pdu.event_id for key, pdu in current.items()},
            )
        parents = [self.events[EventId(p)] for p in prev_events if p in self.events]
        depth = 1 + max((parent.depth for parent in parents), default=0)
        self._ts += 1000
        server = server_of(sender)
        is_v12_create = (
            self.rules.room_id_is_create_event_hash
            and event_type == "m.room.create"
            and state_key == ""
        )
        pdu = build_event(
            rules=self.rules,
            room_id=room_id if room_id is not None or is_v12_create else self._room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=prev_events,
            auth_events=auth_events,
            depth=depth,
            origin_server_ts=self._ts,
            server_name=server,
            signing_key=key_for(server),
            state_key=state_key,
            extra=extra,
        )
        if cosigners:
            signed = pdu.json
            for cosigner in cosigners:
                signed = add_hashes_and_signature(signed, self.rules, cosigner, key_for(cosigner))
            pdu = parse_pdu(signed, self.rules)
        return pdu

    def check(self, pdu: Pdu, state: Mapping[StateKey, Pdu] | None = None) -> None:
        """Authorise `pdu` as a receiver would: its auth events, then against `state`."""
        known = {
            event_id: self.events[event_id]
            for event_id in pdu.auth_event_ids
            if event_id in self.events
        }
        auth_map = check_auth_events(pdu, known, self.rejected.__contains__)
        check_auth(pdu, auth_map)
        check_auth(pdu, self.state if state is None else state)

    def append(self, pdu: Pdu) -> Pdu:
        """Apply `pdu` without any check."""
        self.events[pdu.event_id] = pdu
        key = pdu.state_tuple
        if key is not None:
            self.state[key] = pdu
        self.last = pdu
        return pdu

    def add(
        self,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        **kwargs: Any,
    ) -> Pdu:
        """Build, authorise and apply an event (AuthError if the rules reject it)."""
        pdu = self.build(sender, event_type, content, state_key=state_key, **kwargs)
        self.check(pdu)
        return self.append(pdu)

    # -- shortcuts

    def member(
        self, sender: str, target: str, membership: str, *, apply: bool = True, **content: Any
    ) -> Pdu:
        """A membership event (`apply=False`: build only)."""
        body = {"membership": membership, **content}
        if apply:
            return self.add(sender, "m.room.member", body, state_key=target)
        return self.build(sender, "m.room.member", body, state_key=target)

    def join(self, user: str, **content: Any) -> Pdu:
        return self.member(user, user, "join", **content)

    def invite(self, sender: str, target: str) -> Pdu:
        return self.member(sender, target, "invite")

    def set_power_levels(self, sender: str, content: Mapping[str, Any]) -> Pdu:
        return self.add(sender, "m.room.power_levels", content, state_key="")

    def set_join_rule(self, sender: str, join_rule: str, **content: Any) -> Pdu:
        return self.add(
            sender, "m.room.join_rules", {"join_rule": join_rule, **content}, state_key=""
        )

    def power_levels_content(self) -> dict[str, Any]:
        """A deep-enough copy of the current power-levels content, to edit and send."""
        current = self.state[("m.room.power_levels", "")].content
        return {k: dict(v) if isinstance(v, dict) else v for k, v in current.items()}
