"""The DAG in Graphviz DOT, for people who have Graphviz and want its layout.

Owns: `render_dot` and DOT quoting. Must not: lay anything out (Graphviz does) or do I/O.

Quoting (Graphviz's lexer, lib/cgraph/scan.l): inside a double-quoted string `\\"` is a quote
and `\\\\` is kept as two characters; labels are then read as escStrings, where `\\\\` is one
backslash and `\\n` a line break. Node names are event IDs with `\\` doubled and `"` escaped;
control characters and lone surrogates become the text `\\uXXXX` (with a single backslash, so
no two IDs share a name).
"""

from __future__ import annotations

from collections.abc import Sequence

from s2s_node.core.room import EventStatus
from s2s_node.dagview.model import (
    DagNode,
    EdgeKind,
    clean_text,
    compute_edges,
    compute_missing,
    label_lines,
    short_event_id,
    sort_nodes,
)

# (colour, fill colour, extra style) per status
_STATUS_STYLE = {
    EventStatus.ACCEPTED: ("black", "white", ""),
    EventStatus.SOFT_FAILED: ("darkorange", "#fff1dc", "dashed"),
    EventStatus.REJECTED: ("red", "#fde2e2", ""),
}


def _is_unsafe(c: str) -> bool:
    code = ord(c)
    return code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF


def quote_id(text: str) -> str:
    """`text` as a quoted DOT ID that Graphviz reads back as one distinct name."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif _is_unsafe(c):
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def quote_label(lines: Sequence[str]) -> str:
    """Lines of display text as a quoted DOT escString label (centred lines)."""
    escaped = [clean_text(line).replace("\\", "\\\\").replace('"', '\\"') for line in lines if line]
    return '"' + "\\n".join(escaped) + '"'


def render_dot(
    nodes: Sequence[DagNode], *, auth_edges: bool = False, title: str | None = None
) -> str:
    """A `digraph` of the events: parents ranked above children, edges pointing at parents.

    Rejected: red; soft-failed: orange, dashed; state events: boxes (others ellipses);
    forward extremities: bold double outline; missing `prev_events` targets: grey dotted
    boxes; auth edges (if asked for): grey dashed, not constraining the ranking.
    """
    ordered = sort_nodes(nodes)
    lines = [
        "digraph room_dag {",
        '  graph [rankdir=TB, charset="UTF-8", fontname="monospace"'
        + (f", label={quote_label([title])}, labelloc=t" if title else "")
        + "];",
        '  node [fontname="monospace", fontsize=10, style=filled];',
        "  edge [dir=back, arrowtail=normal];",
    ]
    for node in ordered:
        colour, fill, style = _STATUS_STYLE[node.status]
        styles = ",".join(s for s in ("filled", style) if s)
        attrs = [
            f"label={quote_label(label_lines(node))}",
            f"tooltip={quote_id(node.event_id)}",
            f"shape={'box' if node.is_state else 'ellipse'}",
            f'color="{colour}"',
            f'fillcolor="{fill}"',
            f'style="{styles}"',
            f'class="{node.status.value.replace("_", "-")}'
            + (" state" if node.is_state else "")
            + (' extremity"' if node.is_extremity else '"'),
        ]
        if node.status is not EventStatus.ACCEPTED:
            attrs.append(f'fontcolor="{colour}"')
        if node.is_extremity:
            attrs += ["penwidth=2.5", "peripheries=2"]
        lines.append(f"  {quote_id(node.event_id)} [{', '.join(attrs)}];")
    for event_id in compute_missing(ordered):
        label = quote_label(["missing", short_event_id(event_id)])
        lines.append(
            f"  {quote_id(event_id)} [label={label}, tooltip={quote_id(event_id)}, shape=box, "
            'style=dotted, color="grey50", fontcolor="grey50", class="missing"];'
        )
    for edge in compute_edges(ordered, auth_edges=auth_edges):
        # Written parent -> child so that the parent is ranked above; dir=back puts the
        # arrowhead at the parent, the event the reference names.
        extra = (
            ' [style=dashed, color="grey60", constraint=false]'
            if edge.kind is EdgeKind.AUTH
            else ""
        )
        lines.append(f"  {quote_id(edge.target)} -> {quote_id(edge.source)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"
