"""What the patching heatmaps share (PNG and HTML): the checked values and confidence bounds,
the cells whose interval excludes the baseline, and the diverging colour scale.

Colours are diverging (RdBu: blue above ``center``, red below) with limits symmetric around
``center``; NaN (not patched) is light grey.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Colormap, Normalize

ArrayLike = torch.Tensor | np.ndarray
ANNOTATE_MAX_ROWS, ANNOTATE_MAX_COLS = 12, 16  # write values in cells up to this grid size


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


def format_value(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.2f}"


def text_color(value: float, center: float, norm: Normalize) -> str:
    span = float(norm.vmax) - center
    return "white" if abs(value - center) > 0.6 * span else "black"


@dataclass
class Heatmap:
    """A heatmap to draw: checked values, their interval bounds and significance, the
    colour scale, and the labels (see ``heatmap``)."""

    array: np.ndarray  # [n_layers, cols] or [n_layers, cols, n_heads]
    bounds: tuple[np.ndarray, np.ndarray] | None
    significant: np.ndarray | None
    norm: Normalize
    cmap: Colormap
    title: str
    x_label: str
    xticklabels: list[str] | None
    value_label: str
    center: float
    baseline: float

    def annotate(self, grid: np.ndarray) -> bool:
        """Whether values are written in the cells of ``grid``."""
        return grid.shape[0] <= ANNOTATE_MAX_ROWS and grid.shape[1] <= ANNOTATE_MAX_COLS


def heatmap(
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
) -> Heatmap:
    """The heatmap of ``values``: ``[n_layers, n_heads]``, ``[n_layers, pos]`` or
    ``[n_layers, pos, n_heads]`` (one panel per head); NaN = not patched. ``x_label``
    defaults to "head" for 2-D input and "position" for 3-D; ``xticklabels`` (e.g. token
    strings) label the columns. ``ci_low``/``ci_high`` (the values' shape) mark the cells
    whose interval excludes ``baseline``. ValueError for inconsistent shapes."""
    array = _as_array(values, "values")
    bounds = _ci_arrays(array.shape, ci_low, ci_high)
    significant = significant_cells(*bounds, baseline) if bounds is not None else None
    n_cols = array.shape[1]
    if xticklabels is not None and len(xticklabels) != n_cols:
        raise ValueError(
            f"xticklabels must have {n_cols} labels (one per column), got {len(xticklabels)}"
        )
    norm, cmap = color_scale(array, center)
    x_label = x_label or ("head" if array.ndim == 2 else "position")
    return Heatmap(
        array, bounds, significant, norm, cmap, title, x_label, xticklabels, value_label,
        center, baseline,
    )  # fmt: skip
