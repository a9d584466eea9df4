"""Heatmaps of patching results as PNG (matplotlib); the HTML twin is in ``heatmap_html``.

Inputs use TransformerLens's layouts: ``[n_layers, n_heads]`` (per head), ``[n_layers, pos]``
(per layer and position) and ``[n_layers, pos, n_heads]`` (per head and position). The last is
drawn as small multiples, one ``layer x position`` panel per head on a shared colour scale:
summing or taking the max over heads would hide heads that cancel or that act at one
position only. NaN marks an entry that was not patched and is drawn light grey.

Colours are diverging (RdBu: blue above ``center``, red below) with limits symmetric around
``center``; layer 0 is the top row, as in TransformerLens and ARENA figures. Given per-cell
confidence bounds, cells whose interval excludes ``baseline`` (0: the corrupted run, for
normalized scores) are boxed in the PNG and outlined in the HTML.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from src.analysis.dla import heads_grid
from src.analysis.effects import nan_to_num
from src.utils.files import write_atomic
from src.visualization.heatmap import (
    ArrayLike,
    Heatmap,
    format_value,
    heatmap,
    text_color,
)
from src.visualization.heatmap_html import save_heatmap_html

TICKS_PER_INCH = 4  # at most this many x tick labels per inch of panel width


def _ticks(n: int, max_ticks: int) -> list[int]:
    return list(range(0, n, max(1, math.ceil(n / max(max_ticks, 2)))))


def _mathtext_safe(label: str) -> str:
    return label.replace("\\", "\\\\").replace("$", r"\$").replace("\n", "\\n")


def _draw_panel(
    ax,
    grid: np.ndarray,
    norm: Normalize,
    cmap: Colormap,
    center: float,
    significant: np.ndarray | None,
    xticklabels: list[str] | None,
    max_xticks: int,
    annotate: bool,
):
    n_rows, n_cols = grid.shape
    image = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if annotate:
        size = 8 if n_cols <= 8 else 6
        for row, col in zip(*np.nonzero(np.isfinite(grid)), strict=True):
            value = float(grid[row, col])
            color = text_color(value, center, norm)
            ax.text(col, row, format_value(value), ha="center", va="center", color=color, size=size)
    if significant is not None:
        for row, col in zip(*np.nonzero(significant), strict=True):
            box = Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5)
            ax.add_patch(box)
    cols = _ticks(n_cols, max_xticks)
    ax.set_xticks(cols)
    if xticklabels is not None:
        labels = [_mathtext_safe(xticklabels[c]) for c in cols]
        rotate = max((len(label) for label in labels), default=0) > 2
        ax.set_xticklabels(labels, rotation=90 if rotate else 0, size=7 if rotate else None)
    ax.set_yticks(_ticks(n_rows, 40))
    return image


def _panels(h: Heatmap) -> list[tuple[np.ndarray, np.ndarray | None, str | None]]:
    """(grid, significant cells, title) of each panel: one, or one per head."""
    array, significant = h.array, h.significant
    if array.ndim == 2:
        return [(array, significant, None)]
    return [
        (array[:, :, k], None if significant is None else significant[:, :, k], f"head {k}")
        for k in range(array.shape[2])
    ]


def heatmap_figure(values: ArrayLike, **options: Any) -> Figure:
    """The patching heatmap as a Figure on an Agg canvas; ``options`` as
    ``src.visualization.heatmap.heatmap`` (``title`` required)."""
    h = heatmap(values, **options)
    panels = _panels(h)
    n_layers, n_cols = h.array.shape[:2]
    n_panel_cols = math.ceil(math.sqrt(len(panels)))
    n_panel_rows = math.ceil(len(panels) / n_panel_cols)
    cell_w = 0.55 if h.annotate(h.array) else 0.25
    panel_w = min(max(2.5, 0.6 + cell_w * n_cols), 16.0 / n_panel_cols)
    panel_h = min(max(1.5, 0.8 + 0.4 * n_layers), 12.0 / n_panel_rows)
    fig = Figure(
        figsize=(1.6 + panel_w * n_panel_cols, 0.8 + panel_h * n_panel_rows),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panel_rows, n_panel_cols, squeeze=False).ravel()
    for index, (grid, sig, panel_title) in enumerate(panels):
        ax = axes[index]
        image = _draw_panel(
            ax, grid, h.norm, h.cmap, h.center, sig, h.xticklabels,
            int(TICKS_PER_INCH * panel_w), h.annotate(grid),
        )  # fmt: skip
        if panel_title is not None:
            ax.set_title(panel_title, size=9)
        if index % n_panel_cols == 0:
            ax.set_ylabel("Layer")
        if index >= len(panels) - n_panel_cols:
            ax.set_xlabel(h.x_label.capitalize())
    for ax in axes[len(panels) :]:
        ax.remove()
    label = h.value_label
    if h.significant is not None:
        label += f"\n(boxed: CI excludes {h.baseline:g})"
    fig.colorbar(image, ax=list(axes[: len(panels)]), label=label)
    fig.suptitle(h.title)
    return fig


def plot_patching_heatmap(values: ArrayLike, path: str | Path, **options: Any) -> Path:
    """Save a patching heatmap as a PNG at ``path`` (atomically) and return the path.

    ``values``: ``[n_layers, n_heads]``, ``[n_layers, pos]`` or ``[n_layers, pos, n_heads]``
    (one panel per head); NaN = not patched. ``options`` as
    ``src.visualization.heatmap.heatmap``: ``title`` (required), ``x_label``, ``xticklabels``,
    ``value_label``, ``center``, ``ci_low`` / ``ci_high`` (box the cells whose interval
    excludes ``baseline``). Values are written in the cells up to a 12 x 16 grid.
    """
    fig = heatmap_figure(values, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return path


def save_effect_figures(
    summary: dict[str, Any], stem: str, *, title: str, xticklabels: list[str] | None = None
) -> list[str]:
    """The normalized effects of ``src.analysis.effects.effect_summary`` as a PNG heatmap and
    an HTML table (``{stem}.png``, ``{stem}.html``); returns the two paths."""
    axes = tuple(summary["axes"])
    arrays = [
        torch.tensor(nan_to_num(summary["normalized"][key]), dtype=torch.float)
        for key in ("mean", "low", "high")
    ]
    if axes == ("layer",):  # one column: the whole layer
        arrays = [a[:, None] for a in arrays]
        x_label, ticks = "all positions", ["all"]
    elif axes == ("layer", "head", "pos"):  # pattern by destination: plot as (layer, pos, head)
        arrays = [a.transpose(1, 2) for a in arrays]
        x_label, ticks = "position", xticklabels
    else:
        x_label, ticks = ("head", None) if axes == ("layer", "head") else ("position", xticklabels)
    mean, low, high = (a.numpy() for a in arrays)
    kwargs = {
        "title": title,
        "x_label": x_label,
        "xticklabels": ticks,
        "ci_low": low,
        "ci_high": high,
    }
    png = plot_patching_heatmap(mean, f"{stem}.png", **kwargs)
    html = save_heatmap_html(mean, f"{stem}.html", **kwargs)
    return [str(png), str(html)]


def save_dla_figure(dla: dict[str, Any], path: str | Path, *, title: str) -> Path:
    """The per-head terms of a direct logit attribution result (``labels`` and
    ``terms.mean``, as the attribution runner logs them) as a layer x head PNG heatmap."""
    grid = heads_grid(dla["labels"], nan_to_num(dla["terms"]["mean"]))
    return plot_patching_heatmap(grid.numpy(), path, title=title, value_label="logit diff (direct)")
