"""The node's read-only status page on the client listener: peers, rooms, negotiations, DAGs.

Owns: `GET /status` (one server-rendered HTML page: the node identifier, the peers table, the
rooms table, the upgrade negotiations of each s2s room and each room's DAG as inline SVG),
`GET /status/rooms/{roomId}/dag.svg` (one room's DAG as a standalone SVG document), the
summaries they read from the store, and HTML escaping. Must not: change anything, run
scripts, or reference anything outside the page (no scripts, stylesheets, fonts or images
from elsewhere; the Content-Security-Policy header says so to the browser too).

Access: the server user's token, as a bearer header or as the `access_token` query parameter
(a browser address bar cannot send a header); other tokens get 403, none 401. The page lists
every room of the node, not only the requester's, so it is the operator's view. The
reasons are in docs/design.md section 7.

Big rooms: each DAG shows the `DAG_EVENTS` deepest events among the last `DAG_SCAN` stored
(storage order is parents before children, so the newest arrivals are last); older
`prev_events` are drawn as "missing" placeholders by the renderer.

Spec: client-server API "Client Authentication" (the token and its query-parameter form).
Design: docs/design.md section 7 (client API), DESIGN.md section 11.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from s2s_node.core.auth import S2S_ROOM_TYPES
from s2s_node.core.events import Pdu
from s2s_node.core.ids import RoomId
from s2s_node.core.room import EventStatus, RoomGraph
from s2s_node.dagview import DagNode, build_dag_nodes, render_svg
from s2s_node.dagview.model import clean_text, short_event_id
from s2s_node.net.client_api_auth import (
    ClientContext,
    Requester,
    endpoint,
    parse_int_param,
)
from s2s_node.net.errors import M_FORBIDDEN, M_NOT_FOUND, HttpError
from s2s_node.net.http import Request, Response
from s2s_node.net.router import Route
from s2s_node.peerinfo import PeerInfo
from s2s_node.rooms import UnknownRoomError
from s2s_node.s2s.values import NegotiationInfo, UpgradeError
from s2s_node.store import Store

STATUS_PATH = "/status"
DAG_SVG_PATH = "/status/rooms/{roomId}/dag.svg"
# Events drawn per room on the page and by default in dag.svg: a layout of 200 boxes renders
# in tens of milliseconds and stays readable; `?limit=` on dag.svg goes up to MAX_DAG_EVENTS.
DAG_EVENTS = 200
MAX_DAG_EVENTS = 2000
# How many of the last stored events are read to find the deepest ones (bounds the work on
# rooms with many thousands of events).
DAG_SCAN_FACTOR = 4
# Rooms whose DAG is drawn inline; the others get a link to their dag.svg only.
INLINE_DAGS = 20
# Joined members and forward extremities listed per room before "and N more".
LIST_LIMIT = 12
# Negotiations listed per room (the newest).
NEGOTIATION_LIMIT = 20
# The page reloads itself this often (seconds); `?refresh=0` turns it off.
REFRESH_S = 10
MAX_REFRESH_S = 3600

_SECURITY_HEADERS = (
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSummary:
    """One stored room as the page shows it."""

    room_id: RoomId
    room_version: str
    room_type: str | None
    members: tuple[str, ...]
    forward_extremities: tuple[str, ...]
    event_count: int
    tombstoned: bool

    @property
    def is_s2s(self) -> bool:
        return self.room_type in S2S_ROOM_TYPES


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomView:
    """A room with what the page draws of it: its negotiations (s2s rooms; `None` when the
    node cannot read them) and its DAG SVG (`None` beyond `INLINE_DAGS`)."""

    summary: RoomSummary
    negotiations: tuple[NegotiationInfo, ...] | None
    negotiation_note: str | None
    dag_svg: str | None
    dag_events: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """Everything the page shows, read at one moment."""

    identifier: str
    server_user: str
    federation_url: str | None
    peers: tuple[PeerInfo, ...]
    rooms: tuple[RoomView, ...]


# ----------------------------------------------------------------------------------------------
# Reading the store (reader thread)


def read_room_summary(store: Store, room_id: RoomId) -> RoomSummary | None:
    """The summary of a stored room, or None if the node does not have it."""
    room = store.room(room_id)
    if room is None:
        return None
    graph = RoomGraph(room.rules, room_id, room)
    state = graph.current_state()
    create_id = state.get(("m.room.create", ""))
    room_type = None
    if create_id is not None:
        value = graph.get_event(create_id).content.get("type")
        room_type = value if isinstance(value, str) else None
    members = sorted(
        state_key
        for (event_type, state_key), event_id in state.items()
        if event_type == "m.room.member" and graph.get_event(event_id).membership == "join"
    )
    return RoomSummary(
        room_id=room_id,
        room_version=room.rules.version,
        room_type=room_type,
        members=tuple(members),
        forward_extremities=tuple(sorted(graph.forward_extremities)),
        event_count=len(room),
        tombstoned=("m.room.tombstone", "") in state,
    )


def read_dag_nodes(store: Store, room_id: RoomId, limit: int) -> list[DagNode] | None:
    """The `limit` deepest of the room's last `DAG_SCAN_FACTOR * limit` stored events as DAG
    nodes (statuses and extremities marked), or None for an unknown room."""
    room = store.room(room_id)
    if room is None:
        return None
    graph = RoomGraph(room.rules, room_id, room)
    candidates: list[Pdu] = []
    for event_id in room.event_ids()[-DAG_SCAN_FACTOR * limit :]:
        pdu = room.get_pdu(event_id)
        if pdu is not None:
            candidates.append(pdu)
    candidates.sort(key=lambda p: (p.depth, p.origin_server_ts, p.event_id), reverse=True)
    chosen = candidates[:limit]
    statuses: dict[str, EventStatus] = {}
    for pdu in chosen:
        status = graph.status(pdu.event_id)
        if status is not None:
            statuses[pdu.event_id] = status
    return build_dag_nodes(chosen, statuses, graph.forward_extremities)


def _read_rooms(store: Store, room_ids: Sequence[RoomId]) -> list[RoomSummary]:
    found = []
    for room_id in room_ids:
        summary = read_room_summary(store, room_id)
        if summary is not None:
            found.append(summary)
    return found


# ----------------------------------------------------------------------------------------------
# HTML


def escape_html(value: object) -> str:
    """`value` as text for HTML character data and quoted attributes (control characters
    replaced: peer-supplied strings may hold them)."""
    return html.escape(clean_text(str(value)), quote=True)


def _flag(value: bool) -> str:
    return '<td class="yes">yes</td>' if value else '<td class="no">no</td>'


def _listing(items: Sequence[str], css: str, *, shorten: bool = False) -> str:
    shown = [
        f'<span class="{css}" title="{escape_html(item)}">'
        f"{escape_html(short_event_id(item, 14) if shorten else item)}</span>"
        for item in items[:LIST_LIMIT]
    ]
    if len(items) > LIST_LIMIT:
        shown.append(f'<span class="more">and {len(items) - LIST_LIMIT} more</span>')
    return " ".join(shown) if shown else '<span class="none">none</span>'


def _peers_table(peers: Sequence[PeerInfo]) -> list[str]:
    out = ['<section id="peers">', f"<h2>Peers ({len(peers)})</h2>"]
    if not peers:
        out.append('<p class="none">No peers known.</p>')
        return [*out, "</section>"]
    out += [
        '<table class="peers">',
        "<thead><tr><th>identifier</th><th>addresses</th><th>verified</th><th>alive</th>"
        "<th>encrypted</th><th>source</th></tr></thead>",
        "<tbody>",
    ]
    for peer in peers:
        addresses = ", ".join(f"{address}:{peer.port}" for address in peer.addresses)
        source = " + ".join(
            name for name, on in (("static", peer.static), ("mDNS", peer.discovered)) if on
        )
        out.append(
            f'<tr class="peer" data-identifier="{escape_html(peer.identifier)}">'
            f'<td class="identifier">{escape_html(peer.identifier)}</td>'
            f"<td>{escape_html(addresses) or '—'}</td>"
            f"{_flag(peer.verified)}{_flag(peer.alive)}{_flag(peer.encrypted)}"
            f"<td>{escape_html(source)}</td></tr>"
        )
    return [*out, "</tbody></table>", "</section>"]


def _room_anchor(room_id: str) -> str:
    return "room-" + urllib.parse.quote(room_id, safe="")


def _rooms_table(rooms: Sequence[RoomView]) -> list[str]:
    out = ['<section id="rooms">', f"<h2>Rooms ({len(rooms)})</h2>"]
    if not rooms:
        out.append('<p class="none">The node is in no room.</p>')
        return [*out, "</section>"]
    out += [
        '<table class="rooms">',
        "<thead><tr><th>room ID</th><th>type</th><th>version</th><th>events</th>"
        "<th>members</th><th>forward extremities</th></tr></thead>",
        "<tbody>",
    ]
    for view in rooms:
        room = view.summary
        kind = room.room_type or "—"
        if room.tombstoned:
            kind += " (tombstoned)"
        out.append(
            f'<tr class="room" data-room-id="{escape_html(room.room_id)}">'
            f'<td class="room-id"><a href="#{escape_html(_room_anchor(room.room_id))}">'
            f"{escape_html(room.room_id)}</a></td>"
            f"<td>{escape_html(kind)}</td><td>{escape_html(room.room_version)}</td>"
            f"<td>{room.event_count}</td>"
            f"<td>{_listing(room.members, 'member')}</td>"
            f"<td>{_listing(room.forward_extremities, 'extremity', shorten=True)}</td></tr>"
        )
    return [*out, "</tbody></table>", "</section>"]


def _negotiations(view: RoomView) -> list[str]:
    out = ["<h4>Negotiations</h4>"]
    if view.negotiations is None:
        return [*out, f'<p class="none">{escape_html(view.negotiation_note or "unknown")}</p>']
    if not view.negotiations:
        return [*out, '<p class="none">No upgrade negotiation.</p>']
    out += [
        '<table class="negotiations">',
        "<thead><tr><th>negotiation</th><th>state</th><th>role</th><th>peer</th>"
        "<th>method</th><th>version</th><th>error</th><th>new room</th></tr></thead>",
        "<tbody>",
    ]
    for info in view.negotiations[-NEGOTIATION_LIMIT:]:
        error = " / ".join(x for x in (info.error, info.reason, info.failed_by) if x)
        out.append(
            f'<tr class="negotiation" data-state="{escape_html(info.state)}">'
            f'<td title="{escape_html(info.negotiation_id)}">'
            f"{escape_html(short_event_id(info.negotiation_id, 14))}</td>"
            f'<td class="state">{escape_html(info.state)}</td>'
            f"<td>{escape_html(info.role or '—')}</td><td>{escape_html(info.peer or '—')}</td>"
            f"<td>{escape_html(info.method)}</td>"
            f'<td class="version">{escape_html(info.version or "—")}</td>'
            f'<td class="error">{escape_html(error or "—")}</td>'
            f"<td>{escape_html(info.new_room_id or '—')}</td></tr>"
        )
    return [*out, "</tbody></table>"]


def _dag_link(room_id: str, token_query: str) -> str:
    path = DAG_SVG_PATH.replace("{roomId}", urllib.parse.quote(room_id, safe=""))
    return path + token_query


def _room_section(view: RoomView, token_query: str) -> list[str]:
    room = view.summary
    out = [
        f'<section class="room-detail" id="{escape_html(_room_anchor(room.room_id))}">',
        f"<h3>{escape_html(room.room_id)}</h3>",
    ]
    if room.is_s2s:
        out += _negotiations(view)
    link = escape_html(_dag_link(room.room_id, token_query))
    if view.dag_svg is None:
        out.append(f'<p><a class="dag-link" href="{link}">DAG as SVG</a></p>')
    else:
        shown = (
            f"all {room.event_count} events"
            if view.dag_events >= room.event_count
            else f"the latest {view.dag_events} of {room.event_count} events by depth"
        )
        out.append(f'<h4>DAG ({shown}) <a class="dag-link" href="{link}">standalone SVG</a></h4>')
        out.append(f'<div class="dag">{view.dag_svg}</div>')
    return [*out, "</section>"]


_STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 1.2em; color: #111; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; margin-top: 1.4em; }
h3 { font-size: 1em; font-family: DejaVu Sans Mono, monospace; margin-bottom: 0.3em; }
h4 { font-size: 0.9em; margin: 0.6em 0 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
td { max-width: 30em; overflow-wrap: anywhere; }
th { background: #f0f0f0; }
td.identifier, td.room-id, span.extremity, span.member { font-family: DejaVu Sans Mono,
  monospace; }
td.yes { color: #116611; } td.no { color: #aa2222; }
.none, .more, .meta { color: #666; }
span.member, span.extremity { display: inline-block; margin-right: 0.4em; }
div.dag { overflow-x: auto; border: 1px solid #ddd; margin-bottom: 1em; }
"""


def render_status_html(
    status: NodeStatus, *, refresh_s: int = REFRESH_S, token_query: str = ""
) -> str:
    """The status page. `token_query` (`?access_token=...` or empty) is appended to the
    dag.svg links, so that they work from a browser that came with the query parameter."""
    title = f"s2s-node {status.identifier}"
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s > 0 else ""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        refresh,
        f"<title>{escape_html(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head><body>",
        f'<h1>s2s-node <span id="identifier">{escape_html(status.identifier)}</span></h1>',
        f'<p class="meta">server user {escape_html(status.server_user)}; federation '
        f"{escape_html(status.federation_url or 'not listening')}; read-only"
        + (f", reloads every {refresh_s} s" if refresh_s > 0 else "")
        + "</p>",
    ]
    out += _peers_table(status.peers)
    out += _rooms_table(status.rooms)
    if status.rooms:
        out.append('<section id="room-details"><h2>Negotiations and DAGs</h2>')
        for view in status.rooms:
            out += _room_section(view, token_query)
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(line for line in out if line) + "\n"


def _inline_svg(svg: str) -> str:
    """A standalone SVG document as an element to put inside HTML (no XML declaration)."""
    if svg.startswith("<?xml"):
        svg = svg.split("\n", 1)[1]
    return svg


# ----------------------------------------------------------------------------------------------
# Endpoints


def _require_server_user(requester: Requester) -> None:
    if not requester.is_server_user:
        raise HttpError(403, M_FORBIDDEN, "only the server user may see the status page")


def _token_query(request: Request) -> str:
    token = request.query_value("access_token")
    return "" if not token else "?" + urllib.parse.urlencode({"access_token": token})


def _page_response(body: str, content_type: str) -> Response:
    return Response(
        status=200,
        headers=(("content-type", content_type), *_SECURITY_HEADERS),
        body=body.encode("utf-8"),
    )


class StatusPage:
    """The status page of one node's client API."""

    def __init__(self, ctx: ClientContext) -> None:
        self.node = ctx.node
        self.ctx = ctx

    async def read_status(self, *, dag_events: int = DAG_EVENTS) -> NodeStatus:
        """What the page shows now."""
        node = self.node
        room_ids = sorted(await node.room_ids())
        summaries = await node.astore.read(lambda store: _read_rooms(store, room_ids))
        views = []
        for index, summary in enumerate(summaries):
            negotiations: tuple[NegotiationInfo, ...] | None = None
            note = None
            if summary.is_s2s:
                try:
                    negotiations = tuple(await node.negotiations(summary.room_id))
                except (UnknownRoomError, UpgradeError) as exc:
                    note = f"negotiations unavailable: {exc}"
            svg, drawn = None, 0
            if index < INLINE_DAGS:
                svg, drawn = await self._render_dag(summary.room_id, dag_events)
            views.append(
                RoomView(
                    summary=summary,
                    negotiations=negotiations,
                    negotiation_note=note,
                    dag_svg=None if svg is None else _inline_svg(svg),
                    dag_events=drawn,
                )
            )
        return NodeStatus(
            identifier=node.identifier,
            server_user=node.server_user,
            federation_url=node.federation_url if node.federation_address else None,
            peers=tuple(node.peers()),
            rooms=tuple(views),
        )

    async def _render_dag(self, room_id: RoomId, limit: int) -> tuple[str | None, int]:
        nodes = await self.node.astore.read(lambda store: read_dag_nodes(store, room_id, limit))
        if nodes is None:
            return None, 0
        svg = await trio.to_thread.run_sync(lambda: render_svg(nodes, title=room_id))
        return svg, len(nodes)

    async def page(self, request: Request, requester: Requester) -> Response:
        _require_server_user(requester)
        refresh = parse_int_param(request, "refresh", REFRESH_S, 0, MAX_REFRESH_S)
        status = await self.read_status()
        text = render_status_html(status, refresh_s=refresh, token_query=_token_query(request))
        return _page_response(text, "text/html; charset=utf-8")

    async def dag_svg(self, request: Request, requester: Requester) -> Response:
        _require_server_user(requester)
        room_id = RoomId(request.path_params["roomId"])
        limit = parse_int_param(request, "limit", DAG_EVENTS, 1, MAX_DAG_EVENTS)
        svg, _ = await self._render_dag(room_id, limit)
        if svg is None:
            raise HttpError(404, M_NOT_FOUND, f"unknown room {room_id[:100]}")
        return _page_response(svg, "image/svg+xml; charset=utf-8")

    def routes(self) -> list[Route]:
        table: Mapping[str, Any] = {STATUS_PATH: self.page, DAG_SVG_PATH: self.dag_svg}
        return [
            Route(method="GET", pattern=path, handler=endpoint(self.ctx, handler))
            for path, handler in table.items()
        ]


__all__ = [
    "DAG_EVENTS",
    "DAG_SVG_PATH",
    "STATUS_PATH",
    "NodeStatus",
    "RoomSummary",
    "RoomView",
    "StatusPage",
    "escape_html",
    "read_dag_nodes",
    "read_room_summary",
    "render_status_html",
]
