"""Incremental state resolution: a room's current state kept up to date event by event.

Owns: `IncrementalResolver`, which returns exactly what `stateres.resolve` returns for a list
of state maps, reusing what it computed for the previous list when the two differ in a few
keys. That is the common case of a room's current state: while two forks stand, every state
event on one of them changes one key of one input, and the full resolution would redo
thousands of auth checks to move one entry. Must not: decide anything `stateres.resolve`
would decide differently (tests compare the two on every call over whole rooms), fetch events
other than through `get_event`, or do I/O.

Spec: digest section 6 (state resolution v2 and v2.1), as `core.stateres` implements it; the
pieces are the same (unconflicted state, auth difference, conflicted subgraph, full conflicted
set, reverse topological power ordering, mainline ordering, iterative auth checks), each kept
up to date from the changes of its inputs:

- unconflicted state and conflicted set: only the changed keys are looked at again;
- auth difference: each input's closure (its events and their auth chains) as a mask, grown
  by the new event's closure when the event it replaces is in that closure (a state event
  cites the event it supersedes for memberships and power levels), recomputed otherwise;
- v2.1 conflicted subgraph: membership is re-decided only for events whose auth chain holds a
  conflicted event that came or went, and for the new ancestors;
- power ordering (`core/stateres_ordering.py`): an event that no ordered event depends on is
  placed where Kahn's algorithm would output it (the first place after its parents whose
  event sorts after it); events that depend on one that joins or leaves are taken out and put
  back; when many move, the ordering is sorted again and only the events off the longest
  unchanged run move;
- mainline ordering: kept while the partial state's power levels event stays, or extends the
  mainline by newer power levels events;
- iterative auth checks: an `AuthCheckFold` (`core/stateres_fold.py`) records which keys each
  check read; a change re-runs only the checks that read a key whose value changed before
  them, in order.

Anything else (many changed keys, a mainline that does not extend the previous one) is
recomputed from scratch, the same way; so is the first call.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from heapq import heapify, heappop, heappush

from s2s_node.core.auth import StateKey
from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.power import POWER_LEVELS_KEY
from s2s_node.core.rules import RoomVersionRules
from s2s_node.core.state_snapshot import StateSnapshot
from s2s_node.core.stateres import (
    GetEvent,
    IsRejected,
    compute_mainline,
    compute_mainline_depth,
    compute_sender_power,
    is_power_event,
    power_levels_auth_event,
)
from s2s_node.core.stateres_conflicted import ConflictedState, InputChanges
from s2s_node.core.stateres_fold import AuthCheckFold, CheckInputs, Memo, no_base
from s2s_node.core.stateres_ordering import (
    PowerKey,
    PowerOrdering,
    between,
    crowded,
    longest_increasing_run,
    respace,
    spread_positions,
)

# (mainline position, origin_server_ts, event ID): step 3's sort key.
_MainlineKey = tuple[int, int, EventId]

_MAX_MOVING = 128  # beyond this many events to re-place in the power ordering, re-sort it


def _without(snapshot: StateSnapshot, key: StateKey) -> StateSnapshot:
    return StateSnapshot({k: v for k, v in snapshot.items() if k != key})


class IncrementalResolver:
    """`stateres.resolve` for one room, kept up to date between calls.

    `resolve(state_sets, get_event)` returns the same map as `stateres.resolve(rules,
    state_sets, index, get_event, is_rejected)`, as a `StateSnapshot`. Events, their rejection
    and the index must only grow between calls (a room graph's do).
    """

    def __init__(
        self, rules: RoomVersionRules, index: AuthChainIndex, is_rejected: IsRejected
    ) -> None:
        self._rules = rules
        self._index = index
        # Per-event facts (events never change, nor does an event's admission once made: the
        # event being added is accepted): looked up through the caller on a miss.
        self._rejected: Memo[bool] = Memo(is_rejected)
        self._is_rejected: IsRejected = self._rejected.__getitem__
        self._pdus: Memo[Pdu] = Memo(self._fetch_from_caller)
        self._get_event: GetEvent = self._pdus.__getitem__
        self._fetch = self._get_event
        self._power_events: Memo[bool] = Memo(lambda e: is_power_event(self._fetch(e)))
        self._is_power = self._power_events.__getitem__
        self._caller_get_event: GetEvent | None = None
        self._valid = False
        self._power_key_of: dict[EventId, PowerKey] = {}
        # During a move in the power ordering: the steps to take out of fold 1, its base
        # changes and the keys an early update (before a renumbering) touched.
        self._fold1_leaving: set[EventId] = set()
        self._fold1_base_changed: list[StateKey] = []
        self._fold1_touched: set[StateKey] = set()
        self._mainline_key_of: dict[EventId, _MainlineKey] = {}
        self.rebuilds = 0
        self.updates = 0

    @property
    def index(self) -> AuthChainIndex:
        """The auth-chain index the resolver's work refers to."""
        return self._index

    # -- per-event facts

    def _fetch_from_caller(self, event_id: EventId) -> Pdu:
        assert self._caller_get_event is not None
        return self._caller_get_event(event_id)

    def _power_key(self, event: Pdu) -> PowerKey:
        key = self._power_key_of.get(event.event_id)
        if key is None:
            power = compute_sender_power(event, self._get_event)
            key = self._power_key_of[event.event_id] = (
                -power,
                event.origin_server_ts,
                event.event_id,
            )
        return key

    # -- entry point

    def resolve(
        self, state_sets: Sequence[Mapping[StateKey, EventId]], get_event: GetEvent
    ) -> StateSnapshot:
        if len(state_sets) < 2:  # nothing to resolve (the previous work stays for later)
            return StateSnapshot(dict(state_sets[0])) if state_sets else StateSnapshot()
        self._caller_get_event = get_event
        try:
            if self._valid:
                changes = self._conflicted.changes(state_sets)
                if changes is not None:
                    # Half-updated structures are never reused: valid again only on success.
                    self._valid = False
                    result = self._update(state_sets, changes)
                    self._valid = True
                    self.updates += 1
                    return result
            self._valid = False
            result = self._rebuild(state_sets)
            self.rebuilds += 1
            self._valid = True
            return result
        finally:
            self._caller_get_event = None

    # -- from scratch

    def _rebuild(self, state_sets: Sequence[Mapping[StateKey, EventId]]) -> StateSnapshot:
        rules = self._rules
        index = self._index
        # The per-event caches only grow between rebuilds: start them again, so that a graph
        # that lives long keeps only what its current forks need.
        self._pdus.clear()
        self._rejected.clear()
        self._power_events.clear()
        self._power_key_of = {}
        self._check_inputs = CheckInputs(self._get_event, self._is_rejected)
        self._conflicted = ConflictedState(rules, index)
        self._conflicted.build(state_sets)
        # The events of the full conflicted set, fetched from the caller straight into the
        # (just emptied) cache.
        get_event = self._caller_get_event
        assert get_event is not None
        self._events: dict[EventId, Pdu] = {
            e: get_event(e) for e in index.ids_of(self._conflicted.full)
        }
        self._pdus.update(self._events)
        self._power_events.update({e: is_power_event(p) for e, p in self._events.items()})
        self._rebuild_power_ordering()
        result = self._result_from_scratch()
        self._result = StateSnapshot(result)
        return self._result

    def _rebuild_power_ordering(self) -> None:
        """Steps 1 and 2 from scratch, then steps 3 and 4 (`_rebuild_mainline`)."""
        order, keys = self._sorted_power_order()
        positions = [float(i) for i in range(len(order))]
        base1 = no_base if self._rules.state_res_starts_empty else self._conflicted.unconflicted.get
        self._fold1_leaving = set()
        self._fold1 = AuthCheckFold(base1, self._check_inputs)
        events = self._events
        self._fold1.build(
            zip((events[e] for e in order), positions, strict=True), self._base1_state()
        )
        self._power = self._new_power_ordering(order, positions, keys)
        self._rebuild_mainline()

    def _base1_state(self) -> Mapping[StateKey, EventId]:
        """What fold 1's base answers, as a map: the unconflicted state in v2, nothing in v2.1
        (whose partial state starts empty)."""
        return {} if self._rules.state_res_starts_empty else self._conflicted.unconflicted

    def _new_power_ordering(
        self, order: list[EventId], positions: list[float], keys: list[PowerKey]
    ) -> PowerOrdering:
        return PowerOrdering(order, positions, keys, self._events, self._remap_fold1)

    def _remap_fold1(
        self, low: float | None, high: float | None, new_positions: Mapping[EventId, float]
    ) -> None:
        """Follow the power ordering's new positions (those strictly between `low` and
        `high`); steps taken out of it and not yet out of the fold (`_fold1_leaving`) leave
        it first, so that only ordered steps move."""
        if self._fold1_leaving:
            leaving, self._fold1_leaving = self._fold1_leaving, set()
            self._fold1_touched |= self._fold1.update(
                removed=leaving, base_changed=self._fold1_base_changed
            )
            self._fold1_base_changed = []
        if low is None and high is None:
            self._fold1.remap(new_positions)
        else:
            self._fold1.respace(low, high, new_positions)

    def _sorted_power_order(self) -> tuple[list[EventId], list[PowerKey]]:
        """Step 1 from scratch: the power events of the full conflicted set and their
        ancestors in it, by reverse topological power ordering, with their sort keys.

        The graph and Kahn's algorithm of `stateres.compute_power_graph` and
        `stateres.compute_lexicographic_topological_order`, in one pass over the events'
        auth IDs."""
        events = self._events
        is_power = self._is_power
        # The DAG: the power events and their ancestors through auth edges inside the set,
        # as the number of parents each waits on and the children of each.
        waiting: dict[EventId, int] = {}
        children: dict[EventId, list[EventId]] = {}
        in_set = events.__contains__
        pending = list(filter(is_power, events))  # (filters in C: no frame per event)
        while pending:
            event_id = pending.pop()
            if event_id in waiting:
                continue
            parents = list(filter(in_set, events[event_id].auth_event_ids))
            waiting[event_id] = len(parents)
            for parent in parents:
                siblings = children.get(parent)
                if siblings is None:
                    children[parent] = [event_id]
                else:
                    siblings.append(event_id)
            pending += parents
        # Kahn's algorithm: the smallest ready key first (a key ends with its event ID, so
        # the heap holds keys alone).
        key_of = self._power_key_of
        power_key = self._power_key
        ready: list[PowerKey] = []
        for event_id, count in waiting.items():
            if not count:
                key = key_of.get(event_id)
                ready.append(power_key(events[event_id]) if key is None else key)
        heapify(ready)
        order: list[EventId] = []
        keys: list[PowerKey] = []
        while ready:
            key = heappop(ready)
            event_id = key[2]
            order.append(event_id)
            keys.append(key)
            for child in children.get(event_id, ()):
                count = waiting[child] - 1
                waiting[child] = count
                if not count:
                    key = key_of.get(child)
                    heappush(ready, power_key(events[child]) if key is None else key)
        assert len(order) == len(waiting)  # the auth graph has no cycle
        return order, keys

    def _reorder_power(
        self, base_changed: list[StateKey]
    ) -> tuple[set[StateKey], list[EventId], list[EventId]]:
        """Steps 1 and 2 when many events move: sort again, keep the longest run of events
        whose relative order did not change at their positions, and move the others in the
        fold (its checks re-run only where a read value changed); when that run is less
        than half of the ordering or positions run out, build fold 1 again instead."""
        old = self._power
        order, keys = self._sorted_power_order()
        kept = longest_increasing_run([(old.pos[e], e) for e in order if e in old.pos])
        events = self._events
        positions = None
        if 2 * len(kept) >= len(order):
            positions = spread_positions(order, old.pos, kept)
        if positions is None:
            # Most steps move (or positions ran out): fold 1 is built again, which checks
            # each step once; the keys whose final value changed are the news.
            positions = [float(i) for i in range(len(order))]
            self._power = self._new_power_ordering(order, positions, keys)
            old_fold = self._fold1
            fold = self._fold1 = AuthCheckFold(old_fold.base, self._check_inputs)
            fold.build(zip((events[e] for e in order), positions, strict=True), self._base1_state())
            self._fold2.base = fold.final
            touched = set(base_changed)
            for key in {*old_fold.written_keys(), *fold.written_keys()}:
                if old_fold.final(key) != fold.final(key):
                    touched.add(key)
        else:
            removed = [e for e in old.order if e not in kept]
            self._power = self._new_power_ordering(order, positions, keys)
            inserted = [
                (events[e], at) for e, at in zip(order, positions, strict=True) if e not in kept
            ]
            touched = self._fold1.update(
                removed=removed, inserted=inserted, base_changed=base_changed
            )
            if any(crowded(positions, i) for i in range(len(positions))):
                self._power.renumber()
        new_nodes = self._power.nodes
        return touched, sorted(new_nodes - old.nodes), sorted(old.nodes - new_nodes)

    def _rebuild_mainline(self) -> None:
        """Step 3 (mainline ordering of the other events) and step 4 from scratch."""
        self._mainline_pl = self._fold1.final(POWER_LEVELS_KEY)
        self._depth_of = compute_mainline(self._mainline_pl, self._get_event)
        depth_of = self._depth_of
        get_event = self._get_event
        power_nodes = self._power.nodes
        leftover = [e for e in self._events.values() if e.event_id not in power_nodes]
        key_of = self._mainline_key_of = {
            e.event_id: (
                compute_mainline_depth(e, depth_of, get_event),
                e.origin_server_ts,
                e.event_id,
            )
            for e in leftover
        }
        keyed = sorted(key_of.values())
        self._mainline_keys: list[_MainlineKey] = keyed
        self._mainline_positions: list[float] = [float(i) for i in range(len(keyed))]
        self._fold2 = AuthCheckFold(self._fold1.final, self._check_inputs)
        events = self._events
        self._fold2.build(
            zip((events[k[2]] for k in keyed), self._mainline_positions, strict=True),
            self._fold1.final_state(self._base1_state()),
        )

    def _extend_mainline(self) -> bool:
        """Take a new power levels event of the partial state as the mainline's newest end if
        the old end is on its own mainline: depths count from the oldest end, so every event
        already ordered keeps its key (only events citing the new ones can reach them)."""
        new_end = self._fold1.final(POWER_LEVELS_KEY)
        old_end = self._mainline_pl
        if new_end is None or old_end is None:
            return False
        added: list[EventId] = []
        current: Pdu | None = self._get_event(new_end)
        while current is not None and current.event_id != old_end:
            if current.event_id in self._depth_of or len(added) > 64:
                return False  # joins the old mainline below its end, or too far back
            added.append(current.event_id)
            current = power_levels_auth_event(current, self._get_event)
        if current is None:
            return False
        depth = self._depth_of[old_end]
        for event_id in reversed(added):
            depth += 1
            self._depth_of[event_id] = depth
        self._mainline_pl = new_end
        return True

    def _mainline_key(self, event: Pdu) -> _MainlineKey:
        """An event's sort key in step 3, kept until the mainline is built again (an event
        already keyed keeps its key when the mainline extends)."""
        key = self._mainline_key_of.get(event.event_id)
        if key is None:
            depth = compute_mainline_depth(event, self._depth_of, self._get_event)
            key = self._mainline_key_of[event.event_id] = (
                depth,
                event.origin_server_ts,
                event.event_id,
            )
        return key

    def _final(self, key: StateKey) -> EventId | None:
        found = self._conflicted.unconflicted.get(key)
        return self._fold2.final(key) if found is None else found

    def _result_from_scratch(self) -> dict[StateKey, EventId]:
        result: dict[StateKey, EventId] = {}
        for key in set(self._fold1.written_keys()) | set(self._fold2.written_keys()):
            value = self._fold2.final(key)
            if value is not None:
                result[key] = value
        if not self._rules.state_res_starts_empty:
            # v2: the folds start from the unconflicted state, which step 5 restores anyway.
            pass
        result.update(self._conflicted.unconflicted)
        return result

    # -- from the previous call

    def _update(
        self,
        state_sets: Sequence[Mapping[StateKey, EventId]],
        changes: InputChanges,
    ) -> StateSnapshot:
        # The unconflicted state, conflicted set and full conflicted set.
        unconflicted_changed, entered, left = self._conflicted.update(state_sets, changes)
        power_events = self._power_events
        for event_id in entered:
            event = self._events[event_id] = self._fetch(event_id)
            if event_id not in power_events:
                power_events[event_id] = is_power_event(event)

        # Steps 1 and 2: the power events of the full conflicted set and their ancestors in it.
        for event_id in left:
            del self._events[event_id]
        base1_changed = [] if self._rules.state_res_starts_empty else unconflicted_changed
        touched, now_power, no_longer_power = self._update_power_ordering(
            entered, set(left), base1_changed
        )

        # Steps 3 and 4: the other events, by mainline ordering.
        if self._fold1.final(POWER_LEVELS_KEY) != self._mainline_pl and not self._extend_mainline():
            # Every key the old or the new fold 2 sets may change, besides those above.
            touched.update(self._fold2.written_keys())
            self._rebuild_mainline()
            touched.update(self._fold2.written_keys())
            touched.update(unconflicted_changed)
            return self._emit(touched)
        fold2_pos = self._fold2.pos
        removed2 = [e for e in left if e in fold2_pos]
        removed2 += [e for e in now_power if e in fold2_pos]
        keys = self._mainline_keys
        positions = self._mainline_positions
        for event_id in removed2:
            i = bisect_left(keys, self._mainline_key(self._fetch(event_id)))
            del keys[i]
            del positions[i]
        # The fold moves its removed steps in one update with the arriving ones, unless the
        # ordering is renumbered in between: they leave it first then, so that renumbering
        # only meets steps that are in the ordering.
        base2_changed = list(touched)

        power_nodes = self._power.nodes
        arriving = [e for e in entered if e not in power_nodes]
        arriving += [e for e in no_longer_power if e in self._events]
        arriving_keys = [self._mainline_key(self._events[e]) for e in arriving]
        crowded_keys: list[_MainlineKey] = []
        for mainline_key in arriving_keys:
            i = bisect_left(keys, mainline_key)
            at = between(
                positions[i - 1] if i > 0 else None,
                positions[i] if i < len(positions) else None,
            )
            if at is None:
                self._flush_fold2(removed2, base2_changed, touched)
                self._respace_mainline(i)
                at = between(positions[i - 1], positions[i])
                assert at is not None
            keys.insert(i, mainline_key)
            positions.insert(i, at)
            if crowded(positions, i):
                crowded_keys.append(mainline_key)
        for mainline_key in crowded_keys:
            i = bisect_left(keys, mainline_key)
            if crowded(positions, i):
                self._flush_fold2(removed2, base2_changed, touched)
                self._respace_mainline(i)
        inserted2 = [(self._events[k[2]], positions[bisect_left(keys, k)]) for k in arriving_keys]
        touched |= self._fold2.update(
            removed=removed2, inserted=inserted2, base_changed=base2_changed
        )
        touched.update(unconflicted_changed)
        return self._emit(touched)

    def _flush_fold2(
        self, removed: list[EventId], base_changed: list[StateKey], touched: set[StateKey]
    ) -> None:
        """Take the removed steps out of fold 2 before its ordering is renumbered (with the
        base changes not yet given to it); both lists are emptied."""
        if removed:
            touched.update(self._fold2.update(removed=removed, base_changed=base_changed))
            removed.clear()
            base_changed.clear()

    def _emit(self, touched: set[StateKey]) -> StateSnapshot:
        """Step 5, as a change of the previous result at the keys whose value may have
        changed."""
        result = self._result
        for key in touched:
            value = self._final(key)
            if result.get(key) != value:
                result = result.with_entry(key, value) if value else _without(result, key)
        self._result = result
        return result

    def _update_power_ordering(
        self, entered: list[EventId], left: set[EventId], base_changed: list[StateKey]
    ) -> tuple[set[StateKey], list[EventId], list[EventId]]:
        """Steps 1 and 2 after the full conflicted set gained `entered` and lost `left` (and
        the fold's base changed at `base_changed`).

        Returns the keys the fold touched, the events that joined the ordering and those that
        left it.

        The ordering holds the power events of the full conflicted set and, through auth edges
        inside it, their ancestors. Events leave it when they left the set or nothing in it
        cites them any more; events join it as new power events or ancestors of one. The
        events that depend on a leaving or joining one are taken out and put back: each is
        placed, parents first, where Kahn's algorithm outputs an event no other depends on
        (`PowerOrdering.place`), which is exact as long as nothing placed later precedes it.
        """
        events = self._events
        power = self._power
        nodes = power.nodes
        refs = power.refs
        leaving: set[EventId] = set()
        pending = [e for e in left if e in nodes]
        while pending:
            event_id = pending.pop()
            if event_id in leaving:
                continue
            leaving.add(event_id)
            for auth_id in self._fetch(event_id).auth_event_ids:
                refs[auth_id] -= 1
                if (
                    auth_id in nodes
                    and auth_id not in leaving
                    and refs[auth_id] <= 0
                    and not self._is_power(auth_id)
                ):
                    pending.append(auth_id)
        joining: set[EventId] = set()
        pending = [e for e in entered if self._is_power(e) or refs.get(e, 0) > 0]
        while pending:
            event_id = pending.pop()
            if event_id in joining or (event_id in nodes and event_id not in leaving):
                continue
            joining.add(event_id)
            pending.extend(filter(events.__contains__, events[event_id].auth_event_ids))
        if not leaving and not joining:
            return self._fold1.update(base_changed=base_changed), [], []
        # Events of the ordering that depend on a leaving or joining one move too.
        moving = power.descendants_of(leaving | joining, excluded=leaving)
        if len(moving) > _MAX_MOVING or 2 * (len(moving) + len(joining)) > len(power.order):
            # Many move, or most of the ordering: sorting again costs less.
            return self._reorder_power(base_changed)
        for event_id in leaving | moving:
            power.detach(self._fetch(event_id))
        # The fold moves its taken-out steps in one update with the placed ones, unless the
        # ordering is renumbered in between (`_remap_fold1` takes them out first then).
        self._fold1_leaving = leaving | moving
        self._fold1_base_changed = base_changed
        self._fold1_touched = set()
        placing = sorted(joining | moving, key=self._index.position)
        for event_id in placing:
            event = events[event_id]
            power.place(event, self._power_key(event), joins=event_id in joining)
        if power.crowded:
            power.respace_crowded()
        touched = self._fold1_touched
        touched |= self._fold1.update(
            removed=self._fold1_leaving,
            inserted=[(events[e], power.pos[e]) for e in placing],
            base_changed=self._fold1_base_changed,
        )
        self._fold1_leaving = set()
        power.prune_refs()
        return touched, sorted(joining - leaving), sorted(leaving - joining)

    def _respace_mainline(self, i: int) -> None:
        """Spread the mainline ordering's positions out around index `i` (fold 2 follows)."""
        positions = self._mainline_positions
        lo, hi, low, high = respace(positions, i)
        moved = {
            k[2]: at for k, at in zip(self._mainline_keys[lo:hi], positions[lo:hi], strict=True)
        }
        if low is None and high is None:
            self._fold2.remap(moved)
        else:
            self._fold2.respace(low, high, moved)


__all__ = ["IncrementalResolver"]
