"""Heatmaps of per-head scores (layer x head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_head_scores(scores: torch.Tensor | np.ndarray, title: str, path: str | Path) -> Path:
    """Save a `[n_layers, n_heads]` score heatmap, values written in the cells, as a PNG.

    Draws on an Agg canvas without pyplot, so it neither needs a display nor changes the
    backend of a notebook, and leaves no open figure behind. Returns the path written.
    """
    values = torch.as_tensor(scores).detach().float().cpu().numpy()
    if values.ndim != 2:
        raise ValueError(f"expected [n_layers, n_heads] scores, got shape {values.shape}")
    n_layers, n_heads = values.shape
    fig = Figure(figsize=(1.0 + 0.9 * n_heads, 1.2 + 0.7 * n_layers), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    low, high = min(0.0, float(values.min())), max(1.0, float(values.max()))
    image = ax.imshow(values, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    for layer in range(n_layers):
        for head in range(n_heads):
            value = values[layer, head]
            color = "black" if value > low + 0.6 * (high - low) else "white"
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", color=color)
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("Head")
    ax.set_ylabel("Layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
