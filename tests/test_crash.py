"""Crash: SIGKILL of a node process during ingest, during sending (outbound queue non-empty) and
during an upgrade negotiation; the node restarts on the same data directory, loses nothing it
acknowledged and finishes the work. The victim is a child process (tests/crash_node_child.py),
so the kill is real; its peer runs in-process, and so does the restart (to inspect it).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import trio
from chaos_proxy import ChaosLink, Faults
from crash_fixtures import (
    all_accepted,
    kill_and_reap,
    peer_of,
    pending,
    pending_in_db,
    start_child,
    wait_lines,
)
from crash_node_child import child_config
from node_fixtures import FAST_BACKOFF, address_of, connect, make_shared_room, wait_for

from s2s_node.core.ids import RoomId
from s2s_node.node import Node, open_node
from s2s_node.store import Store


async def open_in_process(stack: contextlib.AsyncExitStack, data_dir: Path) -> Node:
    return await stack.enter_async_context(
        open_node(child_config(), data_dir=data_dir, backoff=FAST_BACKOFF)
    )


async def shared_room(tmp_path: Path, a: Node) -> str:
    """The s2s room of `a` and b (b's data directory set up in-process, then closed)."""
    async with contextlib.AsyncExitStack() as b_stack:
        b = await open_in_process(b_stack, tmp_path / "b")
        await connect(a, b)
        return await make_shared_room(a, b)


async def test_sigkill_during_ingest_loses_no_acknowledged_transaction(tmp_path: Path) -> None:
    await crash_during_ingest(tmp_path, kill_below=800)


async def test_sigkill_during_sending_loses_no_acknowledged_event(tmp_path: Path) -> None:
    await crash_during_sending(tmp_path, kill_after=300, seed=7)


async def crash_during_ingest(tmp_path: Path, *, kill_below: int) -> None:
    """b is killed once a's queue to it (1,000 events) is below `kill_below`."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
            a = await open_in_process(stack, tmp_path / "a")
            room = await shared_room(tmp_path, a)
            b = await start_child(nursery, tmp_path / "b", "serve", peers=[peer_of(a)])
            # a queues 1,000 events while b's address is stale, then delivers them at once
            sent = [(await a.send_event(room, "m.test", {"n": n})).event_id for n in range(1000)]
            await a.add_peer_address(b.identifier, "127.0.0.1", b.port)
            while True:  # b is ingesting: some transactions answered, more to come
                left = await pending(a, b.identifier)
                if left <= kill_below:
                    break
                await trio.sleep(0.005)
            await kill_and_reap(b)
            left = await pending(a, b.identifier)
            assert 0 < left < 1000
            acknowledged = sent[: len(sent) - left]  # the queue is FIFO
            # b restarts; a still has its old port, so nothing is resent before the check
            async with contextlib.AsyncExitStack() as b_stack:
                b_node = await open_in_process(b_stack, tmp_path / "b")
                assert await all_accepted(b_node, room, acknowledged)
                await a.add_peer_address(b.identifier, *_host_port(b_node))
                await wait_for(lambda: all_accepted(b_node, room, sent))
                await wait_for(lambda: _drained(a, b.identifier))
                reply = await b_node.send_event(room, "m.test", {"after": "restart"})
                await wait_for(lambda: all_accepted(a, room, [reply.event_id]))
            nursery.cancel_scope.cancel()


async def crash_during_sending(tmp_path: Path, *, kill_after: int, seed: int) -> None:
    """b is killed after `kill_after` acknowledged sends, its link to a slow (seeded)."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
            a = await open_in_process(stack, tmp_path / "a")
            room = await shared_room(tmp_path, a)
            # b reaches a through a slow link, so b's queue grows while it sends
            real = address_of(a)
            link = ChaosLink(
                name="b->a",
                upstream=(real.host, real.port),
                rng=random.Random(seed),
                faults=Faults(delay=1.0, max_delay_s=0.2),
            )
            port = await nursery.start(link.run)
            b = await start_child(
                nursery,
                tmp_path / "b",
                "send",
                [room, "5000"],
                peers=[peer_of(a, port)],
            )
            await a.add_peer_address(b.identifier, "127.0.0.1", b.port)
            await wait_lines(b, kill_after)
            await kill_and_reap(b)
            acknowledged = b.acked()
            assert kill_after <= len(acknowledged) < 5000
            queued = pending_in_db(tmp_path / "b", a.identifier)
            assert queued > 0  # killed with a non-empty outbound queue
            link.faults = Faults()
            async with contextlib.AsyncExitStack() as b_stack:
                b_node = await open_in_process(b_stack, tmp_path / "b")
                assert await all_accepted(b_node, room, acknowledged)
                await wait_for(lambda: all_accepted(a, room, acknowledged))
                await wait_for(lambda: _drained(b_node, a.identifier))
            nursery.cancel_scope.cancel()


STAGES = [
    "successor",
    pytest.param("ack", marks=pytest.mark.slow),
    pytest.param("tombstone", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("stage", STAGES)
async def test_sigkill_during_an_upgrade_negotiation_finishes_the_upgrade(
    tmp_path: Path, stage: str
) -> None:
    await crash_during_upgrade(tmp_path, stage)


async def crash_during_upgrade(tmp_path: Path, stage: str) -> None:
    """The initiator dies right after committing its ack / the successor's create / the
    tombstone; restarted, it finishes: one successor, both nodes joined, old room tombstoned."""
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
            b = await open_in_process(stack, tmp_path / "b")
            async with contextlib.AsyncExitStack() as a_stack:
                a = await open_in_process(a_stack, tmp_path / "a")
                await connect(a, b)
                room = await a.create_s2s_room(b.identifier)
                await wait_for(lambda: _joined(b, room))
            child = await start_child(
                nursery, tmp_path / "a", "upgrade", [room, stage], peers=[peer_of(b)]
            )
            await b.add_peer_address(child.identifier, "127.0.0.1", child.port)
            code = await child.process.wait()
            assert code == -9, "the child did not reach the stage"
            with trio.fail_after(5):
                await child.done.wait()
            assert any(line.startswith("stage ") for line in child.lines)
            async with contextlib.AsyncExitStack() as a_stack:
                a = await open_in_process(a_stack, tmp_path / "a")
                await b.add_peer_address(a.identifier, *_host_port(a))

                async def upgraded() -> bool:
                    new_a = await _successors(a, room)
                    if len(new_a) != 1:
                        return False
                    (new,) = new_a
                    return (
                        await _joined(a, new)
                        and await _joined(b, new)
                        and await _tombstoned(a, room, new)
                        and await _tombstoned(b, room, new)
                    )

                await wait_for(upgraded, interval=0.1)
                assert len(await _successors(a, room)) == 1  # no second room after the crash
                (info,) = [n for n in await a.negotiations(room) if n.role == "initiator"]
                assert info.state == "done", info
            nursery.cancel_scope.cancel()


async def _drained(node: Node, destination: str) -> bool:
    return await pending(node, destination) == 0


def _host_port(node: Node) -> tuple[str, int]:
    address = address_of(node)
    return address.host, address.port


async def _joined(node: Node, room: str) -> bool:
    if await node.rooms.room_rules(room) is None:
        return False
    member = (await node.room_state(room)).get(("m.room.member", node.server_user))
    return member is not None and member.membership == "join"


async def _tombstoned(node: Node, room: str, new: str) -> bool:
    tombstone = (await node.room_state(room)).get(("m.room.tombstone", ""))
    return tombstone is not None and tombstone.content.get("replacement_room") == new


async def _successors(node: Node, room: str) -> list[RoomId]:
    """Rooms on `node` whose create event names `room` as predecessor."""

    def run(store: Store) -> list[RoomId]:
        found = []
        for room_id, _ in store.rooms():
            state = store.room(room_id)
            if state is None:
                continue
            create_id = state.get_current_state().get(("m.room.create", ""))
            create = None if create_id is None else state.get_pdu(create_id)
            predecessor = None if create is None else create.content.get("predecessor")
            if isinstance(predecessor, dict) and predecessor.get("room_id") == room:
                found.append(room_id)
        return found

    return await node.astore.read(run)
