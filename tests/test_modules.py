"""Modules: loading from config, hooks under deadlines, isolation, module users, reports."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
from node_fixtures import FAST_BACKOFF, address_of, make_shared_room, node_config, wait_for

from s2s_node.config import ConfigError, ModuleConfig, build_config
from s2s_node.core.events import Pdu
from s2s_node.core.negotiation_messages import Side, VendorMessage
from s2s_node.core.negotiation_vendor import VendorMethod, VendorProgress
from s2s_node.modules.api import (
    MAX_CONSECUTIVE_FAILURES,
    Module,
    ModuleContext,
    ModuleVeto,
    OutgoingEvent,
)
from s2s_node.modules.host import ModuleUserError
from s2s_node.modules.loader import LoadReason, ModuleLoadError, load_module
from s2s_node.modules.reports import REPORT_TYPE, ReportsModule
from s2s_node.node import Node, open_node

HERE = "test_modules"


# -- modules the tests load through the config path mechanism


class RecordingModule(Module):
    """Records the events it gets; vetoes bodies saying "veto"; sends when asked."""

    name: ClassVar[str] = "recorder"
    event_types: ClassVar[frozenset[str]] = frozenset({"org.example.ping"})

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.events: list[Pdu] = []
        self.context: ModuleContext | None = None

    async def start(self, context: ModuleContext) -> None:
        self.context = context

    async def on_event(self, event: Pdu) -> None:
        self.events.append(event)

    async def check_outgoing(self, event: OutgoingEvent) -> None:
        if event.content.get("body") == "veto":
            raise ModuleVeto(self.name, "no vetoed bodies")


class RaisingModule(Module):
    name: ClassVar[str] = "raiser"
    event_types: ClassVar[frozenset[str]] = frozenset({"*"})
    calls: ClassVar[int] = 0

    async def on_event(self, event: Pdu) -> None:
        type(self).calls += 1
        raise RuntimeError("module bug")

    async def check_outgoing(self, event: OutgoingEvent) -> None:
        raise RuntimeError("module bug")

    async def check_incoming(self, event: Pdu) -> None:
        raise RuntimeError("module bug")


class HangingModule(Module):
    name: ClassVar[str] = "hanger"
    event_types: ClassVar[frozenset[str]] = frozenset({"*"})

    async def start(self, context: ModuleContext) -> None:
        await trio.sleep_forever()

    async def on_event(self, event: Pdu) -> None:
        await trio.sleep_forever()

    async def check_outgoing(self, event: OutgoingEvent) -> None:
        await trio.sleep_forever()


class BlockingModule(Module):
    """Blocking work done the documented way: in a worker thread the deadline abandons."""

    name: ClassVar[str] = "blocker"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.context: ModuleContext | None = None

    async def start(self, context: ModuleContext) -> None:
        self.context = context

    async def check_outgoing(self, event: OutgoingEvent) -> None:
        assert self.context is not None
        await self.context.run_sync(time.sleep, 1.0)


class PinMethod:
    method = "org.example.pin"

    def begin(self, opening: VendorMessage) -> VendorProgress:
        return VendorProgress(stage="open")

    def advance(
        self, opening: VendorMessage, progress: VendorProgress, message: VendorMessage, sender: Side
    ) -> VendorProgress:
        return progress

    def actions(
        self, opening: VendorMessage, progress: VendorProgress, us: Side
    ) -> tuple[Mapping[str, Any], ...]:
        return ()


class VendorModule(Module):
    name: ClassVar[str] = "vendor"

    def vendor_methods(self) -> Sequence[VendorMethod]:
        return (PinMethod(),)


class NotAModule:
    name = "nope"


class BadName(Module):
    name: ClassVar[str] = "Has Spaces"


class BadConfig(Module):
    name: ClassVar[str] = "badconfig"

    def __init__(self, config: Mapping[str, Any]) -> None:
        raise ValueError("needs a key")


# -- helpers


def spec(cls: str, **kwargs: Any) -> ModuleConfig:
    return ModuleConfig(path=f"{HERE}:{cls}", **kwargs)


async def start(
    stack: contextlib.AsyncExitStack, data_dir: Path, modules: Sequence[ModuleConfig] = ()
) -> Node:
    config = dataclasses.replace(node_config(), modules=tuple(modules))
    return await stack.enter_async_context(
        open_node(config, data_dir=data_dir, backoff=FAST_BACKOFF)
    )


async def pair(a: Node, b: Node) -> str:
    for node, other in ((a, b), (b, a)):
        address = address_of(other)
        await node.add_peer_address(other.identifier, address.host, address.port)
    return await make_shared_room(a, b)


def module_of(node: Node, cls: type[Module]) -> Any:
    found = node.modules.find(cls)
    assert found is not None
    return found


# -- loading


def test_modules_config_array() -> None:
    config = build_config(
        {
            "modules": [
                {"path": "a.b:C", "config": {"x": 1}, "deadline_s": 0.5},
                {"path": "d:E"},
            ],
            "policy": {"enabled": False},
        }
    )
    assert config.modules == (
        ModuleConfig(path="a.b:C", config={"x": 1}, deadline_s=0.5),
        ModuleConfig(path="d:E"),
    )
    assert config.policy.enabled is False
    assert build_config({}).policy.enabled is True


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"modules": {"path": "a:B"}}, "modules"),
        ({"modules": [{"path": "nocolon"}]}, "modules[0].path"),
        ({"modules": [{"path": "a:B", "deadline_s": 0}]}, "modules[0].deadline_s"),
        ({"modules": [{"path": "a:B", "config": 3}]}, "modules[0].config"),
        ({"modules": [{"path": "a:B", "other": 3}]}, "modules[0].other"),
        ({"policy": {"enabled": "yes"}}, "policy.enabled"),
    ],
)
def test_bad_module_config_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        build_config(raw)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("no_such_package_xyz:Module", LoadReason.IMPORT_FAILED),
        (f"{HERE}:Missing", LoadReason.NO_SUCH_CLASS),
        (f"{HERE}:NotAModule", LoadReason.NOT_A_MODULE),
        (f"{HERE}:BadName", LoadReason.BAD_NAME),
        (f"{HERE}:BadConfig", LoadReason.CONSTRUCTOR_FAILED),
        (f"{HERE}:", LoadReason.BAD_PATH),
    ],
)
def test_load_errors_are_typed(path: str, reason: LoadReason) -> None:
    with pytest.raises(ModuleLoadError) as info:
        load_module(ModuleConfig(path=path))
    assert info.value.reason is reason


async def test_a_node_with_a_bad_module_does_not_start(tmp_path: Path) -> None:
    with trio.fail_after(10), pytest.raises(ModuleLoadError) as info:
        async with contextlib.AsyncExitStack() as stack:
            await start(stack, tmp_path / "a", [spec("RecordingModule"), spec("RecordingModule")])
    assert info.value.reason is LoadReason.DUPLICATE_NAME


# -- running


async def test_module_gets_events_of_its_types_in_s2s_rooms_and_sends_as_its_user(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", [spec("RecordingModule")])
            b = await start(stack, tmp_path / "b", [spec("RecordingModule")])
            room = await pair(a, b)
            on_a, on_b = module_of(a, RecordingModule), module_of(b, RecordingModule)

            ping = await b.send_event(room, "org.example.ping", {"n": 1})
            await b.send_event(room, "org.example.other", {"n": 2})
            ordinary = await a.create_room(creator=f"@alice:{a.identifier}")
            await a.send_event(ordinary, "org.example.ping", {}, sender=f"@alice:{a.identifier}")
            await wait_for(lambda: _has(on_a, ping.event_id))
            assert [e.type for e in on_a.events] == ["org.example.ping"]  # not the ordinary room

            # Sending as the module user: invited by a's server user, joined, then the event.
            sent = await on_a.context.send_event(room, "org.example.ping", {"from": "module"})
            assert sent.sender == f"@recorder:{a.identifier}"
            state = await a.room_state(room)
            member = state[("m.room.member", sent.sender)]
            assert member.membership == "join"
            await wait_for(lambda: _has(on_b, sent.event_id))
            # A state event needs a power level; the server user grants it.
            topic = await on_a.context.send_event(room, "m.room.topic", {"topic": "t"}, "")
            power = (await a.room_state(room))[("m.room.power_levels", "")]
            assert power.content["users"][sent.sender] == 50
            await wait_for(lambda: _state_is(b, room, ("m.room.topic", ""), topic.event_id))
            with pytest.raises(ModuleUserError):
                await on_a.context.send_event(ordinary, "org.example.ping", {})


async def _has(module: RecordingModule, event_id: str) -> bool:
    return any(e.event_id == event_id for e in module.events)


async def _state_is(node: Node, room: str, key: tuple[str, str], event_id: str) -> bool:
    state = await node.room_state(room)
    return key in state and state[key].event_id == event_id


async def test_a_veto_reaches_the_caller_and_nothing_is_built(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", [spec("RecordingModule")])
            alice = f"@alice:{a.identifier}"
            room = await a.create_room(creator=alice)
            tips = await a.rooms.read(room, lambda g: g.forward_extremities)
            with pytest.raises(ModuleVeto) as info:
                await a.send_event(room, "m.room.message", {"body": "veto"}, sender=alice)
            assert info.value.module == "recorder"
            assert await a.rooms.read(room, lambda g: g.forward_extremities) == tips
            await a.send_event(room, "m.room.message", {"body": "fine"}, sender=alice)


async def test_raising_and_hanging_modules_do_not_take_the_node_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="s2s_node.modules.host")
    RaisingModule.calls = 0
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            modules = [
                spec("RaisingModule"),
                spec("HangingModule", deadline_s=0.1),
                spec("RecordingModule"),
            ]
            started = trio.current_time()
            a = await start(stack, tmp_path / "a", modules)
            b = await start(stack, tmp_path / "b", modules)
            assert trio.current_time() - started < 5  # the hanging start was cut off
            room = await pair(a, b)
            hanger = module_of(a, HangingModule)
            # Every local send waits at most the hanging module's deadline, then goes through.
            for n in range(MAX_CONSECUTIVE_FAILURES + 1):
                await a.send_event(room, "org.example.ping", {"n": n})
            recorder = module_of(b, RecordingModule)
            await wait_for(lambda: _count(recorder, MAX_CONSECUTIVE_FAILURES + 1))
            # The healthy module got everything; the broken ones were disabled, logged.
            assert a.modules.is_disabled(hanger)
            assert a.modules.find(HangingModule) is None
            assert a.modules.is_disabled(module_of_any(a, RaisingModule))
            assert RaisingModule.calls >= 1
            assert "did not finish within" in caplog.text
            assert "module bug" in caplog.text
            assert "disabled after" in caplog.text
            # Once disabled, a hanging module costs nothing.
            before = trio.current_time()
            await a.send_event(room, "org.example.ping", {"n": "last"})
            assert trio.current_time() - before < 0.1


def module_of_any(node: Node, cls: type[Module]) -> Module:
    return next(m for m in node.modules.modules if isinstance(m, cls))


async def _count(module: RecordingModule, n: int) -> bool:
    return len(module.events) >= n


async def test_blocking_work_in_a_thread_is_abandoned_at_the_deadline(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", [spec("BlockingModule", deadline_s=0.2)])
            alice = f"@alice:{a.identifier}"
            room = await a.create_room(creator=alice)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await trio.sleep(0.01)
                    ticks += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tick)
                before = trio.current_time()
                await a.send_event(room, "m.room.message", {"body": "x"}, sender=alice)
                elapsed = trio.current_time() - before
                nursery.cancel_scope.cancel()
            assert 0.15 < elapsed < 0.9  # the deadline, not the second of blocking work
            assert ticks >= 5  # the event loop kept running meanwhile


async def test_vendor_methods_are_collected(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            a = await start(stack, tmp_path / "a", [spec("VendorModule")])
            assert [m.method for m in a.modules.vendor_methods()] == ["org.example.pin"]
            assert a.vendor_methods.get("org.example.pin") is not None  # the node's registry


# -- the reports example


async def test_reports_become_a_log_line_and_a_mute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="s2s_node.modules.reports")
    reports = ModuleConfig(
        path="s2s_node.modules.reports:ReportsModule", config={"mute_reported": True}
    )
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            purple = await start(stack, tmp_path / "purple", [reports])
            blue = await start(stack, tmp_path / "blue", [reports])
            s2s = await pair(purple, blue)
            john = f"@john:{blue.identifier}"
            smith = f"@smith:{purple.identifier}"
            room = await blue.create_room(creator=john)
            await blue.invite(room, smith, sender=john)
            await wait_for(lambda: _invited(purple, room))
            await purple.join(room, via=blue.identifier, user=smith)
            spam = await blue.send_event(room, "m.room.message", {"body": "spam"}, sender=john)

            on_purple = module_of(purple, ReportsModule)
            await on_purple.report(
                room=s2s, peer=blue.identifier, event_id=spam.event_id, user_id=john, reason="spam"
            )
            on_blue = module_of(blue, ReportsModule)
            await wait_for(lambda: _reported(on_blue))
            (report,) = on_blue.received
            assert (report.reporter, report.user_id, report.event_id) == (
                purple.identifier,
                john,
                spam.event_id,
            )
            assert f"report from {purple.identifier}" in caplog.text
            with pytest.raises(ModuleVeto) as info:
                await blue.send_event(room, "m.room.message", {"body": "more"}, sender=john)
            assert info.value.module == "reports"
            state = await purple.room_state(s2s)
            assert ("m.room.member", f"@reports:{purple.identifier}") in state
            assert REPORT_TYPE not in {key[0] for key in state}  # a message, not state


async def _invited(node: Node, room: str) -> bool:
    return room in node.invites


async def _reported(module: ReportsModule) -> bool:
    return bool(module.received)
