"""Chaos: 3-5 in-process nodes over real loopback HTTP, every directed link through a
fault-injecting relay (partitions, loss, duplication, delays, reordering), random concurrent
changes on every node; after healing, every node holds the same events, extremities and
current state, and every event the API returned. The scenario is tests/chaos_cluster.py; the
relay tests/chaos_proxy.py; the long version scripts/chaos_soak.py (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import trio
from chaos_cluster import ChaosSettings, NodeView, compare_views, run_chaos
from chaos_proxy import ChaosLink, Faults
from node_fixtures import address_of, start_node

from s2s_node.core.ids import EventId
from s2s_node.node import Node

CI_SEEDS = range(1, 11)


@pytest.mark.parametrize("seed", CI_SEEDS)
async def test_three_nodes_converge_after_chaos(tmp_path: Path, seed: int) -> None:
    with trio.fail_after(60):
        result = await run_chaos(seed, tmp_path, ChaosSettings(nodes=3, seconds=1.0))
    assert result.converged, result.summary() + f" {result.problems}"
    # the run did what it claims: changes were acknowledged and faults were injected
    assert result.acknowledged > 20
    assert result.faults["requests"] > 20
    injected = ("refused", "dropped_requests", "dropped_answers", "duplicated", "held")
    assert sum(result.faults[k] for k in injected) > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 110))
async def test_five_nodes_converge_after_longer_chaos(tmp_path: Path, seed: int) -> None:
    with trio.fail_after(180):
        result = await run_chaos(seed, tmp_path, ChaosSettings(nodes=5, seconds=8.0))
    assert result.converged, result.summary() + f" {result.problems}"


def test_compare_views_reports_every_kind_of_difference() -> None:
    """The convergence check can fail: missing events, extremities, state, lost acks."""
    a = NodeView(
        events={"$1": "accepted", "$2": "accepted"},
        extremities=frozenset({"$2"}),
        state={("m.room.topic", ""): "$2"},
    )
    same = NodeView(events=dict(a.events), extremities=a.extremities, state=dict(a.state))
    assert compare_views([a, same], {"$1", "$2"}) == []
    behind = NodeView(
        events={"$1": "accepted"}, extremities=frozenset({"$1"}), state={("m.room.topic", ""): "$1"}
    )
    problems = compare_views([a, behind], {"$1", "$2"})
    assert [p.split(":")[0] for p in problems] == [
        "events",
        "extremities",
        "state",
        "node1 lacks 1 acknowledged events",
    ]
    rejected = NodeView(
        events={"$1": "accepted", "$2": "rejected"}, extremities=a.extremities, state=dict(a.state)
    )
    assert "node1 lacks 1 acknowledged events" in compare_views([a, rejected], {"$2"})


async def test_the_relay_injects_each_fault(tmp_path: Path) -> None:
    """Each fault of the relay does what it says to a real node's /send (seeded, so exact)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            async with contextlib.AsyncExitStack() as stack:
                a = await start_node(stack, tmp_path / "a")
                b = await start_node(stack, tmp_path / "b")
                real = address_of(b)
                link = ChaosLink(name="a->b", upstream=(real.host, real.port), rng=random.Random(1))
                port = await nursery.start(link.run)
                await a.add_peer_address(b.identifier, "127.0.0.1", port)
                await b.add_peer_address(a.identifier, *_hostport(a))
                room = await a.create_room(room_type="support.feline.s2s", invite=[b.server_user])
                await b.join(room, via=a.identifier)

                async def delivered(event_id: EventId) -> bool:
                    return await b.rooms.known_events(room, [event_id]) == {event_id}

                # partition: nothing gets through, the sender keeps it queued
                link.faults = Faults(partitioned=True)
                cut = await a.send_event(room, "m.test", {"n": 1})
                await trio.sleep(0.5)
                assert not await delivered(cut.event_id)
                assert link.stats["refused"] > 0
                # held and reordered: acknowledged by the relay, delivered on release
                link.faults = Faults(reorder=1.0, replay=1.0)
                a.wake(b.identifier)
                while link.stats["held"] == 0:
                    await trio.sleep(0.02)
                await link.flush()
                assert await delivered(cut.event_id)
                assert link.stats["replayed"] > 0 and link.stats["released"] >= 2
                # lost answers and duplicates: b processed it, a retries, b deduplicates
                link.faults = Faults(drop_answer=1.0, duplicate=1.0)
                lost = await a.send_event(room, "m.test", {"n": 2})
                while not await delivered(lost.event_id):
                    await trio.sleep(0.02)
                assert link.stats["dropped_answers"] > 0 and link.stats["duplicated"] > 0
                link.faults = Faults()
                a.wake(b.identifier)
                while await a.astore.read(lambda s: s.outbound.pending_count(b.identifier)):
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()


def _hostport(node: object) -> tuple[str, int]:
    from s2s_node.node import Node

    assert isinstance(node, Node)
    address = address_of(node)
    return address.host, address.port


async def test_a_gap_whose_filling_failed_is_caught_up_once_the_origin_answers(
    tmp_path: Path,
) -> None:
    """Regression (found by the chaos soak: a node lacked acknowledged events after healing
    until someone spoke again). b receives a's event but cannot fetch what it cites (b->a is
    cut), answers the transaction with an error, and a drops it from its queue. Nothing else
    is sent; once b->a heals, b's background catch-up, which retries, brings everything."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            async with contextlib.AsyncExitStack() as stack:
                a = await start_node(stack, tmp_path / "a")
                b = await start_node(stack, tmp_path / "b")
                to_a, to_b = address_of(a), address_of(b)
                link = ChaosLink(name="b->a", upstream=(to_a.host, to_a.port), rng=random.Random(2))
                a_b = ChaosLink(name="a->b", upstream=(to_b.host, to_b.port), rng=random.Random(3))
                await b.add_peer_address(a.identifier, "127.0.0.1", await nursery.start(link.run))
                await a.add_peer_address(b.identifier, "127.0.0.1", await nursery.start(a_b.run))
                # an ordinary room (an s2s room's automatic join retries could fetch the gap)
                alice, bob = f"@alice:{a.identifier}", f"@bob:{b.identifier}"
                room = await a.create_room(creator=alice, join_rule="public")
                await b.join(room, via=a.identifier, user=bob)
                a_b.faults = Faults(partitioned=True)
                lost = [
                    (await a.send_event(room, "m.test", {"n": n}, sender=alice)).event_id
                    for n in range(3)
                ]
                await a.astore.write(lambda s: s.outbound.ack(b.identifier, 2**62))  # lost
                link.faults = Faults(partitioned=True)  # b cannot fetch from a
                a_b.faults = Faults()
                a.wake(b.identifier)
                last = await a.send_event(room, "m.test", {"n": "last"}, sender=alice)
                while await a.astore.read(lambda s: s.outbound.pending_count(b.identifier)):
                    await trio.sleep(0.02)  # b answered (with an error for `last`)
                assert not await b.rooms.known_events(room, [*lost, last.event_id])
                assert b.gaps.catch_ups == 1
                link.faults = Faults()
                wanted = [*lost, last.event_id]
                while await b.rooms.known_events(room, wanted) != set(wanted):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_gaps_from_two_origins_in_one_room_are_both_caught_up(tmp_path: Path) -> None:
    """Regression (found by the chaos soak, after the retry above): one background catch-up
    per room, so while b retried a's gap, c's gap in the same room was never caught up; and a
    gap from a's later events joined no catch-up. Catch-ups are now per (room, origin) and take
    the deferred events that arrive meanwhile."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
            a, b, c = [await start_node(stack, tmp_path / name) for name in "abc"]
            links: dict[tuple[str, str], ChaosLink] = {}
            for x, y, name in [(a, b, "ab"), (b, a, "ba"), (c, b, "cb"), (b, c, "bc")]:
                real = address_of(y)
                link = ChaosLink(name=name, upstream=(real.host, real.port), rng=random.Random(4))
                links[(name[0], name[1])] = link
                await x.add_peer_address(y.identifier, "127.0.0.1", await nursery.start(link.run))
            await a.add_peer_address(c.identifier, *_hostport(c))
            await c.add_peer_address(a.identifier, *_hostport(a))
            alice = f"@alice:{a.identifier}"
            room = await a.create_room(creator=alice, join_rule="public")
            await b.join(room, via=a.identifier, user=f"@bob:{b.identifier}")
            carol = f"@carol:{c.identifier}"
            await c.join(room, via=a.identifier, user=carol)
            while await b.servers_in_room(room) != {a.identifier, b.identifier, c.identifier}:
                await trio.sleep(0.02)

            async def gap(origin: Node, sender: str, name: str) -> list[EventId]:
                """`origin`'s events b never got and cannot fetch (b->origin cut)."""
                to_b, from_b = links[(name, "b")], links[("b", name)]
                to_b.faults = Faults(partitioned=True)
                sent = [
                    (await origin.send_event(room, "m.test", {"n": n}, sender=sender)).event_id
                    for n in range(3)
                ]
                await origin.astore.write(lambda s: s.outbound.ack(b.identifier, 2**62))
                from_b.faults = Faults(partitioned=True)
                to_b.faults = Faults()
                origin.wake(b.identifier)
                last = await origin.send_event(room, "m.test", {"n": "last"}, sender=sender)
                while await origin.astore.read(lambda s: s.outbound.pending_count(b.identifier)):
                    await trio.sleep(0.02)
                return [*sent, last.event_id]

            from_a = await gap(a, alice, "a")
            from_c = await gap(c, carol, "c")
            more_a = await gap(a, alice, "a")  # while a's catch-up waits to retry
            assert not await b.rooms.known_events(room, [*from_a, *from_c, *more_a])
            links[("b", "c")].faults = Faults()  # b can reach c again, not a
            while await b.rooms.known_events(room, from_c) != set(from_c):
                await trio.sleep(0.05)
            links[("b", "a")].faults = Faults()
            wanted = set(from_a + more_a)
            while await b.rooms.known_events(room, wanted) != wanted:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
