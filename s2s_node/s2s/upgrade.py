"""Performing an agreed upgrade (the initiator) and following it (the peer), MSC3325 style.

Owns: `perform_upgrade` (successor room with the agreed version and type, `predecessor`, the
peer as additional creator (v12) or at power 100, join rule `restricted` allowing members of
the old room, our s2s state copied; then the tombstone in the old room; then the invite) and
`follow_upgrade` (join the successor through the initiator, check that it is the agreed room,
copy our own state over). Both are idempotent, so a restart in the middle simply runs them
again. Must not: decide whether there is an agreement (the driver asks the machine) or keep
any record of its own (the DAG is the record: the successor's create names its predecessor,
the tombstone names the successor).

Spec: DESIGN.md section 5 "Performing the upgrade"; digest 7.1 (upgrade procedure), 7.2/7.3
(restricted joins let old-room members in without invites).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from s2s_node.core.auth import AuthError
from s2s_node.core.ids import RoomId, server_of, server_user
from s2s_node.core.negotiation import Agreement
from s2s_node.core.rules import rules_for
from s2s_node.net.client import FederationClientError
from s2s_node.rooms import LocalEvent
from s2s_node.s2s.summary import (
    TOMBSTONE,
    RoomSummary,
    StateItem,
    Tombstone,
    compute_own_state,
    compute_state_contents,
    read_summary,
)

if TYPE_CHECKING:
    from s2s_node.node import Node

logger = logging.getLogger(__name__)


class FollowError(Exception):
    """The room a tombstone pointed at is not the one the negotiation agreed on."""


async def summary_of(node: Node, room: str) -> RoomSummary:
    return await node.rooms.read(room, read_summary)


async def find_successor(node: Node, old: RoomId, summary: RoomSummary) -> RoomId | None:
    """The successor we created for `old`: the tombstone's room if we sent it, else a room
    whose create event we sent naming `old` as predecessor (a crash between the two)."""
    tombstone = summary.tombstone
    if tombstone is not None and server_of(tombstone.sender) == node.identifier:
        return RoomId(tombstone.replacement_room) if tombstone.replacement_room else None
    found = []
    for room_id in await node.rooms.room_ids():
        if room_id == old:
            continue
        other = await summary_of(node, room_id)
        if other.predecessor == old and other.creator == node.server_user:
            found.append(room_id)
    return min(found) if found else None


async def perform_upgrade(node: Node, old: RoomId, agreement: Agreement, peer: str) -> RoomId:
    """The initiator's steps after a DONE negotiation (digest 7.1, numbered as there)."""
    summary = await summary_of(node, old)
    successor = await find_successor(node, old, summary)
    if successor is None:
        # 1. We must be allowed to send the tombstone: build one (not stored) to check.
        await node.rooms.build(
            old,
            LocalEvent(
                event_type=TOMBSTONE,
                content={"body": "probe", "replacement_room": old},
                sender=node.server_user,
                state_key="",
            ),
        )
        own_state = await node.rooms.read(old, lambda g: compute_own_state(g, node.identifier))
        successor = await create_successor(node, summary, agreement, peer, own_state)
        logger.info("%s: upgraded to %s (version %s)", old, successor, agreement.version)
    if summary.tombstone is None:
        # 5. The tombstone in the old room.
        await node.send_event(
            old,
            TOMBSTONE,
            {
                "body": f"This room was upgraded to version {agreement.version}.",
                "replacement_room": successor,
            },
            state_key="",
        )
    # The invite (the peer may also join without it: the join rule lets old members in).
    peer_user = server_user(peer)
    after = await summary_of(node, successor)
    if after.membership_of(peer_user) is None:
        try:
            await node.invite(successor, peer_user)
        except (FederationClientError, AuthError, ValueError) as exc:
            logger.info("%s: invite of %s not delivered (%s)", successor, peer_user, exc)
    return successor


async def create_successor(
    node: Node,
    old: RoomSummary,
    agreement: Agreement,
    peer: str,
    own_state: list[StateItem],
) -> RoomId:
    """2.-3. The successor room, with its initial state, in one store write."""
    rules = rules_for(agreement.version)
    peer_user = server_user(peer)
    us = node.server_user
    creators = {us, peer_user}
    create_content: dict[str, Any] = {"predecessor": {"room_id": old.room_id}}
    power = {k: v for k, v in old.power_content.items() if k != "users"}
    old_users = old.power_content.get("users")
    users = dict(old_users) if isinstance(old_users, dict) else {}
    if rules.additional_creators:
        create_content["additional_creators"] = [peer_user]
        # v12: creators may not appear in the users map (their power is infinite).
        users = {u: level for u, level in users.items() if u not in creators}
    else:
        users = {**{u: lv for u, lv in users.items() if u not in creators}, us: 100, peer_user: 100}
    power["users"] = users
    extra = [
        LocalEvent(
            event_type="m.room.history_visibility",
            content={"history_visibility": "shared"},
            sender=us,
            state_key="",
        ),
        *(
            LocalEvent(
                event_type=item.event_type,
                content=item.content,
                sender=us,
                state_key=item.state_key,
            )
            for item in own_state
        ),
    ]
    return await node.rooms.create_room(
        creator=us,
        room_version=agreement.version,
        room_type=agreement.room_type or old.room_type,
        join_rule="restricted",
        join_allow=[{"type": "m.room_membership", "room_id": old.room_id}],
        power_content=power,
        create_content=create_content,
        extra_state=extra,
    )


def check_successor(successor: RoomSummary, old: RoomSummary, agreement: Agreement) -> None:
    """The peer's check that a tombstone leads to the room the negotiation agreed on."""
    wanted_type = agreement.room_type or old.room_type
    if successor.version != agreement.version:
        raise FollowError(f"version {successor.version}, agreed {agreement.version}")
    if successor.room_type != wanted_type:
        raise FollowError(f"room type {successor.room_type}, agreed {wanted_type}")
    if successor.predecessor != old.room_id:
        raise FollowError(f"its predecessor is {successor.predecessor}, not {old.room_id}")


async def follow_upgrade(
    node: Node, old: RoomId, tombstone: Tombstone, agreement: Agreement
) -> None:
    """The peer's steps: join the successor via the tombstone's sender (a restricted join as a
    member of the old room, or an invited join), check it, copy our own state over."""
    new = tombstone.replacement_room
    if new is None:
        raise FollowError("the tombstone names no replacement room")
    via = server_of(tombstone.sender)
    old_summary = await summary_of(node, old)
    if await node.rooms.room_rules(new) is None or (
        (await summary_of(node, new)).membership_of(node.server_user) != "join"
    ):
        await node.join(new, via=via)
    successor = await summary_of(node, RoomId(new))
    try:
        check_successor(successor, old_summary, agreement)
    except FollowError:
        await node.leave(new)
        raise
    await copy_own_state(node, old, RoomId(new))
    logger.info("%s: followed the upgrade to %s", old, new)


async def copy_own_state(node: Node, old: RoomId, new: RoomId) -> None:
    """Send into `new` our state of `old` that `new` does not hold yet (same content)."""
    own = await node.rooms.read(old, lambda g: compute_own_state(g, node.identifier))
    present = await node.rooms.read(new, compute_state_contents)
    for item in own:
        if present.get((item.event_type, item.state_key)) == item.content:
            continue
        await node.send_event(new, item.event_type, item.content, state_key=item.state_key)
