"""Small signed rooms for the room-graph and ingest tests.

`RoomFixture` makes a room (v10, v11 or v12) whose servers are real node identifiers (so
`derived_keys` verifies them), with alice (creator, power 100) and bob joined, and builds events
on top of a `RoomGraph`, either citing its forward extremities and current state or citing
explicit prev_events and auth_events (to make forks, ban evasion and bad auth events). The
benchmark rooms of tests/vectors/rooms are loaded by `load_bench_room`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s_node.core.auth import select_auth_events
from s2s_node.core.events import Pdu, build_event
from s2s_node.core.ids import EventId
from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.room import RoomGraph
from s2s_node.core.rules import rules_for

ROOMS = Path(__file__).resolve().parent / "vectors" / "rooms"
T0 = 1_700_000_000_000


@functools.cache
def server_key(n: int) -> SigningKey:
    """A throwaway key; its identifier is the server name."""
    return signing_key_from_seed(hashlib.sha256(b"room-fixtures:%d" % n).digest())


def user(localpart: str, n: int) -> str:
    return f"@{localpart}:{server_key(n).identifier}"


ALICE = user("alice", 0)
BOB = user("bob", 1)
CAROL = user("carol", 2)


class RoomFixture:
    """A room with alice (creator, power 100) and bob joined; events are built, not added."""

    def __init__(
        self,
        version: str = "12",
        *,
        power_users: Mapping[str, int] | None = None,
        name: str = "room",
    ) -> None:
        """`name` tells rooms apart (their room IDs differ)."""
        self.rules = rules_for(version)
        self.clock = T0
        alice_key = server_key(0)
        create_content: dict[str, Any] = {"room_version": version, "m.fixture": name}
        if self.rules.creator_in_content:
            create_content["creator"] = ALICE
        v12 = self.rules.room_id_is_create_event_hash
        self.create = build_event(
            rules=self.rules,
            room_id=None if v12 else f"!{name}:{alice_key.identifier}",
            sender=ALICE,
            event_type="m.room.create",
            state_key="",
            content=create_content,
            prev_events=[],
            auth_events=[],
            depth=1,
            origin_server_ts=self._tick(),
            server_name=alice_key.identifier,
            signing_key=alice_key,
        )
        self.graph = RoomGraph(self.rules, self.create.room_id)
        self.events: list[Pdu] = []  # what `add` added, in order
        self.add(self.create)
        self.add(self.build("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE))
        users = {} if v12 else {ALICE: 100}
        users.update(power_users or {})
        self.add(self.build("m.room.power_levels", ALICE, {"users": users}, state_key=""))
        self.add(self.build("m.room.join_rules", ALICE, {"join_rule": "public"}, state_key=""))
        self.add(self.build("m.room.member", BOB, {"membership": "join"}, state_key=BOB))

    def _tick(self) -> int:
        self.clock += 1000
        return self.clock

    def add(self, pdu: Pdu) -> Pdu:
        admission = self.graph.add(pdu)
        assert admission.failed_check is None, admission
        self.events.append(pdu)
        return pdu

    def build(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        prev_events: Sequence[EventId] | None = None,
        auth_events: Sequence[EventId] | None = None,
        depth: int | None = None,
        graph: RoomGraph | None = None,
    ) -> Pdu:
        """A signed event by `sender`'s server.

        Defaults: prev_events = the forward extremities, auth_events selected from the state
        after the single prev_event (else from the current state), depth = max prev depth + 1.
        """
        graph = self.graph if graph is None else graph
        key = server_key(_server_number(sender))
        if prev_events is None and auth_events is None and depth is None:
            return graph.build_event(
                event_type=event_type,
                content=content,
                sender=sender,
                state_key=state_key,
                now_ms=self._tick(),
                server_name=key.identifier,
                signing_key=key,
            )
        template = graph.build_event(
            event_type=event_type,
            content=content,
            sender=sender,
            state_key=state_key,
            now_ms=0,
            server_name=key.identifier,
            signing_key=key,
        )
        prev = list(template.prev_events if prev_events is None else prev_events)
        if depth is None:
            depth = 1 + max(graph.get_event(e).depth for e in prev)
        if auth_events is None and len(prev) == 1 and prev[0] in graph:
            # Auth events from the state the event claims to follow (e.g. before a ban).
            auth_events = select_auth_events(
                event_type, sender, state_key, content, self.rules, graph.state_after(prev[0])
            )
        return build_event(
            rules=self.rules,
            room_id=self.create.room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            prev_events=prev,
            auth_events=list(template.auth_events if auth_events is None else auth_events),
            depth=depth,
            origin_server_ts=self._tick(),
            server_name=key.identifier,
            signing_key=key,
            state_key=state_key,
        )

    def message(self, sender: str, body: str, **kwargs: Any) -> Pdu:
        return self.build("m.room.message", sender, {"msgtype": "m.text", "body": body}, **kwargs)

    def state_id(self, event_type: str, state_key: str = "") -> EventId:
        return self.graph.current_state()[(event_type, state_key)]


def _server_number(user_id: str) -> int:
    server = user_id.split(":", 1)[1]
    for n in range(8):
        if server_key(n).identifier == server:
            return n
    raise ValueError(f"{user_id} is not on a fixture server")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchRoom:
    """A perf-dag/1 room: its events as JSON objects in file (topological) order."""

    name: str
    room_version: str
    events: tuple[dict[str, Any], ...]
    event_ids: tuple[EventId, ...]
    tips: frozenset[EventId]
    expected: dict[tuple[str, str], EventId]


@functools.cache
def load_bench_room(name: str) -> BenchRoom:
    with gzip.open(ROOMS / name, "rb") as f:
        dag = json.loads(f.read())
    return BenchRoom(
        name=name,
        room_version=dag["room_version"],
        events=tuple(dag["events"]),
        event_ids=tuple(dag["event_ids"]),
        tips=frozenset(dag["tips"]),
        expected={(t, k): e for t, k, e in dag["expected"]["resolved_state"]},
    )


def bench_room_names() -> list[str]:
    return sorted(p.name for p in ROOMS.glob("*.json.gz"))


def random_message_dag(n: int, seed: int, name: str) -> RoomFixture:
    """A v11 room whose `n` messages cite 1-3 of the last dozen events each (forks and
    merges), from the last initial state event on; the same `seed` gives the same room."""
    fixture = RoomFixture("11", name=name)
    rng = random.Random(seed)
    for i in range(n):
        pool = [e.event_id for e in fixture.events[4:][-12:]]
        prev = rng.sample(pool, rng.randint(1, min(3, len(pool))))
        fixture.add(fixture.message(ALICE, f"m{i}", prev_events=prev))
    return fixture
