"""The DAG as a standalone SVG picture, laid out by `dagview.layout` (no Graphviz).

Owns: `render_svg`, its legend and XML escaping. Must not: reference external resources,
embed scripts or CSS (styles are presentation attributes, so every renderer shows them), or do
I/O.

Markings: the node group's `class` lists the status (`accepted`, `soft-failed`, `rejected`,
`missing`), the kind (`state` or `message`) and `extremity`; the same markings are drawn:
rejected red, soft-failed orange dashed, state events square boxes, other events rounded,
forward extremities a thick double outline, missing `prev_events` targets grey dotted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from s2s_node.core.room import EventStatus
from s2s_node.dagview.layout import PlacedNode, compute_layout
from s2s_node.dagview.model import DagNode, EdgeKind, clean_text, label_lines, short_event_id

FONT = 'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace"'
LINE_HEIGHT = 13
LEGEND_HEIGHT = 86
LEGEND_MIN_WIDTH = 760
AUTH_BULGE_MAX = 150  # how far right of the boxes an auth edge may curve
ARROW_LENGTH = 8
ARROW_HALF_WIDTH = 3.5

# status -> (class, stroke, fill, dash)
_STATUS_STYLE = {
    EventStatus.ACCEPTED: ("accepted", "#222222", "#ffffff", ""),
    EventStatus.SOFT_FAILED: ("soft-failed", "#e07b00", "#fff1dc", "5,3"),
    EventStatus.REJECTED: ("rejected", "#d11a1a", "#fde2e2", ""),
}
_MISSING = ("missing", "#888888", "#f4f4f4", "2,3")
_PREV_COLOUR = "#555555"
_AUTH_COLOUR = "#9aa4c8"


def escape_xml(text: str) -> str:
    """`text` for XML character data and attribute values (control characters replaced)."""
    return (
        clean_text(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )


def render_svg(
    nodes: Sequence[DagNode], *, auth_edges: bool = False, title: str | None = None
) -> str:
    """A standalone SVG document of the events; identical input gives identical bytes.

    Parents are drawn above children; arrows point from an event to its prev (solid) or auth
    (dashed, if `auth_edges`) events. Hovering a box shows the full event ID.
    """
    layout = compute_layout(nodes, auth_edges=auth_edges, top=LEGEND_HEIGHT)
    width = max(layout.width + (AUTH_BULGE_MAX if auth_edges else 0), LEGEND_MIN_WIDTH)
    height = layout.height
    has_missing = any(p.is_placeholder for p in layout.nodes)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="room-dag" {FONT} font-size="11">',
        f"<title>{escape_xml(title or 'room DAG')}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    out += _legend(
        title,
        len(nodes),
        auth_edges=auth_edges,
        has_missing=has_missing,
    )
    out.append('<g class="edges" fill="none">')
    placed_by_id = {p.event_id: p for p in layout.nodes}
    for placed in layout.edges:
        kind = placed.edge.kind.value
        if placed.edge.kind is EdgeKind.AUTH:
            out += _auth_curve(placed_by_id[placed.edge.source], placed_by_id[placed.edge.target])
            continue
        points = " ".join(f"{x},{y}" for x, y in placed.points)
        out.append(f'<polyline class="edge {kind}" points="{points}" stroke="{_PREV_COLOUR}"/>')
        out.append(_arrowhead(placed.points[-2], placed.points[-1], _PREV_COLOUR, kind))
    out.append("</g>")
    out.append('<g class="nodes">')
    for placed_node in layout.nodes:
        out += _node(placed_node)
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _auth_curve(source: PlacedNode, target: PlacedNode) -> list[str]:
    """An auth edge: a dashed curve from the right side of the event to the right side of its
    auth event, bulging right so it does not run along the prev_events column."""
    start = (source.x + source.width // 2, source.y)
    end = (target.x + target.width // 2, target.y)
    bulge = min(30 + abs(start[1] - end[1]) // 8, AUTH_BULGE_MAX - 10)
    control = (max(start[0], end[0]) + bulge, (start[1] + end[1]) // 2)
    return [
        f'<path class="edge auth" d="M{start[0]},{start[1]} Q{control[0]},{control[1]} '
        f'{end[0]},{end[1]}" stroke="{_AUTH_COLOUR}" stroke-dasharray="4,3"/>',
        _arrowhead(control, end, _AUTH_COLOUR, "auth"),
    ]


def _arrowhead(
    start: tuple[int, int], end: tuple[int, int], colour: str, kind: str = "legend"
) -> str:
    """A filled triangle with its tip at `end`, pointing along `start` -> `end`.

    Drawn as a polygon rather than an SVG marker: simple renderers (ImageMagick's) skip markers.
    """
    dx, dy = end[0] - start[0], end[1] - start[1]
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    bx, by = end[0] - ARROW_LENGTH * ux, end[1] - ARROW_LENGTH * uy
    hx, hy = -uy * ARROW_HALF_WIDTH, ux * ARROW_HALF_WIDTH
    points = f"{end[0]},{end[1]} {bx + hx:.1f},{by + hy:.1f} {bx - hx:.1f},{by - hy:.1f}"
    return f'<polygon class="arrow {kind}" points="{points}" fill="{colour}" stroke="none"/>'


def _box(
    x: int, y: int, w: int, h: int, *, stroke: str, fill: str, dash: str, rounded: bool, bold: bool
) -> list[str]:
    """A node outline; a bold (extremity) box gets a second outline around it."""
    rx = h // 2 if rounded else 2
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    out = []
    if bold:
        out.append(
            f'<rect x="{x - 4}" y="{y - 4}" width="{w + 8}" height="{h + 8}" rx="{rx + 4}" '
            f'fill="none" stroke="{stroke}" stroke-width="1.5"{dash_attr}/>'
        )
    out.append(
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{2.5 if bold else 1.2}"{dash_attr}/>'
    )
    return out


def _node(placed: PlacedNode) -> list[str]:
    node = placed.node
    x, y = placed.x - placed.width // 2, placed.y - placed.height // 2
    if node is None:
        cls, stroke, fill, dash = _MISSING
        classes = "node missing"
        lines: tuple[str, ...] = ("missing", short_event_id(placed.event_id, 14))
        rounded = bold = False
    else:
        cls, stroke, fill, dash = _STATUS_STYLE[node.status]
        classes = f"node {cls} {'state' if node.is_state else 'message'}" + (
            " extremity" if node.is_extremity else ""
        )
        lines = tuple(line for line in label_lines(node) if line)
        rounded, bold = not node.is_state, node.is_extremity
    event_id = escape_xml(placed.event_id)
    out = [f'<g class="{classes}" data-event-id="{event_id}">']
    tooltip = [placed.event_id] if node is None else [placed.event_id, *_describe(node)]
    out.append(f"<title>{'&#10;'.join(escape_xml(line) for line in tooltip)}</title>")
    out += _box(
        x,
        y,
        placed.width,
        placed.height,
        stroke=stroke,
        fill=fill,
        dash=dash,
        rounded=rounded,
        bold=bold,
    )
    text_colour = stroke if node is None or node.status is not EventStatus.ACCEPTED else "#111111"
    first = placed.y - (len(lines) - 1) * LINE_HEIGHT / 2 + 4
    for k, line in enumerate(lines):
        weight = ' font-weight="bold"' if k == 0 and node is not None else ""
        out.append(
            f'<text x="{placed.x}" y="{first + k * LINE_HEIGHT:g}" text-anchor="middle" '
            f'fill="{text_colour}"{weight}>{escape_xml(line)}</text>'
        )
    out.append("</g>")
    return out


def _describe(node: DagNode) -> list[str]:
    parts = [f"type {node.type}"]
    if node.state_key is not None:
        parts.append(f"state_key {node.state_key!r}")
    parts += [
        f"sender {node.sender}",
        f"depth {node.depth}",
        f"status {node.status.value}" + (", forward extremity" if node.is_extremity else ""),
    ]
    return parts


def _legend(title: str | None, count: int, *, auth_edges: bool, has_missing: bool) -> list[str]:
    heading = f"{title} — {count} events" if title else f"{count} events"
    out = [
        '<g class="legend">',
        f'<text x="20" y="22" font-size="13" font-weight="bold">{escape_xml(heading)}</text>',
    ]
    x, y, w, h = 20, 34, 92, 20
    entries: list[tuple[str, str, str, str, bool, bool]] = [
        ("accepted", *_STATUS_STYLE[EventStatus.ACCEPTED][1:], True, False),
        ("soft-failed", *_STATUS_STYLE[EventStatus.SOFT_FAILED][1:], True, False),
        ("rejected", *_STATUS_STYLE[EventStatus.REJECTED][1:], True, False),
        ("state event", "#222222", "#ffffff", "", False, False),
        ("extremity", "#222222", "#ffffff", "", True, True),
    ]
    if has_missing:
        entries.append(("missing", *_MISSING[1:], False, False))
    for k, (name, stroke, fill, dash, rounded, bold) in enumerate(entries):
        ex = x + k * (w + 30)
        out.append(f'<g class="legend-entry {name.replace(" ", "-")}">')
        out += _box(ex, y, w, h, stroke=stroke, fill=fill, dash=dash, rounded=rounded, bold=bold)
        out.append(f'<text x="{ex + w // 2}" y="{y + 14}" text-anchor="middle">{name}</text>')
        out.append("</g>")
    ly = y + h + 20
    out.append(f'<polyline points="{x},{ly} {x + 60},{ly}" fill="none" stroke="{_PREV_COLOUR}" />')
    out.append(_arrowhead((x, ly), (x + 60, ly), _PREV_COLOUR))
    out.append(f'<text x="{x + 68}" y="{ly + 4}">prev_events (arrow points at the parent)</text>')
    if auth_edges:
        ax = x + 380
        out.append(
            f'<polyline points="{ax},{ly} {ax + 60},{ly}" fill="none" stroke="{_AUTH_COLOUR}" '
            'stroke-dasharray="4,3"/>'
        )
        out.append(_arrowhead((ax, ly), (ax + 60, ly), _AUTH_COLOUR))
        out.append(f'<text x="{ax + 68}" y="{ly + 4}">auth_events</text>')
    out.append("</g>")
    return out
