"""MSC3348 upgrade negotiations between two real nodes on 127.0.0.1, end to end: the events in
the room, the outcome, and the upgrade itself (successor joined by both, old room tombstoned,
successor state, policy rules included, equal on both nodes)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from negotiation_fixtures import PinVersion
from node_fixtures import FAST_BACKOFF, address_of, connect, node_config, wait_for

from s2s_node.config import Config, RoomsConfig, S2SConfig, UpgradeConfig
from s2s_node.core.events import Pdu
from s2s_node.core.ids import RoomId
from s2s_node.core.room import EventStatus
from s2s_node.node import Node, open_node
from s2s_node.s2s import UpgradeError, UpgradeOutcome, UpgradeRefusal
from s2s_node.store import Store

PROPOSAL, REPLY, ACCEPT, ACK, FAIL, VENDOR = (
    "m.s2s.upgrade.proposal",
    "m.s2s.upgrade.reply",
    "m.s2s.upgrade.accept",
    "m.s2s.upgrade.ack",
    "m.s2s.upgrade.fail",
    "m.s2s.upgrade",
)
DEFAULT_RATINGS = {"12": 100, "11": 60, "10": 20}
RULE_SERVER = ("m.policy.rule.server", "rule-1")
RULE_DROP = ("m.s2s.drop", "drop-1")


def config(
    *,
    versions: Mapping[str, int] = DEFAULT_RATINGS,
    mode: str = "compatible",
    timeout_s: int = 60,
    room_version: str = "10",
    room_type: str = "unstable",
    port: int = 0,
) -> Config:
    return dataclasses.replace(
        node_config(port=port),
        rooms=RoomsConfig(default_version=room_version),
        s2s=S2SConfig(room_type=room_type),
        upgrade=UpgradeConfig(versions=dict(versions), mode=mode, timeout_s=timeout_s),
    )


async def start(stack: contextlib.AsyncExitStack, data_dir: Path, cfg: Config) -> Node:
    return await stack.enter_async_context(open_node(cfg, data_dir=data_dir, backoff=FAST_BACKOFF))


async def joined(node: Node, room: str, user: str) -> bool:
    if await node.rooms.room_rules(room) is None:
        return False
    member = (await node.room_state(room)).get(("m.room.member", user))
    return member is not None and member.membership == "join"


async def open_pair(a: Node, b: Node, *, rules: bool = True) -> RoomId:
    """The s2s room of a and b, b joined; with `rules`, a policy rule of each in it."""
    await connect(a, b)
    room = await a.create_s2s_room(b.identifier)
    await wait_for(lambda: joined(b, room, b.server_user))
    if rules:
        await a.send_event(
            room,
            RULE_SERVER[0],
            {"entity": "evil.example", "recommendation": "m.ban", "reason": "spam"},
            state_key=RULE_SERVER[1],
        )
        await b.send_event(
            room,
            RULE_DROP[0],
            {"match": {"type": "org.example.never"}, "reason": "noise"},
            state_key=RULE_DROP[1],
        )
        await wait_for(lambda: _has_state(a, room, RULE_DROP))
        await wait_for(lambda: _has_state(b, room, RULE_SERVER))
    return room


async def _has_state(node: Node, room: str, key: tuple[str, str]) -> bool:
    return key in await node.room_state(room)


def _negotiation_events(store: Store, room: str) -> list[Pdu]:
    stored = store.room(RoomId(room))
    assert stored is not None
    found = []
    for event_id in stored.event_ids():
        pdu = stored.get_pdu(event_id)
        admission = stored.get_admission(event_id)
        if pdu is None or admission is None or admission.status is not EventStatus.ACCEPTED:
            continue
        if pdu.type.startswith("m.s2s.upgrade"):
            found.append(pdu)
    return sorted(found, key=lambda p: (p.depth, p.origin_server_ts, p.event_id))


async def trace(node: Node, room: str, *, names: Mapping[str, str]) -> list[tuple[str, str]]:
    """(type, "a"|"b") of the negotiation events in `node`'s copy of the room."""
    events = await node.astore.read(lambda store: _negotiation_events(store, room))
    return [(p.type, names[p.sender[2:]]) for p in events]


async def check_upgraded(a: Node, b: Node, old: RoomId, outcome: UpgradeOutcome) -> RoomId:
    """Both nodes joined to the successor, the old room tombstoned on both, the successor's
    state (policy rules included) the same on both."""
    assert outcome.status == "upgraded", outcome
    new = outcome.new_room_id
    assert new is not None and new != old
    for node in (a, b):
        await wait_for(lambda node=node: joined(node, new, a.server_user))  # type: ignore[misc]
        await wait_for(lambda node=node: joined(node, new, b.server_user))  # type: ignore[misc]
        await wait_for(lambda node=node: _tombstoned(node, old, new))  # type: ignore[misc]
        await wait_for(lambda node=node: _has_state(node, new, RULE_SERVER))  # type: ignore[misc]
        await wait_for(lambda node=node: _has_state(node, new, RULE_DROP))  # type: ignore[misc]
    await wait_for(lambda: _same_state(a, b, new))
    state = await a.room_state(new)
    create = state[("m.room.create", "")].content
    assert create["room_version"] == outcome.version
    assert create["predecessor"] == {"room_id": old}
    assert state[("m.room.join_rules", "")].content == {
        "join_rule": "restricted",
        "allow": [{"type": "m.room_membership", "room_id": old}],
    }
    # each rule still has its author's server as sender
    assert state[RULE_SERVER].sender == a.server_user
    assert state[RULE_DROP].sender == b.server_user
    assert state[RULE_DROP].content["match"] == {"type": "org.example.never"}
    # the pair's live room is now the successor, on both sides
    assert await a.s2s_room_with(b.identifier) == new
    assert await b.s2s_room_with(a.identifier) == new
    return new


async def _tombstoned(node: Node, old: str, new: str) -> bool:
    tombstone = (await node.room_state(old)).get(("m.room.tombstone", ""))
    return tombstone is not None and tombstone.content.get("replacement_room") == new


async def _same_state(a: Node, b: Node, room: str) -> bool:
    if await b.rooms.room_rules(room) is None:
        return False
    ids_a = {k: p.event_id for k, p in (await a.room_state(room)).items()}
    ids_b = {k: p.event_id for k, p in (await b.room_state(room)).items()}
    return ids_a == ids_b


def names_of(a: Node, b: Node) -> dict[str, str]:
    return {a.identifier: "a", b.identifier: "b"}


# ----------------------------------------------------------------------------------------------


async def test_identical_lists_proposal_accept_ack_ack_upgrade(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config())
            b = await start(stack, tmp_path / "b", config())
            room = await open_pair(a, b)
            outcome = await a.propose_upgrade(room)
            assert outcome.version == "12"
            new = await check_upgraded(a, b, room, outcome)
            names = names_of(a, b)
            expected = [(PROPOSAL, "a"), (ACCEPT, "b"), (ACK, "a"), (ACK, "b")]
            assert await trace(a, room, names=names) == expected
            await wait_for(lambda: _trace_is(b, room, names, expected))
            state = await b.room_state(new)
            assert state[("m.room.create", "")].content["room_version"] == "12"
            # v12: the peer is the other creator; nobody is in the users map
            assert state[("m.room.create", "")].content["additional_creators"] == [b.server_user]
            assert state[("m.room.create", "")].content["type"] == "support.feline.s2s"
            (info,) = await b.negotiations(room)
            assert (info.state, info.role, info.version, info.new_room_id) == (
                "done",
                "responder",
                "12",
                new,
            )
            (info,) = await a.negotiations(room)
            assert (info.role, info.new_room_id, info.peer) == ("initiator", new, b.identifier)
            # the old room takes no further proposal
            with pytest.raises(UpgradeError) as refused:
                await a.propose_upgrade(room)
            assert refused.value.reason is UpgradeRefusal.TOMBSTONED


async def _trace_is(
    node: Node, room: str, names: Mapping[str, str], expected: list[tuple[str, str]]
) -> bool:
    return await trace(node, room, names=names) == expected


async def test_different_lists_reply_path_to_v11(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config(versions={"12": 100, "11": 50}))
            b = await start(stack, tmp_path / "b", config(versions={"12": 10, "11": 60}))
            room = await open_pair(a, b)
            outcome = await a.propose_upgrade(room)
            assert outcome.version == "11"
            new = await check_upgraded(a, b, room, outcome)
            assert await trace(a, room, names=names_of(a, b)) == [
                (PROPOSAL, "a"),
                (REPLY, "b"),
                (ACCEPT, "a"),
                (ACK, "b"),
                (ACK, "a"),
            ]
            users = (await a.room_state(new))[("m.room.power_levels", "")].content["users"]
            assert users == {a.server_user: 100, b.server_user: 100}


@pytest.mark.parametrize(
    ("a_cfg", "b_cfg"),
    [
        pytest.param({"versions": {"12": 100}}, {"versions": {"11": 100}}, id="no-common"),
        pytest.param({"mode": "strict"}, {"versions": {"11": 100, "10": 50}}, id="strict-vs-older"),
        pytest.param({"versions": {"11": 100, "10": 50}}, {"mode": "strict"}, id="older-vs-strict"),
    ],
)
async def test_no_match_fails_and_nothing_changes(
    tmp_path: Path, a_cfg: dict[str, Any], b_cfg: dict[str, Any]
) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config(**a_cfg))
            b = await start(stack, tmp_path / "b", config(**b_cfg))
            room = await open_pair(a, b, rules=False)
            outcome = await a.propose_upgrade(room)
            assert (outcome.status, outcome.error) == ("failed", "no match")
            names = names_of(a, b)
            expected = [(PROPOSAL, "a"), (REPLY, "b"), (FAIL, "a")]
            assert await trace(a, room, names=names) == expected
            await wait_for(lambda: _trace_is(b, room, names, expected))
            (info,) = await b.negotiations(room)
            assert (info.state, info.error, info.failed_by) == ("failed", "no match", "theirs")
            assert ("m.room.tombstone", "") not in await a.room_state(room)
            assert await a.s2s_rooms() == [room]
            if a_cfg.get("mode") == "strict":
                assert info.proposed == {"12": 100}


async def test_unknown_vendor_method_fails_invalid_method(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config())
            b = await start(stack, tmp_path / "b", config())
            a.register_vendor_method(PinVersion())
            room = await open_pair(a, b, rules=False)
            outcome = await a.propose_vendor_upgrade(room, "org.example.pin", {"version": "11"})
            assert (outcome.status, outcome.error) == ("failed", "invalid method")
            assert await trace(a, room, names=names_of(a, b)) == [(VENDOR, "a"), (FAIL, "b")]
            with pytest.raises(UpgradeError) as refused:
                await b.propose_vendor_upgrade(room, "org.example.pin", {"version": "11"})
            assert refused.value.reason is UpgradeRefusal.UNKNOWN_METHOD


async def test_registered_vendor_method_upgrades(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config())
            b = await start(stack, tmp_path / "b", config())
            for node in (a, b):
                node.register_vendor_method(PinVersion())
                assert node.vendor_methods.get("org.example.pin") is not None
            room = await open_pair(a, b)
            outcome = await a.propose_vendor_upgrade(room, "org.example.pin", {"version": "11"})
            assert outcome.version == "11"
            await check_upgraded(a, b, room, outcome)
            assert await trace(a, room, names=names_of(a, b)) == [(VENDOR, "a"), (VENDOR, "b")]
            (info,) = await a.negotiations(room)
            assert info.method == "org.example.pin"


async def test_both_propose_at_once(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config())
            b = await start(stack, tmp_path / "b", config())
            room = await open_pair(a, b)
            # Cut the link both ways so that the two proposals cross.
            for node, other in ((a, b), (b, a)):
                await node.add_peer_address(other.identifier, "127.0.0.1", 9)
            first = await a.propose_upgrade(room, wait=False)
            second = await b.propose_upgrade(room, wait=False)
            assert first.status == second.status == "pending"
            await connect(a, b)
            outcomes: dict[str, UpgradeOutcome] = {}

            async def wait(node: Node, name: str, opening: str) -> None:
                outcomes[name] = await node.s2s.wait_outcome(room, opening)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, a, "a", first.negotiation_id)
                nursery.start_soon(wait, b, "b", second.negotiation_id)
            statuses = sorted((o.status, o.error) for o in outcomes.values())
            assert statuses == [("failed", "superseded"), ("upgraded", None)]
            winner = next(o for o in outcomes.values() if o.status == "upgraded")
            first_node, second_node = (a, b) if outcomes["a"] is winner else (b, a)
            await check_upgraded(a, b, room, winner)
            infos = {i.negotiation_id: i for i in await second_node.negotiations(room)}
            assert len(infos) == 2
            lost = infos[(outcomes["b"] if first_node is a else outcomes["a"]).negotiation_id]
            assert (lost.state, lost.error, lost.superseded_by) == (
                "failed",
                "superseded",
                winner.negotiation_id,
            )


async def test_a_peer_that_never_answers_times_out(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config(timeout_s=1))
            async with contextlib.AsyncExitStack() as b_stack:
                b = await start(b_stack, tmp_path / "b", config())
                room = await open_pair(a, b, rules=False)
            # b is gone
            started = trio.current_time()
            outcome = await a.propose_upgrade(room)
            assert (outcome.status, outcome.error) == ("failed", "timeout")
            assert 0.5 <= trio.current_time() - started < 10
            (info,) = await a.negotiations(room)
            assert (info.state, info.failed_by) == ("failed", "ours")


@pytest.mark.parametrize("who", ["initiator", "responder"])
async def test_restart_in_the_middle_of_a_negotiation(tmp_path: Path, who: str) -> None:
    """The node that owes the next event crashes before sending it; restarted, it rebuilds
    the negotiation from the DAG and carries on to the upgrade."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handles = {
                name: await launch(nursery, tmp_path / name, config()) for name in ("a", "b")
            }
            a, b = handles["a"].node, handles["b"].node
            room = await open_pair(a, b)
            victim_name = "a" if who == "initiator" else "b"
            victim = handles[victim_name].node
            port = address_of(victim).port
            hang = _Hang()
            if who == "responder":  # b will owe the accept, and die before sending it
                victim.send_event = hang.send_event  # type: ignore[method-assign]
            outcome = await a.propose_upgrade(room, wait=False)
            if who == "initiator":  # a will owe its ack, and die before sending it
                victim.send_event = hang.send_event  # type: ignore[method-assign]
            owed_state = "responder_accepted" if who == "initiator" else "proposed"
            await wait_for(lambda: _state_is(victim, room, owed_state))
            await wait_for(hang.has_hung)
            await handles[victim_name].shutdown()
            handles[victim_name] = await launch(nursery, tmp_path / victim_name, config(port=port))
            a, b = handles["a"].node, handles["b"].node
            await wait_for(lambda: _upgraded(a, room, outcome.negotiation_id))
            (info,) = await a.negotiations(room)
            assert info.new_room_id is not None
            final = UpgradeOutcome(
                status="upgraded",
                negotiation_id=outcome.negotiation_id,
                version=info.version,
                new_room_id=info.new_room_id,
            )
            await check_upgraded(a, b, room, final)
            assert [t for t, _ in await trace(a, room, names=names_of(a, b))] == [
                PROPOSAL,
                ACCEPT,
                ACK,
                ACK,
            ]
            for handle in handles.values():
                await handle.shutdown()


@dataclasses.dataclass
class Handle:
    """A node running in its own task (so nodes can stop in any order)."""

    node: Node
    stop: trio.Event
    done: trio.Event

    async def shutdown(self) -> None:
        self.stop.set()
        await self.done.wait()


async def launch(nursery: trio.Nursery, data_dir: Path, cfg: Config) -> Handle:
    stop, done = trio.Event(), trio.Event()

    async def run(*, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with open_node(cfg, data_dir=data_dir, backoff=FAST_BACKOFF) as node:
                task_status.started(node)
                await stop.wait()
        finally:
            done.set()

    node = await nursery.start(run)
    return Handle(node=node, stop=stop, done=done)


class _Hang:
    """Stands in for `node.send_event` once a node is about to crash: negotiation events
    never leave (the node dies before sending)."""

    def __init__(self) -> None:
        self.hung = 0

    async def has_hung(self) -> bool:
        return self.hung > 0

    async def send_event(self, *args: Any, **kwargs: Any) -> Pdu:
        self.hung += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def _state_is(node: Node, room: str, state: str) -> bool:
    infos = await node.negotiations(room)
    return bool(infos) and infos[-1].state == state


async def _upgraded(node: Node, room: str, opening: str) -> bool:
    infos = await node.negotiations(room)
    return any(i.negotiation_id == opening and i.new_room_id is not None for i in infos)


async def test_unstable_room_migrates_to_stable(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config(room_version="12"))
            b = await start(stack, tmp_path / "b", config(room_version="12"))
            room = await open_pair(a, b)
            state = await a.room_state(room)
            assert state[("m.room.create", "")].content["type"] == "support.feline.s2s"
            outcome = await a.propose_upgrade(room, room_type="m.s2s")
            assert outcome.version == "12"  # same version: only the type changes
            new = await check_upgraded(a, b, room, outcome)
            for node in (a, b):
                create = (await node.room_state(new))[("m.room.create", "")].content
                assert create["type"] == "m.s2s"


async def test_a_stable_configured_node_migrates_by_default(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config(room_version="12"))
            b = await start(stack, tmp_path / "b", config(room_version="12"))
            room = await open_pair(a, b, rules=False)
            a.config = dataclasses.replace(a.config, s2s=S2SConfig(room_type="stable"))
            outcome = await a.propose_upgrade(room)
            assert outcome.status == "upgraded"
            assert outcome.new_room_id is not None
            await wait_for(lambda: joined(b, outcome.new_room_id or "", b.server_user))
            create = (await b.room_state(outcome.new_room_id))[("m.room.create", "")].content
            assert create["type"] == "m.s2s"


async def test_a_tombstone_without_an_agreement_is_not_followed(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", config())
            b = await start(stack, tmp_path / "b", config())
            room = await open_pair(a, b, rules=False)
            other = await a.create_s2s_room(None)
            await a.send_event(
                room, "m.room.tombstone", {"body": "moved", "replacement_room": other}, ""
            )
            await wait_for(lambda: _tombstoned(b, room, other))
            await trio.sleep(0.5)
            assert await b.rooms.room_rules(other) is None
