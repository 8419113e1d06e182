"""A layered (Sugiyama-style) layout of a room DAG, computed without Graphviz.

Owns: `compute_layout`, which places every event, every missing `prev_events` target
("placeholder") and every edge route in pixel coordinates. Must not: render text formats or
do I/O.

Steps:
1. Layers by longest path from the roots along `prev_events`: parents above children.
   Placeholders sit one layer above their highest child.
2. A `prev_events` edge spanning several layers gets a chain of invisible waypoints, one per
   layer crossed, so ordering and routing see it (bounded by `MAX_WAYPOINTS`).
3. Order within each layer: barycenter sweeps down and up; the ordering with the fewest edge
   crossings seen is kept.
4. Horizontal positions: each node pulled towards the mean position of its neighbours, the
   order kept and boxes kept apart by an exact least-squares fit (pool-adjacent-violators),
   so chains come out straight and a long linear history is one column, not a wide image.
5. Edge routes: a polyline from the event's top edge through its waypoints to the bottom edge
   of the event it names.

Everything is deterministic: ties break on the order of `model.sort_nodes`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from s2s_node.dagview.model import (
    DagEdge,
    DagNode,
    EdgeKind,
    compute_edges,
    compute_missing,
    sort_nodes,
)

NODE_WIDTH = 184
NODE_HEIGHT = 50
PLACEHOLDER_WIDTH = 120
PLACEHOLDER_HEIGHT = 34
LAYER_GAP = 34  # vertical room for edges between two layers
NODE_GAP = 22  # horizontal gap between two boxes
WAYPOINT_GAP = 10  # horizontal gap next to an edge waypoint
PORT_SPACING = 10  # distance between the ends of several edges leaving one box
MARGIN = 20
SWEEPS = 4  # barycenter down+up sweep pairs (step 3)
# Waypoints make long edges avoid boxes but cost time and memory; a pathological room (each
# event naming a far-away ancestor) would need O(n^2) of them. Past this budget, the remaining
# long edges are drawn straight.
MAX_WAYPOINTS_PER_NODE = 8
MAX_WAYPOINTS_BASE = 2_000


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedNode:
    """An event (`node` set) or a missing `prev_events` target (`node` None), placed.

    `x`, `y` are the centre of its box; `width`, `height` its size.
    """

    event_id: str
    node: DagNode | None
    layer: int
    x: int
    y: int
    width: int
    height: int

    @property
    def is_placeholder(self) -> bool:
        return self.node is None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedEdge:
    """An edge and the polyline it is drawn along, from the event to the event it names."""

    edge: DagEdge
    points: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DagLayout:
    """Placed nodes in drawing order (layer by layer, left to right) and routed edges."""

    nodes: tuple[PlacedNode, ...]
    edges: tuple[PlacedEdge, ...]
    width: int
    height: int
    layers: int
    crossings: int  # prev-edge crossings between adjacent layers after step 3


@dataclass(slots=True)
class _Item:
    """A mutable layout item: a node, placeholder or waypoint."""

    key: str  # event ID, or "" for a waypoint
    node: DagNode | None
    layer: int
    width: int
    weight: float
    index: int = 0  # canonical order, for tie-breaks
    pos: int = 0  # position within its layer
    x: float = 0.0
    up: list[int] | None = None  # neighbours one layer up (item numbers)
    down: list[int] | None = None


def layer_top(layer: int) -> int:
    """The y of the top of a layer's boxes."""
    return MARGIN + layer * (NODE_HEIGHT + LAYER_GAP)


def compute_layout(
    nodes: Sequence[DagNode], *, auth_edges: bool = False, top: int = 0
) -> DagLayout:
    """Place `nodes` (any order; repeated event IDs raise `DagInputError`).

    `top` shifts everything down (room for a legend above the graph).
    """
    ordered = sort_nodes(nodes)
    edges = compute_edges(ordered, auth_edges=auth_edges)
    missing = compute_missing(ordered)

    items: list[_Item] = []
    number: dict[str, int] = {}
    for node in ordered:
        number[node.event_id] = len(items)
        items.append(_Item(node.event_id, node, 0, NODE_WIDTH, 1.0))
    for event_id in missing:
        number[event_id] = len(items)
        items.append(_Item(event_id, None, 0, PLACEHOLDER_WIDTH, 1.0))
    for i, item in enumerate(items):
        item.index = i
        item.up, item.down = [], []

    parents: list[list[int]] = [[] for _ in items]
    for edge in edges:
        if edge.kind is EdgeKind.PREV:
            parents[number[edge.source]].append(number[edge.target])

    # Step 1: longest-path layering over a topological order (Kahn). Events on a cycle (not
    # possible with hash-derived IDs, but the input is not trusted to be a DAG) are taken in
    # canonical order, ignoring their not yet placed parents.
    _assign_layers(items, parents)

    # Step 2: waypoints for long edges.
    budget = MAX_WAYPOINTS_BASE + MAX_WAYPOINTS_PER_NODE * len(ordered)
    chains: dict[tuple[int, int], list[int]] = {}
    for child, plist in enumerate(parents):
        for parent in plist:
            span = items[child].layer - items[parent].layer
            if span < 1 or (span > 1 and span - 1 > budget):
                continue  # drawn straight: an upward/flat edge, or over budget
            chain = [child]
            for layer in range(items[child].layer - 1, items[parent].layer, -1):
                budget -= 1
                chain.append(len(items))
                items.append(_Item("", None, layer, 0, 2.0, len(items), up=[], down=[]))
            chain.append(parent)
            for lower, upper in itertools.pairwise(chain):
                _up(items[lower]).append(upper)
                _down(items[upper]).append(lower)
            chains[(child, parent)] = chain[1:-1]

    n_layers = 1 + max((item.layer for item in items), default=-1)
    layers: list[list[int]] = [[] for _ in range(n_layers)]
    for i, item in enumerate(items):
        layers[item.layer].append(i)

    # Step 3: crossing reduction.
    crossings = _order_layers(items, layers)

    # Step 4: x coordinates.
    _place(items, layers)

    # Step 5: integer coordinates and edge routes.
    left = min((item.x - item.width / 2 for item in items), default=0.0)
    shift = MARGIN - left
    xs = [round(item.x + shift) for item in items]
    right = max((xs[i] + items[i].width // 2 for i in range(len(items))), default=0)
    width = right + MARGIN
    height = top + layer_top(n_layers) - LAYER_GAP + MARGIN if n_layers else top + 2 * MARGIN

    placed: dict[int, PlacedNode] = {}
    for layer_items in layers:
        for i in layer_items:
            item = items[i]
            if not item.key:
                continue
            h = NODE_HEIGHT if item.node else PLACEHOLDER_HEIGHT
            placed[i] = PlacedNode(
                event_id=item.key,
                node=item.node,
                layer=item.layer,
                x=xs[i],
                y=top + layer_top(item.layer) + NODE_HEIGHT // 2,
                width=item.width,
                height=h,
            )

    placed_edges = _route(edges, number, items, placed, chains, xs, top)
    return DagLayout(
        nodes=tuple(placed[i] for row in layers for i in row if i in placed),
        edges=tuple(placed_edges),
        width=width,
        height=height,
        layers=n_layers,
        crossings=crossings,
    )


def _up(item: _Item) -> list[int]:
    assert item.up is not None
    return item.up


def _down(item: _Item) -> list[int]:
    assert item.down is not None
    return item.down


def _assign_layers(items: list[_Item], parents: list[list[int]]) -> None:
    n = len(items)
    children: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for child, plist in enumerate(parents):
        for parent in plist:
            children[parent].append(child)
            indegree[child] += 1
    done = [False] * n
    queue = deque(i for i in range(n) if indegree[i] == 0)
    next_stuck = 0
    processed = 0
    while processed < n:
        if not queue:  # a cycle: take the first event not yet placed
            while done[next_stuck]:
                next_stuck += 1
            queue.append(next_stuck)
            indegree[next_stuck] = 0
        i = queue.popleft()
        if done[i]:
            continue
        done[i] = True
        processed += 1
        placed_parents = [items[p].layer for p in parents[i] if done[p]]
        items[i].layer = 1 + max(placed_parents) if placed_parents else 0
        for c in children[i]:
            indegree[c] -= 1
            if indegree[c] == 0 and not done[c]:
                queue.append(c)
    # Placeholders (no parents of their own) move down to just above their highest child.
    for i, item in enumerate(items):
        if item.node is None and children[i]:
            item.layer = max(min(items[c].layer for c in children[i]) - 1, 0)


def _order_layers(items: list[_Item], layers: list[list[int]]) -> int:
    for layer in layers:
        for pos, i in enumerate(layer):
            items[i].pos = pos
    best = [list(layer) for layer in layers]
    best_crossings = _count_all_crossings(items, layers)
    for _ in range(SWEEPS):
        if best_crossings == 0:
            break
        for r in range(1, len(layers)):
            _sort_by_barycenter(items, layers[r], upward=True)
        for r in range(len(layers) - 2, -1, -1):
            _sort_by_barycenter(items, layers[r], upward=False)
        crossings = _count_all_crossings(items, layers)
        if crossings < best_crossings:
            best_crossings = crossings
            best = [list(layer) for layer in layers]
    for r, layer in enumerate(best):
        layers[r] = layer
        for pos, i in enumerate(layer):
            items[i].pos = pos
    return best_crossings


def _sort_by_barycenter(items: list[_Item], layer: list[int], *, upward: bool) -> None:
    def key(i: int) -> tuple[float, int, int]:
        item = items[i]
        neighbours = _up(item) if upward else _down(item)
        if not neighbours:
            return (float(item.pos), item.pos, item.index)
        return (sum(items[j].pos for j in neighbours) / len(neighbours), item.pos, item.index)

    layer.sort(key=key)
    for pos, i in enumerate(layer):
        items[i].pos = pos


def _count_all_crossings(items: list[_Item], layers: list[list[int]]) -> int:
    total = 0
    for layer in layers[1:]:
        pairs = sorted((items[j].pos, items[i].pos) for i in layer for j in _up(items[i]))
        total += _count_inversions([lower for _, lower in pairs])
    return total


def _count_inversions(values: list[int]) -> int:
    """Pairs i < j with values[i] > values[j] (a Fenwick tree over the values)."""
    if not values:
        return 0
    size = max(values) + 2
    tree = [0] * (size + 1)
    inversions = 0
    for seen, value in enumerate(values):
        k = value + 1  # count of earlier values <= value
        not_greater = 0
        while k > 0:
            not_greater += tree[k]
            k -= k & -k
        inversions += seen - not_greater
        k = value + 1
        while k <= size:
            tree[k] += 1
            k += k & -k
    return inversions


def _separation(a: _Item, b: _Item) -> float:
    gap = WAYPOINT_GAP if not a.width or not b.width else NODE_GAP
    return (a.width + b.width) / 2 + gap


def _place(items: list[_Item], layers: list[list[int]]) -> None:
    """Step 4: vertical alignment into blocks, then left compaction of the blocks.

    A simplified Brandes-Koepf placement (one of its four directions): top to bottom, each
    item joins the block of a median upper neighbour unless that neighbour is taken or the
    alignment would cross an earlier one. A block is drawn as one straight column, so a chain
    of events, a long edge's waypoints, and a branch of a fork are straight lines, and the
    picture is as wide as the number of branches alive at once, whatever the room's length.
    """
    below: list[int | None] = [None] * len(items)
    root = list(range(len(items)))
    for layer in layers[1:]:
        last = -1
        for i in layer:
            ups = sorted(_up(items[i]), key=lambda j: items[j].pos)
            if not ups:
                continue
            middle = (len(ups) - 1) / 2
            for m in sorted({int(middle), int(middle + 0.5)}):
                u = ups[m]
                if below[u] is None and items[u].pos > last:
                    below[u] = i
                    root[i] = root[u]
                    last = items[u].pos
                    break
    # Blocks must keep, in every layer, their left neighbour's block at a distance.
    constraints: dict[int, dict[int, float]] = {}
    indegree: dict[int, int] = {}
    for layer in layers:
        for left, right in itertools.pairwise(layer):
            a, b = root[left], root[right]
            sep = _separation(items[left], items[right])
            out = constraints.setdefault(a, {})
            if b not in out:
                indegree[b] = indegree.get(b, 0) + 1
                out[b] = sep
            else:
                out[b] = max(out[b], sep)
    block_x: dict[int, float] = {}
    queue = deque(i for i in range(len(items)) if root[i] == i and indegree.get(i, 0) == 0)
    while queue:
        a = queue.popleft()
        x = block_x.setdefault(a, 0.0)
        for b, sep in constraints.get(a, {}).items():
            block_x[b] = max(block_x.get(b, 0.0), x + sep)
            indegree[b] -= 1
            if indegree[b] == 0:
                queue.append(b)
    for i, item in enumerate(items):
        item.x = block_x.get(root[i], 0.0)


def _route(
    edges: list[DagEdge],
    number: dict[str, int],
    items: list[_Item],
    placed: dict[int, PlacedNode],
    chains: dict[tuple[int, int], list[int]],
    xs: list[int],
    top: int,
) -> list[PlacedEdge]:
    # Several prev edges leaving one box start at spread ports, ordered like their targets.
    ports: dict[tuple[str, str], int] = {}
    by_source: dict[str, list[DagEdge]] = {}
    for edge in edges:
        if edge.kind is EdgeKind.PREV:
            by_source.setdefault(edge.source, []).append(edge)
    for source, out in by_source.items():

        def first_step(e: DagEdge, source: str = source) -> tuple[int, int]:
            chain = chains.get((number[source], number[e.target]))
            step = chain[0] if chain else number[e.target]
            return (xs[step], number[e.target])

        out.sort(key=first_step)
        for k, edge in enumerate(out):
            ports[(source, edge.target)] = round((k - (len(out) - 1) / 2) * PORT_SPACING)

    routed = []
    for edge in edges:
        s, t = number[edge.source], number[edge.target]
        tail, head = placed[s], placed[t]
        start = (tail.x + ports.get((edge.source, edge.target), 0), tail.y - tail.height // 2)
        end = (head.x, head.y + head.height // 2)
        points = [start]
        if edge.kind is EdgeKind.PREV:
            for w in chains.get((s, t), []):
                layer = items[w].layer
                points.append((xs[w], top + layer_top(layer) + NODE_HEIGHT))
                points.append((xs[w], top + layer_top(layer)))
        points.append(end)
        routed.append(PlacedEdge(edge=edge, points=tuple(points)))
    return routed
