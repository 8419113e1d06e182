"""What the s2s layer reads of a room: its kind, its servers, its tombstone, its own state.

Owns: `RoomSummary` and `read_summary` (run on a room graph in a reader thread), the liveness
and pairing rules of s2s rooms, and `compute_own_state` (the state a node carries over to a
successor room). Must not: write anything or talk to the network.

Design: DESIGN.md section 4 (two-party s2s rooms, at most one live room per pair) and section 5
(the s2s state of the old room is copied to the successor); docs/design.md section 9.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s2s_node.core.auth import S2S_ROOM_TYPES
from s2s_node.core.ids import EventId, RoomId, is_server_user, server_of
from s2s_node.core.room import RoomGraph

MEMBER = "m.room.member"
TOMBSTONE = "m.room.tombstone"
# State a node never copies into a successor: the successor's creation writes these itself
# (create, power levels, join rules, history visibility), memberships cannot be forged for
# other servers (digest 7.1 step 3), and a tombstone belongs to the old room only.
NOT_COPIED = frozenset(
    {
        "m.room.create",
        MEMBER,
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        TOMBSTONE,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tombstone:
    event_id: EventId
    sender: str
    replacement_room: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSummary:
    room_id: RoomId
    version: str
    #: `content.type` of the create event (None for an ordinary room without a type)
    room_type: str | None
    creator: str
    additional_creators: tuple[str, ...]
    #: `predecessor.room_id` of the create event
    predecessor: str | None
    #: user -> membership, current state
    members: Mapping[str, str] = field(default_factory=dict)
    power_content: Mapping[str, Any] = field(default_factory=dict)
    tombstone: Tombstone | None = None

    @property
    def is_s2s(self) -> bool:
        return self.room_type in S2S_ROOM_TYPES

    def membership_of(self, user: str) -> str | None:
        return self.members.get(user)

    def servers(self) -> set[str]:
        """Servers whose server user is joined or invited, a creator, or has power here: the
        parties of an s2s room, including a peer whose invite has not gone out yet."""
        users = {u for u, m in self.members.items() if m in ("join", "invite")}
        users |= {self.creator, *self.additional_creators}
        power_users = self.power_content.get("users")
        if isinstance(power_users, Mapping):
            users |= {u for u in power_users if isinstance(u, str)}
        return {server_of(u) for u in users if is_server_user(u)}

    def is_live_for(self, us: str) -> bool:
        """An s2s room we are joined to and that was not replaced."""
        return self.is_s2s and self.tombstone is None and self.membership_of(us) == "join"


def read_summary(graph: RoomGraph) -> RoomSummary:
    state = graph.current_state()
    create = graph.get_event(state[("m.room.create", "")])
    content = create.content
    predecessor = content.get("predecessor")
    predecessor_room = predecessor.get("room_id") if isinstance(predecessor, Mapping) else None
    extra = content.get("additional_creators")
    members: dict[str, str] = {}
    tombstone = None
    power: Mapping[str, Any] = {}
    for (event_type, state_key), event_id in state.items():
        if event_type == MEMBER:
            membership = graph.get_event(event_id).membership
            if membership is not None:
                members[state_key] = membership
        elif event_type == TOMBSTONE and state_key == "":
            pdu = graph.get_event(event_id)
            replacement = pdu.content.get("replacement_room")
            tombstone = Tombstone(
                event_id=pdu.event_id,
                sender=pdu.sender,
                replacement_room=replacement if isinstance(replacement, str) else None,
            )
        elif event_type == "m.room.power_levels" and state_key == "":
            power = graph.get_event(event_id).content
    room_type = content.get("type")
    return RoomSummary(
        room_id=graph.room_id,
        version=graph.rules.version,
        room_type=room_type if isinstance(room_type, str) else None,
        creator=create.sender,
        additional_creators=tuple(u for u in extra if isinstance(u, str))
        if isinstance(extra, list)
        else (),
        predecessor=predecessor_room if isinstance(predecessor_room, str) else None,
        members=members,
        power_content=dict(power),
        tombstone=tombstone,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StateItem:
    """A state event to carry over: (type, state_key, content)."""

    event_type: str
    state_key: str
    content: Mapping[str, Any]


def compute_own_state(graph: RoomGraph, our_server: str) -> list[StateItem]:
    """The current state events sent by users of `our_server` that a successor gets (policy
    rules `m.policy.rule.*` and `m.s2s.drop` included), in a stable order.

    Each node copies only its own state: a rule's sender says whose rule it is (DESIGN §6), so
    re-sending the peer's rules under our name would turn them around.
    """
    items = []
    for (event_type, state_key), event_id in sorted(graph.current_state().items()):
        if event_type in NOT_COPIED:
            continue
        pdu = graph.get_event(event_id)
        if server_of(pdu.sender) != our_server:
            continue
        items.append(StateItem(event_type=event_type, state_key=state_key, content=pdu.content))
    return items


def compute_state_contents(graph: RoomGraph) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(type, state_key) -> content of the current state."""
    return {key: graph.get_event(e).content for key, e in graph.current_state().items()}
