"""`net.gapfill.fetch_history` against a peer that serves a DAG with forks and merges.

The peer is a stand-in for the federation client: it answers `get_missing_events` with the
breadth-first walk of the spec (digest 8.4) and `/event` with single events, and counts what
it was asked. Pinned: the history between what we have and `latest` is fetched once, complete,
parents first, with its keys (`History.keys`); auth events off the prev_events path come one
by one; pages follow the frontier (events citing what is still missing), and the bound on
events holds.
"""

from __future__ import annotations

import urllib.parse
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from room_fixtures import RoomFixture, random_message_dag

from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.net.gapfill import fetch_history


def build_dag(n: int, seed: int) -> RoomFixture:
    return random_message_dag(n, seed, name=f"gap{seed}")


class Peer:
    """What `FederationClient.request` would get from a server holding `events`."""

    def __init__(self, events: list[Pdu], *, hidden: Collection[EventId] = ()) -> None:
        self.by_id = {e.event_id: e for e in events}
        self.hidden = set(hidden)  # never in a walk, only served by /event
        self.pages: list[int] = []
        self.singles: list[EventId] = []

    async def request(
        self, destination: str, method: str, path: str, body: Any = None, **_: Any
    ) -> tuple[int, Any]:
        if "/get_missing_events/" in path:
            assert isinstance(body, Mapping)
            found = self.walk(body["latest_events"], body["earliest_events"], body["limit"])
            self.pages.append(len(found))
            return 200, {"events": [p.json for p in found]}
        event_id = EventId(urllib.parse.unquote(path.rsplit("/", 1)[1]))
        self.singles.append(event_id)
        return 200, {"pdus": [self.by_id[event_id].json]}

    def walk(self, latest: list[EventId], earliest: list[EventId], limit: int) -> list[Pdu]:
        seen = set(earliest)
        queue = deque(p for e in latest if e in self.by_id for p in self.by_id[e].prev_events)
        found: list[Pdu] = []
        while queue and len(found) < limit:
            event_id = queue.popleft()
            if event_id in seen or event_id in self.hidden:
                continue
            seen.add(event_id)
            pdu = self.by_id[event_id]
            found.append(pdu)
            queue.extend(pdu.prev_events)
        return found


def ancestors(events: list[Pdu], event_id: EventId, have: set[EventId]) -> set[EventId]:
    """What `event_id` cites, directly or not, short of `have`."""
    by_id = {e.event_id: e for e in events}
    found: set[EventId] = set()
    stack = [*by_id[event_id].prev_events, *by_id[event_id].auth_event_ids]
    while stack:
        e = stack.pop()
        if e not in found and e not in have:
            found.add(e)
            stack.extend([*by_id[e].prev_events, *by_id[e].auth_event_ids])
    return found


def known_of(ids: set[EventId], calls: list[int]) -> Any:
    async def known(wanted: Collection[EventId]) -> set[EventId]:
        calls.append(len(wanted))
        return set(wanted) & ids

    return known


async def _fetch_gap(
    fixture: RoomFixture,
    peer: Peer,
    new: Pdu,
    have: set[EventId],
    known: Any,
    *,
    max_events: int,
    page: int,
) -> Any:
    """`fetch_history` for the gap between what we `have` and `new`, from `peer`."""
    return await fetch_history(
        peer,  # type: ignore[arg-type]
        "peer",
        fixture.create.room_id,
        fixture.rules,
        latest=[new.event_id],
        earliest=sorted(have),
        cited=[*new.prev_events, *new.auth_event_ids],
        known=known,
        max_events=max_events,
        page=page,
    )


async def test_a_gap_is_fetched_once_complete_and_parents_first() -> None:
    fixture = build_dag(400, seed=1)
    events = fixture.events
    have = {e.event_id for e in events[:60]}
    new = events[-1]  # the event we received and cannot place
    calls: list[int] = []
    peer = Peer(events)
    history = await _fetch_gap(
        fixture, peer, new, have, known_of(have, calls), max_events=10_000, page=50
    )
    expected = ancestors(events, new.event_id, have)
    assert len(expected) > 250
    assert history.complete and not history.missing
    assert {k[1] for k in history.keys} == expected
    assert len(history.events) == len(history.keys) == len(expected)
    by_id = {e.event_id: e for e in events}
    assert history.keys == sorted((by_id[e].depth, e) for e in expected)
    assert [e["depth"] for e in history.events] == [d for d, _ in history.keys]
    assert all(
        by_id[e].json is obj for (_, e), obj in zip(history.keys, history.events, strict=True)
    )
    # Pages follow the frontier: about one page per `page` events (walks from several
    # frontier events overlap a little; the peer knows only `earliest`).
    assert len(peer.pages) <= len(expected) // 50 + 2
    assert sum(peer.pages) < 1.2 * len(expected)
    assert not peer.singles
    assert max(calls) < 60  # `known` is asked about what is missing, not the whole pool


async def test_events_off_the_walk_come_one_by_one_and_the_bound_holds() -> None:
    fixture = build_dag(120, seed=2)
    events = fixture.events
    have = {events[0].event_id}
    new = events[-1]
    expected = ancestors(events, new.event_id, have)
    by_depth = sorted(expected, key=lambda e: fixture.graph.get_event(e).depth)
    # The power levels (an auth event of every message) and a message in the middle.
    hidden = {events[2].event_id, by_depth[len(by_depth) // 2]}
    peer = Peer(events, hidden=hidden)
    history = await _fetch_gap(
        fixture, peer, new, have, known_of(have, []), max_events=10_000, page=40
    )
    assert history.complete
    assert set(peer.singles) >= hidden
    assert {k[1] for k in history.keys} == expected

    bounded = await _fetch_gap(
        fixture, Peer(events), new, have, known_of(have, []), max_events=45, page=20
    )
    assert len(bounded.events) == 45
    assert not bounded.complete and bounded.missing
