"""State resolution v2 (room versions 10, 11) and v2.1 (room version 12) as a pure function.

Owns: `resolve`, which merges the states after several forward extremities into one state, and
the pieces it is made of (splitting conflicted from unconflicted state, the auth difference, the
v2.1 conflicted state subgraph, the reverse topological power ordering, the mainline ordering and
the iterative auth checks). Must not: fetch events or touch storage (events come through
`get_event`, auth chains through an `AuthChainIndex`), or hold authorisation rules (those are
`s2s_node.core.auth`; this module only decides which auth state each event is checked against).

Spec: digest section 6 (6.1-6.6); `content/rooms/fragments/v2-state-res.md` and
`content/rooms/v12.md#state-resolution` (MSC4297). Where the spec is silent the behaviour of
Synapse's `synapse/state/v2.py` is followed and said so.

Cost: only the conflicted part of the room is visited. Auth chains are bitmasks from the index,
so the auth difference and the conflicted subgraph are a few big-int operations; events are
fetched only for the full conflicted set and their direct auth events.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from s2s_node.core.auth import AuthError, check_auth, compute_auth_keys
from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId
from s2s_node.core.power import compute_user_level
from s2s_node.core.rules import RoomVersionRules

StateKey = tuple[str, str]
GetEvent = Callable[[EventId], Pdu]
IsRejected = Callable[[EventId], bool]

_CREATE = "m.room.create"
_POWER_LEVELS = "m.room.power_levels"
_JOIN_RULES = "m.room.join_rules"
_MEMBER = "m.room.member"
_PL_KEY: StateKey = (_POWER_LEVELS, "")

_T = TypeVar("_T", bound=Hashable)
_R = TypeVar("_R")


def _never_rejected(_event_id: EventId) -> bool:
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class ConflictedState:
    """The inputs of the conflicted part of a resolution (digest 6.2, 6.4).

    `full_conflicted_set` = `conflicted` ∪ `auth_difference` ∪ `conflicted_subgraph` (the last
    is empty for state res v2).
    """

    unconflicted: dict[StateKey, EventId]
    conflicted: frozenset[EventId]
    auth_difference: frozenset[EventId]
    conflicted_subgraph: frozenset[EventId]
    full_conflicted_set: frozenset[EventId]


def resolve(
    rules: RoomVersionRules,
    state_sets: Sequence[Mapping[StateKey, EventId]],
    auth_chains: AuthChainIndex,
    get_event: GetEvent,
    is_rejected: IsRejected = _never_rejected,
) -> dict[StateKey, EventId]:
    """Resolve several room states into one (state res v2, or v2.1 per `rules`).

    `auth_chains` must know every event of the state sets and their auth chains (built from
    `Pdu.auth_event_ids`, so the implied v12 create event is in them). `get_event` must return
    any event of the state sets or of their auth chains; it is asked only for the full
    conflicted set, their direct auth events and state events they are checked against.
    `is_rejected` says
    which events were rejected: they are never used as auth events, but are otherwise handled
    as usual (spec "Rejected events"; see `_iterative_auth_checks`).

    The result does not depend on the order of `state_sets` or of their entries.
    """
    if not state_sets:
        return {}
    if len(state_sets) == 1:
        return dict(state_sets[0])
    unconflicted, conflicted = split_state(state_sets)
    if not conflicted:
        return unconflicted
    sets = compute_conflicted_state(rules, state_sets, auth_chains, unconflicted, conflicted)
    full_conflicted_set = sets.full_conflicted_set
    events = {event_id: get_event(event_id) for event_id in full_conflicted_set}
    # One resolution looks the same auth events up thousands of times: memoise the caller's
    # lookups for its duration (the caller's may go through a store).
    get_event = _memoised(get_event, dict(events))
    if is_rejected is not _never_rejected:
        is_rejected = _memoised(is_rejected, {})

    # Step 1: the power events of the full conflicted set, together with the events of their
    # auth chains that are in the full conflicted set, sorted by reverse topological power
    # ordering.
    power_events = [e for e in events.values() if is_power_event(e)]
    sorted_power_events = _reverse_topological_power_sort(
        power_events, events, auth_chains, get_event
    )

    # Step 2: iterative auth checks on them, starting from the unconflicted state map (v2) or
    # from an empty map (v2.1).
    base: dict[StateKey, EventId] = {} if rules.state_res_starts_empty else dict(unconflicted)
    partial_state = _iterative_auth_checks(sorted_power_events, base, get_event, is_rejected)

    # Step 3: every other event of the full conflicted set, by mainline ordering based on the
    # power levels event of the partial state.
    in_step_1 = {e.event_id for e in sorted_power_events}
    leftover = [e for e in events.values() if e.event_id not in in_step_1]
    sorted_leftover = _mainline_sort(leftover, partial_state.get(_PL_KEY), get_event)

    # Step 4: iterative auth checks on them, starting from the partial state.
    resolved = _iterative_auth_checks(sorted_leftover, partial_state, get_event, is_rejected)

    # Step 5: the unconflicted state map overrides the result.
    resolved.update(unconflicted)
    return resolved


def split_state(
    state_sets: Sequence[Mapping[StateKey, EventId]],
) -> tuple[dict[StateKey, EventId], frozenset[EventId]]:
    """The unconflicted state map and the conflicted state set (digest 6.2).

    A key is unconflicted if every state set maps it to the same event; otherwise every event
    found under it is conflicted (a key missing from some set is conflicted too, as in Synapse).
    """
    # A key whose value is the same in every set: filter the first set by each other one (in
    # C, no (key, value) pairs hashed). Every value under any other key is conflicted.
    unconflicted = dict(state_sets[0])
    for state_set in state_sets[1:]:
        get = state_set.get
        unconflicted = {k: v for k, v in unconflicted.items() if get(k) == v}
    found: set[EventId] = set()
    for state_set in state_sets:
        # The keys outside the unconflicted map, found in C; only their values are read.
        found.update(state_set[k] for k in state_set.keys() - unconflicted.keys())
    conflicted = frozenset(found)
    return unconflicted, conflicted


def compute_conflicted_state(
    rules: RoomVersionRules,
    state_sets: Sequence[Mapping[StateKey, EventId]],
    auth_chains: AuthChainIndex,
    unconflicted: Mapping[StateKey, EventId] | None = None,
    conflicted: frozenset[EventId] | None = None,
) -> ConflictedState:
    """Conflicted set, auth difference, v2.1 conflicted subgraph and the full conflicted set."""
    if unconflicted is None or conflicted is None:
        unconflicted, conflicted = split_state(state_sets)
    index = auth_chains

    # Auth difference = ∪Ci − ∩Ci. As in Synapse, Ci is the state events of the i-th set
    # together with their auth chains. With U the closure of the unconflicted events (in every
    # Ci) and Di the closure of the set's conflicted events, Ci = U ∪ Di, so
    # ∪Ci − ∩Ci = (∪Di − ∩Di) − U: only the conflicted events' chains are combined per set.
    unconflicted_closure = index.closure_mask(unconflicted.values())
    union = 0
    intersection = -1
    for state_set in state_sets:
        closure = index.closure_mask(e for e in state_set.values() if e in conflicted)
        union |= closure
        intersection &= closure
    auth_difference_mask = union & ~intersection & ~unconflicted_closure

    conflicted_mask = index.mask_of(conflicted)
    full_mask = conflicted_mask | auth_difference_mask
    subgraph_mask = 0
    if rules.state_res_conflicted_subgraph:
        subgraph_mask = compute_conflicted_subgraph_mask(index, conflicted_mask)
        full_mask |= subgraph_mask
    return ConflictedState(
        unconflicted=dict(unconflicted),
        conflicted=conflicted,
        auth_difference=frozenset(index.ids_of(auth_difference_mask)),
        conflicted_subgraph=frozenset(index.ids_of(subgraph_mask)),
        full_conflicted_set=frozenset(index.ids_of(full_mask)),
    )


def compute_conflicted_subgraph_mask(index: AuthChainIndex, conflicted_mask: int) -> int:
    """v2.1: the events on some auth path from one conflicted event to another (digest 6.4).

    With C the conflicted events and B = C ∪ the auth chains of C: {x ∈ B : x ∈ C or
    auth_chain(x) ∩ C ≠ ∅}.
    """
    if not conflicted_mask:
        return 0
    backwards = conflicted_mask
    for p in index.positions_of(conflicted_mask):
        backwards |= index.chain_mask_at(p)
    # An event whose auth chain holds a conflicted event sits above the lowest conflicted
    # position (events are indexed parents first), so the positions below it can be skipped.
    lowest = (conflicted_mask & -conflicted_mask).bit_length() - 1
    subgraph = conflicted_mask
    candidates = (backwards >> (lowest + 1)) << (lowest + 1)
    for p in index.positions_of(candidates & ~conflicted_mask):
        if index.chain_mask_at(p) & conflicted_mask:
            subgraph |= 1 << p
    return subgraph


def is_power_event(event: Pdu) -> bool:
    """A power event (digest 6.2): power levels, join rules, or a kick or ban.

    Impl note (Synapse): the create event counts too; it is only ever conflicted in broken rooms.
    """
    if event.state_key is None:
        return False
    if event.type in (_POWER_LEVELS, _JOIN_RULES, _CREATE):
        return event.state_key == ""
    if event.type == _MEMBER:
        return event.membership in ("leave", "ban") and event.sender != event.state_key
    return False


def compute_lexicographic_topological_order(
    graph: Mapping[_T, Collection[_T]], key: Callable[[_T], Any]
) -> list[_T]:
    """The lexicographically smallest topological order, parents first (Kahn's algorithm).

    `graph` maps each node to the nodes it depends on (its auth events); every dependency must
    be a node of the graph. At each step the smallest ready node by `key` is output.
    """
    waiting_on = {node: len(parents) for node, parents in graph.items()}
    children: dict[_T, list[_T]] = {}
    for node, parents in graph.items():
        for parent in parents:
            children.setdefault(parent, []).append(node)
    ready = [(key(node), node) for node, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    order: list[_T] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for child in children.get(node, ()):
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                heapq.heappush(ready, (key(child), child))
    if len(order) != len(graph):
        raise ValueError("the graph has a cycle")
    return order


def _reverse_topological_power_sort(
    power_events: Iterable[Pdu],
    events: Mapping[EventId, Pdu],
    index: AuthChainIndex,
    get_event: GetEvent,
) -> list[Pdu]:
    """Step 1: power events plus their auth ancestry inside the full conflicted set, sorted.

    As Synapse and ruma do, the ancestry is followed through `auth_events` edges whose ends are
    both in the full conflicted set, and those edges make the DAG that is sorted.
    """
    graph = compute_power_graph(power_events, events)

    # Sort key (digest 6.2): (-sender power level, origin_server_ts, event_id), the power level
    # taken from each event's own auth events.
    keys: dict[EventId, tuple[int, int, str]] = {}
    for event_id in graph:
        event = events[event_id]
        keys[event_id] = (-compute_sender_power(event, get_event), event.origin_server_ts, event_id)
    order = compute_lexicographic_topological_order(graph, keys.__getitem__)
    return [events[event_id] for event_id in order]


def compute_power_graph(
    power_events: Iterable[Pdu], events: Mapping[EventId, Pdu]
) -> dict[EventId, list[EventId]]:
    """Step 1's DAG: the power events and their ancestors through `auth_events` edges whose
    ends are both in `events` (the full conflicted set), each mapped to those parents."""
    graph: dict[EventId, list[EventId]] = {}
    pending = [e.event_id for e in power_events]
    while pending:
        event_id = pending.pop()
        if event_id in graph:
            continue
        parents = [a for a in events[event_id].auth_event_ids if a in events]
        graph[event_id] = parents
        pending += parents
    return graph


def compute_sender_power(event: Pdu, get_event: GetEvent) -> int:
    """The sender's power level according to the event's own auth events (digest 6.2).

    The create event (v12: implied by `auth_event_ids`) and the power levels event among the
    auth events give the level (`power.compute_user_level`): without power levels, the creator has
    100 in v10/v11; in v12 creators are infinitely powerful. Impl note (Synapse): an event
    without a create event among its auth events (only the create event itself) has level 0.
    """
    create: Pdu | None = None
    power_levels: Pdu | None = None
    for auth_id in event.auth_event_ids:
        auth_event = get_event(auth_id)
        if auth_event.state_key == "":
            if auth_event.type == _POWER_LEVELS:
                power_levels = auth_event
            elif auth_event.type == _CREATE:
                create = auth_event
    if create is None:
        return 0
    return compute_user_level(event.sender, create, power_levels)


def power_levels_auth_event(event: Pdu, get_event: GetEvent) -> Pdu | None:
    """The `m.room.power_levels` event among an event's auth events, if any."""
    for auth_id in event.auth_event_ids:
        auth_event = get_event(auth_id)
        if auth_event.type == _POWER_LEVELS and auth_event.state_key == "":
            return auth_event
    return None


def _mainline_sort(
    events: Sequence[Pdu], power_levels_id: EventId | None, get_event: GetEvent
) -> list[Pdu]:
    """Step 3: mainline ordering based on the given power levels event (digest 6.2).

    Mainline positions are numbered from the oldest end as Synapse does (oldest = 1, the given
    event = n + 1, not on the mainline = 0) and sorted ascending; this is the spec's order
    ("greater position first" with the newest at 0 and ∞ for none).
    """
    depth_of = compute_mainline(power_levels_id, get_event)
    keyed = [
        (compute_mainline_depth(e, depth_of, get_event), e.origin_server_ts, e.event_id, e)
        for e in events
    ]
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]


def compute_mainline(power_levels_id: EventId | None, get_event: GetEvent) -> dict[EventId, int]:
    """The mainline of a power levels event (digest 6.2): it and, recursively, the power
    levels event among its auth events, each with its position counted from the oldest (1)."""
    mainline: list[EventId] = []
    pl_event = get_event(power_levels_id) if power_levels_id is not None else None
    while pl_event is not None:
        mainline.append(pl_event.event_id)
        pl_event = power_levels_auth_event(pl_event, get_event)
    return {event_id: depth for depth, event_id in enumerate(reversed(mainline), start=1)}


def compute_mainline_depth(event: Pdu, depth_of: dict[EventId, int], get_event: GetEvent) -> int:
    """An event's mainline position (digest 6.2), `depth_of` holding the mainline's.

    Walks e1, e2, ... (the power levels event among each one's auth events) until one is on the
    mainline (0 if none is), and remembers the answer in `depth_of` for every power levels
    event passed on the way.
    """
    walked: list[EventId] = []
    current: Pdu | None = event
    depth = 0
    while current is not None:
        known = depth_of.get(current.event_id)
        if known is not None:
            depth = known
            break
        walked.append(current.event_id)
        current = power_levels_auth_event(current, get_event)
    for event_id in walked[1:]:
        depth_of[event_id] = depth
    return depth


def is_allowed_in_partial_state(
    event: Pdu,
    lookup: Callable[[StateKey], EventId | None],
    get_event: GetEvent,
    is_rejected: IsRejected,
) -> bool:
    """One iterative auth check (digest 6.2): whether the state-dependent auth rules allow
    `event` against the partial state `lookup` reads.

    Its auth map is, for every key the auth-events selection wants for it, the event the
    partial state holds there unless that one was rejected; the event's own non-rejected auth
    events (v12: with the implied create event) fill the keys left empty
    (`compute_own_auth_state`).
    """
    auth_state: dict[StateKey, Pdu] = {}
    incomplete = False
    for key in compute_auth_keys(event):
        state_id = lookup(key)
        if state_id is not None and not is_rejected(state_id):
            auth_state[key] = get_event(state_id)
        else:
            incomplete = True
    # The event's own auth events fill the keys the partial state lacks. (When it has them
    # all, the own ones would all be overridden: `check_auth` reads only the keys
    # `compute_auth_keys` names.)
    if incomplete:
        auth_state = compute_own_auth_state(event, get_event, is_rejected) | auth_state
    return is_allowed_by(event, auth_state)


def compute_own_auth_state(
    event: Pdu, get_event: GetEvent, is_rejected: IsRejected
) -> dict[StateKey, Pdu]:
    """The event's own non-rejected auth events by (type, state_key): what fills the keys of
    an iterative auth check's auth map that the partial state leaves empty."""
    own: dict[StateKey, Pdu] = {}
    for auth_id in event.auth_event_ids:
        if is_rejected(auth_id):
            continue
        auth_event = get_event(auth_id)
        auth_key = auth_event.state_tuple
        if auth_key is not None and auth_key not in own:
            own[auth_key] = auth_event
    return own


def is_allowed_by(event: Pdu, auth_state: Mapping[StateKey, Pdu]) -> bool:
    """Whether the state-dependent auth rules allow `event` against a complete auth map."""
    try:
        check_auth(event, auth_state)
    except AuthError:
        return False
    return True


def _memoised(lookup: Callable[[EventId], _R], cache: dict[EventId, _R]) -> Callable[[EventId], _R]:
    """`lookup` with its answers kept in `cache` (pre-filled entries are used as they are)."""

    def cached(event_id: EventId) -> _R:
        try:
            return cache[event_id]
        except KeyError:
            value = cache[event_id] = lookup(event_id)
            return value

    return cached


def _iterative_auth_checks(
    events: Sequence[Pdu],
    base_state: dict[StateKey, EventId],
    get_event: GetEvent,
    is_rejected: IsRejected,
) -> dict[StateKey, EventId]:
    """Iterative auth checks (digest 6.2); updates and returns `base_state`.

    For each event, in order: its auth map is its own non-rejected auth events (v12: with the
    implied create event), overridden, for every key the auth-events selection wants for it, by
    the event the partial state holds under that key (unless that one was rejected). If the
    state-dependent auth rules allow it, it goes into the state under its key.

    Rejected events are re-checked like any other (spec "Rejected events"). Synapse, unlike the
    spec, never admits a previously rejected event here.
    """
    state = base_state
    lookup = state.get
    for event in events:
        if is_allowed_in_partial_state(event, lookup, get_event, is_rejected):
            own_key = event.state_tuple
            if own_key is not None:
                state[own_key] = event.event_id
    return state
