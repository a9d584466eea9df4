"""Probe accuracy per layer: the real task against its control task, with 95% CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.utils.files import write_atomic


def probe_figure(results: dict[str, Any], *, title: str) -> Figure:
    """Accuracy and control accuracy per probed hook (``probe_layers`` results), CIs as
    bands; the majority-class share as a dashed line."""
    hooks = results["hooks"]
    x = list(range(len(hooks)))
    fig = Figure(figsize=(max(4.0, 1.1 * len(hooks) + 2), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, label, color in (
        ("accuracy", "probe", "#4477aa"),
        ("control_accuracy", "control task (random label per token type)", "#cc6677"),
    ):
        entries = [results["per_hook"][h][key] for h in hooks]
        ax.plot(x, [e["mean"] for e in entries], "o-", color=color, label=label)
        ax.fill_between(
            x, [e["low"] for e in entries], [e["high"] for e in entries], color=color, alpha=0.2
        )
    ax.axhline(results["majority"], color="gray", ls="--", lw=1, label="majority class")
    ax.set_xticks(x, [h.removeprefix("blocks.").replace(".hook_", " ") for h in hooks], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.set_title(title, fontsize=9)
    return fig


def save_probe_figure(results: dict[str, Any], path: str | Path, *, title: str) -> Path:
    """Save `probe_figure` as a PNG (atomically); return the path."""
    fig = probe_figure(results, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return path
