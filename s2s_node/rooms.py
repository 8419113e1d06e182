"""The node's rooms on its store: the one write path for events, local and remote, and reads.

Owns: `NodeRooms`, which runs every room change in the store's writer thread (one `RoomGraph`
per room, cached there), so local events meet the same receipt checks as remote ones and are
acknowledged only after the store committed; queueing local events for the other servers of
the room in the same SQL transaction as the event; reads on reader connections; and the
subscribers of accepted events (`Subscription`). Must not: speak HTTP, fetch missing events
(the net shell does, then calls `ingest` again) or decide who is asked for what.

Design: DESIGN.md section 2 (receive path: "store commit -> local subscribers notified -> HTTP
200"), section 9; spec digest 8.3 (checks on receipt), 3.5 (building events).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from s2s_node.core.auth import (
    AuthError,
    AuthRule,
    StateKey,
    check_auth,
    compute_auth_keys,
    is_s2s_room,
)
from s2s_node.core.events import Pdu, build_event
from s2s_node.core.ids import EventId, RoomId, server_of
from s2s_node.core.ingest import Outcome, Verdict, ingest_batch
from s2s_node.core.keys import SigningKey
from s2s_node.core.room import Admission, EventStatus, RoomGraph
from s2s_node.core.rules import RoomVersionRules, rules_for
from s2s_node.core.signing import derived_keys
from s2s_node.store import AsyncStore, Store

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Accepted events a subscriber may fall behind by before its subscription is ended (a reader
# that never reads must not make the node hold every event in memory).
SUBSCRIPTION_BUFFER = 10_000
# Events handed to one `ingest_batch` call (and so held by one store write). The writer is
# released between chunks so that local sends and other peers are not starved by a catch-up.
INGEST_CHUNK = 500

_MEMBER = "m.room.member"


class UnknownRoomError(LookupError):
    """The node has no such room."""

    def __init__(self, room_id: str) -> None:
        super().__init__(f"unknown room {room_id[:100]}")
        self.room_id = room_id


class SubscriptionLagError(Exception):
    """A subscriber fell more than `SUBSCRIPTION_BUFFER` events behind and was cut off."""


class Subscription:
    """An async iterator of accepted events (`Pdu`), local and remote, from when it was made.

    Received invites of rooms this node is not in yet are delivered too (an `m.room.member`
    event with membership `invite` whose room `room_state` does not know).
    """

    def __init__(self, owner: NodeRooms, room_id: str | None) -> None:
        self.room_id = room_id
        self._owner = owner
        self._send, self._receive = trio.open_memory_channel[Pdu | None](SUBSCRIPTION_BUFFER)
        self._lagged = False

    def _offer(self, pdu: Pdu) -> None:
        if self.room_id is not None and pdu.room_id != self.room_id:
            return
        try:
            self._send.send_nowait(pdu)
        except trio.WouldBlock:
            self._lagged = True
            self._owner.unsubscribe(self)
        except trio.ClosedResourceError:
            pass

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Pdu:
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            if self._lagged:
                raise SubscriptionLagError(f"fell {SUBSCRIPTION_BUFFER} events behind") from None
            raise StopAsyncIteration from None
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        self._owner.unsubscribe(self)

    async def aclose(self) -> None:
        self.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEvent:
    """What to build for a local event (the sender is a user of this node)."""

    event_type: str
    content: Mapping[str, Any]
    sender: str
    state_key: str | None = None


class NodeRooms:
    """Every room change goes through `write`; `read` gives a room graph on a reader."""

    def __init__(
        self,
        astore: AsyncStore,
        key: SigningKey,
        *,
        now_ms: Callable[[], int],
        on_enqueued: Callable[[Iterable[str]], None] = lambda _: None,
    ) -> None:
        self.astore = astore
        self.key = key
        self.identifier = key.identifier
        self._now_ms = now_ms
        self._on_enqueued = on_enqueued
        self._graphs: dict[RoomId, RoomGraph] = {}  # writer-thread graphs
        self._subscriptions: list[Subscription] = []
        # Module hooks (s2s_node.modules.host): a veto before a local event is built (`send`,
        # `build`), and the accepted remote events local subscribers may see (`ingest`).
        self.before_local: Callable[[str, LocalEvent], Awaitable[None]] | None = None
        self.filter_remote: Callable[[list[Pdu]], Awaitable[list[Pdu]]] | None = None

    # -- subscribers

    def subscribe(self, room_id: str | None = None) -> Subscription:
        subscription = Subscription(self, room_id)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        subscription._send.close()

    def publish(self, events: Iterable[Pdu]) -> None:
        for pdu in events:
            for subscription in list(self._subscriptions):
                subscription._offer(pdu)

    def close_subscriptions(self) -> None:
        for subscription in list(self._subscriptions):
            self.unsubscribe(subscription)

    # -- the writer thread

    def _graph(self, store: Store, room_id: RoomId) -> RoomGraph:
        graph = self._graphs.get(room_id)
        if graph is None:
            room = store.room(room_id)
            if room is None:
                raise UnknownRoomError(room_id)
            graph = RoomGraph(room.rules, room_id, room)
            self._graphs[room_id] = graph
        return graph

    async def write(self, fn: Callable[[Store], _T]) -> _T:
        return await self.astore.write(fn)

    async def read(self, room_id: str, fn: Callable[[RoomGraph], _T]) -> _T:
        """Run `fn(graph)` on a reader connection; `UnknownRoomError` if the room is unknown."""

        def run(store: Store) -> _T:
            room = store.room(RoomId(room_id))
            if room is None:
                raise UnknownRoomError(room_id)
            return fn(RoomGraph(room.rules, room.room_id, room))

        return await self.astore.read(run)

    async def room_rules(self, room_id: str) -> RoomVersionRules | None:
        def run(store: Store) -> RoomVersionRules | None:
            room = store.room(RoomId(room_id))
            return None if room is None else room.rules

        return await self.astore.read(run)

    async def known_events(self, room_id: str, ids: Collection[EventId]) -> set[EventId]:
        """Which of `ids` the room has (none if the room is unknown)."""
        wanted = list(ids)

        def run(store: Store) -> set[EventId]:
            room = store.room(RoomId(room_id))
            if room is None:
                return set()
            return {e for e in wanted if room.get_admission(e) is not None}

        return await self.astore.read(run)

    async def room_ids(self) -> list[RoomId]:
        rooms = await self.astore.read(lambda store: store.rooms())
        return [room_id for room_id, _ in rooms]

    # -- remote events

    async def ingest(
        self,
        room_id: RoomId,
        objs: Sequence[object],
        *,
        rules: RoomVersionRules | None = None,
        values_checked: bool = False,
    ) -> list[Verdict]:
        """Run the receive pipeline over untrusted PDUs of one room; verdicts in input order.

        `rules` creates the room first (joining it); otherwise the room must be known. Events
        are ingested in chunks of `INGEST_CHUNK`; an event deferred for an event of a later
        chunk is tried again with that chunk. `values_checked=True` only for objects that came
        through the strict decoders (`core.wire.decode_body`, `core.canonical.parse_json`),
        which already refused floats, out-of-range integers and the like: the pipeline then
        skips its own canonical-value walk (see `core.ingest.ingest_batch`).
        """
        verdicts: list[Verdict | None] = [None] * len(objs)
        carried: list[int] = []
        for start in range(0, len(objs), INGEST_CHUNK):
            chunk = carried + list(range(start, min(start + INGEST_CHUNK, len(objs))))
            last = start + INGEST_CHUNK >= len(objs)

            def run(store: Store, chunk: list[int] = chunk) -> tuple[list[Verdict], list[Pdu]]:
                # One SQL transaction for the chunk (each event a savepoint in it): nothing of
                # it is acknowledged (verdicts, subscribers) before this COMMIT, and an error
                # rolls the whole chunk back.
                if rules is not None:
                    store.create_room(room_id, rules)  # its own transaction: the graph is cached
                with store.transaction():
                    graph = self._graph(store, room_id)
                    results = ingest_batch(
                        [objs[i] for i in chunk], graph, derived_keys, values_checked=values_checked
                    )
                    accepted = [
                        graph.get_event(v.event_id)
                        for v in results
                        if v.outcome is Outcome.ACCEPTED and not v.duplicate and v.event_id
                    ]
                return results, accepted

            results, accepted = await self.astore.write(run)
            if self.filter_remote is not None and accepted:
                accepted = await self.filter_remote(accepted)
            carried = []
            for i, verdict in zip(chunk, results, strict=True):
                verdicts[i] = verdict
                if verdict.outcome is Outcome.DEFERRED and not last:
                    carried.append(i)
            self.publish(accepted)
        return [v for v in verdicts if v is not None]

    # -- local events

    async def create_room(
        self,
        *,
        creator: str,
        room_version: str,
        room_type: str | None,
        join_rule: str = "invite",
        power_users: Mapping[str, int] | None = None,
        extra_state: Sequence[LocalEvent] = (),
        create_content: Mapping[str, Any] | None = None,
        power_content: Mapping[str, Any] | None = None,
        join_allow: Sequence[Mapping[str, Any]] = (),
    ) -> RoomId:
        """Create a room: create event, the creator's join, power levels, join rules, then
        `extra_state`, all in one store write.

        `create_content` adds keys to the create event's content (`additional_creators`,
        `predecessor`); `power_content` is the base of the power levels content (its `users`
        are merged with the creator's and `power_users`); `join_allow` is the join rule's
        `allow` list (a `restricted` room).

        The creator's join is checked before anything is stored, so a server user asked for a
        room that is not an s2s room is refused (`AuthError` S2S_SERVER_USER_OUTSIDE_S2S_ROOM)
        and nothing is kept.
        """
        rules = rules_for(room_version)
        now = self._now_ms()
        content: dict[str, Any] = {**(create_content or {}), "room_version": rules.version}
        if rules.creator_in_content:
            content["creator"] = creator
        if room_type is not None:
            content["type"] = room_type
        room_id_arg = (
            None
            if rules.room_id_is_create_event_hash
            else f"!{secrets.token_urlsafe(18)}:{self.identifier}"
        )
        create = build_event(
            rules=rules,
            room_id=room_id_arg,
            sender=creator,
            event_type="m.room.create",
            state_key="",
            content=content,
            prev_events=[],
            auth_events=[],
            depth=1,
            origin_server_ts=now,
            server_name=self.identifier,
            signing_key=self.key,
        )
        # The creator's join, checked against the create event alone before anything is kept.
        probe = build_event(
            rules=rules,
            room_id=create.room_id,
            sender=creator,
            event_type=_MEMBER,
            state_key=creator,
            content={"membership": "join"},
            prev_events=[create.event_id],
            auth_events=[] if rules.room_id_is_create_event_hash else [create.event_id],
            depth=2,
            origin_server_ts=now,
            server_name=self.identifier,
            signing_key=self.key,
        )
        check_auth(probe, {("m.room.create", ""): create})
        base_power = dict(power_content or {})
        users: dict[str, int] = {} if rules.creators_have_infinite_power else {creator: 100}
        base_users = base_power.pop("users", None)
        if isinstance(base_users, Mapping):
            users.update(base_users)
        users.update(power_users or {})
        steps = [
            LocalEvent(
                event_type=_MEMBER,
                content={"membership": "join"},
                sender=creator,
                state_key=creator,
            ),
            LocalEvent(
                event_type="m.room.power_levels",
                content={**base_power, "users": users},
                sender=creator,
                state_key="",
            ),
            LocalEvent(
                event_type="m.room.join_rules",
                content={
                    "join_rule": join_rule,
                    **({"allow": list(join_allow)} if join_allow else {}),
                },
                sender=creator,
                state_key="",
            ),
            *extra_state,
        ]

        def run(store: Store) -> list[Pdu]:
            store.create_room(create.room_id, rules)
            graph = self._graph(store, create.room_id)
            added = [create]
            _check_admitted(graph, graph.add(create))
            for step in steps:
                added.append(self._add_local(store, graph, step, ())[0])
            return added

        self.publish(await self.astore.write(run))
        return create.room_id

    async def send(self, room_id: str, event: LocalEvent, *, also_to: Iterable[str] = ()) -> Pdu:
        """Build a local event on the room's extremities, check it, store it and queue it for
        every other server in the room (and `also_to`). Raises `AuthError` (nothing stored)
        if the current state does not allow it."""
        extra = tuple(also_to)
        if self.before_local is not None:
            await self.before_local(room_id, event)  # a module's veto raises; nothing is built

        def run(store: Store) -> tuple[Pdu, set[str]]:
            return self._add_local(store, self._graph(store, RoomId(room_id)), event, extra)

        pdu, destinations = await self.astore.write(run)
        self._on_enqueued(destinations)
        self.publish([pdu])
        return pdu

    async def add_built(self, pdu: Pdu, *, also_to: Iterable[str] = ()) -> Pdu:
        """Store a local event built elsewhere (an invite countersigned by the invitee's
        server) and queue it like `send` does."""
        extra = tuple(also_to)

        def run(store: Store) -> tuple[Pdu, set[str]]:
            graph = self._graph(store, pdu.room_id)
            return self._commit_local(store, graph, pdu, extra)

        stored, destinations = await self.astore.write(run)
        self._on_enqueued(destinations)
        self.publish([stored])
        return stored

    async def build(self, room_id: str, event: LocalEvent) -> Pdu:
        """A signed local event on the current extremities, checked against the current state
        but not stored (an invite waits for the invitee's signature first)."""
        if self.before_local is not None:
            await self.before_local(room_id, event)  # a module's veto raises; nothing is built

        def run(store: Store) -> Pdu:
            graph = self._graph(store, RoomId(room_id))
            pdu = self._build(graph, event)
            check_against_current_state(graph, pdu)
            return pdu

        return await self.astore.write(run)

    def _build(self, graph: RoomGraph, event: LocalEvent) -> Pdu:
        return graph.build_event(
            event_type=event.event_type,
            content=event.content,
            sender=event.sender,
            state_key=event.state_key,
            now_ms=self._now_ms(),
            server_name=self.identifier,
            signing_key=self.key,
        )

    def _add_local(
        self, store: Store, graph: RoomGraph, event: LocalEvent, also_to: Sequence[str]
    ) -> tuple[Pdu, set[str]]:
        pdu = self._build(graph, event)
        check_against_current_state(graph, pdu)
        return self._commit_local(store, graph, pdu, also_to)

    def _commit_local(
        self, store: Store, graph: RoomGraph, pdu: Pdu, also_to: Sequence[str]
    ) -> tuple[Pdu, set[str]]:
        """Add a local event and queue it for the room's servers in one SQL transaction;
        returns the stored event and the destinations (to poke once back in trio)."""
        destinations = compute_servers_in_room(graph) | set(also_to)
        if pdu.type == _MEMBER and pdu.state_key is not None:
            destinations.add(server_of(pdu.state_key))
        destinations.discard(self.identifier)
        with store.transaction():
            _check_admitted(graph, graph.add(pdu))
            if destinations:
                store.outbound.enqueue_pdus(sorted(destinations), [pdu.event_id], self._now_ms())
        return graph.get_event(pdu.event_id), destinations

    async def enqueue(self, destinations: Iterable[str], event_ids: Sequence[EventId]) -> None:
        """Queue stored events for servers (e.g. a join a resident accepted, for the others)."""
        targets = sorted(set(destinations) - {self.identifier})
        if not targets or not event_ids:
            return
        now = self._now_ms()
        await self.astore.write(lambda store: store.outbound.enqueue_pdus(targets, event_ids, now))
        self._on_enqueued(targets)


# ----------------------------------------------------------------------------------------------
# Queries on a graph (run in whichever thread holds the graph)


def compute_servers_in_room(graph: RoomGraph) -> set[str]:
    """Servers with a joined member in the room's current state."""
    servers: set[str] = set()
    for (event_type, state_key), event_id in graph.current_state().items():
        if event_type == _MEMBER and graph.get_event(event_id).membership == "join":
            servers.add(server_of(state_key))
    return servers


def check_against_current_state(graph: RoomGraph, pdu: Pdu) -> None:
    """The auth rules for a new local event against the current state (raises `AuthError`)."""
    state = graph.current_state()
    auth: dict[StateKey, Pdu] = {}
    for key in compute_auth_keys(pdu):
        event_id = state.get(key)
        if event_id is not None:
            auth[key] = graph.get_event(event_id)
    check_auth(pdu, auth)


def compute_auth_chain(graph: RoomGraph, event_ids: Iterable[EventId]) -> list[Pdu]:
    """The events' full recursive auth chain (not the events themselves unless cited)."""
    seen: set[EventId] = set()
    chain: list[Pdu] = []
    stack = [a for e in event_ids for a in graph.get_event(e).auth_event_ids]
    while stack:
        event_id = stack.pop()
        if event_id in seen:
            continue
        seen.add(event_id)
        pdu = graph.get_event(event_id)
        chain.append(pdu)
        stack.extend(pdu.auth_event_ids)
    chain.sort(key=lambda p: (p.depth, p.event_id))
    return chain


def is_room_s2s(graph: RoomGraph) -> bool:
    create_id = graph.current_state().get(("m.room.create", ""))
    return create_id is not None and is_s2s_room(graph.get_event(create_id))


def _check_admitted(graph: RoomGraph, admission: Admission) -> None:
    if admission.status is not EventStatus.ACCEPTED:
        # A local event that passed the pre-check can only fail here through a race the
        # writer thread excludes; report it like an auth failure.
        rule = admission.rule or AuthRule.AUTH_EVENTS_MISSING
        raise AuthError(rule, admission.detail, admission.event_id)


__all__ = [
    "INGEST_CHUNK",
    "LocalEvent",
    "NodeRooms",
    "Subscription",
    "SubscriptionLagError",
    "UnknownRoomError",
    "check_against_current_state",
    "compute_auth_chain",
    "compute_servers_in_room",
    "is_room_s2s",
]
