"""Policy rules are carried into the successor s2s room by an upgrade (DESIGN.md sections 5, 6)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from node_fixtures import address_of, wait_for
from test_policy_nodes import seed_rule, start, theirs

from s2s_node.core.policy import DROP_RULE
from s2s_node.modules.policy import PolicyRefusal
from s2s_node.node import Node


async def _rules_in(node: Node, peer: str, room: str) -> bool:
    return [r.room_id for r in node.rules(peer)] == [room]


async def test_rules_follow_the_upgrade_into_the_successor(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            purple = await start(stack, tmp_path / "purple")
            blue = await start(stack, tmp_path / "blue")
            for node, other in ((purple, blue), (blue, purple)):
                address = address_of(other)
                await node.add_peer_address(other.identifier, address.host, address.port)
            old = await purple.create_room(
                room_type="support.feline.s2s", room_version="11", invite=[blue.server_user]
            )
            await blue.join(old, via=purple.identifier)
            await wait_for(lambda: _shared(blue, purple.identifier, old))
            await wait_for(lambda: _shared(purple, blue.identifier, old))
            await purple.publish_rule(
                blue.identifier, DROP_RULE, seed_rule(purple), state_key="smith"
            )
            await theirs(blue, purple.identifier, 1)

            outcome = await purple.propose_upgrade(old)
            assert outcome.status == "upgraded", outcome
            new = outcome.new_room_id
            assert new is not None and new != old
            await wait_for(lambda: _rules_in(blue, purple.identifier, new))
            await wait_for(lambda: _rules_in(purple, blue.identifier, new))
            (info,) = blue.rules(purple.identifier)
            assert (info.direction, info.state_key, info.room_id) == ("theirs", "smith", new)

            john = f"@john:{blue.identifier}"
            room = await blue.create_room(creator=john)
            with pytest.raises(PolicyRefusal) as refused:
                await blue.invite(room, f"@smith:{purple.identifier}", sender=john)
            assert refused.value.rule.room_id == new


async def _shared(node: Node, peer: str, room: str) -> bool:
    return await node.s2s_room_with(peer) == room
