"""Pictures of a room's event graph: DOT, JSON and a standalone SVG with its own layout.

Pure functions of a list of `DagNode`s (build them from `Pdu`s with `build_dag_node` /
`build_dag_nodes`); no I/O. Used by `s2s-node dag` and the status page.

    nodes = build_dag_nodes(pdus, statuses, extremities)
    svg = render_svg(nodes, title=room_id)          # str, standalone SVG document
    dot = render_dot(nodes, auth_edges=True)        # str, Graphviz digraph
    data = render_json(nodes)                       # dict, JSON-ready

Size: the layout is roughly linear in events plus edge waypoints; 2,000 events take well
under a second. Nothing is collapsed or capped: a caller showing a big room passes the excerpt
it wants (e.g. the latest events by depth); `prev_events` outside the excerpt are drawn as
"missing" placeholders.
"""

from s2s_node.dagview.dot import render_dot
from s2s_node.dagview.jsonview import render_json
from s2s_node.dagview.layout import DagLayout, PlacedEdge, PlacedNode, compute_layout
from s2s_node.dagview.model import (
    DagEdge,
    DagInputError,
    DagInputReason,
    DagNode,
    EdgeKind,
    build_dag_node,
    build_dag_nodes,
)
from s2s_node.dagview.svg import render_svg

__all__ = [
    "DagEdge",
    "DagInputError",
    "DagInputReason",
    "DagLayout",
    "DagNode",
    "EdgeKind",
    "PlacedEdge",
    "PlacedNode",
    "build_dag_node",
    "build_dag_nodes",
    "compute_layout",
    "render_dot",
    "render_json",
    "render_svg",
]
