"""The conflicted part of the incremental resolver's inputs, kept from one call to the next.

Owns: `ConflictedState`, which holds for the state maps of the previous call their unconflicted
state, conflicted set, each input's closure (its events and their auth chains, as a mask), the
v2.1 conflicted subgraph and the full conflicted set, and brings them up to date for new maps
that differ in a few keys (`changes`, then `update`). Must not: order or check events (the
resolver in `core.stateres_incremental` does), fetch events, or do I/O.

Spec: digest section 6 (state resolution v2 and v2.1): unconflicted state map and conflicted
state set, auth difference, conflicted subgraph (v2.1), full conflicted set; as
`core.stateres` computes them from scratch.

- unconflicted state and conflicted set: only the changed keys are looked at again;
- auth difference: each input's closure grows by the new event's closure when the event it
  replaces is in that closure (a state event cites the event it supersedes for memberships
  and power levels), and is recomputed otherwise;
- v2.1 conflicted subgraph: membership is re-decided only for events whose auth chain holds a
  conflicted event that came or went, and for the new ancestors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from s2s_node.core.auth import StateKey
from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.ids import EventId
from s2s_node.core.rules import RoomVersionRules
from s2s_node.core.state_snapshot import StateSnapshot
from s2s_node.core.stateres import compute_conflicted_subgraph_mask

MAX_CHANGED_KEYS = 256  # beyond this many changed input keys, `changes` gives up (None)
_NO_EVENTS: frozenset[EventId] = frozenset()
_NONE = frozenset([None])


@dataclass(slots=True, kw_only=True)
class InputChanges:
    """How new inputs differ from the previous call's: `partner[i]` is the old input the
    i-th new one was compared with (None: compared with the first, closure recomputed),
    `per_set[i]` its (key, old event, new event) changes, `extra_keys` the keys where an
    old input without a partner differs, `keys` every changed key (those of `per_set` and
    `extra_keys`, a key possibly more than once)."""

    partner: list[int | None]
    per_set: list[list[tuple[StateKey, EventId | None, EventId | None]]]
    extra_keys: set[StateKey]
    keys: list[StateKey]


def _diff_keys(old: Mapping[StateKey, EventId], new: Mapping[StateKey, EventId]) -> list[StateKey]:
    if old is new:
        return []
    if isinstance(old, StateSnapshot) and isinstance(new, StateSnapshot):
        return old.changed_keys(new)
    return [k for k in old.keys() | new.keys() if old.get(k) != new.get(k)]


def _positions_of(mask: int) -> list[int]:
    """`AuthChainIndex.positions_of` for a mask with few bits (an update's usual change),
    without writing out the whole mask."""
    positions: list[int] = []
    while mask:
        low = mask & -mask
        positions.append(low.bit_length() - 1)
        mask ^= low
    return positions


def plain_state(state: Mapping[StateKey, EventId]) -> dict[StateKey, EventId]:
    """A state map as a plain dict (a snapshot's in C, not key by key)."""
    return state.to_dict() if isinstance(state, StateSnapshot) else dict(state)


class ConflictedState:
    """Unconflicted state, conflicted set, closures, v2.1 subgraph and full conflicted set of
    the state maps last given to `build` or `update` (`sets`)."""

    def __init__(self, rules: RoomVersionRules, index: AuthChainIndex) -> None:
        self._with_subgraph = rules.state_res_conflicted_subgraph
        self._index = index
        self.sets: list[Mapping[StateKey, EventId]] = []
        self.unconflicted: dict[StateKey, EventId] = {}
        self.full = 0  # the full conflicted set, as a mask over the index
        self._conflicted_values: dict[StateKey, frozenset[EventId]] = {}
        self._conflicted: set[EventId] = set()
        self._conflicted_mask = 0
        self._closures: list[int] = []
        self._subgraph = 0
        self._ancestors = 0

    @property
    def subgraph(self) -> int:
        """The v2.1 conflicted subgraph, as a mask over the index (0 before v2.1)."""
        return self._subgraph

    def build(self, state_sets: Sequence[Mapping[StateKey, EventId]]) -> None:
        """Everything from scratch for `state_sets`."""
        index = self._index
        self.sets = list(state_sets)
        plain = [plain_state(s) for s in state_sets]
        # As `stateres.split_state`: a key is unconflicted if every input maps it to the same
        # event (the first input filtered by each other one); every value of any other key is
        # conflicted (read in C, key by key).
        unconflicted = plain[0]
        for other in plain[1:]:
            get = other.get
            unconflicted = {k: v for k, v in unconflicted.items() if get(k) == v}
        self.unconflicted = unconflicted  # (a fresh map: `plain_state` copies)
        conflicted_keys = list(set().union(*plain) - unconflicted.keys())
        # Each conflicted key's values, in C: a tuple of the inputs' values per key (None
        # where an input lacks the key), as a set; None is then taken out of the sets of keys
        # some input lacks, if any.
        values_of: dict[StateKey, frozenset[EventId | None]] = dict(
            zip(
                conflicted_keys,
                map(frozenset, zip(*[map(s.get, conflicted_keys) for s in plain], strict=True)),
                strict=True,
            )
        )
        found = set().union(*values_of.values())
        if None in found:
            found.discard(None)
            for key, values in values_of.items():
                if None in values:
                    values_of[key] = values - _NONE
        self._conflicted_values = cast(dict[StateKey, frozenset[EventId]], values_of)
        self._conflicted = cast(set[EventId], found)
        self._conflicted_mask = index.mask_of(self._conflicted)
        # Each input's closure: that of the unconflicted events (shared) and its own
        # conflicted ones.
        shared = index.closure_mask(unconflicted.values())
        self._closures = [
            shared | index.closure_mask(filter(None, map(s.get, conflicted_keys))) for s in plain
        ]
        self._subgraph = 0
        self._ancestors = 0
        if self._with_subgraph:
            self._ancestors = self._ancestors_of(self._conflicted)
            self._subgraph = compute_conflicted_subgraph_mask(index, self._conflicted_mask)
        self.full = self._compute_full_mask()

    def changes(self, state_sets: Sequence[Mapping[StateKey, EventId]]) -> InputChanges | None:
        """Pair the new inputs with the old ones (the same map, or one sharing its base) and
        list what changed; None if too much did. An input without a partner is compared with
        some other one (its closure is then computed afresh); an old input left without a
        partner adds the keys where it differs from a new one."""
        old_sets = self.sets
        if len(state_sets) == len(old_sets):
            # The usual case: each input is the one at its place or follows from it (shares
            # its base), compared as it is paired. (Any pairing gives the same result: it only
            # decides what each input is compared with.)
            per_set: list[list[tuple[StateKey, EventId | None, EventId | None]]] = []
            all_keys: list[StateKey] = []
            for new, old in zip(state_sets, old_sets, strict=True):
                if new is old:
                    per_set.append([])
                elif (
                    isinstance(new, StateSnapshot)
                    and isinstance(old, StateSnapshot)
                    and new.shares_base_with(old)
                ):
                    keys = old.changed_keys(new)
                    all_keys += keys
                    if len(all_keys) > MAX_CHANGED_KEYS:
                        return None
                    changed = []
                    for key in keys:
                        changed.append((key, old.get(key), new.get(key)))
                    per_set.append(changed)
                else:
                    break
            else:
                partner: list[int | None] = list(range(len(old_sets)))
                return InputChanges(
                    partner=partner, per_set=per_set, extra_keys=set(), keys=all_keys
                )
        unpaired = list(range(len(old_sets)))
        partner = []
        for new in state_sets:
            found = next((i for i in unpaired if old_sets[i] is new), None)
            if found is None and isinstance(new, StateSnapshot):
                found = next(
                    (
                        i
                        for i in unpaired
                        if isinstance(old_sets[i], StateSnapshot)
                        and new.shares_base_with(old_sets[i])  # type: ignore[arg-type]
                    ),
                    None,
                )
            if found is not None:
                unpaired.remove(found)
            partner.append(found)
        for i, found in enumerate(partner):
            if found is None and unpaired and len(state_sets) == len(old_sets):
                partner[i] = unpaired.pop(0)
        return self._changes_against(state_sets, partner, unpaired)

    def _changes_against(
        self,
        state_sets: Sequence[Mapping[StateKey, EventId]],
        partner: list[int | None],
        unpaired: list[int],
    ) -> InputChanges | None:
        old_sets = self.sets
        changes = InputChanges(partner=partner, per_set=[], extra_keys=set(), keys=[])
        for new, found in zip(state_sets, partner, strict=True):
            old = old_sets[0 if found is None else found]
            keys = _diff_keys(old, new)
            changes.keys += keys
            if len(changes.keys) > MAX_CHANGED_KEYS:
                return None
            changes.per_set.append([(k, old.get(k), new.get(k)) for k in keys])
        for i in unpaired:
            keys = _diff_keys(old_sets[i], state_sets[0])
            changes.keys += keys
            if len(changes.keys) > MAX_CHANGED_KEYS:
                return None
            changes.extra_keys.update(keys)
        return changes

    def update(
        self, state_sets: Sequence[Mapping[StateKey, EventId]], changes: InputChanges
    ) -> tuple[list[StateKey], list[EventId], list[EventId]]:
        """Bring everything up to date for `state_sets` (with `changes` from `changes`).

        Returns the keys whose unconflicted value changed, and the events that entered and
        that left the full conflicted set (parents first).
        """
        index = self._index

        # Unconflicted state and conflicted set, for the changed keys only (a key met again
        # is decided again, to the same result: nothing more changes).
        n = len(state_sets)
        unconflicted = self.unconflicted
        conflicted_values = self._conflicted_values
        added: list[EventId] = []
        removed: list[EventId] = []
        unconflicted_changed: list[StateKey] = []
        self.sets = list(state_sets)
        for key in changes.keys:
            values = [s.get(key) for s in state_sets]
            before_u = unconflicted.get(key)
            before_c = conflicted_values.get(key, _NO_EVENTS)
            first = values[0]
            if first is not None and values.count(first) == n:
                after_c = _NO_EVENTS
                if first != before_u:
                    unconflicted[key] = first
                    unconflicted_changed.append(key)
            else:
                after_c = frozenset(filter(None, values))  # (event IDs are never empty)
                if before_u is not None:
                    del unconflicted[key]
                    unconflicted_changed.append(key)
            if after_c != before_c:
                if after_c:
                    conflicted_values[key] = after_c
                else:
                    del conflicted_values[key]
                removed += before_c - after_c
                added += after_c - before_c
        if added or removed:
            self._conflicted.difference_update(removed)
            self._conflicted.update(added)
            # An event is the value of its own key only: the removed ones were conflicted and
            # the added ones were not, so each flips.
            self._conflicted_mask ^= index.mask_of(removed + added)

        # Each input's closure: grown by a new event whose closure holds the one it replaced.
        old_closures = self._closures
        closures = self._closures = []
        partner = changes.partner
        for i, per_set in enumerate(changes.per_set):
            found = partner[i]
            closure: int | None = None
            if found is not None:
                closure = old_closures[found]
                for _key, old, new in per_set:
                    closure = index.replace_in_closure(closure, old, new)
                    if closure is None:
                        break
            if closure is None:
                closure = index.closure_mask(plain_state(state_sets[i]).values())
            closures.append(closure)

        if self._with_subgraph and (added or removed):
            self._update_subgraph(added, removed)

        # The full conflicted set and what entered or left it.
        old_full = self.full
        if len(closures) == 2:  # (`_compute_full_mask`, in line for the usual two inputs)
            full = self._conflicted_mask | (closures[0] ^ closures[1])
            if self._subgraph:
                full |= self._subgraph
        else:
            full = self._compute_full_mask()
        self.full = full
        differ = full ^ old_full
        if not differ:
            return unconflicted_changed, [], []
        entered = index.sparse_ids_of(differ & full)  # parents first
        left = index.sparse_ids_of(differ & old_full)
        return unconflicted_changed, entered, left

    def _ancestors_of(self, event_ids: Iterable[EventId]) -> int:
        index = self._index
        mask = 0
        for event_id in event_ids:
            mask |= index.chain_mask(event_id)
        return mask

    def _compute_full_mask(self) -> int:
        closures = self._closures
        if len(closures) == 2:
            auth_difference = closures[0] ^ closures[1]
        else:
            union = 0
            intersection = -1
            for closure in closures:
                union |= closure
                intersection &= closure
            auth_difference = union & ~intersection
        full = self._conflicted_mask | auth_difference
        return full | self._subgraph if self._subgraph else full

    def _update_subgraph(self, added: list[EventId], removed: list[EventId]) -> None:
        """v2.1 conflicted subgraph after the conflicted set gained `added` and lost `removed`.

        Subgraph = C ∪ {x ∈ ancestors(C) : chain(x) ∩ C ≠ ∅}. Only the added and removed
        events, events entering or leaving ancestors(C), and some events whose chain holds an
        added or removed event (below) can change; no reverse index of the chains is needed.
        """
        index = self._index
        chains = index.chain_masks
        position_of = index.positions_by_id
        old_ancestors = self._ancestors
        added_positions = [position_of[e] for e in added]
        removed_positions = [position_of[e] for e in removed]
        added_chains = 0
        added_mask = 0
        for p in added_positions:
            added_chains |= chains[p]
            added_mask |= 1 << p
        ancestors = old_ancestors | added_chains
        for p in removed_positions:
            if not added_chains >> p & 1:
                ancestors = self._ancestors_of(self._conflicted)
                break
        self._ancestors = ancestors
        conflicted = self._conflicted_mask
        changed = ancestors ^ old_ancestors
        affected = set(
            index.positions_of(changed) if changed.bit_count() > 16 else _positions_of(changed)
        )
        # An event x whose chain holds an added or removed event e can change its membership
        # only if chain(x) meets the conflicted set on one side and not the other. When
        # chain(e) holds an event conflicted on both sides, chain(x) (a superset) meets both;
        # otherwise, x can leave (e removed) only if it was in the subgraph and is no longer
        # conflicted, or join (e added) only if it was not and is an ancestor now: just those
        # events above e (descendants are indexed after it) are looked at.
        old_subgraph = self._subgraph
        stable = conflicted & ~added_mask if added_mask else conflicted
        joining = leaving = -1  # (computed when first needed)
        for p, was_added in [(p, True) for p in added_positions] + [
            (p, False) for p in removed_positions
        ]:
            affected.add(p)
            if chains[p] & stable:
                continue
            if was_added:
                if joining < 0:
                    joining = ancestors & ~old_subgraph
                candidates = joining >> p + 1
            else:
                if leaving < 0:
                    leaving = old_subgraph & ~conflicted
                candidates = leaving >> p + 1
            # Each candidate above e, from the highest: those whose chain holds e.
            while candidates:
                offset = candidates.bit_length() - 1
                candidates ^= 1 << offset
                q = offset + p + 1
                if chains[q] >> p & 1:
                    affected.add(q)
        subgraph = old_subgraph
        for p in affected:
            bit = 1 << p
            inside = conflicted & bit or (ancestors & bit and chains[p] & conflicted)
            if subgraph & bit:
                if not inside:
                    subgraph ^= bit
            elif inside:
                subgraph |= bit
        self._subgraph = subgraph


__all__ = ["MAX_CHANGED_KEYS", "ConflictedState", "InputChanges", "plain_state"]
