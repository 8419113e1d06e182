"""What the DAG views draw: one `DagNode` per event, the edges between them, and short labels.

Owns: the `DagNode` value (built from a `Pdu` and its receipt outcome, or directly), the edge
list (`prev_events` always, `auth_events` on request) and the text shortening used by every
renderer. Must not: lay anything out, render, or do I/O.

Spec: server-server API "Room events" (prev_events, auth_events, depth; digest 3.5), "Checks
performed on receipt of a PDU" and "Soft failure" (the statuses; digest 8.3), forward
extremities (digest 6.5).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from s2s_node.core.events import Pdu
from s2s_node.core.room import EventStatus


class EdgeKind(enum.Enum):
    """Which reference an edge stands for. Edges point from an event to the event it names."""

    PREV = "prev"
    AUTH = "auth"


class DagInputReason(enum.Enum):
    """Why a node list cannot be drawn."""

    DUPLICATE_EVENT_ID = "duplicate_event_id"


class DagInputError(ValueError):
    """The node list given to a renderer is not a set of distinct events."""

    def __init__(self, reason: DagInputReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class DagNode:
    """One event as the DAG views see it.

    `label` is an optional caller note shown under the type (for member events built from a
    `Pdu` it defaults to the membership). `is_extremity` is a forward extremity of the room.
    """

    event_id: str
    type: str
    state_key: str | None
    sender: str
    origin_server_ts: int
    depth: int
    prev_events: tuple[str, ...]
    auth_events: tuple[str, ...] = ()
    status: EventStatus = EventStatus.ACCEPTED
    is_extremity: bool = False
    label: str | None = None

    @property
    def is_state(self) -> bool:
        return self.state_key is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class DagEdge:
    """A reference from `source` (the event) to `target` (its prev or auth event)."""

    source: str
    target: str
    kind: EdgeKind


def build_dag_node(
    pdu: Pdu,
    status: EventStatus = EventStatus.ACCEPTED,
    *,
    is_extremity: bool = False,
    label: str | None = None,
) -> DagNode:
    """The `DagNode` of a received or built event.

    Uses the `auth_events` as sent (room version 12's implied create event is not drawn: it
    would add an edge from every event to the root).
    """
    if label is None and pdu.type == "m.room.member":
        label = pdu.membership
    return DagNode(
        event_id=pdu.event_id,
        type=pdu.type,
        state_key=pdu.state_key,
        sender=pdu.sender,
        origin_server_ts=pdu.origin_server_ts,
        depth=pdu.depth,
        prev_events=pdu.prev_events,
        auth_events=pdu.auth_events,
        status=status,
        is_extremity=is_extremity,
        label=label,
    )


def build_dag_nodes(
    pdus: Iterable[Pdu],
    statuses: Mapping[str, EventStatus] | None = None,
    extremities: Collection[str] = (),
) -> list[DagNode]:
    """`DagNode`s of many events; an event missing from `statuses` counts as accepted."""
    statuses = statuses or {}
    return [
        build_dag_node(
            pdu,
            statuses.get(pdu.event_id, EventStatus.ACCEPTED),
            is_extremity=pdu.event_id in extremities,
        )
        for pdu in pdus
    ]


def sort_nodes(nodes: Iterable[DagNode]) -> list[DagNode]:
    """The nodes in the order every view uses: by depth, then timestamp, then event ID.

    Makes the output independent of the input order. Raises `DagInputError` on a repeated
    event ID.
    """
    ordered = sorted(nodes, key=lambda n: (n.depth, n.origin_server_ts, n.event_id))
    for before, after in itertools.pairwise(ordered):
        if before.event_id == after.event_id:
            raise DagInputError(
                DagInputReason.DUPLICATE_EVENT_ID, f"event {after.event_id!r:.80} given twice"
            )
    return ordered


def compute_edges(nodes: Sequence[DagNode], *, auth_edges: bool = False) -> list[DagEdge]:
    """Edges between the given nodes, in node order then reference order, without repeats.

    A `prev_events` entry naming an event outside `nodes` still gets an edge (views draw the
    target as a "missing" placeholder); an `auth_events` entry outside `nodes` gets none (auth
    chains reach far outside any excerpt of a room).
    """
    known = {node.event_id for node in nodes}
    edges: list[DagEdge] = []
    for node in nodes:
        seen: set[tuple[str, EdgeKind]] = set()
        refs = [(p, EdgeKind.PREV) for p in node.prev_events]
        if auth_edges:
            refs += [(a, EdgeKind.AUTH) for a in node.auth_events if a in known]
        for target, kind in refs:
            if (target, kind) not in seen:
                seen.add((target, kind))
                edges.append(DagEdge(source=node.event_id, target=target, kind=kind))
    return edges


def compute_missing(nodes: Sequence[DagNode]) -> list[str]:
    """`prev_events` named by some node but not given, sorted."""
    known = {node.event_id for node in nodes}
    return sorted({p for node in nodes for p in node.prev_events if p not in known})


# ---------------------------------------------------------------- text shortening


def clean_text(text: str) -> str:
    """`text` with control characters and lone surrogates replaced by U+FFFD.

    Event fields come from peers; XML 1.0 and UTF-8 output cannot hold these characters.
    """
    return "".join(
        "\ufffd"
        if (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) <= 0xDFFF)
        or c in "\ufffe\uffff"
        else c
        for c in text
    )


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the last one an ellipsis when cut."""
    text = clean_text(text)
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def short_user(user_id: str, limit: int = 18) -> str:
    """`@local:server` with both parts shortened to fit `limit` characters together."""
    if not (user_id.startswith("@") and ":" in user_id):
        return shorten(user_id, limit)
    local, server = user_id[1:].split(":", 1)
    room = limit - 2  # "@" and ":"
    if len(local) + len(server) <= room:
        return clean_text(user_id)
    local_room = max(min(len(local), room // 2), room - len(server))
    return "@" + shorten(local, local_room) + ":" + shorten(server, room - local_room)


def short_event_id(event_id: str, limit: int = 9) -> str:
    """The start of an event ID (the whole ID is in tooltips)."""
    return shorten(event_id, limit)


def label_lines(node: DagNode) -> tuple[str, str, str]:
    """Three short lines for a node box: type; state_key and label; sender and event ID."""
    second = []
    if node.state_key:
        key = node.state_key
        second.append(short_user(key, 18) if key.startswith("@") else shorten(key, 18))
    if node.label:
        second.append(shorten(node.label, 26 - len(second[0]) if second else 26))
    return (
        shorten(node.type, 27),
        " ".join(second),
        f"{short_user(node.sender, 16)} {short_event_id(node.event_id)}",
    )
