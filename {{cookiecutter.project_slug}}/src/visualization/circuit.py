"""Circuit graphs: a layered drawing of a circuit dict, as PNG (matplotlib) and SVG-in-HTML.

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

import html
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch

from src.utils.files import write_atomic, write_text_atomic

NODE_NAME = re.compile(r"^(?:input|logits|a(?P<layer>\d+)\.h(?P<head>\d+)|m(?P<mlp>\d+))$")
QKV_PORT = {"q": -0.25, "k": 0.0, "v": 0.25, None: 0.0}  # x offset of the landing point
QKV_STYLE = {"q": ":", "k": "--", "v": "-.", None: "-"}
QKV_DASHES = {"q": "2,3", "k": "6,3", "v": "8,3,2,3", None: ""}  # the same styles in SVG
POSITIVE, NEGATIVE, UNSCORED = "#2166ac", "#b2182b", "#888888"
NODE_FILL = {"input": "#d9d9d9", "logits": "#d9d9d9", "head": "#fdd9a0", "mlp": "#c7e9c0"}
NODE_W, NODE_H = 0.8, 0.36  # node box in layout units (1 = head spacing = row spacing)
MAX_FADED_EDGES = 2000  # the PNG draws at most this many (the strongest) edges outside the circuit
X_INCH, Y_INCH, MAX_W_INCH, MAX_H_INCH = 0.9, 0.8, 20.0, 30.0


def _kind(name: str) -> str:
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


def _head_index(name: str) -> int:
    match = NODE_NAME.match(name)
    return int(match["head"]) if match is not None and match["head"] is not None else 0


def _row_label(key: tuple[float, int]) -> str:
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
        label = _edge_label(edge)
        for key in ("source", "target"):
            if edge[key] not in names:
                raise ValueError(f"edge {label}: {key} {edge[key]!r} is not in circuit['nodes']")
        qkv = edge.get("qkv")
        if qkv not in QKV_STYLE:
            raise ValueError(f"edge {label}: qkv must be 'q', 'k', 'v' or null, got {qkv!r}")
        if qkv is not None and _kind(edge["target"]) != "head":
            raise ValueError(f"edge {label}: qkv {qkv!r} given but the target is not a head")
        _check_score(edge.get("score"), f"edge {label}")


def _edge_label(edge: Mapping[str, Any]) -> str:
    qkv = edge.get("qkv")
    return f"{edge.get('source')} -> {edge.get('target')}" + (f" ({qkv})" if qkv else "")


def _in_circuit(item: Mapping[str, Any]) -> bool:
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
        edges = [edge for edge in edges if _in_circuit(edge)]
        keep = {node["name"] for node in nodes if _in_circuit(node)}
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
        members = sorted((n for n in names if row_key(n) == key), key=_head_index)
        for i, name in enumerate(members):
            layout[name] = (i - (len(members) - 1) / 2, y_of[key])
    return layout


def _endpoints(
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


def _edge_points(
    edge: Mapping[str, Any], layout: dict[str, tuple[float, float]], n: int = 16
) -> list[tuple[float, float]]:
    """The edge as a polyline (two points, or ``n`` points along its Bezier curve)."""
    start, end, control = _endpoints(edge, layout)
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


def _node_fill(name: str, inside: bool) -> str:
    """The node's colour; nodes outside the circuit are paled (opaque, so edges stay behind)."""
    fill = to_rgba(NODE_FILL[_kind(name)])
    return to_hex(fill if inside else tuple(0.35 * c + 0.65 for c in fill[:3]))


def _edge_color(edge: Mapping[str, Any]) -> str:
    score = edge.get("score")
    if score is None:
        return UNSCORED
    return POSITIVE if score >= 0 else NEGATIVE


def _edge_widths(edges: list[Mapping[str, Any]], thinnest: float, thickest: float) -> list[float]:
    top = max((abs(e["score"]) for e in edges if e.get("score") is not None), default=0.0)
    return [
        thinnest
        if e.get("score") is None or top == 0
        else thinnest + (thickest - thinnest) * abs(e["score"]) / top
        for e in edges
    ]


def _by_strength(edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Weak edges first, so strong ones are drawn on top."""
    return sorted(edges, key=lambda e: abs(e["score"]) if e.get("score") is not None else 0.0)


def circuit_figure(
    circuit: Mapping[str, Any], *, title: str | None = None, only_in_circuit: bool = True
) -> Figure:
    """The circuit graph as a Figure on an Agg canvas (see `plot_circuit`)."""
    graph = visible_subgraph(circuit, only_in_circuit)
    layout = circuit_layout(graph)
    nodes, edges = graph["nodes"], _by_strength(graph["edges"])
    xs = [x for x, _ in layout.values()] or [0.0]
    n_rows = int(max((y for _, y in layout.values()), default=0)) + 1
    span_x = max(xs) - min(xs) + 1
    width = min(max(4.0, X_INCH * span_x + 3.0), MAX_W_INCH)
    height = min(max(3.0, Y_INCH * n_rows + 1.0), MAX_H_INCH)
    inch_per_unit = min((width - 3.0) / span_x, (height - 1.0) / n_rows)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(-0.6, n_rows - 0.4)

    widths = _edge_widths(edges, 0.4, 4.0)
    # Edges outside the circuit: solid, thin and fainter the more there are (a full graph has
    # tens of thousands); those in it: line style by q/k/v.
    outside = [i for i, e in enumerate(edges) if not _in_circuit(e)]
    n_outside = len(outside)
    outside = outside[-MAX_FADED_EDGES:]  # edges are sorted weakest first
    faint = max(0.02, min(0.2, 40 / max(len(outside), 1)))
    groups = [(outside, "-", faint)] + [
        ([i for i, e in enumerate(edges) if _in_circuit(e) and e.get("qkv") == q], style, 0.9)
        for q, style in QKV_STYLE.items()
    ]
    for chosen, style, alpha in groups:
        if chosen:
            ax.add_collection(
                LineCollection(
                    [_edge_points(edges[i], layout) for i in chosen],
                    colors=[to_rgba(_edge_color(edges[i]), alpha) for i in chosen],
                    linewidths=[widths[i] for i in chosen],
                    linestyles=style,
                    zorder=1,
                )
            )

    font = max(4.0, min(8.0, 11.0 * inch_per_unit))
    label_nodes = inch_per_unit >= 0.45
    for node in nodes:
        name = node["name"]
        x, y = layout[name]
        inside = _in_circuit(node)
        box = FancyBboxPatch(
            (x - NODE_W / 2, y - NODE_H / 2),
            NODE_W,
            NODE_H,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=_node_fill(name, inside),
            edgecolor="black" if inside else "#bbbbbb",
            linewidth=0.8,
            zorder=2,
        )
        ax.add_patch(box)
        if label_nodes or inside:
            ax.text(
                x,
                y,
                name,
                ha="center",
                va="center",
                size=font,
                zorder=3,
                color="black" if inside else "#777777",
            )

    rows = sorted({row_key(node["name"]) for node in nodes})
    ax.set_yticks(range(len(rows)), [_row_label(key) for key in rows])
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    legend = [
        Line2D([], [], color=POSITIVE, lw=2, label="positive score"),
        Line2D([], [], color=NEGATIVE, lw=2, label="negative score"),
    ] + [
        Line2D([], [], color="black", lw=1.2, ls=QKV_STYLE[q], label=f"into {q}")
        for q in ("q", "k", "v")
        if any(e.get("qkv") == q and _in_circuit(e) for e in edges)
    ]
    if outside:
        shown = f"strongest {len(outside)} of {n_outside}" if len(outside) < n_outside else "all"
        legend.append(Line2D([], [], color="grey", lw=1, alpha=0.5, label=f"outside: {shown}"))
    ax.legend(
        handles=legend,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        frameon=False,
        title="width ∝ |score|",
        title_fontsize=7,
    )
    if title is not None:
        ax.set_title(title)
    return fig


def plot_circuit(
    circuit: Mapping[str, Any],
    path: str | Path,
    *,
    title: str | None = None,
    only_in_circuit: bool = True,
) -> Path:
    """Save the layered circuit graph as a PNG at ``path`` (atomically) and return the path.

    ``only_in_circuit=False`` also draws the nodes and edges outside the circuit, faded (solid
    lines whatever their q/k/v; at most the `MAX_FADED_EDGES` strongest such edges, which the
    legend then says).
    Labels are dropped when nodes get too small to hold them (except for in-circuit nodes
    when everything is drawn).
    """
    fig = circuit_figure(circuit, title=title, only_in_circuit=only_in_circuit)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return path


_PX_X, _PX_Y, _MARGIN = 90.0, 70.0, 40.0
_HTML_STYLE = """
body{font-family:sans-serif;margin:1em}
svg text{font-size:11px;pointer-events:none}
.edge path{fill:none}
.edge .hit{stroke:transparent;stroke-width:9}
.edge:hover .line{stroke-opacity:1;filter:drop-shadow(0 0 2px #000)}
.node:hover rect{stroke-width:2.5}
pre{background:#f6f6f6;padding:.5em;font-size:11px}
"""


def _score_text(item: Mapping[str, Any]) -> str:
    score = item.get("score")
    status = "in circuit" if _in_circuit(item) else "not in circuit"
    return f"score {score:.4g}, {status}" if score is not None else f"no score, {status}"


def save_circuit_html(
    circuit: Mapping[str, Any],
    path: str | Path,
    *,
    title: str | None = None,
    only_in_circuit: bool = True,
) -> Path:
    """Save the circuit graph as self-contained SVG-in-HTML and return the path.

    Same layout and encoding as `plot_circuit`; one ``<g class="node">`` per node and one
    ``<g class="edge">`` per edge, each with a hover title (name, q/k/v, score). The
    faithfulness and metadata entries, if any, are listed below. No scripts, no external
    resources: it opens offline.
    """
    graph = visible_subgraph(circuit, only_in_circuit)
    layout = circuit_layout(graph)
    nodes, edges = graph["nodes"], _by_strength(graph["edges"])
    xs = [x for x, _ in layout.values()] or [0.0]
    top = max((y for _, y in layout.values()), default=0.0)
    width = (max(xs) - min(xs) + 1) * _PX_X + 2 * _MARGIN
    height = (top + 1) * _PX_Y + 2 * _MARGIN

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            _MARGIN + (x - min(xs) + 0.5) * _PX_X,
            _MARGIN + (top - y + 0.5) * _PX_Y,
        )

    faint = max(0.02, min(0.2, 40 / max(sum(not _in_circuit(e) for e in edges), 1)))
    parts = [
        f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        'role="img">'
    ]
    for edge, stroke_width in zip(edges, _edge_widths(edges, 0.8, 6.0), strict=True):
        start, end, control = _endpoints(edge, layout)
        (x0, y0), (x1, y1) = px(*start), px(*end)
        if control is None:
            d = f"M{x0:.1f} {y0:.1f} L{x1:.1f} {y1:.1f}"
        else:
            cx, cy = px(*control)
            d = f"M{x0:.1f} {y0:.1f} Q{cx:.1f} {cy:.1f} {x1:.1f} {y1:.1f}"
        inside = _in_circuit(edge)
        dashes = QKV_DASHES[edge.get("qkv")] if inside else ""
        dash = f' stroke-dasharray="{dashes}"' if dashes else ""
        opacity = 0.85 if inside else faint
        tip = f"{_edge_label(edge)}: {_score_text(edge)}"
        parts.append(
            f'<g class="edge"><title>{html.escape(tip)}</title>'
            f'<path class="hit" d="{d}"/>'
            f'<path class="line" d="{d}" stroke="{_edge_color(edge)}" '
            f'stroke-width="{stroke_width:.2f}" stroke-opacity="{opacity:.3f}"{dash}/></g>'
        )
    for node in nodes:
        name = node["name"]
        cx, cy = px(*layout[name])
        w, h = NODE_W * _PX_X, NODE_H * _PX_Y
        inside = _in_circuit(node)
        tip = f"{name}: {_score_text(node)}"
        parts.append(
            f'<g class="node"><title>{html.escape(tip)}</title>'
            f'<rect x="{cx - w / 2:.1f}" y="{cy - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" '
            f'rx="6" fill="{_node_fill(name, inside)}" stroke="{"#000" if inside else "#bbb"}" '
            'stroke-width="1"/>'
            f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle">{html.escape(name)}</text>'
            "</g>"
        )
    parts.append("</svg>")
    legend = (
        "Input at the bottom, logits at the top. Edge width grows with |score|; blue positive, "
        "red negative, grey unscored; into q dotted, into k dashed, into v dash-dot. "
        "Hover a node or edge for its score."
    )
    extras = "".join(
        f"<h2>{key}</h2>\n<pre>{html.escape(json.dumps(circuit[key], indent=2, default=str))}"
        "</pre>\n"
        for key in ("faithfulness", "metadata")
        if circuit.get(key)
    )
    heading = html.escape(title or "Circuit")
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{heading}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{heading}</h1>\n<p>{html.escape(legend)}</p>\n"
        + "\n".join(parts)
        + "\n"
        + extras
        + "</body>\n</html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, document)
    return path
