"""The DAG as a JSON-ready value: nodes with their layout position, and edges.

Owns: `render_json`. Must not: serialise (the caller picks the JSON encoder) or do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from s2s_node.dagview.layout import compute_layout
from s2s_node.dagview.model import DagNode

MISSING_STATUS = "missing"  # the status of a `prev_events` target that was not given


def render_json(nodes: Sequence[DagNode], *, auth_edges: bool = False) -> dict[str, Any]:
    """`{"nodes": [...], "edges": [...]}` in a stable order (layer by layer, left to right).

    Node keys: id, type, state_key, sender, depth, origin_server_ts, status ("accepted",
    "soft_failed", "rejected", or "missing" for a `prev_events` target that was not given: its
    other fields are null), extremity, state, label, layer, x, y (the centre of its box in the
    SVG view). Edge keys: from (the event), to (the event it names), kind ("prev" | "auth").
    """
    layout = compute_layout(nodes, auth_edges=auth_edges)
    out_nodes: list[dict[str, Any]] = []
    for placed in layout.nodes:
        node = placed.node
        out_nodes.append(
            {
                "id": placed.event_id,
                "type": node.type if node else None,
                "state_key": node.state_key if node else None,
                "sender": node.sender if node else None,
                "depth": node.depth if node else None,
                "origin_server_ts": node.origin_server_ts if node else None,
                "status": node.status.value if node else MISSING_STATUS,
                "extremity": node.is_extremity if node else False,
                "state": node.is_state if node else False,
                "label": node.label if node else None,
                "layer": placed.layer,
                "x": placed.x,
                "y": placed.y,
            }
        )
    out_edges = [
        {"from": e.edge.source, "to": e.edge.target, "kind": e.edge.kind.value}
        for e in layout.edges
    ]
    return {"nodes": out_nodes, "edges": out_edges}
