"""The DAG views of `s2s_node.dagview`: JSON shape, DOT syntax and escaping, SVG validity,
escaping and markings, determinism, `Pdu` input and a benchmark room.

Graphviz is not installed on the test machine: the DOT is checked with a small tokenizer and
parser written after Graphviz's lexer rules (lib/cgraph/scan.l: in a quoted string `\\"` is a
quote and `\\\\` stays two characters).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import time
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from s2s_node.core.events import parse_pdu
from s2s_node.core.room import EventStatus
from s2s_node.core.rules import rules_for
from s2s_node.dagview import (
    DagNode,
    build_dag_node,
    build_dag_nodes,
    render_dot,
    render_json,
    render_svg,
)
from s2s_node.dagview.model import clean_text

SVG_NS = "{http://www.w3.org/2000/svg}"
ROOMS = Path(__file__).parent / "vectors" / "rooms"
DAGVIEW = Path(__file__).resolve().parent.parent / "s2s_node" / "dagview"

NASTY_ID = "$we\"ird<id>&'\\x\u00e9\u4e2d"  # quote, <, >, &, apostrophe, backslash, unicode
TRAILING_BACKSLASH_ID = "$ends-with\\"
NEWLINE_ID = "$new\nline"


def node(
    event_id: str,
    prev: tuple[str, ...] = (),
    *,
    depth: int = 1,
    status: EventStatus = EventStatus.ACCEPTED,
    extremity: bool = False,
    state_key: str | None = None,
    type_: str = "m.room.message",
    sender: str = "@alice:s00.example.org",
    label: str | None = None,
    auth: tuple[str, ...] = (),
) -> DagNode:
    return DagNode(
        event_id=event_id,
        type=type_,
        state_key=state_key,
        sender=sender,
        origin_server_ts=1_700_000_000_000 + depth,
        depth=depth,
        prev_events=prev,
        auth_events=auth,
        status=status,
        is_extremity=extremity,
        label=label,
    )


def marked_room() -> list[DagNode]:
    return [
        node("$create", depth=1, state_key="", type_="m.room.create"),
        node("$join", ("$create",), depth=2, state_key="@alice:s00.example.org",
             type_="m.room.member", label="join", auth=("$create",)),
        node("$ok", ("$join",), depth=3, auth=("$create", "$join")),
        node("$soft", ("$ok",), depth=4, status=EventStatus.SOFT_FAILED),
        node("$bad", ("$ok",), depth=4, status=EventStatus.REJECTED, state_key="",
             type_="m.room.topic"),
        node("$tip", ("$ok",), depth=4, extremity=True),
    ]  # fmt: skip


def nasty_room() -> list[DagNode]:
    return [
        node(NASTY_ID, depth=1, state_key='<"key">&\n\x00\ud800', type_='m.<b>&"x"',
             sender='@"bob"<:s&rv>\u00e9'),
        node(TRAILING_BACKSLASH_ID, (NASTY_ID,), depth=2, label="line1\nline2 \u2603 \\"),
        node(NEWLINE_ID, (TRAILING_BACKSLASH_ID, "$gone\"\\"), depth=3, extremity=True,
             status=EventStatus.REJECTED),
    ]  # fmt: skip


# ---------------------------------------------------------------- JSON


def test_json_lists_nodes_and_edges_in_a_stable_order() -> None:
    data = render_json(marked_room())
    assert [n["id"] for n in data["nodes"]][:3] == ["$create", "$join", "$ok"]
    by_id = {n["id"]: n for n in data["nodes"]}
    assert set(by_id["$bad"]) >= {
        "id", "type", "state_key", "sender", "depth", "status", "extremity", "state", "layer",
        "x", "y",
    }  # fmt: skip
    assert by_id["$bad"]["status"] == "rejected" and by_id["$bad"]["state"] is True
    assert by_id["$soft"]["status"] == "soft_failed"
    assert by_id["$tip"]["extremity"] is True and by_id["$ok"]["extremity"] is False
    assert by_id["$join"]["label"] == "join" and by_id["$join"]["layer"] == 1
    assert data["edges"][:2] == [
        {"from": "$join", "to": "$create", "kind": "prev"},
        {"from": "$ok", "to": "$join", "kind": "prev"},
    ]
    assert {e["kind"] for e in data["edges"]} == {"prev"}
    with_auth = render_json(marked_room(), auth_edges=True)
    assert {"from": "$ok", "to": "$create", "kind": "auth"} in with_auth["edges"]
    assert json.loads(json.dumps(data)) == data
    assert render_json(list(reversed(marked_room()))) == data


def test_json_shows_missing_parents_as_missing_nodes() -> None:
    data = render_json([node("$a", ("$gone",), depth=9)])
    gone = next(n for n in data["nodes"] if n["id"] == "$gone")
    assert gone["status"] == "missing" and gone["type"] is None
    assert data["edges"] == [{"from": "$a", "to": "$gone", "kind": "prev"}]


# ---------------------------------------------------------------- DOT

_TOKEN = re.compile(
    r"\s+|//[^\n]*|/\*.*?\*/|->|[{}\[\]=;,]|[A-Za-z_][A-Za-z0-9_]*|-?\d+(\.\d*)?", re.S
)


def tokenize_dot(text: str) -> list[tuple[str, str]]:
    """(kind, value) tokens; quoted strings decoded like Graphviz's lexer."""
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            out, i = [], i + 1
            while True:
                if i >= len(text):
                    raise AssertionError("unterminated quoted string")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and text[i + 1 : i + 2] == '"':
                    out.append('"')
                    i += 2
                elif c == "\\" and text[i + 1 : i + 2] == "\\":
                    out.append("\\\\")
                    i += 2
                else:
                    out.append(c)
                    i += 1
            tokens.append(("id", "".join(out)))
            continue
        m = _TOKEN.match(text, i)
        if not m:
            raise AssertionError(f"unexpected character {text[i]!r} at {i}")
        value = m.group(0)
        i = m.end()
        if value.isspace() or value.startswith(("//", "/*")):
            continue
        tokens.append(("punct" if value in "{}[]=;,->" else "id", value))
    return tokens


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, dict[str, str]]]]:
    """Nodes (name -> attributes) and edges of a `digraph` made of simple statements."""
    tokens = tokenize_dot(text)
    pos = 0

    def take(kind: str | None = None, value: str | None = None) -> str:
        nonlocal pos
        k, v = tokens[pos]
        assert kind is None or k == kind, (tokens[pos], pos)
        assert value is None or v == value, (tokens[pos], pos)
        pos += 1
        return v

    def attrs() -> dict[str, str]:
        out: dict[str, str] = {}
        if tokens[pos] != ("punct", "["):
            return out
        take("punct", "[")
        while tokens[pos] != ("punct", "]"):
            key = take("id")
            take("punct", "=")
            out[key] = take("id")
            if tokens[pos] == ("punct", ","):
                take()
        take("punct", "]")
        return out

    take("id", "digraph")
    if tokens[pos][0] == "id":
        take("id")
    take("punct", "{")
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str, dict[str, str]]] = []
    while tokens[pos] != ("punct", "}"):
        first = take("id")
        if first in ("graph", "node", "edge") and tokens[pos] == ("punct", "["):
            attrs()
        elif tokens[pos] == ("punct", "->"):
            take()
            second = take("id")
            edges.append((first, second, attrs()))
        else:
            assert first not in nodes, f"node {first!r} declared twice"
            nodes[first] = attrs()
        take("punct", ";")
    take("punct", "}")
    assert pos == len(tokens)
    return nodes, edges


def dot_name(event_id: str) -> str:
    """The name Graphviz reads for an event ID written by `render_dot`."""
    return "".join(
        "\\\\" if c == "\\" else (f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in event_id
    )


def decode_label(value: str) -> list[str]:
    """An escString label (as the lexer returned it) as display lines."""
    return [line.replace("\x00", "\\") for line in value.replace("\\\\", "\x00").split("\\n")]


def test_dot_is_a_valid_digraph_with_markings() -> None:
    text = render_dot(marked_room(), title='room "one"')
    nodes, edges = parse_dot(text)
    assert "rankdir=TB" in text
    assert set(nodes) == {"$create", "$join", "$ok", "$soft", "$bad", "$tip"}
    assert nodes["$bad"]["color"] == "red" and nodes["$bad"]["shape"] == "box"
    assert nodes["$soft"]["color"] == "darkorange" and "dashed" in nodes["$soft"]["style"]
    assert nodes["$ok"]["shape"] == "ellipse" and nodes["$join"]["shape"] == "box"
    assert nodes["$tip"]["peripheries"] == "2" and "peripheries" not in nodes["$ok"]
    assert "extremity" in nodes["$tip"]["class"] and "rejected" in nodes["$bad"]["class"]
    # Parent -> child (ranked above), arrow drawn back at the parent.
    assert ("$join", "$ok", {}) in edges and len(edges) == 5
    assert decode_label(nodes["$join"]["label"]) == [
        "m.room.member",
        "@alice:s00.exampl… join",
        "@alice:s00.exam… $join",
    ]


def test_dot_auth_edges_are_dashed_and_do_not_constrain_ranks() -> None:
    _, edges = parse_dot(render_dot(marked_room(), auth_edges=True))
    auth = [(a, b, at) for a, b, at in edges if at.get("style") == "dashed"]
    assert ("$create", "$ok") in {(a, b) for a, b, _ in auth}
    assert all(at["constraint"] == "false" for _, _, at in auth)


def test_dot_escapes_ids_and_labels() -> None:
    room = nasty_room()
    nodes, edges = parse_dot(render_dot(room, title='a "title" \\ here'))
    expected = {dot_name(n.event_id) for n in room} | {dot_name('$gone"\\')}
    assert set(nodes) == expected
    assert len(nodes) == 4  # distinct names, nothing merged
    assert {(a, b) for a, b, _ in edges} <= {(x, y) for x in nodes for y in nodes}
    first = decode_label(nodes[dot_name(NASTY_ID)]["label"])
    assert first[0] == clean_text('m.<b>&"x"')
    assert first[1].startswith('<"key">&')
    second = decode_label(nodes[dot_name(TRAILING_BACKSLASH_ID)]["label"])
    assert second[1] == "line1\ufffdline2 \u2603 \\"


# ---------------------------------------------------------------- SVG


def parse_svg(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(text.encode("utf-8"))


def svg_nodes(root: ET.Element) -> dict[str, ET.Element]:
    return {
        g.attrib["data-event-id"]: g
        for g in root.iter(f"{SVG_NS}g")
        if g.attrib.get("class", "").startswith("node ")
    }


def test_svg_is_standalone_and_marks_statuses() -> None:
    text = render_svg(marked_room(), title="!room:s00")
    root = parse_svg(text)
    assert root.tag == f"{SVG_NS}svg"
    assert "<script" not in text and "href" not in text and "@import" not in text
    assert "<style" not in text and "url(" not in text
    classes = {eid: set(g.attrib["class"].split()) for eid, g in svg_nodes(root).items()}
    assert classes["$bad"] >= {"rejected", "state"} and "extremity" not in classes["$bad"]
    assert classes["$soft"] >= {"soft-failed", "message"}
    assert classes["$tip"] >= {"accepted", "extremity"}
    assert classes["$ok"] == {"node", "accepted", "message"}
    assert classes["$join"] == {"node", "accepted", "state"}
    # The drawing matches the classes: red outline for rejected, dashes for soft-failed,
    # a second outline for the extremity.
    g = svg_nodes(root)
    assert g["$bad"].find(f"{SVG_NS}rect").attrib["stroke"] == "#d11a1a"  # type: ignore[union-attr]
    assert "stroke-dasharray" in g["$soft"].find(f"{SVG_NS}rect").attrib  # type: ignore[union-attr]
    assert len(g["$tip"].findall(f"{SVG_NS}rect")) == 2
    assert len(g["$ok"].findall(f"{SVG_NS}rect")) == 1
    # Tooltips carry the full event ID; the legend names every marking.
    for eid, el in g.items():
        assert el.find(f"{SVG_NS}title").text.split("\n")[0] == eid  # type: ignore[union-attr]
    legend = next(x for x in root.iter(f"{SVG_NS}g") if x.attrib.get("class") == "legend")
    legend_text = {t.text for t in legend.iter(f"{SVG_NS}text")}
    assert {"accepted", "soft-failed", "rejected", "state event", "extremity"} <= legend_text
    # One polyline and one arrowhead per edge.
    edges = [p for p in root.iter(f"{SVG_NS}polyline") if "edge" in p.attrib.get("class", "")]
    arrows = [p for p in root.iter(f"{SVG_NS}polygon") if "prev" in p.attrib.get("class", "")]
    assert len(edges) == len(arrows) == 5


def test_svg_escapes_everything() -> None:
    room = nasty_room()
    text = render_svg(room, title='<title> & "quotes" \ud800', auth_edges=True)
    text.encode("utf-8")  # no lone surrogate left
    root = parse_svg(text)
    g = svg_nodes(root)
    assert set(g) == {clean_text(n.event_id) for n in room} | {'$gone"\\'}
    texts = [t.text or "" for t in g[NASTY_ID].iter(f"{SVG_NS}text")]
    assert texts[0] == clean_text('m.<b>&"x"')
    assert texts[1].startswith('<"key">&')
    assert root.find(f"{SVG_NS}title").text == '<title> & "quotes" \ufffd'  # type: ignore[union-attr]


def test_svg_is_deterministic() -> None:
    first = render_svg(marked_room(), auth_edges=True, title="t")
    assert first == render_svg(marked_room(), auth_edges=True, title="t")
    assert first == render_svg(list(reversed(marked_room())), auth_edges=True, title="t")
    assert render_dot(marked_room()) == render_dot(list(reversed(marked_room())))


def test_dagview_does_no_io() -> None:
    forbidden = {"os", "io", "pathlib", "socket", "sqlite3", "trio", "time", "random", "logging"}
    for path in sorted(DAGVIEW.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for item in ast.walk(tree):
            names = []
            if isinstance(item, ast.Import):
                names = [a.name for a in item.names]
            elif isinstance(item, ast.ImportFrom):
                names = [item.module or ""]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
                assert not name.startswith("s2s_node.") or name.startswith(
                    ("s2s_node.core.", "s2s_node.dagview.")
                ), f"{path.name} imports {name}"


# ---------------------------------------------------------------- Pdus and a benchmark room


@cache
def _room(name: str) -> dict[str, Any]:
    with gzip.open(ROOMS / name, "rt", encoding="utf-8") as f:
        room: dict[str, Any] = json.load(f)
    return room


@pytest.mark.parametrize("name", ["v11-s100-c100-k2.json.gz", "v12-s100-c100-k2.json.gz"])
def test_benchmark_room_renders_every_event(name: str) -> None:
    room = _room(name)
    rules = rules_for(room["room_version"])
    pdus = [parse_pdu(event, rules) for event in room["events"]]
    assert [p.event_id for p in pdus] == room["event_ids"]
    rejected, soft = room["event_ids"][-1], room["event_ids"][150]
    nodes = build_dag_nodes(
        pdus, {rejected: EventStatus.REJECTED, soft: EventStatus.SOFT_FAILED}, set(room["tips"])
    )
    start = time.perf_counter()
    text = render_svg(nodes, title=room["room_id"], auth_edges=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0  # measured about 0.05 s
    g = svg_nodes(parse_svg(text))
    assert set(g) == set(room["event_ids"])  # every event, and no placeholder
    extremities = {eid for eid, el in g.items() if "extremity" in el.attrib["class"].split()}
    assert extremities == set(room["tips"])
    assert "rejected" in g[rejected].attrib["class"].split()
    assert "soft-failed" in g[soft].attrib["class"].split()
    # The fork point is the one event with two children; the forks stand side by side.
    data = render_json(nodes)
    by_id = {n["id"]: n for n in data["nodes"]}
    first_of_forks = [
        eid
        for eid in room["event_ids"]
        if by_id[eid]["layer"] == by_id[room["fork_point"]]["layer"] + 1
    ]
    assert len(first_of_forks) == 2
    assert by_id[first_of_forks[0]]["x"] != by_id[first_of_forks[1]]["x"]
    parse_dot(render_dot(nodes, auth_edges=True))


def test_build_dag_node_from_pdu() -> None:
    room = _room("v11-s100-c10-k2.json.gz")
    rules = rules_for(room["room_version"])
    pdus = [parse_pdu(event, rules) for event in room["events"]]
    member = next(p for p in pdus if p.type == "m.room.member")
    dag_node = build_dag_node(member, EventStatus.SOFT_FAILED, is_extremity=True)
    assert dag_node.event_id == member.event_id and dag_node.prev_events == member.prev_events
    assert dag_node.auth_events == member.auth_events and dag_node.depth == member.depth
    assert dag_node.label == member.membership and dag_node.is_state
    assert dag_node.status is EventStatus.SOFT_FAILED and dag_node.is_extremity
    create = build_dag_node(pdus[0])
    assert create.type == "m.room.create" and create.label is None
    assert create.status is EventStatus.ACCEPTED and not create.is_extremity
