"""Orderings kept up to date for incremental state resolution: float positions between
neighbours, and the reverse topological power ordering with events placed one at a time.

Owns: `PowerOrdering` (the events of resolution step 1 in Kahn's lexicographic topological
order, with the auth edges between them, updated by taking events out and placing them back)
and the position arithmetic both orderings of `core.stateres_incremental` use (`between`,
`crowded`, `respace`, `spread_positions`). Must not: run auth checks (`core.stateres_fold`) or
decide which events belong to the ordering (`core.stateres_incremental`).

Spec: digest section 6.2, "Reverse topological power ordering" (Kahn's algorithm choosing,
among the events whose auth events are all placed, the smallest
`(-sender power level, origin_server_ts, event_id)`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from itertools import chain, compress, count, islice, pairwise

from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId

# (-sender power level, origin_server_ts, event ID): the event ID last.
PowerKey = tuple[int, int, EventId]

# Neighbouring positions closer than this (relative to their size) are renumbered: a float
# gap halves at each insertion into it and runs out after about 40.
MIN_GAP = 1e-12
# A window is spread out only if its positions end up at least this far apart (relative to
# their size): room for about 20 more halvings before it is crowded again.
ROOMY_GAP = 1e-6
_INF = float("inf")


def between(low: float | None, high: float | None) -> float | None:
    """A position between two neighbours (None for a side without one); None when floats
    have no room left between them (the caller renumbers)."""
    if low is None:
        return 0.0 if high is None else high - 1.0
    if high is None:
        return low + 1.0
    middle = (low + high) / 2
    return middle if low < middle < high else None


def crowded(positions: list[float], i: int) -> bool:
    """Whether the gaps around `positions[i]` are small enough to renumber soon."""
    at = positions[i]
    size = abs(at)
    room = MIN_GAP * size if size > 1.0 else MIN_GAP  # (max() measured slower)
    return (i > 0 and at - positions[i - 1] < room) or (
        i + 1 < len(positions) and positions[i + 1] - at < room
    )


def respace(positions: list[float], i: int) -> tuple[int, int, float | None, float | None]:
    """Spread out, in place, the positions of the smallest window of indices around `i`
    (half-width 8, doubling) that its outer neighbours leave enough room for; all of them
    (0, 1, 2, ...) once the window covers the list. Returns the window `[lo, hi)` and its
    outer neighbours' positions (None at an end): only positions strictly between those
    moved, in the same order."""
    n = len(positions)
    width = 8
    while True:
        lo = max(0, i - width)
        hi = min(n, i + width + 1)
        left = positions[lo - 1] if lo > 0 else None
        right = positions[hi] if hi < n else None
        count = hi - lo
        if left is None and right is None:
            positions[:] = [float(k) for k in range(n)]
        elif left is None:
            assert right is not None
            positions[lo:hi] = [right - (count - k) for k in range(count)]
        elif right is None:
            positions[lo:hi] = [left + (k + 1) for k in range(count)]
        else:
            step = (right - left) / (count + 1)
            if step < ROOMY_GAP * max(1.0, abs(left), abs(right)):
                width *= 2
                continue
            positions[lo:hi] = [left + step * (k + 1) for k in range(count)]
        return lo, hi, left, right


def longest_increasing_run(items: list[tuple[float, EventId]]) -> set[EventId]:
    """The events of a longest subsequence of `items` whose positions increase (patience
    sorting, O(n log n))."""
    tails: list[float] = []  # smallest last position of an increasing run of each length
    tail_index: list[int] = []
    previous: list[int] = []
    for i, (at, _event_id) in enumerate(items):
        j = bisect_left(tails, at)
        if j == len(tails):
            tails.append(at)
            tail_index.append(i)
        else:
            tails[j] = at
            tail_index[j] = i
        previous.append(tail_index[j - 1] if j > 0 else -1)
    kept: set[EventId] = set()
    i = tail_index[-1] if tail_index else -1
    while i >= 0:
        kept.add(items[i][1])
        i = previous[i]
    return kept


def spread_positions(
    order: list[EventId], old_positions: Mapping[EventId, float], kept: set[EventId]
) -> list[float] | None:
    """Positions for `order` in which the `kept` events keep their old ones (they must
    increase along `order`) and the others are spread evenly between them; None if floats
    have no room for them."""
    positions: list[float] = []
    run = 0  # events waiting for a position since the last kept one

    def place_run(low: float | None, high: float | None) -> None:
        nonlocal run
        for j in range(run):
            if low is None and high is None:
                at = float(j)
            elif low is None:
                assert high is not None
                at = high - (run - j)
            elif high is None:
                at = low + j + 1
            else:
                at = low + (high - low) * (j + 1) / (run + 1)
            positions.append(at)
        run = 0

    low: float | None = None
    for event_id in order:
        if event_id in kept:
            high = old_positions[event_id]
            place_run(low, high)
            positions.append(high)
            low = high
        else:
            run += 1
    place_run(low, None)
    if any(b <= a for a, b in pairwise(positions)):
        return None
    return positions


class BlockedKeys:
    """The sort keys of an ordering, by index, in blocks that know their largest key: the
    first key after an index that is larger than a given one is found by skipping whole
    blocks (about sqrt(n) comparisons instead of n)."""

    __slots__ = ("_blocks", "_maxima", "_size")

    def __init__(self, keys: list[PowerKey], size: int = 32) -> None:
        self._size = size  # a block is split when it holds twice this many keys
        self._blocks = [keys[i : i + size] for i in range(0, len(keys), size)]
        self._maxima = [max(block) for block in self._blocks]

    def _locate(self, i: int) -> tuple[int, int]:
        """The block holding index `i` and the index in it (the last block's end for the
        index past the end)."""
        blocks = self._blocks
        for b, block in enumerate(blocks):
            n = len(block)
            if i < n:
                return b, i
            i -= n
        last = len(blocks) - 1
        return last, len(blocks[last]) + i if last >= 0 else i

    def insert(self, i: int, key: PowerKey) -> None:
        if not self._blocks:
            self._blocks.append([key])
            self._maxima.append(key)
            return
        b, j = self._locate(i)
        block = self._blocks[b]
        block.insert(j, key)
        self._maxima[b] = max(self._maxima[b], key)
        if len(block) > 2 * self._size:
            half = len(block) // 2
            low, high = block[:half], block[half:]
            self._blocks[b : b + 1] = [low, high]
            self._maxima[b : b + 1] = [max(low), max(high)]

    def delete(self, i: int) -> None:
        b, j = self._locate(i)
        block = self._blocks[b]
        key = block.pop(j)
        if not block:
            del self._blocks[b]
            del self._maxima[b]
        elif key == self._maxima[b]:
            self._maxima[b] = max(block)

    def insert_before_larger(self, start: int, key: PowerKey) -> int:
        """Insert `key` at the first index >= `start` whose key is larger (at the end if none
        is), skipping the blocks whose largest key is not; returns that index."""
        blocks = self._blocks
        if not blocks:
            self.insert(0, key)
            return 0
        # The block holding `start` and the index in it (as `_locate`).
        b = 0
        j = start
        last = len(blocks) - 1
        while b < last and j >= len(blocks[b]):
            j -= len(blocks[b])
            b += 1
        offset = start - j
        maxima = self._maxima
        larger = key.__lt__
        while True:
            block = blocks[b]
            if larger(maxima[b]):
                # The first larger key of this block at or after j, compared in C.
                found = next(compress(count(j), map(larger, islice(block, j, None))), None)
                if found is not None:
                    break
            if b == last:
                found = len(block)  # after every key
                break
            offset += len(block)
            b += 1
            j = 0
        block.insert(found, key)
        if maxima[b] < key:  # noqa: PLR1730 (max() measured slower)
            maxima[b] = key
        if len(block) > 2 * self._size:
            half = len(block) // 2
            low, high = block[:half], block[half:]
            blocks[b : b + 1] = [low, high]
            maxima[b : b + 1] = [max(low), max(high)]
        return offset + found


class PowerOrdering:
    """Resolution step 1's events in order, each at a float position.

    `refs` counts, for every event ID, the ordered events citing it as an auth event;
    `children` maps an event ID to the ordered events citing it (whether or not it is itself
    ordered: an event joining later must know what depends on it). `renumber(low, high,
    moved)` is called whenever positions are spread out again, with the new positions of the
    events that moved, all those that were strictly between `low` and `high` (None: no
    bound), so that the fold keyed on them follows.
    """

    def __init__(
        self,
        order: list[EventId],
        positions: list[float],
        keys: list[PowerKey],
        events: Mapping[EventId, Pdu],
        renumber: Callable[[float | None, float | None, Mapping[EventId, float]], None],
    ) -> None:
        self.order = order
        self.positions = positions
        self.pos: dict[EventId, float] = dict(zip(order, positions, strict=True))
        self.keys = BlockedKeys(keys)
        self.nodes: set[EventId] = set(order)
        auth_ids = [events[event_id].auth_event_ids for event_id in order]
        self.refs: Counter[EventId] = Counter(chain.from_iterable(auth_ids))
        children: dict[EventId, set[EventId]] = {}
        for event_id, parents in zip(order, auth_ids, strict=True):
            for parent in parents:
                siblings = children.get(parent)
                if siblings is None:
                    children[parent] = {event_id}
                else:
                    siblings.add(event_id)
        self.children = children
        self._crowded: list[EventId] = []  # placed where the gaps are small
        self._renumber_callback = renumber

    def detach(self, event: Pdu) -> None:
        """Take an event out (its refs stay: the caller drops those of a leaving event; a
        moving one is placed back with `joins=False`)."""
        event_id = event.event_id
        at = self.pos.pop(event_id)
        i = bisect_left(self.positions, at)
        del self.order[i]
        del self.positions[i]
        self.keys.delete(i)
        self.nodes.discard(event_id)
        for auth_id in event.auth_event_ids:
            siblings = self.children.get(auth_id)
            if siblings is not None:
                siblings.discard(event_id)

    def place(self, event: Pdu, key: PowerKey, *, joins: bool) -> None:
        """Put an event no ordered event depends on where Kahn's algorithm outputs it: at the
        first step after its parents at which it sorts before the event the old run output
        there (from then on the old run goes on as before, the event having no children)."""
        event_id = event.event_id
        positions = self.positions
        keys = self.keys
        children = self.children
        pos = self.pos
        parents = event.auth_event_ids
        after = -_INF  # the position of its last placed parent
        for parent in parents:
            siblings = children.get(parent)
            if siblings is None:
                children[parent] = {event_id}
            else:
                siblings.add(event_id)
            at_parent = pos.get(parent, -_INF)
            if at_parent > after:  # noqa: PLR1730 (a max() call a parent measured slower)
                after = at_parent
        if joins:
            refs = self.refs
            for parent in parents:
                refs[parent] = refs.get(parent, 0) + 1
        # The key goes in first (the positions are spread out, if need be, without it).
        i = keys.insert_before_larger(bisect_right(positions, after), key)
        n = len(positions)
        at = between(positions[i - 1] if i > 0 else None, positions[i] if i < n else None)
        if at is None:
            self._respace(i)
            at = between(positions[i - 1], positions[i])
            assert at is not None
        self.order.insert(i, event_id)
        positions.insert(i, at)
        pos[event_id] = at
        self.nodes.add(event_id)
        if crowded(positions, i):
            self._crowded.append(event_id)

    @property
    def crowded(self) -> bool:
        """Whether events were placed where the gaps are small (`respace_crowded`)."""
        return bool(self._crowded)

    def respace_crowded(self) -> None:
        """Spread the positions out around the events placed where the gaps were small."""
        crowded_ids, self._crowded = self._crowded, []
        for event_id in crowded_ids:
            at = self.pos.get(event_id)
            if at is not None:
                i = bisect_left(self.positions, at)
                if crowded(self.positions, i):
                    self._respace(i)

    def _respace(self, i: int) -> None:
        lo, hi, low, high = respace(self.positions, i)
        moved = dict(zip(self.order[lo:hi], self.positions[lo:hi], strict=True))
        self.pos.update(moved)
        self._renumber_callback(low, high, moved)

    def renumber(self) -> None:
        """Spread all the positions out again (0, 1, 2, ...), in the same order."""
        self._crowded = []
        self.positions[:] = [float(i) for i in range(len(self.order))]
        self.pos.clear()
        self.pos.update((e, float(i)) for i, e in enumerate(self.order))
        self._renumber_callback(None, None, self.pos)

    def prune_refs(self) -> None:
        """Forget the event IDs nothing ordered cites any more."""
        refs = self.refs
        if len(refs) > 4 * len(self.nodes) + 64:
            self.refs = Counter({k: v for k, v in refs.items() if v > 0})

    def descendants_of(self, event_ids: Iterable[EventId], excluded: set[EventId]) -> set[EventId]:
        """The ordered events that depend, through ordered events, on any of `event_ids`."""
        children = self.children
        nodes = self.nodes
        found: set[EventId] = set()
        pending = [c for e in event_ids for c in children.get(e, ())]
        while pending:
            event_id = pending.pop()
            if event_id in found or event_id not in nodes or event_id in excluded:
                continue
            found.add(event_id)
            pending.extend(children.get(event_id, ()))
        return found


__all__ = [
    "MIN_GAP",
    "BlockedKeys",
    "PowerKey",
    "PowerOrdering",
    "between",
    "crowded",
    "longest_increasing_run",
    "respace",
    "spread_positions",
]
