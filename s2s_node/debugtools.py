"""The `debug` tools: check, resolve and replay event files with the core, no node needed.

Owns: turning an `EventFile` into per-event check results, a resolved state, or a replayed
state. Returns plain JSON-ready values; the CLI prints them.
"""

from __future__ import annotations

import heapq
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from s2s_node.core.auth import AuthError, check_auth, check_auth_events
from s2s_node.core.authchain import AuthChainIndex
from s2s_node.core.events import EventFormatError, Pdu, parse_pdu
from s2s_node.core.ids import EventId
from s2s_node.core.room import MemoryRoomStore, MissingEventsError, RoomGraph
from s2s_node.core.rules import RoomVersionRules
from s2s_node.core.signing import KeyRing, SignatureError, check_event, is_content_hash_valid
from s2s_node.core.stateres import resolve
from s2s_node.debugfiles import InputError, read_event_file

StateKey = tuple[str, str]


def check_file(path: str, *, room_version: str | None = None) -> list[dict[str, Any]]:
    """Per event, in file order: event_id, hash_ok, signature_ok, auth and a reason."""
    event_file = read_event_file(path, room_version=room_version)
    rules = event_file.rules
    keys = KeyRing(event_file.signing_keys, derive=True)
    known: dict[EventId, Pdu] = {}
    rejected: set[EventId] = set()
    results: list[dict[str, Any]] = []
    for index, obj in enumerate(event_file.events):
        result: dict[str, Any] = {"index": index}
        try:
            pdu = parse_pdu(obj, rules)
        except EventFormatError as exc:
            result.update(
                event_id=None,
                hash_ok=False,
                signature_ok=False,
                auth="reject",
                reason=f"format: {exc}",
            )
            results.append(result)
            continue
        result["event_id"] = pdu.event_id
        reasons: list[str] = []
        try:
            checked = check_event(obj, rules, keys)
            result["hash_ok"] = checked.hash_ok
            result["signature_ok"] = True
            if not checked.hash_ok:
                reasons.append("hash: content hash mismatch (checked as redacted)")
                pdu = pdu.redacted()
        except SignatureError as exc:
            result["hash_ok"] = is_content_hash_valid(obj)
            result["signature_ok"] = False
            reasons.append(f"signature: {exc}")
        auth_reason = _check_own_auth(pdu, known, rejected)
        result["auth"] = "allow" if auth_reason is None else "reject"
        if auth_reason is not None:
            reasons.append(f"auth: {auth_reason}")
        if auth_reason is not None or not result["signature_ok"]:
            rejected.add(pdu.event_id)
        known.setdefault(pdu.event_id, pdu)
        if reasons:
            result["reason"] = "; ".join(reasons)
        results.append(result)
    return results


def _check_own_auth(pdu: Pdu, known: Mapping[EventId, Pdu], rejected: set[EventId]) -> str | None:
    missing = [eid for eid in pdu.auth_event_ids if eid not in known]
    if missing:
        return f"auth event {missing[0]} is not earlier in the file"
    try:
        auth_state = check_auth_events(
            pdu, {eid: known[eid] for eid in pdu.auth_event_ids}, rejected.__contains__
        )
        check_auth(pdu, auth_state)
    except AuthError as exc:
        return f"{exc.rule.name}: {exc}"
    return None


# ----------------------------------------------------------------------------------------------


def _parse_events(events: Sequence[Any], rules: RoomVersionRules, path: str) -> dict[EventId, Pdu]:
    parsed: dict[EventId, Pdu] = {}
    for index, obj in enumerate(events):
        try:
            pdu = parse_pdu(obj, rules, check_counts=False)
        except EventFormatError as exc:
            raise InputError(f"{path}: event {index}: {exc}") from None
        parsed[pdu.event_id] = pdu
    return parsed


def causal_order(events: Mapping[EventId, Pdu], *, via_prev: bool = True) -> list[Pdu]:
    """The events parents-first (auth_events, and prev_events when `via_prev`), ties by ID.

    Parents that are not in `events` are ignored.
    """
    children: dict[EventId, list[EventId]] = {eid: [] for eid in events}
    waiting: dict[EventId, int] = {}
    for eid, pdu in events.items():
        parents = set(pdu.auth_event_ids)
        if via_prev:
            parents.update(pdu.prev_events)
        parents = {p for p in parents if p in events and p != eid}
        waiting[eid] = len(parents)
        for parent in parents:
            children[parent].append(eid)
    ready = [eid for eid, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[Pdu] = []
    while ready:
        eid = heapq.heappop(ready)
        order.append(events[eid])
        for child in children[eid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    if len(order) != len(events):
        raise InputError("the events' prev_events/auth_events form a cycle")
    return order


def _state_sets(
    raw_sets: Iterable[Any], events: Mapping[EventId, Pdu], path: str
) -> list[dict[StateKey, EventId]]:
    sets: list[dict[StateKey, EventId]] = []
    for set_index, raw in enumerate(raw_sets):
        if not isinstance(raw, list):
            raise InputError(f"{path}: state set {set_index} is not a list")
        state: dict[StateKey, EventId] = {}
        for entry in raw:
            if isinstance(entry, str):
                pdu = events.get(EventId(entry))
                if pdu is None or pdu.state_key is None:
                    raise InputError(
                        f"{path}: state set {set_index}: {entry} is not a state event of the file"
                    )
                state[(pdu.type, pdu.state_key)] = pdu.event_id
            elif (
                isinstance(entry, list)
                and len(entry) == 3
                and all(isinstance(part, str) for part in entry)
            ):
                if entry[2] not in events:
                    raise InputError(
                        f"{path}: state set {set_index}: {entry[2]} is not an event of the file"
                    )
                state[(entry[0], entry[1])] = EventId(entry[2])
            else:
                raise InputError(
                    f"{path}: state set {set_index}: entries are event IDs or"
                    " [type, state_key, event_id]"
                )
        sets.append(state)
    return sets


def _format_state(state: Mapping[StateKey, EventId]) -> list[list[str]]:
    return sorted([event_type, state_key, eid] for (event_type, state_key), eid in state.items())


def resolve_file(path: str, *, repeat: int = 0, room_version: str | None = None) -> dict[str, Any]:
    """State resolution over the file's `state_sets`."""
    event_file = read_event_file(path, room_version=room_version)
    if event_file.state_sets is None:
        raise InputError(f"{path}: no `state_sets` to resolve")
    events = _parse_events(event_file.events, event_file.rules, path)
    sets = _state_sets(event_file.state_sets, events, path)
    index = AuthChainIndex()
    for pdu in causal_order(events, via_prev=False):
        index.add(pdu.event_id, [a for a in pdu.auth_event_ids if a in events])
    resolved = resolve(event_file.rules, sets, index, events.__getitem__)
    output: dict[str, Any] = {"resolved_state": _format_state(resolved)}
    if repeat:
        timings = []
        for _ in range(repeat):
            start = time.perf_counter()
            resolve(event_file.rules, sets, index, events.__getitem__)
            timings.append(time.perf_counter() - start)
        output["resolve_median_s"] = statistics.median(timings)
        output["repeat"] = repeat
    return output


def replay_file(
    path: str, *, at: str | None = None, room_version: str | None = None
) -> dict[str, Any]:
    """Walk the DAG in causal order and report the state after `at` or at the extremities."""
    event_file = read_event_file(path, room_version=room_version)
    events = _parse_events(event_file.events, event_file.rules, path)
    if at is not None and at not in events:
        raise InputError(f"{path}: {at} is not an event of the file")
    order = causal_order(events)
    if not order:
        raise InputError(f"{path}: no events")
    graph = RoomGraph(event_file.rules, order[0].room_id, MemoryRoomStore())
    for pdu in order:
        try:
            graph.add(pdu)
        except MissingEventsError as exc:
            raise InputError(
                f"{path}: {pdu.event_id} cites events not in the file: {exc}"
            ) from None
    state = graph.state_after(EventId(at)) if at is not None else graph.current_state()
    return {"resolved_state": _format_state(state)}
