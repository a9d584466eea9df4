"""Heatmaps of patching results, as PNG (matplotlib) and as self-contained HTML.

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

import html
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from src.utils.files import write_atomic, write_text_atomic

ArrayLike = torch.Tensor | np.ndarray
ANNOTATE_MAX_ROWS, ANNOTATE_MAX_COLS = 12, 16  # write values in cells up to this grid size
TICKS_PER_INCH = 4  # at most this many x tick labels per inch of panel width


def _as_array(values: ArrayLike | list, name: str) -> np.ndarray:
    array = torch.as_tensor(values).detach().double().cpu().numpy()
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be [n_layers, n_heads], [n_layers, pos] or [n_layers, pos, n_heads], "
            f"got shape {array.shape}"
        )
    return array


def _ci_arrays(
    shape: tuple[int, ...], ci_low: ArrayLike | None, ci_high: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray] | None:
    if (ci_low is None) != (ci_high is None):
        raise ValueError("ci_low and ci_high must be given together")
    if ci_low is None or ci_high is None:
        return None
    low, high = _as_array(ci_low, "ci_low"), _as_array(ci_high, "ci_high")
    for name, bound in (("ci_low", low), ("ci_high", high)):
        if bound.shape != shape:
            raise ValueError(f"{name} must have the values' shape {shape}, got {bound.shape}")
    return low, high


def significant_cells(ci_low: ArrayLike, ci_high: ArrayLike, baseline: float = 0.0) -> np.ndarray:
    """Boolean mask of cells whose interval ``[ci_low, ci_high]`` excludes ``baseline``.

    NaN bounds (unpatched cells) count as not significant.
    """
    low = torch.as_tensor(ci_low).detach().double().cpu().numpy()
    high = torch.as_tensor(ci_high).detach().double().cpu().numpy()
    with np.errstate(invalid="ignore"):
        return (low > baseline) | (high < baseline)


def color_scale(values: ArrayLike, center: float = 0.0) -> tuple[Normalize, Colormap]:
    """RdBu colour scale symmetric around ``center``, NaN ("bad") as light grey."""
    array = torch.as_tensor(values).detach().double().cpu().numpy()
    finite = array[np.isfinite(array)]
    span = float(np.abs(finite - center).max()) if finite.size else 0.0
    span = span if span > 0 else 1.0
    cmap = colormaps["RdBu"].with_extremes(bad="lightgrey")
    return Normalize(vmin=center - span, vmax=center + span), cmap


def _format(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.2f}"


def _text_color(value: float, center: float, norm: Normalize) -> str:
    span = float(norm.vmax) - center
    return "white" if abs(value - center) > 0.6 * span else "black"


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
):
    n_rows, n_cols = grid.shape
    image = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if n_rows <= ANNOTATE_MAX_ROWS and n_cols <= ANNOTATE_MAX_COLS:
        size = 8 if n_cols <= 8 else 6
        for row, col in zip(*np.nonzero(np.isfinite(grid)), strict=True):
            value = float(grid[row, col])
            color = _text_color(value, center, norm)
            ax.text(col, row, _format(value), ha="center", va="center", color=color, size=size)
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


def heatmap_figure(
    values: ArrayLike,
    *,
    title: str,
    x_label: str | None = None,
    xticklabels: list[str] | None = None,
    value_label: str = "normalized logit diff",
    center: float = 0.0,
    ci_low: ArrayLike | None = None,
    ci_high: ArrayLike | None = None,
    baseline: float = 0.0,
) -> Figure:
    """The patching heatmap as a Figure on an Agg canvas (see `plot_patching_heatmap`)."""
    array = _as_array(values, "values")
    bounds = _ci_arrays(array.shape, ci_low, ci_high)
    significant = significant_cells(*bounds, baseline) if bounds is not None else None
    n_cols = array.shape[1]
    if xticklabels is not None and len(xticklabels) != n_cols:
        raise ValueError(
            f"xticklabels must have {n_cols} labels (one per column), got {len(xticklabels)}"
        )
    norm, cmap = color_scale(array, center)
    n_layers = array.shape[0]
    if array.ndim == 2:
        panels = [(array, significant, None)]
        x_label = x_label or "head"
    else:
        panels = [
            (array[:, :, h], None if significant is None else significant[:, :, h], f"head {h}")
            for h in range(array.shape[2])
        ]
        x_label = x_label or "position"
    n_panel_cols = math.ceil(math.sqrt(len(panels)))
    n_panel_rows = math.ceil(len(panels) / n_panel_cols)
    cell_w = 0.55 if n_layers <= ANNOTATE_MAX_ROWS and n_cols <= ANNOTATE_MAX_COLS else 0.25
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
            ax, grid, norm, cmap, center, sig, xticklabels, int(TICKS_PER_INCH * panel_w)
        )
        if panel_title is not None:
            ax.set_title(panel_title, size=9)
        if index % n_panel_cols == 0:
            ax.set_ylabel("Layer")
        if index >= len(panels) - n_panel_cols:
            ax.set_xlabel(x_label.capitalize())
    for ax in axes[len(panels) :]:
        ax.remove()
    label = value_label
    if significant is not None:
        label += f"\n(boxed: CI excludes {baseline:g})"
    fig.colorbar(image, ax=list(axes[: len(panels)]), label=label)
    fig.suptitle(title)
    return fig


def _save_png(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return path


def plot_patching_heatmap(
    values: ArrayLike,
    path: str | Path,
    *,
    title: str,
    x_label: str | None = None,
    xticklabels: list[str] | None = None,
    value_label: str = "normalized logit diff",
    center: float = 0.0,
    ci_low: ArrayLike | None = None,
    ci_high: ArrayLike | None = None,
    baseline: float = 0.0,
) -> Path:
    """Save a patching heatmap as a PNG at ``path`` (atomically) and return the path.

    ``values``: ``[n_layers, n_heads]``, ``[n_layers, pos]`` or ``[n_layers, pos, n_heads]``
    (one panel per head); NaN = not patched. ``x_label`` defaults to "head" for 2-D input and
    "position" for 3-D; ``xticklabels`` (e.g. token strings) label the columns. Values are
    written in the cells up to a 12 x 16 grid. ``ci_low``/``ci_high`` (the values' shape) box
    the cells whose interval excludes ``baseline``.
    """
    fig = heatmap_figure(
        values,
        title=title,
        x_label=x_label,
        xticklabels=xticklabels,
        value_label=value_label,
        center=center,
        ci_low=ci_low,
        ci_high=ci_high,
        baseline=baseline,
    )
    return _save_png(fig, path)


def _html_table(
    grid: np.ndarray,
    caption: str | None,
    x_label: str,
    xticklabels: list[str] | None,
    norm: Normalize,
    cmap: Colormap,
    center: float,
    bounds: tuple[np.ndarray, np.ndarray] | None,
    significant: np.ndarray | None,
    head: int | None,
) -> str:
    n_rows, n_cols = grid.shape
    annotate = n_rows <= ANNOTATE_MAX_ROWS and n_cols <= ANNOTATE_MAX_COLS
    columns = xticklabels if xticklabels is not None else [str(c) for c in range(n_cols)]
    lines = ["<table>"]
    if caption is not None:
        lines.append(f"<caption>{html.escape(caption)}</caption>")
    header = "".join(f"<th>{html.escape(label)}</th>" for label in columns)
    lines.append(f"<tr><th>layer \\ {html.escape(x_label)}</th>{header}</tr>")
    for row in range(n_rows):
        cells = []
        for col in range(n_cols):
            value = float(grid[row, col])
            where = f"layer {row}, {x_label} {col}"
            if xticklabels is not None:
                where += f" ({xticklabels[col]!r})"
            if head is not None:
                where += f", head {head}"
            tip = f"{where}: {_format(value) if not math.isnan(value) else 'not patched'}"
            if bounds is not None and not math.isnan(value):
                low, high = float(bounds[0][row, col]), float(bounds[1][row, col])
                tip += f" (CI {_format(low)} to {_format(high)})"
            classes = "cell"
            if math.isnan(value):
                classes += " nan"
                style = "background:#d3d3d3;color:#000"
            else:
                background = to_hex(cmap(norm(value)))
                style = f"background:{background};color:{_text_color(value, center, norm)}"
            if significant is not None and significant[row, col]:
                classes += " sig"
            text = _format(value) if annotate and not math.isnan(value) else ""
            cells.append(
                f'<td class="{classes}" style="{style}" title="{html.escape(tip)}">{text}</td>'
            )
        lines.append(f"<tr><th>{row}</th>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


_HTML_STYLE = """
body{font-family:sans-serif;margin:1em}
table{border-collapse:collapse;margin:0 0 1.5em 0}
caption{text-align:left;font-weight:bold;padding:2px}
th{font-weight:normal;font-size:11px;padding:0 4px;white-space:pre}
td.cell{min-width:2.6em;height:1.7em;text-align:center;font-size:11px;border:1px solid #fff}
td.sig{outline:2px solid #000;outline-offset:-3px}
"""


def save_heatmap_html(
    values: ArrayLike,
    path: str | Path,
    *,
    title: str,
    x_label: str | None = None,
    xticklabels: list[str] | None = None,
    value_label: str = "normalized logit diff",
    center: float = 0.0,
    ci_low: ArrayLike | None = None,
    ci_high: ArrayLike | None = None,
    baseline: float = 0.0,
) -> Path:
    """Save the heatmap as a self-contained HTML table and return the path.

    One ``<td class="cell">`` per entry (3-D input: one table per head), coloured as in the
    PNG; hovering a cell shows its layer, column, value and interval. No scripts, no external
    resources: it opens offline. Arguments as in `plot_patching_heatmap`.
    """
    array = _as_array(values, "values")
    bounds = _ci_arrays(array.shape, ci_low, ci_high)
    significant = significant_cells(*bounds, baseline) if bounds is not None else None
    if xticklabels is not None and len(xticklabels) != array.shape[1]:
        raise ValueError(
            f"xticklabels must have {array.shape[1]} labels (one per column), got "
            f"{len(xticklabels)}"
        )
    norm, cmap = color_scale(array, center)
    x_label = x_label or ("head" if array.ndim == 2 else "position")
    heads = [None] if array.ndim == 2 else list(range(array.shape[2]))
    tables = []
    for head in heads:
        if head is None:
            grid, panel_sig, panel_bounds = array, significant, bounds
        else:
            grid = array[:, :, head]
            panel_sig = None if significant is None else significant[:, :, head]
            panel_bounds = None if bounds is None else (bounds[0][..., head], bounds[1][..., head])
        caption = None if head is None else f"head {head}"
        tables.append(
            _html_table(
                grid,
                caption,
                x_label,
                xticklabels,
                norm,
                cmap,
                center,
                panel_bounds,
                panel_sig,
                head,
            )
        )
    legend = (
        f"Colour: {value_label}, blue above {center:g}, red below "
        f"(limits {norm.vmin:.3g} to {norm.vmax:.3g}); grey: not patched."
    )
    if significant is not None:
        legend += f" Outlined: CI excludes {baseline:g}."
    legend += " Hover a cell for its value."
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(legend)}</p>\n"
        + "\n".join(tables)
        + "\n</body>\n</html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, document)
    return path
