"""The client view of rooms: event stream positions, `/sync` responses and `/messages` pages.

Owns: `EventStream`, the in-memory positions of the events the node accepted since it started
(fed by a node-wide `Subscription`, woken for long-polls), the sync and pagination tokens, and
building the Matrix client bodies from the store: client-format events, a user's joined /
invited / left rooms with timeline and state, and pages of a room's events. Must not: speak
HTTP or authenticate (net.client_api does) or change rooms.

Tokens (opaque to clients):
- sync `next_batch` / `since`: `s<boot>_<position>`; `boot` is random per process, so a token
  of an earlier run (or one older than the stream's memory) is answered like an initial sync
  with `limited: true` timelines.
- `/messages` `from` / `end` and a timeline's `prev_batch`: `m<index>`, a boundary in the
  room's events in the order this node stored them (parents before children); stable because
  the store only appends.

Spec: client-server API "Syncing" (GET /sync: rooms.join timeline/state, rooms.invite
invite_state, rooms.leave), "GET /rooms/{roomId}/messages", "Room event format" (ClientEvent),
"Stripped state".
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from s2s_node.core.auth import StateKey
from s2s_node.core.canonical import JsonDict
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId, RoomId
from s2s_node.core.room import EventStatus, RoomGraph
from s2s_node.rooms import Subscription, SubscriptionLagError
from s2s_node.store import AsyncStore, Store
from s2s_node.store.rooms import SqliteRoomStore

logger = logging.getLogger(__name__)

# Stream entries kept in memory; a `since` older than that gets an initial-style answer.
STREAM_MEMORY = 50_000
# ...and at most about this many bytes of them (their canonical JSON; Python objects take a
# few times more): 50,000 events of up to 64 KiB would otherwise be gigabytes a peer could
# make the node hold (found by tests/test_load.py; docs/reliability.md).
STREAM_MEMORY_BYTES = 16 * 1024 * 1024
# Timeline events per room in an initial sync, and at most per room in an incremental one.
INITIAL_TIMELINE_LIMIT = 20
INCREMENTAL_TIMELINE_LIMIT = 100
# `/messages` page size: the default and the cap.
MESSAGES_DEFAULT_LIMIT = 10
MESSAGES_MAX_LIMIT = 1000
# Initial syncs whose delivered event IDs are remembered (to drop them from the next
# incremental sync if they were published to the stream just after the initial one read them).
DELIVERED_MEMORY = 256
# The state a client sees of a room it is invited to (spec: "Stripped state", recommended).
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
)
_MEMBER = "m.room.member"

TxnLookup = Callable[[EventId], str | None]


class TokenError(ValueError):
    """A pagination token that this node did not make."""


# ----------------------------------------------------------------------------------------------
# Client-format events


def build_client_event(pdu: Pdu, txn_id: str | None = None) -> JsonDict:
    """The ClientEvent form of a PDU (spec "Room event format")."""
    event: JsonDict = {
        "content": pdu.content,
        "event_id": pdu.event_id,
        "origin_server_ts": pdu.origin_server_ts,
        "room_id": pdu.room_id,
        "sender": pdu.sender,
        "type": pdu.type,
        "unsigned": {},
    }
    if pdu.state_key is not None:
        event["state_key"] = pdu.state_key
    if txn_id is not None:
        event["unsigned"] = {"transaction_id": txn_id}
    if pdu.redacts is not None:
        event["redacts"] = pdu.redacts
    return event


def build_stripped_event(obj: Mapping[str, Any]) -> JsonDict | None:
    """Stripped state (`type`, `state_key`, `content`, `sender`) of an event object."""
    keys = ("type", "state_key", "content", "sender")
    if not all(k in obj for k in keys):
        return None
    return {k: obj[k] for k in keys}


# ----------------------------------------------------------------------------------------------
# Tokens


def build_messages_token(index: int) -> str:
    return f"m{index}"


def parse_messages_token(token: str) -> int:
    if not token.startswith("m") or not token[1:].isdigit() or len(token) > 20:
        raise TokenError(f"{token[:40]!r} is not a pagination token of this node")
    return int(token[1:])


# ----------------------------------------------------------------------------------------------
# The stream


@dataclass(frozen=True, slots=True)
class StreamEntry:
    position: int
    pdu: Pdu
    size: int = 0  # bytes of its canonical JSON


class EventStream:
    """Positions of the events the node accepted (and invites it received) since it started."""

    def __init__(
        self, *, memory: int = STREAM_MEMORY, memory_bytes: int = STREAM_MEMORY_BYTES
    ) -> None:
        self.boot = secrets.token_hex(4)
        self.position = 0
        self._entries: collections.deque[StreamEntry] = collections.deque(maxlen=memory)
        self._memory_bytes = memory_bytes
        self.held_bytes = 0
        self._changed = trio.Event()
        self._delivered: collections.OrderedDict[str, frozenset[EventId]] = (
            collections.OrderedDict()
        )

    def append(self, pdu: Pdu) -> None:
        self.position += 1
        entries = self._entries
        if len(entries) == entries.maxlen:
            self.held_bytes -= entries[0].size  # the deque drops it
        # The Pdu was checked when it was parsed or built: the trusted encoder measures it.
        entry = StreamEntry(self.position, pdu, len(pdu.canonical_bytes()))
        entries.append(entry)
        self.held_bytes += entry.size
        while self.held_bytes > self._memory_bytes and len(entries) > 1:
            self.held_bytes -= entries.popleft().size
        self._changed.set()
        self._changed = trio.Event()

    async def run(
        self,
        subscribe: Callable[[], Subscription],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Feed the stream from node-wide subscriptions until cancelled."""
        subscription = subscribe()
        task_status.started()
        while True:
            try:
                async for pdu in subscription:
                    self.append(pdu)
                return  # the node closed its subscriptions: it is stopping
            except SubscriptionLagError:
                # Events were lost to the stream: earlier tokens must not be trusted.
                logger.warning("the sync stream fell behind; clients will resynchronise")
                self.boot = secrets.token_hex(4)
                self._entries.clear()
                self.held_bytes = 0
                subscription = subscribe()

    def token(self, position: int | None = None) -> str:
        return f"s{self.boot}_{self.position if position is None else position}"

    def parse_since(self, token: str | None) -> int | None:
        """The position of a `since` token, or None when it must be answered in full."""
        if not token or not token.startswith(f"s{self.boot}_"):
            return None
        text = token.partition("_")[2]
        if not text.isdigit() or len(text) > 20:
            return None
        position = int(text)
        if position > self.position:
            return None
        oldest = self._entries[0].position if self._entries else self.position + 1
        if position < oldest - 1 and position < self.position:
            return None  # forgotten
        return position

    def entries_after(self, position: int) -> list[StreamEntry]:
        return [e for e in self._entries if e.position > position]

    async def wait_after(self, position: int) -> None:
        """Return once the stream is past `position` (the caller bounds the wait)."""
        while self.position <= position:
            await self._changed.wait()

    def remember_delivered(self, token: str, event_ids: Iterable[EventId]) -> None:
        self._delivered[token] = frozenset(event_ids)
        while len(self._delivered) > DELIVERED_MEMORY:
            self._delivered.popitem(last=False)

    def delivered(self, token: str) -> frozenset[EventId]:
        return self._delivered.get(token, frozenset())


# ----------------------------------------------------------------------------------------------
# Reads on one room (run on a store reader)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomRead:
    """What a sync needs of one room for one user."""

    room_id: RoomId
    membership: str | None
    member_event: Pdu | None
    timeline: tuple[Pdu, ...] = ()
    limited: bool = False
    prev_batch: str | None = None
    state: tuple[Pdu, ...] = ()
    stripped: tuple[JsonDict, ...] = ()


def _room(store: Store, room_id: str) -> tuple[SqliteRoomStore, RoomGraph] | None:
    room = store.room(RoomId(room_id))
    if room is None:
        return None
    return room, RoomGraph(room.rules, room.room_id, room)


def is_visible(graph: RoomGraph, event_id: EventId) -> bool:
    """Clients see accepted events only (not soft-failed or rejected ones)."""
    return graph.status(event_id) is EventStatus.ACCEPTED


def compute_membership(graph: RoomGraph, user: str) -> Pdu | None:
    event_id = graph.current_state().get((_MEMBER, user))
    return None if event_id is None else graph.get_event(event_id)


def compute_stripped_state(graph: RoomGraph, member: Pdu | None) -> list[JsonDict]:
    state = graph.current_state()
    stripped = []
    for event_type in STRIPPED_STATE_TYPES:
        event_id = state.get((event_type, ""))
        if event_id is not None:
            item = build_stripped_event(graph.get_event(event_id).json)
            if item is not None:
                stripped.append(item)
    if member is not None:
        item = build_stripped_event(member.json)
        if item is not None:
            stripped.append(item)
    return stripped


def _state_events(graph: RoomGraph, state: Mapping[StateKey, EventId]) -> tuple[Pdu, ...]:
    return tuple(graph.get_event(e) for _, e in sorted(state.items()))


def read_room_for_sync(
    store: Store,
    room_id: str,
    user: str,
    *,
    recent: Sequence[EventId] | None,
    limit: int,
) -> RoomRead | None:
    """One room as `user` sees it. `recent` None: an initial view (the last `limit` events);
    else the stream's new events of the room, in order."""
    found = _room(store, room_id)
    if found is None:
        return None
    room, graph = found
    member = compute_membership(graph, user)
    membership = None if member is None else member.membership
    if membership == "invite":
        stripped = tuple(compute_stripped_state(graph, member))
        return RoomRead(
            room_id=RoomId(room_id), membership=membership, member_event=member, stripped=stripped
        )
    if membership not in ("join", "leave", "ban"):
        return RoomRead(room_id=RoomId(room_id), membership=membership, member_event=member)
    order = room.event_ids()
    index_of = {e: i for i, e in enumerate(order)}
    if recent is None:
        if membership != "join":
            return RoomRead(room_id=RoomId(room_id), membership=membership, member_event=member)
        chosen: list[EventId] = []
        i = len(order) - 1
        while i >= 0 and len(chosen) <= limit:
            if is_visible(graph, order[i]):
                chosen.append(order[i])
            i -= 1
        limited = len(chosen) > limit
        timeline = list(reversed(chosen[:limit]))
        newly_joined = True
    else:
        timeline = [e for e in recent if e in index_of and is_visible(graph, e)]
        if membership != "join" and member is not None:
            # A user who left sees the room's events up to their leave.
            cut = index_of.get(member.event_id, len(order))
            timeline = [e for e in timeline if index_of[e] <= cut]
        limited = len(timeline) > limit
        timeline = timeline[-limit:]
        newly_joined = member is not None and member.event_id in timeline
    if not timeline:
        return RoomRead(room_id=RoomId(room_id), membership=membership, member_event=member)
    first = timeline[0]
    state: tuple[Pdu, ...] = ()
    if newly_joined or limited:
        state = _state_events(graph, graph.state_before(first))
    return RoomRead(
        room_id=RoomId(room_id),
        membership=membership,
        member_event=member,
        timeline=tuple(graph.get_event(e) for e in timeline),
        limited=limited,
        prev_batch=build_messages_token(index_of[first]),
        state=state,
    )


# ----------------------------------------------------------------------------------------------
# Sync


@dataclass(slots=True)
class SyncBody:
    """A /sync answer being built."""

    next_batch: str
    join: dict[str, JsonDict] = field(default_factory=dict)
    invite: dict[str, JsonDict] = field(default_factory=dict)
    leave: dict[str, JsonDict] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.join or self.invite or self.leave)

    def event_ids(self) -> list[EventId]:
        return [
            EventId(e["event_id"])
            for room in self.join.values()
            for e in room["timeline"]["events"]
        ]

    def to_json(self) -> JsonDict:
        return {
            "next_batch": self.next_batch,
            "rooms": {"join": self.join, "invite": self.invite, "leave": self.leave},
            "account_data": {"events": []},
            "presence": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }


def add_room_to_body(body: SyncBody, read: RoomRead, txn_of: TxnLookup) -> None:
    timeline = {
        "events": [build_client_event(p, txn_of(p.event_id)) for p in read.timeline],
        "limited": read.limited,
    }
    if read.prev_batch is not None:
        timeline["prev_batch"] = read.prev_batch
    state = {"events": [build_client_event(p) for p in read.state]}
    if read.membership == "join":
        body.join[read.room_id] = {
            "timeline": timeline,
            "state": state,
            "ephemeral": {"events": []},
            "account_data": {"events": []},
            "summary": {},
            "unread_notifications": {},
        }
    elif read.membership == "invite":
        body.invite[read.room_id] = {"invite_state": {"events": list(read.stripped)}}
    elif read.membership in ("leave", "ban"):
        body.leave[read.room_id] = {"timeline": timeline, "state": state}


async def compute_initial_sync(
    astore: AsyncStore,
    stream: EventStream,
    room_ids: Sequence[str],
    user: str,
    txn_of: TxnLookup,
    *,
    limit: int = INITIAL_TIMELINE_LIMIT,
    visible: Callable[[Sequence[Pdu]], Awaitable[list[Pdu]]] | None = None,
) -> SyncBody:
    """Every room `user` is joined to or invited to (rooms the node is not in yet: the caller
    adds their invites). `visible` drops timeline events local users must not see (events a
    module withholds, docs/design.md section 10)."""
    body = SyncBody(next_batch=stream.token())
    for room_id in room_ids:
        read = await astore.read(
            functools.partial(
                read_room_for_sync, room_id=room_id, user=user, recent=None, limit=limit
            )
        )
        if read is not None and read.membership in ("join", "invite"):
            if visible is not None:
                read = dataclasses.replace(read, timeline=tuple(await visible(read.timeline)))
            add_room_to_body(body, read, txn_of)
    stream.remember_delivered(body.next_batch, body.event_ids())
    return body


async def compute_incremental_sync(
    astore: AsyncStore,
    stream: EventStream,
    since: int,
    since_token: str,
    user: str,
    txn_of: TxnLookup,
    *,
    limit: int = INCREMENTAL_TIMELINE_LIMIT,
) -> tuple[SyncBody, list[Pdu]]:
    """What changed for `user` after `since`; also the new invites of `user` to rooms the node
    does not have (for the caller to add with their stripped state)."""
    entries = stream.entries_after(since)
    body = SyncBody(next_batch=stream.token(entries[-1].position if entries else since))
    skip = stream.delivered(since_token)
    by_room: dict[str, list[EventId]] = {}
    remote_invites: list[Pdu] = []
    for entry in entries:
        if entry.pdu.event_id in skip:
            continue
        by_room.setdefault(entry.pdu.room_id, []).append(entry.pdu.event_id)
        pdu = entry.pdu
        if pdu.type == _MEMBER and pdu.state_key == user and pdu.membership == "invite":
            remote_invites.append(pdu)
    known: set[str] = set()
    for room_id, recent in by_room.items():
        read = await astore.read(
            functools.partial(
                read_room_for_sync, room_id=room_id, user=user, recent=recent, limit=limit
            )
        )
        if read is None:
            continue
        known.add(room_id)
        changed = read.member_event is not None and read.member_event.event_id in recent
        if read.membership in ("invite", "leave", "ban"):
            # Shown when the membership changed in this window (a leave with its timeline).
            if changed:
                add_room_to_body(body, read, txn_of)
        elif read.membership == "join" and read.timeline:
            add_room_to_body(body, read, txn_of)
    return body, [p for p in remote_invites if p.room_id not in known]


# ----------------------------------------------------------------------------------------------
# /messages


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesPage:
    start: str
    end: str | None
    chunk: tuple[Pdu, ...]
    state: tuple[Pdu, ...]


def read_messages(
    store: Store,
    room_id: str,
    *,
    start: int | None,
    backwards: bool,
    limit: int,
    stop: int | None = None,
) -> MessagesPage | None:
    """A page of the room's visible events from boundary `start` (the end of the room when
    None and going backwards, its beginning going forwards), at most `limit`, not past
    boundary `stop`. None if the node has no such room."""
    found = _room(store, room_id)
    if found is None:
        return None
    room, graph = found
    order = room.event_ids()
    count = len(order)
    if start is None:
        start = count if backwards else 0
    start = max(0, min(start, count))
    chunk: list[EventId] = []
    if backwards:
        i = start - 1
        floor = 0 if stop is None else max(0, stop)
        while i >= floor and len(chunk) < limit:
            if is_visible(graph, order[i]):
                chunk.append(order[i])
            i -= 1
        end = None if i < floor else build_messages_token(i + 1)
    else:
        i = start
        ceiling = count if stop is None else min(count, stop)
        while i < ceiling and len(chunk) < limit:
            if is_visible(graph, order[i]):
                chunk.append(order[i])
            i += 1
        # Going forwards there is always an `end`: the room may grow.
        end = build_messages_token(i)
    return MessagesPage(
        start=build_messages_token(start),
        end=end,
        chunk=tuple(graph.get_event(e) for e in chunk),
        state=(),
    )


def read_membership(store: Store, room_id: str, user: str) -> tuple[bool, str | None]:
    """(whether the node has the room, `user`'s membership in its current state)."""
    found = _room(store, room_id)
    if found is None:
        return False, None
    member = compute_membership(found[1], user)
    return True, None if member is None else member.membership


__all__ = [
    "INCREMENTAL_TIMELINE_LIMIT",
    "INITIAL_TIMELINE_LIMIT",
    "MESSAGES_DEFAULT_LIMIT",
    "MESSAGES_MAX_LIMIT",
    "EventStream",
    "MessagesPage",
    "RoomRead",
    "StreamEntry",
    "SyncBody",
    "TokenError",
    "build_client_event",
    "build_messages_token",
    "build_stripped_event",
    "compute_incremental_sync",
    "compute_initial_sync",
    "compute_membership",
    "compute_stripped_state",
    "parse_messages_token",
    "read_membership",
    "read_messages",
    "read_room_for_sync",
]
