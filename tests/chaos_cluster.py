"""One chaos run: N in-process nodes, a fault-injecting relay per directed link, random
concurrent changes, then healing and the convergence check. Used by tests/test_chaos.py (few
seeds, short) and scripts/chaos_soak.py (many seeds, longer).

A run (`run_chaos(seed, workdir, settings)`), everything drawn from `random.Random(seed)`:

1. Start `nodes` nodes (plain HTTP on 127.0.0.1, discovery off, fast back-off). Node i reaches
   node j only through `ChaosLink` i->j (tests/chaos_proxy.py), healthy during setup.
2. `@u0:<node 0>` creates a public room (room version from the seed) with every node's `@u0`
   at power 100; the others' `@u0` join through node 0. `@u0` of each node never leaves, so
   every node stays in the room.
3. Chaos for `seconds`: every node runs an actor doing random changes as its local users
   (messages; topic, name and `m.chaos.kN` state by `@u0`; joins and leaves of `@u1..@u3`;
   `@u0` moving `@u1`'s power level; state by a user without power, refused locally), while a
   scheduler redraws every link's faults every 0.2-0.6 s (partitions, a node cut off, lost
   requests and answers, duplicates, delays, held and reordered transactions, late replays).
   Every event the API returned is recorded as acknowledged.
4. Heal: links healthy, held transactions delivered, every node wakes every peer. Wait until
   every outbound queue is empty and the nodes agree, or until quiet; record whether they
   already agree. Then every `@u0` sends one more message (as Matrix servers do when they next
   speak; it cites the node's extremities, so a peer missing anything fetches it) and wait for
   agreement: same set of non-rejected events, same forward extremities, same current state,
   and every acknowledged event present (and not rejected) on every node.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from chaos_proxy import HEALTHY, ChaosLink, Faults
from node_fixtures import address_of, start_node

from s2s_node.core.auth import AuthError
from s2s_node.core.ids import RoomId
from s2s_node.core.room import EventStatus
from s2s_node.node import Node
from s2s_node.store import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosSettings:
    nodes: int = 3
    seconds: float = 2.0
    max_pause_s: float = 0.05  # between two changes of one node
    settle_timeout_s: float = 40.0
    # after healing: how long queues may stay empty without agreement before the settle round
    quiet_s: float = 1.0
    intensity: float = 1.0  # scales every fault probability


@dataclass(slots=True, kw_only=True)
class NodeView:
    """What one node holds of the room after the run."""

    events: dict[str, str]  # event ID -> status
    extremities: frozenset[str]
    state: dict[tuple[str, str], str]


@dataclass(slots=True, kw_only=True)
class ChaosResult:
    seed: int
    nodes: int
    room_version: str
    workdir: Path
    acknowledged: int = 0
    refused_locally: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    agreed_before_settle: bool = False
    before_settle: list[str] = field(default_factory=list)
    converged: bool = False
    problems: list[str] = field(default_factory=list)
    events: int = 0
    rejected: int = 0
    soft_failed: int = 0
    heal_s: float = 0.0
    settle_s: float = 0.0

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {'converged' if self.converged else 'DIVERGED'} "
            f"v{self.room_version} nodes={self.nodes} ack={self.acknowledged} "
            f"events={self.events} rejected={self.rejected} soft_failed={self.soft_failed} "
            f"refused_locally={self.refused_locally} "
            f"agreed_before_settle={self.agreed_before_settle} heal={self.heal_s:.1f}s "
            f"settle={self.settle_s:.1f}s faults={dict(sorted(self.faults.items()))}"
        )


def user(node: Node, n: int) -> str:
    return f"@u{n}:{node.identifier}"


def draw_faults(rng: random.Random, intensity: float) -> Faults:
    """A link's faults for the next period."""
    if rng.random() < 0.15 * intensity:
        return Faults(partitioned=True)
    if rng.random() < 0.3:
        return HEALTHY
    k = intensity
    return Faults(
        drop_request=rng.uniform(0, 0.3) * k,
        drop_answer=rng.uniform(0, 0.3) * k,
        duplicate=rng.uniform(0, 0.3) * k,
        delay=rng.uniform(0, 0.5) * k,
        max_delay_s=rng.uniform(0.01, 0.3),
        reorder=rng.uniform(0, 0.4) * k,
        replay=rng.uniform(0, 0.5) * k,
    )


async def room_view(node: Node, room: str) -> NodeView:
    def run(store: Store) -> NodeView:
        stored = store.room(RoomId(room))
        assert stored is not None
        events: dict[str, str] = {}
        for event_id in stored.event_ids():
            admission = stored.get_admission(event_id)
            events[event_id] = "missing" if admission is None else admission.status.value
        return NodeView(
            events=events,
            extremities=stored.get_forward_extremities(),
            state=dict(stored.get_current_state().items()),
        )

    return await node.astore.read(run)


def compare_views(views: Sequence[NodeView], acknowledged: set[str]) -> list[str]:
    """What differs between the nodes (empty when they agree)."""
    problems = []
    first = views[0]

    def kept(view: NodeView) -> set[str]:
        return {e for e, s in view.events.items() if s != EventStatus.REJECTED.value}

    for i, view in enumerate(views[1:], start=1):
        only0, only_i = kept(first) - kept(view), kept(view) - kept(first)
        if only0 or only_i:
            problems.append(f"events: node0 only {len(only0)}, node{i} only {len(only_i)}")
        if view.extremities != first.extremities:
            problems.append(f"extremities: node0 {len(first.extremities)}, node{i} differ")
        if view.state != first.state:
            keys = {
                k for k in {*view.state, *first.state} if view.state.get(k) != first.state.get(k)
            }
            problems.append(f"state: node0/node{i} differ at {sorted(keys)[:5]}")
    for i, view in enumerate(views):
        lost = acknowledged - kept(view)
        if lost:
            problems.append(f"node{i} lacks {len(lost)} acknowledged events")
    return problems


def _pending(store: Store, *, destination: str) -> int:
    return store.outbound.pending_count(destination)


async def queues_empty(nodes: Sequence[Node]) -> bool:
    for node in nodes:
        for other in nodes:
            if other is node:
                continue
            pending = await node.astore.read(
                functools.partial(_pending, destination=other.identifier)
            )
            if pending:
                return False
    return True


class _Actor:
    """The random changes of one node's local users."""

    def __init__(
        self, node: Node, index: int, room: str, rng: random.Random, result: ChaosResult
    ) -> None:
        self.node, self.index, self.room, self.rng, self.result = node, index, room, rng, result
        self.acknowledged: set[str] = set()

    async def send(
        self, event_type: str, content: dict[str, Any], state_key: str | None, sender: str
    ) -> None:
        try:
            pdu = await self.node.send_event(self.room, event_type, content, state_key, sender)
        except AuthError:
            self.result.refused_locally += 1
            return
        self.acknowledged.add(pdu.event_id)

    async def step(self, n: int) -> None:
        rng, node = self.rng, self.node
        u0 = user(node, 0)
        roll = rng.random()
        if roll < 0.30:
            who = user(node, rng.randrange(4))
            await self.send("m.room.message", {"msgtype": "m.text", "body": f"{n}"}, None, who)
        elif roll < 0.40:
            await self.send("m.room.topic", {"topic": f"t{self.index}.{n}"}, "", u0)
        elif roll < 0.45:
            await self.send("m.room.name", {"name": f"n{self.index}.{n}"}, "", u0)
        elif roll < 0.60:
            key = f"k{rng.randrange(5)}"
            await self.send("m.chaos.state", {"v": f"{self.index}.{n}"}, key, u0)
        elif roll < 0.80:
            who = user(node, 1 + rng.randrange(3))
            membership = rng.choice(["join", "leave"])
            await self.send("m.room.member", {"membership": membership}, who, who)
        elif roll < 0.88:
            state = await node.room_state(self.room)
            levels = dict(state[("m.room.power_levels", "")].content)
            users = dict(levels.get("users", {}))
            users[user(node, 1)] = rng.choice([0, 50])
            levels["users"] = users
            await self.send("m.room.power_levels", levels, "", u0)
        else:
            # state by @u1 (power 0 or 50: refused locally unless promoted)
            who = user(node, 1)
            await self.send("m.chaos.state", {"v": f"u1.{n}"}, f"k{rng.randrange(5)}", who)

    async def run(self, until: float, max_pause_s: float) -> None:
        n = 0
        while trio.current_time() < until:
            await self.step(n)
            n += 1
            await trio.sleep(self.rng.uniform(0, max_pause_s))


async def _schedule_faults(
    links: dict[tuple[int, int], ChaosLink],
    n_nodes: int,
    rng: random.Random,
    until: float,
    intensity: float,
) -> None:
    while trio.current_time() < until:
        for link in links.values():
            link.faults = draw_faults(rng, intensity)
        if rng.random() < 0.2 * intensity:  # one node cut off in both directions
            cut = rng.randrange(n_nodes)
            for (i, j), link in links.items():
                if cut in (i, j):
                    link.faults = Faults(partitioned=True)
        await trio.sleep(rng.uniform(0.2, 0.6))


async def _wait_agreement(
    nodes: Sequence[Node],
    links: dict[tuple[int, int], ChaosLink],
    room: str,
    acknowledged: set[str],
    timeout_s: float,
    quiet_s: float | None = None,
) -> list[str]:
    """Wait until the nodes agree (queues empty, nothing held); the last problems otherwise,
    after `timeout_s`, or after `quiet_s` of empty queues without agreement."""
    problems = ["not checked"]
    quiet_since: float | None = None
    with trio.move_on_after(timeout_s):
        while True:
            if all(link.held() == 0 for link in links.values()) and await queues_empty(nodes):
                views = [await room_view(node, room) for node in nodes]
                problems = compare_views(views, acknowledged)
                if not problems:
                    return []
                now = trio.current_time()
                quiet_since = now if quiet_since is None else quiet_since
                if quiet_s is not None and now - quiet_since >= quiet_s:
                    return problems
            else:
                quiet_since = None
            await trio.sleep(0.1)
    return problems


async def run_chaos(seed: int, workdir: Path, settings: ChaosSettings) -> ChaosResult:
    rng = random.Random(seed)
    room_version = rng.choice(["10", "11", "12"])
    result = ChaosResult(
        seed=seed, nodes=settings.nodes, room_version=room_version, workdir=workdir
    )
    async with trio.open_nursery() as nursery:
        async with contextlib.AsyncExitStack() as stack:
            await _run(seed, rng, settings, result, stack, nursery)
        nursery.cancel_scope.cancel()
    return result


async def _run(
    seed: int,
    rng: random.Random,
    settings: ChaosSettings,
    result: ChaosResult,
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
) -> None:
    workdir = result.workdir
    room_version = result.room_version
    nodes = [await start_node(stack, workdir / f"n{i}") for i in range(settings.nodes)]
    links: dict[tuple[int, int], ChaosLink] = {}
    for i, node in enumerate(nodes):
        for j, other in enumerate(nodes):
            if i == j:
                continue
            real = address_of(other)
            link = ChaosLink(
                name=f"{i}->{j}",
                upstream=(real.host, real.port),
                rng=random.Random(f"{seed}/{i}/{j}"),
            )
            port = await nursery.start(link.run)
            links[(i, j)] = link
            await node.add_peer_address(other.identifier, "127.0.0.1", port)

    creator = nodes[0]
    room = await creator.rooms.create_room(
        creator=user(creator, 0),
        room_version=room_version,
        room_type=None,
        join_rule="public",
        power_users={user(node, 0): 100 for node in nodes[1:]},  # the creator's own
    )
    for node in nodes[1:]:
        await node.join(room, via=creator.identifier, user=user(node, 0))
    everyone = {node.identifier for node in nodes}

    async def all_joined() -> bool:
        return all([await node.servers_in_room(room) == everyone for node in nodes])

    while not await all_joined():
        await trio.sleep(0.02)

    actors = [
        _Actor(node, i, room, random.Random(f"{seed}/actor/{i}"), result)
        for i, node in enumerate(nodes)
    ]
    until = trio.current_time() + settings.seconds
    async with trio.open_nursery() as chaos:
        chaos.start_soon(_schedule_faults, links, len(nodes), rng, until, settings.intensity)
        for actor in actors:
            chaos.start_soon(actor.run, until, settings.max_pause_s)

    # heal
    started = trio.current_time()
    for link in links.values():
        link.faults = HEALTHY
    for link in links.values():
        await link.flush()
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.wake(other.identifier)
    acknowledged = set().union(*(a.acknowledged for a in actors))
    result.acknowledged = len(acknowledged)
    result.before_settle = await _wait_agreement(
        nodes,
        links,
        room,
        acknowledged,
        timeout_s=settings.settle_timeout_s,
        quiet_s=settings.quiet_s,
    )
    result.agreed_before_settle = not result.before_settle
    result.heal_s = trio.current_time() - started

    # settle: every node speaks once more
    started = trio.current_time()
    for node in nodes:
        pdu = await node.send_event(room, "m.room.message", {"body": "settle"}, None, user(node, 0))
        acknowledged.add(pdu.event_id)
    result.problems = await _wait_agreement(
        nodes, links, room, acknowledged, timeout_s=settings.settle_timeout_s
    )
    result.settle_s = trio.current_time() - started
    result.converged = not result.problems
    views = [await room_view(node, room) for node in nodes]
    statuses = Counter(views[0].events.values())
    result.events = len(views[0].events)
    result.rejected = statuses[EventStatus.REJECTED.value]
    result.soft_failed = statuses[EventStatus.SOFT_FAILED.value]
    for link in links.values():
        result.faults.update(link.stats)
