"""Patching heatmaps as self-contained HTML tables (the PNG twin is ``patching``).

One ``<td class="cell">`` per entry, coloured as in the PNG; hovering a cell shows its layer,
column, value and interval; cells whose interval excludes the baseline are outlined. No
scripts, no external resources: it opens offline.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from matplotlib.colors import to_hex

from src.utils.files import write_text_atomic
from src.visualization.heatmap import ArrayLike, Heatmap, format_value, heatmap, text_color

_HTML_STYLE = """
body{font-family:sans-serif;margin:1em}
table{border-collapse:collapse;margin:0 0 1.5em 0}
caption{text-align:left;font-weight:bold;padding:2px}
th{font-weight:normal;font-size:11px;padding:0 4px;white-space:pre}
td.cell{min-width:2.6em;height:1.7em;text-align:center;font-size:11px;border:1px solid #fff}
td.sig{outline:2px solid #000;outline-offset:-3px}
"""


def _cell(
    h: Heatmap,
    value: float,
    where: str,
    bounds: tuple[float, float] | None,
    significant: bool,
    text: str,
) -> str:
    """One ``<td>``: coloured by ``value``, its tooltip saying ``where`` and the interval."""
    tip = f"{where}: {format_value(value) if not math.isnan(value) else 'not patched'}"
    if bounds is not None and not math.isnan(value):
        tip += f" (CI {format_value(bounds[0])} to {format_value(bounds[1])})"
    classes = "cell"
    if math.isnan(value):
        classes += " nan"
        style = "background:#d3d3d3;color:#000"
    else:
        background = to_hex(h.cmap(h.norm(value)))
        style = f"background:{background};color:{text_color(value, h.center, h.norm)}"
    if significant:
        classes += " sig"
    return f'<td class="{classes}" style="{style}" title="{html.escape(tip)}">{text}</td>'


def _html_table(h: Heatmap, head: int | None) -> str:
    """The table of one panel: all of a 2-D heatmap, or head ``head`` of a 3-D one."""
    pick = (lambda a: a) if head is None else (lambda a: a[:, :, head])
    grid = pick(h.array)
    significant = None if h.significant is None else pick(h.significant)
    bounds = None if h.bounds is None else (pick(h.bounds[0]), pick(h.bounds[1]))
    n_rows, n_cols = grid.shape
    annotate = h.annotate(grid)
    columns = h.xticklabels if h.xticklabels is not None else [str(c) for c in range(n_cols)]
    lines = ["<table>"]
    if head is not None:
        lines.append(f"<caption>{html.escape(f'head {head}')}</caption>")
    header = "".join(f"<th>{html.escape(label)}</th>" for label in columns)
    lines.append(f"<tr><th>layer \\ {html.escape(h.x_label)}</th>{header}</tr>")
    for row in range(n_rows):
        cells = []
        for col in range(n_cols):
            value = float(grid[row, col])
            where = f"layer {row}, {h.x_label} {col}"
            if h.xticklabels is not None:
                where += f" ({h.xticklabels[col]!r})"
            if head is not None:
                where += f", head {head}"
            cell_bounds = (
                None if bounds is None else (float(bounds[0][row, col]), float(bounds[1][row, col]))
            )
            sig = significant is not None and bool(significant[row, col])
            text = format_value(value) if annotate and not math.isnan(value) else ""
            cells.append(_cell(h, value, where, cell_bounds, sig, text))
        lines.append(f"<tr><th>{row}</th>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def save_heatmap_html(values: ArrayLike, path: str | Path, **options: Any) -> Path:
    """Save the heatmap as a self-contained HTML table and return the path.

    3-D input: one table per head. ``options`` as ``src.visualization.heatmap.heatmap``
    (the arguments of ``plot_patching_heatmap``).
    """
    h = heatmap(values, **options)
    heads = [None] if h.array.ndim == 2 else list(range(h.array.shape[2]))
    tables = [_html_table(h, head) for head in heads]
    legend = (
        f"Colour: {h.value_label}, blue above {h.center:g}, red below "
        f"(limits {h.norm.vmin:.3g} to {h.norm.vmax:.3g}); grey: not patched."
    )
    if h.significant is not None:
        legend += f" Outlined: CI excludes {h.baseline:g}."
    legend += " Hover a cell for its value."
    title = html.escape(h.title)
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n<p>{html.escape(legend)}</p>\n"
        + "\n".join(tables)
        + "\n</body>\n</html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, document)
    return path
