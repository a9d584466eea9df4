"""Figures of the logit lens (answer probability and KL per layer, with CIs) and of path
patching (sender x receiver heatmaps, one panel per receiver input), drawn from results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.analysis.effects import nan_to_num
from src.utils.files import write_atomic
from src.visualization.heatmap import color_scale


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return path


def save_logit_lens_figure(results: dict[str, Any], path: str | Path, *, title: str) -> Path:
    """Two panels over the lens points: the answer's probability and KL(final || lens),
    mean with 95% CI band; the tuned lens beside the plain one when the results have it."""
    labels = results["labels"]
    x = np.arange(len(labels))
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    lenses = [("logit lens", results["lens"])]
    if "tuned_lens" in results:
        lenses.append(("tuned lens", results["tuned_lens"]))
    for ax, key, ylabel in zip(axes, ("answer_prob", "kl_to_final"),
                               ("P(answer)", "KL(final || lens) [nats]"), strict=True):  # fmt: skip
        for name, lens in lenses:
            mean, low, high = (np.asarray(nan_to_num(lens[key][k]), float)
                               for k in ("mean", "low", "high"))  # fmt: skip
            ax.plot(x, mean, marker="o", label=name)
            ax.fill_between(x, low, high, alpha=0.25)
        ax.set_xticks(x, labels)
        ax.set_xlabel("residual stream after")
        ax.set_ylabel(ylabel)
    axes[0].legend()
    fig.suptitle(title)
    return _save(fig, Path(path))


def save_path_patching_figure(paths: dict[str, Any], path: str | Path, *, title: str) -> Path:
    """One heatmap per receiver input: rows the sender heads, columns the receiver heads
    (``a{layer}.h{head}``), colour the normalized effect (NaN: not patched, grey)."""
    mean = np.asarray(nan_to_num(paths["normalized"]["mean"]), float)
    n_layers, n_heads = mean.shape[:2]
    heads = [f"a{layer}.h{head}" for layer in range(n_layers) for head in range(n_heads)]
    grid = mean.reshape(n_layers * n_heads, n_layers * n_heads, -1)
    senders = ~np.isnan(grid).all(axis=(1, 2))
    receivers = ~np.isnan(grid).all(axis=(0, 2))
    grid = grid[senders][:, receivers]
    rows = [h for h, keep in zip(heads, senders, strict=True) if keep]
    cols = [h for h, keep in zip(heads, receivers, strict=True) if keep]
    finite = grid[np.isfinite(grid)]
    norm, cmap = color_scale(finite if finite.size else np.zeros(1))
    inputs = paths["inputs"]
    fig = Figure(figsize=(1.5 + 0.45 * len(cols) * len(inputs), 1.2 + 0.35 * len(rows)),
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(inputs), squeeze=False)[0]
    for i, ax in enumerate(axes):
        image = ax.imshow(np.ma.masked_invalid(grid[..., i]), cmap=cmap, norm=norm)
        ax.set_facecolor("#dddddd")
        ax.set_xticks(range(len(cols)), cols, rotation=90, size=7)
        ax.set_yticks(range(len(rows)), rows if i == 0 else [], size=7)
        ax.set_title(f"receiver {inputs[i]}", size=9)
        ax.set_xlabel("receiver head")
    axes[0].set_ylabel("sender head")
    fig.colorbar(image, ax=list(axes), label="normalized effect")
    fig.suptitle(title)
    return _save(fig, Path(path))
