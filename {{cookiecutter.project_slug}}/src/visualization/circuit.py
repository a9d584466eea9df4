"""Circuit graphs as PNG: a layered drawing of a circuit dict (``circuit_geometry`` has the
layout and encoding, ``circuit_html`` the SVG-in-HTML twin)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch

from src.utils.files import write_atomic
from src.visualization.circuit_geometry import (
    MAX_FADED_EDGES,
    MAX_H_INCH,
    MAX_W_INCH,
    NEGATIVE,
    NODE_H,
    NODE_W,
    POSITIVE,
    QKV_STYLE,
    X_INCH,
    Y_INCH,
    by_strength,
    circuit_layout,
    edge_color,
    edge_points,
    edge_widths,
    in_circuit,
    node_fill,
    row_key,
    row_label,
    visible_subgraph,
)
from src.visualization.circuit_html import save_circuit_html

Layout = dict[str, tuple[float, float]]


def _draw_edges(ax: Axes, edges: list[dict[str, Any]], layout: Layout) -> tuple[int, int]:
    """Edges outside the circuit: solid, thin and fainter the more there are (a full graph
    has tens of thousands; the ``MAX_FADED_EDGES`` strongest are drawn); those in it: line
    style by q/k/v. Returns (outside edges drawn, outside edges)."""
    widths = edge_widths(edges, 0.4, 4.0)
    outside = [i for i, e in enumerate(edges) if not in_circuit(e)]
    n_outside = len(outside)
    outside = outside[-MAX_FADED_EDGES:]  # edges are sorted weakest first
    faint = max(0.02, min(0.2, 40 / max(len(outside), 1)))
    groups = [(outside, "-", faint)] + [
        ([i for i, e in enumerate(edges) if in_circuit(e) and e.get("qkv") == q], style, 0.9)
        for q, style in QKV_STYLE.items()
    ]
    for chosen, style, alpha in groups:
        if chosen:
            ax.add_collection(
                LineCollection(
                    [edge_points(edges[i], layout) for i in chosen],
                    colors=[to_rgba(edge_color(edges[i]), alpha) for i in chosen],
                    linewidths=[widths[i] for i in chosen],
                    linestyles=style,
                    zorder=1,
                )
            )
    return len(outside), n_outside


def _draw_nodes(
    ax: Axes, nodes: list[dict[str, Any]], layout: Layout, inch_per_unit: float
) -> None:
    """One rounded box per node, labelled when it is large enough (or in the circuit)."""
    font = max(4.0, min(8.0, 11.0 * inch_per_unit))
    label_nodes = inch_per_unit >= 0.45
    for node in nodes:
        name = node["name"]
        x, y = layout[name]
        inside = in_circuit(node)
        box = FancyBboxPatch(
            (x - NODE_W / 2, y - NODE_H / 2),
            NODE_W,
            NODE_H,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=node_fill(name, inside),
            edgecolor="black" if inside else "#bbbbbb",
            linewidth=0.8,
            zorder=2,
        )
        ax.add_patch(box)
        if label_nodes or inside:
            color = "black" if inside else "#777777"
            ax.text(x, y, name, ha="center", va="center", size=font, zorder=3, color=color)


def _legend(ax: Axes, edges: list[dict[str, Any]], shown: int, n_outside: int) -> None:
    legend = [
        Line2D([], [], color=POSITIVE, lw=2, label="positive score"),
        Line2D([], [], color=NEGATIVE, lw=2, label="negative score"),
    ] + [
        Line2D([], [], color="black", lw=1.2, ls=QKV_STYLE[q], label=f"into {q}")
        for q in ("q", "k", "v")
        if any(e.get("qkv") == q and in_circuit(e) for e in edges)
    ]
    if shown:
        which = f"strongest {shown} of {n_outside}" if shown < n_outside else "all"
        legend.append(Line2D([], [], color="grey", lw=1, alpha=0.5, label=f"outside: {which}"))
    ax.legend(
        handles=legend,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        frameon=False,
        title="width ∝ |score|",
        title_fontsize=7,
    )


def circuit_figure(
    circuit: Mapping[str, Any], *, title: str | None = None, only_in_circuit: bool = True
) -> Figure:
    """The circuit graph as a Figure on an Agg canvas (see `plot_circuit`)."""
    graph = visible_subgraph(circuit, only_in_circuit)
    layout = circuit_layout(graph)
    nodes, edges = graph["nodes"], by_strength(graph["edges"])
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
    shown, n_outside = _draw_edges(ax, edges, layout)
    _draw_nodes(ax, nodes, layout, inch_per_unit)
    rows = sorted({row_key(node["name"]) for node in nodes})
    ax.set_yticks(range(len(rows)), [row_label(key) for key in rows])
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    _legend(ax, edges, shown, n_outside)
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


def save_circuit_figures(circuit: Mapping[str, Any], stem: str | Path, *, name: str) -> list[str]:
    """The circuit as ``{stem}.png`` and ``{stem}.html``, titled ``{name}: {method} circuit``
    (the method from its metadata); returns the two paths."""
    method = circuit.get("metadata", {}).get("method", "")
    title = f"{name}: {method} circuit" if method else f"{name}: circuit"
    return [
        str(plot_circuit(circuit, f"{stem}.png", title=title)),
        str(save_circuit_html(circuit, f"{stem}.html", title=title)),
    ]
