"""Attention patterns of chosen heads: a PNG of heatmaps and an interactive circuitsvis view.

A pattern is ``[n_heads, dest, src]`` (one prompt; row = the attending query position,
column = the attended key position; each row sums to 1 over ``src <= dest``). The PNG draws
one panel per head, tokens on both axes; the HTML is circuitsvis's ``attention_heads`` view
with its JavaScript inline (``RenderedHTML.local_src``), so it opens offline. circuitsvis's
default ``str(html)`` loads the scripts from a CDN and shows a blank page without internet.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from src.utils.files import write_atomic, write_text_atomic

MAX_TICKS = 40  # label at most this many positions per axis
MAX_PANEL_COLS = 2


def _check_patterns(patterns: Tensor | np.ndarray, labels: Sequence[str] | None) -> np.ndarray:
    array = torch.as_tensor(patterns).detach().float().cpu().numpy()
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise ValueError(
            f"patterns must be [n_heads, dest, src] with dest == src, got {array.shape}"
        )
    if labels is not None and len(labels) != array.shape[-1]:
        raise ValueError(
            f"labels must have {array.shape[-1]} entries (one per token), got {len(labels)}"
        )
    return array


def _names(n: int, head_names: Sequence[str] | None) -> list[str]:
    names = list(head_names) if head_names is not None else [f"head {i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"head_names must have {n} entries (one per pattern), got {len(names)}")
    return names


def _mathtext_safe(label: str) -> str:
    """A tick label matplotlib draws as written: escapes, and control characters (which a
    byte-level tokenizer's tokens may hold and no font has) as their code."""
    label = label.replace("\\", "\\\\").replace("$", r"\$").replace("\n", "\\n")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in label)


def attention_figure(
    patterns: Tensor | np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    head_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """One ``dest x src`` heatmap per head (0 to 1, shared colour bar), tokens on both axes.

    ``labels``: one string per position (default: the position index). Drawn on an Agg
    canvas without pyplot, so no display is needed and no figure stays open.
    """
    array = _check_patterns(patterns, labels)
    n, n_pos = array.shape[0], array.shape[-1]
    names = _names(n, head_names)
    cols = min(n, MAX_PANEL_COLS)
    rows = math.ceil(n / cols)
    side = min(max(2.5, 0.16 * n_pos + 1.0), 7.0)
    fig = Figure(figsize=(cols * side + 1.0, rows * side + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    ticks = list(range(0, n_pos, max(1, math.ceil(n_pos / MAX_TICKS))))
    tick_labels = [_mathtext_safe(labels[t]) for t in ticks] if labels is not None else ticks
    size = 7 if n_pos <= 16 else 5
    image = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.remove()
            continue
        image = ax.imshow(array[i], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(names[i], size=9)
        ax.set_xticks(ticks, tick_labels, rotation=90, size=size)
        ax.set_yticks(ticks, tick_labels, size=size)
        ax.set_xlabel("source (attended) token", size=8)
        if i % cols == 0:
            ax.set_ylabel("destination (query) token", size=8)
    fig.colorbar(image, ax=list(axes[:n]), label="attention", shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    return fig


def plot_attention_patterns(
    patterns: Tensor | np.ndarray,
    path: str | Path,
    labels: Sequence[str] | None = None,
    *,
    head_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save `attention_figure` as a PNG at ``path`` (atomically); return the path."""
    fig = attention_figure(patterns, labels, head_names=head_names, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return path


def attention_html(
    patterns: Tensor | np.ndarray,
    labels: Sequence[str],
    *,
    head_names: Sequence[str] | None = None,
    title: str = "Attention patterns",
) -> str:
    """A complete HTML page with circuitsvis's ``attention_heads`` view, scripts inline."""
    from circuitsvis.attention import attention_heads

    array = _check_patterns(patterns, labels)
    names = _names(array.shape[0], head_names)
    view = attention_heads(attention=array, tokens=list(labels), attention_head_names=names)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        "<p>Hover a head to show its pattern; hover a token to see what it attends to.</p>\n"
        f"{view.local_src}\n</body>\n</html>\n"
    )


def save_attention_html(
    patterns: Tensor | np.ndarray,
    path: str | Path,
    labels: Sequence[str],
    *,
    head_names: Sequence[str] | None = None,
    title: str = "Attention patterns",
) -> Path:
    """Save `attention_html` at ``path`` (atomically; about 1.3 MB, mostly circuitsvis's
    JavaScript); return the path."""
    document = attention_html(patterns, labels, head_names=head_names, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, document)
    return path


def save_attention_figures(
    patterns: Tensor | np.ndarray,
    stem: str | Path,
    labels: Sequence[str],
    *,
    head_names: Sequence[str] | None = None,
    title: str | None = None,
    html_view: bool = True,
) -> list[Path]:
    """``patterns`` of one prompt (e.g. ``src.analysis.attention.head_patterns``) as
    ``{stem}.png`` (and ``{stem}.html`` with ``html_view``); returns the paths written."""
    title = title or "Attention patterns"
    paths = [
        plot_attention_patterns(patterns, f"{stem}.png", labels, head_names=head_names, title=title)
    ]
    if html_view:
        paths.append(
            save_attention_html(
                patterns, f"{stem}.html", labels, head_names=head_names, title=title
            )
        )
    return paths
