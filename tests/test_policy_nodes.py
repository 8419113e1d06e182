"""The policy module with two real nodes on 127.0.0.1 (DESIGN.md section 6, MSC3348's example).

Purple asks blue to drop invites from @john:* to @smith:purple; blue refuses them at the source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from node_fixtures import FAST_BACKOFF, address_of, make_shared_room, node_config, wait_for

from s2s_node.config import HostPort, PolicyConfig
from s2s_node.core.events import Pdu
from s2s_node.core.policy import DROP_RULE, USER_RULE, RuleError, RuleReason
from s2s_node.core.room import EventStatus
from s2s_node.modules.policy import (
    PolicyDisabledError,
    PolicyModule,
    PolicyRefusal,
    RuleConflictError,
)
from s2s_node.net.client import RemoteError
from s2s_node.node import Node, open_node
from s2s_node.rooms import Subscription


async def start(
    stack: contextlib.AsyncExitStack,
    data_dir: Path,
    *,
    policy: bool = True,
    peers: tuple[HostPort, ...] = (),
    port: int = 0,
) -> Node:
    config = dataclasses.replace(node_config(peers, port), policy=PolicyConfig(enabled=policy))
    return await stack.enter_async_context(
        open_node(config, data_dir=data_dir, backoff=FAST_BACKOFF)
    )


async def pair(a: Node, b: Node) -> str:
    """`a` and `b` know each other and share an s2s room (created by `a`)."""
    for node, other in ((a, b), (b, a)):
        address = address_of(other)
        await node.add_peer_address(other.identifier, address.host, address.port)
    room = await make_shared_room(a, b)
    await wait_for(lambda: _indexed(a, room, b.identifier))
    await wait_for(lambda: _indexed(b, room, a.identifier))
    return room


async def _indexed(node: Node, room: str, peer: str) -> bool:
    policy = node.modules.find(PolicyModule)
    if policy is None:
        return await node.servers_in_room(room) == {node.identifier, peer}
    return policy.room_with(peer) == room


def seed_rule(purple: Node) -> dict[str, Any]:
    return {
        "match": {
            "type": "m.room.member",
            "content.membership": "invite",
            "sender": "@john:*",
            "state_key": f"@smith:{purple.identifier}",
        },
        "reason": "john spams smith",
    }


async def theirs(node: Node, peer: str, count: int) -> None:
    await wait_for(
        lambda: _count(node, peer, "theirs", count),
    )


async def _count(node: Node, peer: str, direction: str, count: int) -> bool:
    return len([r for r in node.rules(peer) if r.direction == direction]) == count


def drain(subscription: Subscription) -> list[Pdu]:
    events: list[Pdu] = []
    while True:
        try:
            item = subscription._receive.receive_nowait()
        except trio.WouldBlock:
            return events
        if item is not None:
            events.append(item)


async def test_seed_scenario_blue_drops_johns_invites_to_smith(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            purple = await start(stack, tmp_path / "purple")
            blue = await start(stack, tmp_path / "blue")
            s2s = await pair(purple, blue)
            smith = f"@smith:{purple.identifier}"
            john = f"@john:{blue.identifier}"
            jane = f"@jane:{blue.identifier}"

            rule_event = await purple.publish_rule(blue.identifier, DROP_RULE, seed_rule(purple))
            (ours,) = purple.rules(blue.identifier)
            assert ours.direction == "ours" and ours.room_id == s2s and ours.type == DROP_RULE
            await theirs(blue, purple.identifier, 1)
            (info,) = blue.rules(purple.identifier)
            assert info.to_json() == {
                "peer": purple.identifier,
                "room_id": s2s,
                "type": DROP_RULE,
                "state_key": ours.state_key,
                "content": seed_rule(purple),
                "direction": "theirs",
            }
            # Published as purple's policy module user, invited by purple's server user.
            state = await blue.room_state(s2s)
            rule_pdu = state[(DROP_RULE, ours.state_key)]
            assert rule_pdu.event_id == rule_event
            assert rule_pdu.sender == f"@policy:{purple.identifier}"

            on_purple = purple.subscribe()
            room = await blue.create_room(creator=john)
            before = await blue.rooms.read(room, lambda g: g.forward_extremities)
            with pytest.raises(PolicyRefusal) as refused:
                await blue.invite(room, smith, sender=john)
            rule = refused.value.rule
            assert (rule.rule_type, rule.state_key, rule.room_id) == (
                DROP_RULE,
                ours.state_key,
                s2s,
            )
            for part in (DROP_RULE, ours.state_key, s2s):
                assert part in str(refused.value)
            assert refused.value.to_json() == {
                "rule": {"type": DROP_RULE, "state_key": ours.state_key, "room_id": s2s}
            }
            # It never entered blue's DAG.
            assert await blue.rooms.read(room, lambda g: g.forward_extremities) == before
            assert ("m.room.member", smith) not in await blue.room_state(room)

            # Someone else's invite still goes through (and John may invite someone else).
            alice = f"@alice:{purple.identifier}"
            await blue.invite(room, alice, sender=john)
            other = await blue.create_room(creator=jane)
            await blue.invite(other, smith, sender=jane)
            await wait_for(lambda: _has_invites(purple, {room, other}))
            received = [
                (p.room_id, p.state_key)
                for p in drain(on_purple)
                if p.type == "m.room.member" and p.membership == "invite"
            ]
            assert received == [(room, alice), (other, smith)]  # purple got nothing from John

            # Removing the rule restores John's invites.
            await purple.remove_rule(blue.identifier, DROP_RULE, ours.state_key)
            assert purple.rules(blue.identifier) == []
            await theirs(blue, purple.identifier, 0)
            await blue.invite(room, smith, sender=john)
            await wait_for(lambda: _has_invite_for(purple, room, smith))


async def _has_invites(node: Node, rooms: set[str]) -> bool:
    return rooms <= set(node.invites)


async def _has_invite_for(node: Node, room: str, user: str) -> bool:
    invite = node.invites.get(room)  # type: ignore[call-overload]
    return invite is not None and invite.event.state_key == user


async def test_user_and_server_rules_refuse_messages_into_rooms_the_peer_is_in(
    tmp_path: Path,
) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            purple = await start(stack, tmp_path / "purple")
            blue = await start(stack, tmp_path / "blue")
            await pair(purple, blue)
            john = f"@john:{blue.identifier}"
            smith = f"@smith:{purple.identifier}"
            room = await blue.create_room(creator=john)
            await blue.invite(room, smith, sender=john)
            await wait_for(lambda: _has_invite_for(purple, room, smith))
            await purple.join(room, via=blue.identifier, user=smith)
            await blue.send_event(room, "m.room.message", {"body": "hi"}, sender=john)

            await purple.publish_rule(
                blue.identifier,
                USER_RULE,
                {"entity": "@john:*", "recommendation": "m.ban", "reason": "spam"},
                state_key="john",
            )
            await theirs(blue, purple.identifier, 1)
            with pytest.raises(PolicyRefusal) as refused:
                await blue.send_event(room, "m.room.message", {"body": "again"}, sender=john)
            assert refused.value.rule.rule_type == USER_RULE
            assert refused.value.rule.state_key == "john"
            # A join through purple is refused before the handshake.
            with pytest.raises(PolicyRefusal):
                await blue.join(room, via=purple.identifier, user=john)
            # A room purple is not in is not purple's business.
            alone = await blue.create_room(creator=john)
            await blue.send_event(alone, "m.room.message", {"body": "alone"}, sender=john)
            # A rule with a bad state key owner or content is refused at publish time.
            with pytest.raises(RuleError) as bad:
                await purple.publish_rule(blue.identifier, USER_RULE, {"entity": "@x:*"})
            assert bad.value.reason is RuleReason.NOT_BAN
            # Blue cannot overwrite (or remove) purple's rule in the shared room.
            with pytest.raises(RuleConflictError):
                await blue.remove_rule(purple.identifier, USER_RULE, "john")


async def test_peer_ignoring_rules_invite_refused_403_message_withheld(tmp_path: Path) -> None:
    """Blue runs without the policy module: purple enforces its own rules at ingest."""
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            purple = await start(stack, tmp_path / "purple")
            blue = await start(stack, tmp_path / "blue", policy=False)
            s2s = await pair(purple, blue)
            with pytest.raises(PolicyDisabledError):
                blue.rules()
            smith = f"@smith:{purple.identifier}"
            john = f"@john:{blue.identifier}"
            await purple.publish_rule(
                blue.identifier, DROP_RULE, seed_rule(purple), state_key="invites"
            )
            await purple.publish_rule(
                blue.identifier,
                DROP_RULE,
                {"match": {"type": "m.room.message", "sender": "@john:*"}},
                state_key="messages",
            )
            await wait_for(lambda: _state_has(blue, s2s, (DROP_RULE, "messages")))

            # /invite: refusing is safe, the invite is in no DAG yet -> 403 with the rule.
            room = await blue.create_room(creator=john)
            with pytest.raises(RemoteError) as refused:
                await blue.invite(room, smith, sender=john)
            assert refused.value.status == 403
            assert refused.value.errcode == "M_FORBIDDEN"
            assert isinstance(refused.value.body, dict)
            assert refused.value.body["rule"] == {
                "type": DROP_RULE,
                "state_key": "invites",
                "room_id": s2s,
            }
            assert room not in purple.invites

            # In a shared DAG: accepted as the peer sees it, withheld from local subscribers.
            jane = f"@jane:{blue.identifier}"
            room = await blue.create_room(creator=jane)
            await blue.invite(room, smith, sender=jane)
            await wait_for(lambda: _has_invite_for(purple, room, smith))
            await purple.join(room, via=blue.identifier, user=smith)
            await blue.invite(room, john, sender=jane)
            await blue.send_event(
                room, "m.room.member", {"membership": "join"}, state_key=john, sender=john
            )
            on_purple = purple.subscribe(room)
            spam = await blue.send_event(room, "m.room.message", {"body": "spam"}, sender=john)
            fine = await blue.send_event(room, "m.room.message", {"body": "fine"}, sender=jane)
            got = []
            async for pdu in on_purple:
                got.append(pdu.event_id)
                if pdu.event_id == fine.event_id:
                    break
            assert spam.event_id not in got
            assert purple.modules.withheld == 1
            status = await purple.rooms.read(room, lambda g: g.status(spam.event_id))
            assert status is EventStatus.ACCEPTED  # in the DAG, as on blue
            # Purple's next event builds on the same extremities as blue: blue accepts it, and
            # both nodes end with the same DAG tips and state.
            reply = await purple.send_event(room, "m.room.message", {"body": "ok"}, sender=smith)
            assert spam.event_id in reply.prev_events or fine.event_id in reply.prev_events
            await wait_for(lambda: _same_tips(purple, blue, room))
            verdict = await blue.rooms.read(room, lambda g: g.status(reply.event_id))
            assert verdict is EventStatus.ACCEPTED
            # Nor do Smith's reads of the stored history over the client API show it.
            _, token = await purple.create_token("smith")
            path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/messages?dir=b&limit=50"
            history = await _client_get(purple, token, path)
            listed = [event["event_id"] for event in history["chunk"]]
            assert fine.event_id in listed
            assert spam.event_id not in listed
            sync = await _client_get(purple, token, "/_matrix/client/v3/sync")
            timeline = [e["event_id"] for e in sync["rooms"]["join"][room]["timeline"]["events"]]
            assert fine.event_id in timeline
            assert spam.event_id not in timeline


async def _client_get(node: Node, token: str, path: str) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        request = urllib.request.Request(
            node.client_url + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    return await trio.to_thread.run_sync(fetch)


async def _state_has(node: Node, room: str, key: tuple[str, str]) -> bool:
    return key in await node.room_state(room)


async def _same_tips(a: Node, b: Node, room: str) -> bool:
    tips_a = await a.rooms.read(room, lambda g: g.forward_extremities)
    tips_b = await b.rooms.read(room, lambda g: g.forward_extremities)
    return tips_a == tips_b


async def test_rules_survive_restarts(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            purple = await start(stack, tmp_path / "purple")
            async with contextlib.AsyncExitStack() as blue_stack:
                blue = await start(blue_stack, tmp_path / "blue")
                s2s = await pair(purple, blue)
                await purple.publish_rule(blue.identifier, DROP_RULE, seed_rule(purple))
                await theirs(blue, purple.identifier, 1)
                blue_identifier = blue.identifier
            async with contextlib.AsyncExitStack() as blue_stack:
                blue = await start(blue_stack, tmp_path / "blue")
                assert blue.identifier == blue_identifier
                (info,) = blue.rules(purple.identifier)
                assert (info.direction, info.room_id) == ("theirs", s2s)
                john = f"@john:{blue.identifier}"
                room = await blue.create_room(creator=john)
                with pytest.raises(PolicyRefusal):
                    await blue.invite(room, f"@smith:{purple.identifier}", sender=john)
        async with contextlib.AsyncExitStack() as stack:
            purple = await start(stack, tmp_path / "purple")
            (info,) = purple.rules()
            assert (info.direction, info.peer, info.room_id) == ("ours", blue_identifier, s2s)
