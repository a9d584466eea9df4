"""The circuit graph's layout and visual encoding, shared by its PNG and HTML drawings.

A circuit is the JSON-able dict saved by the circuit-discovery code::

    {"nodes": [{"name": "a0.h2", "layer": 0, "head": 2, "score": 0.93, "in_circuit": true}, ...],
     "edges": [{"source": "a0.h2", "target": "a1.h0", "qkv": "k", "score": 0.41,
                "in_circuit": true}, ...],
     "faithfulness": {...}, "metadata": {...} }

Node names follow EAP-IG: ``input``, ``a{layer}.h{head}``, ``m{layer}``, ``logits``. Edges into
a head say which of its inputs they feed (``qkv``: "q", "k" or "v"); other edges have null.

Layout: one row per occupied (layer, kind), input at the bottom, then each layer's attention
row and its MLP row, logits at the top; heads of a row sorted by index and centred. Edges run
from the top of the source to the bottom of the target, where an edge into a head lands on a
q, k or v port (left, middle, right). Width grows with |score|, colour gives its sign (blue
positive, red negative), line style the head input (q dotted, k dashed, v dash-dot).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from matplotlib.colors import to_hex, to_rgba

NODE_NAME = re.compile(r"^(?:input|logits|a(?P<layer>\d+)\.h(?P<head>\d+)|m(?P<mlp>\d+))$")
QKV_PORT = {"q": -0.25, "k": 0.0, "v": 0.25, None: 0.0}  # x offset of the landing point
QKV_STYLE = {"q": ":", "k": "--", "v": "-.", None: "-"}
QKV_DASHES = {"q": "2,3", "k": "6,3", "v": "8,3,2,3", None: ""}  # the same styles in SVG
POSITIVE, NEGATIVE, UNSCORED = "#2166ac", "#b2182b", "#888888"
NODE_FILL = {"input": "#d9d9d9", "logits": "#d9d9d9", "head": "#fdd9a0", "mlp": "#c7e9c0"}
NODE_W, NODE_H = 0.8, 0.36  # node box in layout units (1 = head spacing = row spacing)
MAX_FADED_EDGES = 2000  # the PNG draws at most this many (the strongest) edges outside the circuit
X_INCH, Y_INCH, MAX_W_INCH, MAX_H_INCH = 0.9, 0.8, 20.0, 30.0


def node_kind(name: str) -> str:
    if name in ("input", "logits"):
        return name
    return "head" if name.startswith("a") else "mlp"


def row_key(name: str) -> tuple[float, int]:
    """Sort key of a node's row: input < a0 < m0 < a1 < ... < logits."""
    match = NODE_NAME.match(name)
    if match is None:
        raise ValueError(f"node name {name!r} is not input, logits, a<layer>.h<head> or m<layer>")
    if name == "input":
        return (-1.0, 0)
    if name == "logits":
        return (math.inf, 0)
    if match["layer"] is not None:
        return (float(match["layer"]), 0)
    return (float(match["mlp"]), 1)


def head_index(name: str) -> int:
    match = NODE_NAME.match(name)
    return int(match["head"]) if match is not None and match["head"] is not None else 0


def row_label(key: tuple[float, int]) -> str:
    if key[0] < 0:
        return "input"
    if math.isinf(key[0]):
        return "logits"
    return f"L{int(key[0])} {'MLP' if key[1] else 'attn'}"


def _check_score(score: object, where: str) -> None:
    if score is None:
        return
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise ValueError(f"{where}: score must be a finite number or null, got {score!r}")


def validate_circuit(circuit: Mapping[str, Any]) -> None:
    """Raise ValueError, naming the key, node or edge at fault, unless ``circuit`` is drawable."""
    if not isinstance(circuit, Mapping):
        raise ValueError(f"circuit must be a dict with 'nodes' and 'edges', got {type(circuit)}")
    for key in ("nodes", "edges"):
        if key not in circuit:
            raise ValueError(f"circuit is missing the key {key!r}")
        if not isinstance(circuit[key], list | tuple):
            raise ValueError(f"circuit[{key!r}] must be a list, got {type(circuit[key])}")
    names: set[str] = set()
    for i, node in enumerate(circuit["nodes"]):
        if not isinstance(node, Mapping) or not isinstance(node.get("name"), str):
            raise ValueError(f"circuit['nodes'][{i}] must be a dict with a string 'name'")
        name = node["name"]
        try:
            row_key(name)
        except ValueError as error:
            raise ValueError(f"circuit['nodes'][{i}]: {error}") from None
        if name in names:
            raise ValueError(f"circuit['nodes'][{i}]: duplicate node name {name!r}")
        _check_score(node.get("score"), f"node {name!r}")
        names.add(name)
    for i, edge in enumerate(circuit["edges"]):
        if not isinstance(edge, Mapping):
            raise ValueError(f"circuit['edges'][{i}] must be a dict")
        for key in ("source", "target"):
            if key not in edge:
                raise ValueError(f"circuit['edges'][{i}] is missing the key {key!r}")
        label = edge_label(edge)
        for key in ("source", "target"):
            if edge[key] not in names:
                raise ValueError(f"edge {label}: {key} {edge[key]!r} is not in circuit['nodes']")
        qkv = edge.get("qkv")
        if qkv not in QKV_STYLE:
            raise ValueError(f"edge {label}: qkv must be 'q', 'k', 'v' or null, got {qkv!r}")
        if qkv is not None and node_kind(edge["target"]) != "head":
            raise ValueError(f"edge {label}: qkv {qkv!r} given but the target is not a head")
        _check_score(edge.get("score"), f"edge {label}")


def edge_label(edge: Mapping[str, Any]) -> str:
    qkv = edge.get("qkv")
    return f"{edge.get('source')} -> {edge.get('target')}" + (f" ({qkv})" if qkv else "")


def in_circuit(item: Mapping[str, Any]) -> bool:
    return bool(item.get("in_circuit", True))


def visible_subgraph(
    circuit: Mapping[str, Any], only_in_circuit: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """The nodes and edges to draw, as a circuit dict (after validating ``circuit``).

    With ``only_in_circuit``: the edges marked in the circuit, and the nodes marked in it plus
    the endpoints of those edges (so no drawn edge dangles). Otherwise everything.
    """
    validate_circuit(circuit)
    nodes, edges = list(circuit["nodes"]), list(circuit["edges"])
    if only_in_circuit:
        edges = [edge for edge in edges if in_circuit(edge)]
        keep = {node["name"] for node in nodes if in_circuit(node)}
        keep |= {edge[key] for edge in edges for key in ("source", "target")}
        nodes = [node for node in nodes if node["name"] in keep]
    return {"nodes": nodes, "edges": edges}


def circuit_layout(circuit: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Position ``(x, y)`` of each node of ``circuit``, in units of node spacing.

    ``y`` is the index of the node's row among the occupied rows (input 0, logits highest,
    layers in order, a layer's attention row below its MLP row); heads of a row sit at
    consecutive ``x`` in head order, each row centred on ``x = 0``.
    """
    validate_circuit(circuit)
    names = [node["name"] for node in circuit["nodes"]]
    rows = sorted({row_key(name) for name in names})
    y_of = {key: float(y) for y, key in enumerate(rows)}
    layout: dict[str, tuple[float, float]] = {}
    for key in rows:
        members = sorted((n for n in names if row_key(n) == key), key=head_index)
        for i, name in enumerate(members):
            layout[name] = (i - (len(members) - 1) / 2, y_of[key])
    return layout


def endpoints(
    edge: Mapping[str, Any], layout: dict[str, tuple[float, float]]
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float] | None]:
    """Start (top of source), end (q/k/v port at the bottom of target) and, for an edge that
    skips rows, the control point of a quadratic Bezier bowing it away from the centre so it
    does not run straight through the nodes it passes."""
    (x0, y0), (x1, y1) = layout[edge["source"]], layout[edge["target"]]
    start = (x0, y0 + NODE_H / 2)
    end = (x1 + QKV_PORT[edge.get("qkv")] * NODE_W, y1 - NODE_H / 2)
    skipped = abs(y1 - y0) - 1
    if skipped < 0.5:
        return start, end, None
    mid_x, mid_y = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
    bow = min(0.6 + 0.3 * skipped, 2.0) * (1 if mid_x >= 0 else -1)
    return start, end, (mid_x + bow, mid_y)


def edge_points(
    edge: Mapping[str, Any], layout: dict[str, tuple[float, float]], n: int = 16
) -> list[tuple[float, float]]:
    """The edge as a polyline (two points, or ``n`` points along its Bezier curve)."""
    start, end, control = endpoints(edge, layout)
    if control is None:
        return [start, end]
    points = []
    for i in range(n):
        t = i / (n - 1)
        a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t**2
        points.append(
            (a * start[0] + b * control[0] + c * end[0], a * start[1] + b * control[1] + c * end[1])
        )
    return points


def node_fill(name: str, inside: bool) -> str:
    """The node's colour; nodes outside the circuit are paled (opaque, so edges stay behind)."""
    fill = to_rgba(NODE_FILL[node_kind(name)])
    return to_hex(fill if inside else tuple(0.35 * c + 0.65 for c in fill[:3]))


def edge_color(edge: Mapping[str, Any]) -> str:
    score = edge.get("score")
    if score is None:
        return UNSCORED
    return POSITIVE if score >= 0 else NEGATIVE


def edge_widths(edges: list[Mapping[str, Any]], thinnest: float, thickest: float) -> list[float]:
    top = max((abs(e["score"]) for e in edges if e.get("score") is not None), default=0.0)
    return [
        thinnest
        if e.get("score") is None or top == 0
        else thinnest + (thickest - thinnest) * abs(e["score"]) / top
        for e in edges
    ]


def by_strength(edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Weak edges first, so strong ones are drawn on top."""
    return sorted(edges, key=lambda e: abs(e["score"]) if e.get("score") is not None else 0.0)
