"""The read-only status page on the client listener (net.status_page): rendering and escaping,
access control over real sockets, the DAG excerpt of big rooms, and the page as headless
Chromium shows it (DOM and screenshot) for a node with a peer, an s2s room with a failed
negotiation, and an ordinary room."""

from __future__ import annotations

import contextlib
import dataclasses
import html.parser
import json
import os
import shutil
import struct
import urllib.parse
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpcore
import pytest
import trio
from node_fixtures import FAST_BACKOFF, address_of, connect, node_config, wait_for

from s2s_node.config import Config, HostPort, RoomsConfig, UpgradeConfig
from s2s_node.core.ids import RoomId
from s2s_node.net.status_page import (
    NodeStatus,
    RoomSummary,
    RoomView,
    read_dag_nodes,
    render_status_html,
)
from s2s_node.node import Node, open_node
from s2s_node.peerinfo import PeerInfo

HOSTILE = '<script>alert("x")</script>&'
CHROMIUM = shutil.which("chromium")


# ----------------------------------------------------------------------------------------------
# A small DOM reader (html.parser): elements with their attributes and text.


@dataclasses.dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None
    children: list[Element] = dataclasses.field(default_factory=list)
    text: list[str] = dataclasses.field(default_factory=list)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def walk(self) -> list[Element]:
        found = [self]
        for child in self.children:
            found += child.walk()
        return found

    def find(self, tag: str, css: str | None = None) -> list[Element]:
        return [e for e in self.walk() if e.tag == tag and (css is None or css in e.classes())]


VOID = {"meta", "br", "img", "input", "link", "hr"}


class DomReader(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text.append(data)


def parse_dom(text: str) -> Element:
    reader = DomReader()
    reader.feed(text)
    reader.close()
    return reader.root


def by_id(root: Element, element_id: str) -> Element:
    (found,) = [e for e in root.walk() if e.attrs.get("id") == element_id]
    return found


# ----------------------------------------------------------------------------------------------
# Rendering (no node)


def _peer(identifier: str, **kw: Any) -> PeerInfo:
    fields: dict[str, Any] = {
        "identifier": identifier,
        "addresses": ("127.0.0.1",),
        "port": 8448,
        "verified": True,
        "alive": False,
        "encrypted": True,
        "pinned": True,
        "static": True,
    }
    return PeerInfo(**(fields | kw))


def _status(**kw: Any) -> NodeStatus:
    room = RoomSummary(
        room_id=RoomId("!room:" + HOSTILE),
        room_version="10",
        room_type=None,
        members=tuple(f"@user{k}:example.org" for k in range(15)),
        forward_extremities=("$" + "e" * 43,),
        event_count=7,
        tombstoned=False,
    )
    view = RoomView(
        summary=room, negotiations=None, negotiation_note=None, dag_svg=None, dag_events=0
    )
    fields: dict[str, Any] = {
        "identifier": "ed25519-abc",
        "server_user": "@_server:ed25519-abc",
        "federation_url": "http://127.0.0.1:1",
        "peers": (_peer(HOSTILE + "\x00"),),
        "rooms": (view,),
    }
    return NodeStatus(**(fields | kw))


def test_page_escapes_peer_supplied_text_and_has_no_script() -> None:
    text = render_status_html(_status(), token_query="?access_token=t%26k")
    root = parse_dom(text)
    assert root.find("script") == []
    assert "<script>" not in text
    (row,) = root.find("tr", "peer")
    # the identifier comes back as the same text, a NUL replaced
    assert row.attrs["data-identifier"] == HOSTILE + "\ufffd"
    (room,) = root.find("tr", "room")
    assert room.attrs["data-room-id"] == "!room:" + HOSTILE
    # the DAG link keeps the query-parameter token and percent-encodes the room ID
    (link,) = root.find("a", "dag-link")
    assert link.attrs["href"].endswith("/dag.svg?access_token=t%26k")
    assert urllib.parse.quote("!room:" + HOSTILE, safe="") in link.attrs["href"]


def test_page_lists_at_most_twelve_members_then_a_count() -> None:
    root = parse_dom(render_status_html(_status()))
    assert len(root.find("span", "member")) == 12
    (more,) = root.find("span", "more")
    assert more.all_text() == "and 3 more"


def test_page_refresh_is_a_meta_tag_and_can_be_off() -> None:
    with_refresh = parse_dom(render_status_html(_status(), refresh_s=7))
    (meta,) = [m for m in with_refresh.find("meta") if m.attrs.get("http-equiv") == "refresh"]
    assert meta.attrs["content"] == "7"
    without = parse_dom(render_status_html(_status(), refresh_s=0))
    assert [m for m in without.find("meta") if m.attrs.get("http-equiv") == "refresh"] == []


def test_empty_node_says_so() -> None:
    root = parse_dom(render_status_html(_status(peers=(), rooms=())))
    assert by_id(root, "identifier").all_text() == "ed25519-abc"
    assert "No peers known." in by_id(root, "peers").all_text()
    assert "in no room" in by_id(root, "rooms").all_text()


# ----------------------------------------------------------------------------------------------
# Real nodes


def _config(versions: dict[str, int], peers: tuple[HostPort, ...] = ()) -> Config:
    return dataclasses.replace(
        node_config(peers),
        rooms=RoomsConfig(default_version="10"),
        upgrade=UpgradeConfig(versions=versions, mode="compatible", timeout_s=60),
    )


async def _start(stack: contextlib.AsyncExitStack, data_dir: Path, cfg: Config) -> Node:
    return await stack.enter_async_context(open_node(cfg, data_dir=data_dir, backoff=FAST_BACKOFF))


@dataclasses.dataclass
class Scene:
    a: Node
    b: Node
    s2s_room: RoomId
    room: RoomId
    token: str  # b's server user


async def _joined(node: Node, room: str, user: str) -> bool:
    if await node.rooms.room_rules(room) is None:
        return False
    member = (await node.room_state(room)).get(("m.room.member", user))
    return member is not None and member.membership == "join"


async def _peer_verified(node: Node, identifier: str) -> bool:
    return any(p.identifier == identifier and p.verified for p in node.peers())


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[Scene]:
    """b has a as a static peer; their s2s room holds a failed ("no match") negotiation; b
    also has an ordinary room of a local user with a few events, one with a hostile state key."""
    async with contextlib.AsyncExitStack() as stack:
        a = await _start(stack, tmp_path / "a", _config({"12": 100}))
        b = await _start(stack, tmp_path / "b", _config({"11": 100}, (address_of(a),)))
        await connect(a, b)
        await wait_for(lambda: _peer_verified(b, a.identifier))
        s2s_room = await a.create_s2s_room(b.identifier)
        await wait_for(lambda: _joined(b, s2s_room, b.server_user))
        outcome = await a.propose_upgrade(s2s_room)
        assert (outcome.status, outcome.error) == ("failed", "no match")
        await wait_for(lambda: _negotiation_failed(b, s2s_room))

        alice = f"@alice:{b.identifier}"
        room = await b.create_room(creator=alice)
        for k in range(3):
            await b.send_event(room, "m.room.message", {"body": f"hi {k}"}, sender=alice)
        await b.send_event(room, "org.example.note", {}, state_key=HOSTILE, sender=alice)
        token = (tmp_path / "b" / "access_token").read_text().strip()
        yield Scene(a=a, b=b, s2s_room=s2s_room, room=room, token=token)


async def _negotiation_failed(node: Node, room: str) -> bool:
    return [i.state for i in await node.negotiations(room)] == ["failed"]


async def _get(
    pool: httpcore.AsyncConnectionPool, node: Node, path: str, token: str | None = None
) -> httpcore.Response:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return await pool.request("GET", node.client_url + path, headers=headers)


def _errcode(response: httpcore.Response) -> str:
    body = json.loads(response.content)
    assert isinstance(body, dict)
    return str(body["errcode"])


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


async def test_status_page_access_control_and_content(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with two_nodes(tmp_path) as scene, httpcore.AsyncConnectionPool() as pool:
            b = scene.b
            # no token: 401; a wrong one: 401; another user's: 403
            missing = await _get(pool, b, "/status")
            assert (missing.status, _errcode(missing)) == (401, "M_MISSING_TOKEN")
            wrong = await _get(pool, b, "/status?access_token=nope")
            assert (wrong.status, _errcode(wrong)) == (401, "M_UNKNOWN_TOKEN")
            _, alice_token = await b.create_token("alice")
            other = await _get(pool, b, "/status", alice_token)
            assert (other.status, _errcode(other)) == (403, "M_FORBIDDEN")
            svg_missing = await _get(pool, b, f"/status/rooms/{q(scene.room)}/dag.svg")
            assert svg_missing.status == 401

            # the server user, as a header or as the query parameter
            by_header = await _get(pool, b, "/status", scene.token)
            assert by_header.status == 200
            headers = {k.decode().lower(): v.decode() for k, v in by_header.headers}
            assert headers["content-type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in headers["content-security-policy"]
            assert headers["cache-control"] == "no-store"
            by_query = await _get(pool, b, f"/status?access_token={q(scene.token)}&refresh=0")
            assert by_query.status == 200
            root = parse_dom(by_query.content.decode())
            assert by_id(root, "identifier").all_text() == b.identifier
            assert [r.attrs["data-identifier"] for r in root.find("tr", "peer")] == [
                scene.a.identifier
            ]
            rooms = {r.attrs["data-room-id"] for r in root.find("tr", "room")}
            assert rooms == {scene.s2s_room, scene.room}
            (negotiation,) = root.find("tr", "negotiation")
            assert negotiation.attrs["data-state"] == "failed"
            assert "no match" in negotiation.all_text()
            # one inline DAG per room; links carry the query token
            assert len(root.find("svg", "room-dag")) == 2
            links = [a.attrs["href"] for a in root.find("a", "dag-link")]
            assert all(link.endswith(f"?access_token={q(scene.token)}") for link in links)
            assert root.find("script") == []

            svg = await _get(pool, b, f"/status/rooms/{q(scene.room)}/dag.svg", scene.token)
            assert svg.status == 200
            assert dict(svg.headers)[b"content-type"] == b"image/svg+xml; charset=utf-8"
            svg_root = parse_dom(svg.content.decode())
            stored = await b.astore.read(lambda store: len(store.room(scene.room) or ()))
            assert stored >= 8  # the room's first state events and alice's 4
            assert len(svg_root.find("g", "node")) == stored
            limited = await _get(
                pool, b, f"/status/rooms/{q(scene.room)}/dag.svg?limit=2", scene.token
            )
            assert len(parse_dom(limited.content.decode()).find("g", "node")) == 3  # + missing
            unknown = await _get(pool, b, f"/status/rooms/{q('!nope:x')}/dag.svg", scene.token)
            assert (unknown.status, _errcode(unknown)) == (404, "M_NOT_FOUND")


async def test_dag_excerpt_is_the_deepest_events_with_missing_parents(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            node = await _start(stack, tmp_path / "n", _config({"12": 100}))
            alice = f"@alice:{node.identifier}"
            room = await node.create_room(creator=alice)
            for k in range(25):
                await node.send_event(room, "m.room.message", {"body": str(k)}, sender=alice)
            nodes = await node.astore.read(lambda store: read_dag_nodes(store, room, 10))
            assert nodes is not None and len(nodes) == 10
            all_nodes = await node.astore.read(lambda store: read_dag_nodes(store, room, 1000))
            assert all_nodes is not None and len(all_nodes) > 25
            deepest = sorted((n.depth for n in all_nodes), reverse=True)[:10]
            assert sorted((n.depth for n in nodes), reverse=True) == deepest
            assert [n.event_id for n in nodes if n.is_extremity] == [
                max(all_nodes, key=lambda n: n.depth).event_id
            ]
            missing = await node.astore.read(
                lambda store: read_dag_nodes(store, RoomId("!nope:x"), 10)
            )
            assert missing is None


# ----------------------------------------------------------------------------------------------
# Headless Chromium


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) pixel bytes) of an 8-bit, non-interlaced RGB or RGBA
    PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0) and colour in (2, 6), (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = prev[i]
            corner = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


async def _chromium(profile: Path, *args: str) -> bytes:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    with trio.fail_after(90):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run does)")
async def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    with trio.fail_after(240):
        async with two_nodes(tmp_path) as scene:
            url = f"{scene.b.client_url}/status?access_token={q(scene.token)}&refresh=0"
            dom = await _chromium(tmp_path / "profile-dom", "--dump-dom", url)
            root = parse_dom(dom.decode())
            assert by_id(root, "identifier").all_text() == scene.b.identifier
            (peer,) = root.find("tr", "peer")
            assert peer.attrs["data-identifier"] == scene.a.identifier
            assert [c.all_text() for c in peer.find("td")][2] == "yes"  # verified
            room_rows = {r.attrs["data-room-id"]: r for r in root.find("tr", "room")}
            assert set(room_rows) == {scene.s2s_room, scene.room}
            (negotiation,) = root.find("tr", "negotiation")
            assert negotiation.attrs["data-state"] == "failed"
            svgs = root.find("svg", "room-dag")
            assert len(svgs) == 2
            event_nodes = [g for svg in svgs for g in svg.find("g", "node")]
            assert len(event_nodes) >= 8 + 6
            # the hostile state key is text in the DOM, never an element
            assert root.find("script") == []
            assert any("<script>alert" in g.all_text() for g in event_nodes)

            png = tmp_path / "status.png"
            await _chromium(
                tmp_path / "profile-shot", f"--screenshot={png}", "--window-size=1280,2000", url
            )
            assert png.stat().st_size > 20_000
            width, height, rows = read_png(png)
            assert (width, height) == (1280, 2000)
            colours = {row[i : i + 3] for row in rows[::10] for i in range(0, len(row), 30)}
            assert len(colours) > 10
            white = b"\xff\xff\xff"
            dark = sum(
                1 for row in rows[::4] for i in range(0, len(row), 12) if row[i : i + 3] != white
            )
            assert dark > 0.01 * (height // 4) * (width // 4)
            keep = os.environ.get("S2S_STATUS_SCREENSHOT")  # for a person to look at
            if keep:
                shutil.copy(png, keep)
