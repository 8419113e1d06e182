"""The auth-chain index: every known event's auth chain as a big-integer bitmask.

Owns: `AuthChainIndex`, built incrementally (parents first), which answers "what is the auth
chain of E" and set algebra over auth chains without walking the DAG. Must not: fetch events,
decide which events are valid, or know about room state (the caller adds events it has
accepted or rejected alike; state resolution decides what to do with them).

Spec: digest section 6.2, "Auth chain" (`content/rooms/fragments/v2-state-res.md`): every event
reachable from E by following `auth_events`, recursively, E itself excluded. In room version 12
the create event is an implied auth event of every other event, so callers pass
`Pdu.auth_event_ids` (which includes it), not the wire `auth_events`.

Representation (simple on purpose, so the store can persist it as it is or rebuild it):

- each added event gets a dense integer *position* 0, 1, 2, ... in the order of `add`;
  `event_ids()[i]` is the event at position i;
- each event's *chain mask* is a Python int in which bit i is set iff the event at position i
  is in its auth chain: chain(e) = OR over auth events p of (bit(p) | chain(p));
- because events are added parents first, a chain mask only has bits below the event's own.

Unions, intersections and differences of auth chains are then single big-int operations. Memory
grows with the square of the number of events in the worst case (n bits per event), so callers
add only events that can be cited as auth events or appear in state (state events; a message
event is never an auth event). To persist: store (position, event_id, auth positions) rows and
either the masks as little-endian blobs (`int.to_bytes`) or rebuild them with `add` in
position order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence

from s2s_node.core.ids import EventId

# Bits `sparse_ids_of` takes one by one before it writes out the rest of the mask.
_FEW_BITS = 16


class AuthChainReason(enum.Enum):
    """Why the index refused a query or an insertion."""

    # `add` was given an auth event the index has not seen (callers add parents first).
    AUTH_EVENT_UNKNOWN = "auth_event_unknown"
    # A query named an event that was never added.
    EVENT_UNKNOWN = "event_unknown"
    # `add` was called again for an event with different auth events.
    AUTH_EVENTS_CHANGED = "auth_events_changed"


class AuthChainError(LookupError):
    """An event the index needs is missing, or an event was re-added inconsistently."""

    def __init__(self, reason: AuthChainReason, event_id: str) -> None:
        super().__init__(f"{reason.value}: {event_id}")
        self.reason = reason
        self.event_id = event_id


class AuthChainIndex:
    """Auth chains of the events of one room, as bitmasks over dense event positions."""

    __slots__ = ("_auth", "_chains", "_ids", "_positions")

    def __init__(self) -> None:
        self._positions: dict[EventId, int] = {}
        self._ids: list[EventId] = []
        self._chains: list[int] = []
        self._auth: list[tuple[int, ...]] = []

    def add(self, event_id: EventId, auth_event_ids: Sequence[EventId]) -> None:
        """Add an event whose auth events are all in the index already.

        Adding the same event again with the same auth events does nothing.
        """
        positions = self._positions
        try:
            # (In C: no comprehension frame per event.)
            auth = tuple(sorted(set(map(positions.__getitem__, auth_event_ids))))
        except KeyError as exc:
            raise AuthChainError(AuthChainReason.AUTH_EVENT_UNKNOWN, str(exc.args[0])) from None
        known = positions.get(event_id)
        if known is not None:
            if self._auth[known] != auth:
                raise AuthChainError(AuthChainReason.AUTH_EVENTS_CHANGED, event_id)
            return
        chains = self._chains
        mask = 0
        for p in auth:
            mask |= (1 << p) | chains[p]
        position = len(self._ids)
        positions[event_id] = position
        self._ids.append(event_id)
        chains.append(mask)
        self._auth.append(auth)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._positions

    def __len__(self) -> int:
        return len(self._ids)

    def position(self, event_id: EventId) -> int:
        """The dense position (bit number) of an event."""
        try:
            return self._positions[event_id]
        except KeyError:
            raise AuthChainError(AuthChainReason.EVENT_UNKNOWN, event_id) from None

    def chain_mask(self, event_id: EventId) -> int:
        """The auth chain of an event (itself excluded) as a mask."""
        return self._chains[self.position(event_id)]

    @property
    def chain_masks(self) -> Sequence[int]:
        """Every event's chain mask by position, for loops over many positions (a view of
        the index's own list: read it, never change it)."""
        return self._chains

    @property
    def positions_by_id(self) -> Mapping[EventId, int]:
        """Every event's position by ID, for loops over many events (a view of the index's
        own map: read it, never change it)."""
        return self._positions

    def chain_mask_at(self, position: int) -> int:
        """`chain_mask` by position (no lookup by ID)."""
        return self._chains[position]

    def id_at(self, position: int) -> EventId:
        """The event at a position."""
        return self._ids[position]

    def auth_positions(self, event_id: EventId) -> tuple[int, ...]:
        """The positions of an event's direct auth events, ascending."""
        return self._auth[self.position(event_id)]

    def mask_of(self, event_ids: Iterable[EventId]) -> int:
        """The mask with the bits of the given events set."""
        positions = self._positions
        mask = 0
        try:
            for event_id in event_ids:
                mask |= 1 << positions[event_id]
        except KeyError as exc:
            raise AuthChainError(AuthChainReason.EVENT_UNKNOWN, str(exc.args[0])) from None
        return mask

    def closure_mask(self, event_ids: Iterable[EventId]) -> int:
        """The given events together with their auth chains, as one mask."""
        positions = self._positions
        chains = self._chains
        mask = 0
        try:
            for event_id in event_ids:
                p = positions[event_id]
                mask |= (1 << p) | chains[p]
        except KeyError as exc:
            raise AuthChainError(AuthChainReason.EVENT_UNKNOWN, str(exc.args[0])) from None
        return mask

    def positions_of(self, mask: int) -> Iterator[int]:
        """The positions of the set bits of a mask, ascending."""
        if mask < 0:
            raise ValueError("masks are non-negative")
        # bin() runs in C; str.find then skips the zero bits without a Python-level loop.
        bits = bin(mask)[:1:-1]  # least significant bit first
        i = bits.find("1")
        while i >= 0:
            yield i
            i = bits.find("1", i + 1)

    def ids_of(self, mask: int) -> list[EventId]:
        """The event IDs of the set bits of a mask, in position order (parents first)."""
        ids = self._ids
        return [ids[i] for i in self.positions_of(mask)]

    def sparse_ids_of(self, mask: int) -> list[EventId]:
        """`ids_of` for a mask that usually has few bits (an update's change): bit by bit
        from the highest, without writing out the whole mask (or counting its bits) while
        there are few."""
        ids = self._ids
        found: list[EventId] = []
        while mask:
            if len(found) == _FEW_BITS:
                return self.ids_of(mask) + found[::-1]
            p = mask.bit_length() - 1
            found.append(ids[p])
            mask ^= 1 << p
        found.reverse()
        return found

    def replace_in_closure(
        self, closure: int, replaced: EventId | None, event_id: EventId | None
    ) -> int | None:
        """The closure (events and their auth chains) of a set of events after `replaced`
        (None: none) gives way to `event_id` (None: none), from the closure before; None when
        the closure before cannot tell (`replaced` is not in `event_id`'s auth chain, so it
        may have to leave)."""
        positions = self._positions
        try:
            if event_id is None:
                return closure if replaced is None else None
            p = positions[event_id]
            chain = self._chains[p]
            if replaced is not None and not chain >> positions[replaced] & 1:
                return None
        except KeyError as exc:
            raise AuthChainError(AuthChainReason.EVENT_UNKNOWN, str(exc.args[0])) from None
        return closure | (1 << p) | chain

    def auth_chain(self, event_id: EventId) -> frozenset[EventId]:
        """The auth chain of an event (itself excluded) as a set of event IDs."""
        return frozenset(self.ids_of(self.chain_mask(event_id)))

    def event_ids(self) -> Sequence[EventId]:
        """Every added event, by position."""
        return tuple(self._ids)
