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
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from src.utils.files import write_atomic, write_text_atomic

Head = tuple[int, int]  # (layer, head)
HEAD_NAME = re.compile(r"^a(\d+)\.h(\d+)$")  # the circuit code's node names: a1.h0
MAX_TICKS = 40  # label at most this many positions per axis
MAX_PANEL_COLS = 2


def parse_head(head: Head | str) -> Head:
    """``(layer, head)`` from a tuple or a name like ``a1.h0`` or ``L1H0``."""
    if isinstance(head, str):
        match = HEAD_NAME.match(head) or re.match(r"^L(\d+)H(\d+)$", head)
        if match is None:
            raise ValueError(f"head {head!r}: expected 'a<layer>.h<head>' or 'L<layer>H<head>'")
        return int(match[1]), int(match[2])
    layer, index = head
    return int(layer), int(index)


def head_name(head: Head) -> str:
    return f"a{head[0]}.h{head[1]}"


def token_strings(model: Any, tokens: Tensor | Sequence[int]) -> list[str]:
    """One label per token: the decoded text when the model has a tokenizer, else the id."""
    ids = torch.as_tensor(tokens).flatten().tolist()
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


def _one_prompt(tokens: Tensor) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1 or tokens.dtype.is_floating_point or tokens.numel() == 0:
        raise ValueError(f"tokens must be one prompt of token ids [pos], got {tuple(tokens.shape)}")
    return tokens


def attention_patterns(model: Any, tokens: Tensor, heads: Sequence[Head | str]) -> Tensor:
    """The attention patterns ``[len(heads), dest, src]`` of ``heads`` on one prompt
    (``tokens``: ``[pos]`` or ``[1, pos]``), float32 on the CPU. One forward, caching only
    the layers' ``hook_pattern``."""
    chosen = [parse_head(h) for h in heads]
    if not chosen:
        raise ValueError("heads must name at least one (layer, head)")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for layer, head in chosen:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head {head_name((layer, head))} is out of range for this model "
                f"(layers 0..{n_layers - 1}, heads 0..{n_heads - 1})"
            )
    tokens = _one_prompt(tokens).to(next(model.parameters()).device)
    names = {f"blocks.{layer}.attn.hook_pattern" for layer, _ in chosen}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in names)
    return (
        torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0, head] for layer, head in chosen])
        .float()
        .cpu()
    )


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
    return label.replace("\\", "\\\\").replace("$", r"\$").replace("\n", "\\n")


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


def save_model_attention(
    model: Any,
    tokens: Tensor,
    heads: Sequence[Head | str],
    stem: str | Path,
    *,
    title: str | None = None,
    html_view: bool = True,
) -> list[Path]:
    """Patterns of ``heads`` on one prompt, as ``{stem}.png`` (and ``{stem}.html`` with
    ``html_view``); returns the paths written."""
    tokens = _one_prompt(tokens)
    patterns = attention_patterns(model, tokens, heads)
    labels = token_strings(model, tokens)
    names = [head_name(parse_head(h)) for h in heads]
    title = title or "Attention patterns"
    paths = [
        plot_attention_patterns(patterns, f"{stem}.png", labels, head_names=names, title=title)
    ]
    if html_view:
        paths.append(
            save_attention_html(patterns, f"{stem}.html", labels, head_names=names, title=title)
        )
    return paths
