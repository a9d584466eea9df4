"""Circuit graphs as self-contained SVG-in-HTML (same layout and encoding as the PNG)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from src.utils.files import write_text_atomic
from src.visualization.circuit_geometry import (
    NODE_H,
    NODE_W,
    QKV_DASHES,
    by_strength,
    circuit_layout,
    edge_color,
    edge_label,
    edge_widths,
    endpoints,
    in_circuit,
    node_fill,
    visible_subgraph,
)

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
    status = "in circuit" if in_circuit(item) else "not in circuit"
    return f"score {score:.4g}, {status}" if score is not None else f"no score, {status}"


def _svg_edge(edge: Mapping[str, Any], d: str, stroke_width: float, faint: float) -> str:
    inside = in_circuit(edge)
    dashes = QKV_DASHES[edge.get("qkv")] if inside else ""
    dash = f' stroke-dasharray="{dashes}"' if dashes else ""
    opacity = 0.85 if inside else faint
    tip = f"{edge_label(edge)}: {_score_text(edge)}"
    return (
        f'<g class="edge"><title>{html.escape(tip)}</title>'
        f'<path class="hit" d="{d}"/>'
        f'<path class="line" d="{d}" stroke="{edge_color(edge)}" '
        f'stroke-width="{stroke_width:.2f}" stroke-opacity="{opacity:.3f}"{dash}/></g>'
    )


def _svg_node(node: Mapping[str, Any], cx: float, cy: float) -> str:
    name = node["name"]
    w, h = NODE_W * _PX_X, NODE_H * _PX_Y
    inside = in_circuit(node)
    tip = f"{name}: {_score_text(node)}"
    return (
        f'<g class="node"><title>{html.escape(tip)}</title>'
        f'<rect x="{cx - w / 2:.1f}" y="{cy - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" '
        f'rx="6" fill="{node_fill(name, inside)}" stroke="{"#000" if inside else "#bbb"}" '
        'stroke-width="1"/>'
        f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle">{html.escape(name)}</text>'
        "</g>"
    )


def circuit_svg(circuit: Mapping[str, Any], only_in_circuit: bool = True) -> str:
    """The circuit graph as an ``<svg>`` element: one ``<g class="node">`` per node and one
    ``<g class="edge">`` per edge, each with a hover title (name, q/k/v, score)."""
    graph = visible_subgraph(circuit, only_in_circuit)
    layout = circuit_layout(graph)
    nodes, edges = graph["nodes"], by_strength(graph["edges"])
    xs = [x for x, _ in layout.values()] or [0.0]
    top = max((y for _, y in layout.values()), default=0.0)
    width = (max(xs) - min(xs) + 1) * _PX_X + 2 * _MARGIN
    height = (top + 1) * _PX_Y + 2 * _MARGIN

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            _MARGIN + (x - min(xs) + 0.5) * _PX_X,
            _MARGIN + (top - y + 0.5) * _PX_Y,
        )

    faint = max(0.02, min(0.2, 40 / max(sum(not in_circuit(e) for e in edges), 1)))
    parts = [
        f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        'role="img">'
    ]
    for edge, stroke_width in zip(edges, edge_widths(edges, 0.8, 6.0), strict=True):
        start, end, control = endpoints(edge, layout)
        (x0, y0), (x1, y1) = px(*start), px(*end)
        if control is None:
            d = f"M{x0:.1f} {y0:.1f} L{x1:.1f} {y1:.1f}"
        else:
            cx, cy = px(*control)
            d = f"M{x0:.1f} {y0:.1f} Q{cx:.1f} {cy:.1f} {x1:.1f} {y1:.1f}"
        parts.append(_svg_edge(edge, d, stroke_width, faint))
    parts += [_svg_node(node, *px(*layout[node["name"]])) for node in nodes]
    parts.append("</svg>")
    return "\n".join(parts)


def save_circuit_html(
    circuit: Mapping[str, Any],
    path: str | Path,
    *,
    title: str | None = None,
    only_in_circuit: bool = True,
) -> Path:
    """Save the circuit graph as self-contained SVG-in-HTML and return the path.

    Same layout and encoding as `plot_circuit` (``circuit_svg``). The faithfulness and
    metadata entries, if any, are listed below. No scripts, no external resources: it
    opens offline.
    """
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
        + circuit_svg(circuit, only_in_circuit)
        + "\n"
        + extras
        + "</body>\n</html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, document)
    return path
