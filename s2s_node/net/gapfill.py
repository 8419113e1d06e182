"""Gap filling: fetching the events a received event cites but this node lacks.

Owns: `GapFiller` (the node's gap filling: inline within a bound, then in the background),
`fetch_history`, which walks back from events a peer has (`latest`) to events this node
has (`earliest`, or the create event), with `POST /get_missing_events` pages, then single
`GET /event` requests for auth events the walk over prev_events did not reach, within a bound
on the number of events; and `fill_gap`, which fetches and submits what was fetched to the same
receive pipeline as every other event (parents first), then the deferred events again. Must not:
accept anything itself (the rooms' ingest does every check) or loop without a bound.

DEVIATION: the spec lets a receiver fall back to `/state_ids` and fetch the state at the gap
when the gap is large. This node's room graph keeps no partial state (every event's
prev_events must be stored before it is evaluated), so state alone cannot place the event. A
gap larger than `MAX_GAP_EVENTS` is not filled inline while answering a `/send`; the events stay
deferred (answered with an error) and the node catches the room up in the background with the
same walk in larger pages (`catch_up`, bounded by `MAX_HISTORY_EVENTS`). Pinned by
tests/test_federation_gaps.py.

Spec: server-server API "Checks performed on receipt of a PDU" (missing events are fetched
before steps 4-5; digest 8.3), `get_missing_events` and `event` (digest 8.4).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import trio

from s2s_node.core.canonical import JsonDict
from s2s_node.core.ids import EventId, RoomId, ServerName
from s2s_node.core.ingest import Outcome, Verdict
from s2s_node.core.rules import RoomVersionRules
from s2s_node.core.signing import compute_event_id
from s2s_node.net.client import FederationClient, FederationClientError, build_path
from s2s_node.rooms import NodeRooms

logger = logging.getLogger(__name__)

GET_MISSING_EVENTS_PATH = "/_matrix/federation/v1/get_missing_events/{}"
EVENT_PATH = "/_matrix/federation/v1/event/{}"
# Events fetched for one gap while answering a transaction (the sender waits meanwhile).
MAX_GAP_EVENTS = 1_000
# Events asked per get_missing_events page while filling a gap inline.
GAP_PAGE = 100
# Catching up a whole room (after a join, or a gap too large to fill inline).
MAX_HISTORY_EVENTS = 200_000
HISTORY_PAGE = 1_000
# A background catch-up that could not fetch what it needs tries again after these delays
# (about 9 minutes in all), then gives up: the next event citing the gap starts another.
CATCH_UP_RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
# Auth events fetched one by one (`/event`) when the walk over prev_events does not reach them.
MAX_SINGLE_FETCHES = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """Events fetched from a peer, parents first; `complete` when nothing cited is missing.

    `keys[i]` is `(depth, event ID)` of `events[i]` (each ID once), so that a caller merging
    other events in need not hash these again.
    """

    events: list[JsonDict]
    keys: list[tuple[int, EventId]]
    complete: bool
    missing: frozenset[EventId]


Known = Callable[[Collection[EventId]], Awaitable[set[EventId]]]


def _event_id_of(obj: object, rules: RoomVersionRules) -> tuple[EventId, int, list[EventId]] | None:
    """The event ID, depth and cited events of a fetched event, or None if it lacks them.

    Only what the walk needs: the event ID (the reference hash), the depth to order by, and
    the prev and auth events to walk on. The full format check is the pipeline's, when the
    event is ingested (a malformed event fetched here is dropped there); `obj` came in a
    response body through the strict decoder, so its values are JSON values.
    """
    if not isinstance(obj, dict):
        return None
    depth = obj.get("depth")
    prev_events = obj.get("prev_events")
    auth_events = obj.get("auth_events")
    if type(depth) is not int or not _is_id_list(prev_events) or not _is_id_list(auth_events):
        return None
    return compute_event_id(obj, rules), depth, [*prev_events, *auth_events]


def _is_id_list(value: object) -> TypeGuard[list[EventId]]:
    return type(value) is list and all(type(v) is str for v in value)


async def fetch_history(
    client: FederationClient,
    destination: str,
    room_id: RoomId,
    rules: RoomVersionRules,
    *,
    latest: Sequence[EventId],
    earliest: Sequence[EventId],
    cited: Collection[EventId],
    known: Known,
    max_events: int,
    page: int,
) -> History:
    """Fetch from `destination` the events between what we have and `latest`.

    `cited` are the event IDs the events we want to place cite; `known(ids)` says which of
    some IDs this node has. Returns the fetched events sorted by depth (parents first).
    """
    pool: dict[EventId, tuple[int, JsonDict, list[EventId]]] = {}
    frontier = list(latest)
    # Cited (by `cited` or a fetched event) but neither fetched nor known here. Kept up to date
    # from each page's fresh events (an ID that was fetched or known stays so), so a page costs
    # its own events, not the whole pool (a 200,000-event catch-up would be quadratic).
    wanted = set(cited)
    wanted -= await known(wanted)
    single_fetches = 0
    while wanted and len(pool) < max_events:
        limit = min(page, max_events - len(pool))
        events = await _get_missing_events(client, destination, room_id, earliest, frontier, limit)
        fresh: list[EventId] = []
        for obj in events:
            parsed = _event_id_of(obj, rules)
            if parsed is None or parsed[0] in pool or not isinstance(obj, dict):
                continue
            pool[parsed[0]] = (parsed[1], obj, parsed[2])
            fresh.append(parsed[0])
        if not fresh:
            # The walk over prev_events gives nothing new: ask for the missing IDs one by one
            # (auth events off the prev_events path), within a bound.
            take = sorted(wanted)[: max(0, MAX_SINGLE_FETCHES - single_fetches)]
            if not take:
                break
            single_fetches += len(take)
            for event_id in take:
                obj = await _get_event(client, destination, event_id)
                parsed = None if obj is None else _event_id_of(obj, rules)
                if obj is not None and parsed is not None and parsed[0] == event_id:
                    pool[event_id] = (parsed[1], obj, parsed[2])
                    fresh.append(event_id)
        wanted.difference_update(fresh)
        wanted.update(c for e in fresh for c in pool[e][2] if c not in pool)
        wanted -= await known(wanted)
        # Walk on from the fetched events that cite what is still missing: those of the last
        # frontier that still do, and fresh ones (an earlier event citing nothing missing then
        # never will: what it cites stays fetched or known).
        candidates = {e for e in frontier if e in pool}.union(fresh)
        frontier = sorted(e for e in candidates if wanted.intersection(pool[e][2]))
        if not frontier:
            break
    keys = sorted((depth, event_id) for event_id, (depth, _, _) in pool.items())
    return History(
        events=[pool[event_id][1] for _, event_id in keys],
        keys=keys,
        complete=not wanted,
        missing=frozenset(wanted),
    )


async def _get_missing_events(
    client: FederationClient,
    destination: str,
    room_id: RoomId,
    earliest: Sequence[EventId],
    latest: Sequence[EventId],
    limit: int,
) -> list[object]:
    body: JsonDict = {
        "earliest_events": list(earliest),
        "latest_events": list(latest),
        "limit": limit,
        "min_depth": 0,
    }
    try:
        _, answer = await client.request(
            destination, "POST", build_path(GET_MISSING_EVENTS_PATH, room_id), body=body
        )
    except FederationClientError as exc:
        logger.info("get_missing_events from %s failed: %s", destination[:12], exc)
        return []
    events = answer.get("events") if isinstance(answer, dict) else None
    return list(events) if isinstance(events, list) else []


async def _get_event(
    client: FederationClient, destination: str, event_id: EventId
) -> JsonDict | None:
    try:
        _, answer = await client.request(destination, "GET", build_path(EVENT_PATH, event_id))
    except FederationClientError as exc:
        logger.info("event %s from %s failed: %s", event_id, destination[:12], exc)
        return None
    pdus = answer.get("pdus") if isinstance(answer, dict) else None
    if isinstance(pdus, list) and len(pdus) == 1 and isinstance(pdus[0], dict):
        return pdus[0]
    return None


Ingest = Callable[[Sequence[object]], Awaitable[list[Verdict]]]


async def fill_gap(
    client: FederationClient,
    destination: str,
    room_id: RoomId,
    rules: RoomVersionRules,
    deferred: Sequence[tuple[JsonDict, Verdict]],
    *,
    earliest: Sequence[EventId],
    known: Known,
    ingest: Ingest,
    max_events: int = MAX_GAP_EVENTS,
    page: int = GAP_PAGE,
) -> tuple[list[Verdict], History]:
    """Fetch what deferred events miss from `destination`, ingest it parents first, then
    submit the deferred events again; their new verdicts, in order, and what was fetched."""
    latest = [v.event_id for _, v in deferred if v.event_id is not None]
    cited = {m for _, v in deferred for m in v.missing}
    history = await fetch_history(
        client,
        destination,
        room_id,
        rules,
        latest=latest,
        earliest=earliest,
        cited=cited,
        known=known,
        max_events=max_events,
        page=page,
    )
    if history.events:
        verdicts = await ingest(history.events)
        refused = sum(1 for v in verdicts if v.outcome is not Outcome.ACCEPTED)
        logger.info(
            "filled a gap in %s from %s: %d events (%d not accepted)",
            room_id,
            destination[:12],
            len(verdicts),
            refused,
        )
    return await ingest([obj for obj, _ in deferred]), history


class GapFiller:
    """The node's gap filling: what the federation routes call for deferred PDUs."""

    def __init__(self, client: FederationClient, rooms: NodeRooms, nursery: trio.Nursery) -> None:
        self._client = client
        self._rooms = rooms
        self._nursery = nursery
        self.limit = MAX_GAP_EVENTS  # events one gap may fetch while the sender waits
        self.catch_ups = 0  # background catch-ups started (gaps larger than `limit`)
        # per (room, origin) catching up: the deferred events it still has to place
        self._catching_up: dict[tuple[RoomId, ServerName], list[tuple[JsonDict, Verdict]]] = {}

    async def fill(
        self, room_id: RoomId, origin: ServerName, deferred: list[tuple[JsonDict, Verdict]]
    ) -> list[Verdict]:
        """Fill the gap from `origin` inline (up to `limit` events); a larger one is caught up
        in the background. The deferred PDUs' verdicts after the inline part."""
        verdicts, history = await self._fill(room_id, origin, deferred, self.limit, GAP_PAGE)
        still = [
            (obj, v)
            for (obj, _), v in zip(deferred, verdicts, strict=True)
            if v.outcome is Outcome.DEFERRED
        ]
        if still and not history.complete:
            pending = self._catching_up.get((room_id, origin))
            if pending is not None:
                pending.extend(still)  # the running catch-up takes them on its next try
            else:
                self._catching_up[(room_id, origin)] = list(still)
                self.catch_ups += 1
                self._nursery.start_soon(self._catch_up, room_id, origin)
        return verdicts

    async def _fill(
        self,
        room_id: RoomId,
        origin: ServerName,
        deferred: list[tuple[JsonDict, Verdict]],
        max_events: int,
        page: int,
    ) -> tuple[list[Verdict], History]:
        rules = await self._rooms.room_rules(room_id)
        assert rules is not None  # the PDUs were deferred by this room's graph
        earliest = await self._rooms.read(room_id, lambda g: sorted(g.forward_extremities))
        return await fill_gap(
            self._client,
            origin,
            room_id,
            rules,
            deferred,
            earliest=earliest,
            known=functools.partial(self._rooms.known_events, room_id),
            ingest=functools.partial(self._rooms.ingest, room_id, values_checked=True),
            max_events=max_events,
            page=page,
        )

    async def _catch_up(self, room_id: RoomId, origin: ServerName) -> None:
        """Fill the gap in pages of `HISTORY_PAGE`; while the origin cannot give what is
        missing (unreachable, partitioned), try again after `CATCH_UP_RETRY_S`: the sender has
        dropped the deferred events from its queue, so nobody else will bring them. Events
        from `origin` deferred meanwhile (`fill`) join the next try."""
        key = (room_id, origin)
        pending = self._catching_up[key]
        try:
            for delay in (0.0, *CATCH_UP_RETRY_S):
                await trio.sleep(delay)
                deferred = list(pending)
                pending.clear()
                verdicts, history = await self._fill(
                    room_id, origin, deferred, MAX_HISTORY_EVENTS, HISTORY_PAGE
                )
                arrived = list(pending)  # deferred by `fill` while we fetched
                pending[:] = [
                    (obj, v)
                    for (obj, _), v in zip(deferred, verdicts, strict=True)
                    if v.outcome is Outcome.DEFERRED
                ] + arrived
                if not pending or (history.complete and not arrived):
                    return  # placed, or the origin has nothing more to give
                logger.info(
                    "catching up %s from %s: %d events still missing",
                    room_id,
                    origin[:12],
                    len(history.missing),
                )
        except Exception:
            logger.exception("catching up %s from %s failed", room_id, origin[:12])
        finally:
            del self._catching_up[key]
