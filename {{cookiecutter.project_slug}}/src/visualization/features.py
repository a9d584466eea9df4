"""SAE feature figures: feature density, top-activating contexts, decoder directions.

Drawn from what ``src.analysis.features`` computes: a density histogram (PNG) and Markdown
pages of each chosen latent's top-activating contexts and of the tokens its decoder
direction promotes and suppresses through the unembedding; each latent's heading links to
its Neuronpedia page when the report has one (a pretrained SAE that Neuronpedia hosts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from src.utils.files import write_atomic, write_text_atomic


def density_figure(density: Tensor, *, title: str = "Feature density", bins: int = 40) -> Figure:
    """Histogram of log10(firing frequency) over the live latents; the dead ones (density 0,
    no logarithm) are counted in the legend."""
    density = torch.as_tensor(density).double().cpu()
    alive = density[density > 0]
    n_dead = int((density == 0).sum())
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    label = f"{len(alive)} live latents; {n_dead} dead ({n_dead / max(len(density), 1):.1%})"
    if len(alive):
        ax.hist(np.log10(alive.numpy()), bins=bins, color="#4477aa", label=label)
    else:
        ax.text(0.5, 0.5, "every latent is dead", ha="center", va="center", transform=ax.transAxes)
        ax.plot([], [], label=label)
    ax.set_xlabel("log10(fraction of tokens on which the latent fires)")
    ax.set_ylabel("latents")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(title)
    return fig


def plot_feature_density(
    density: Tensor, path: str | Path, *, title: str = "Feature density"
) -> Path:
    """Save `density_figure` as a PNG (atomically); return the path."""
    fig = density_figure(density, title=title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return path


def _heading(feature: int, links: dict[int, str] | None) -> str:
    """``## Feature f``, with a link to its Neuronpedia page when ``links`` has one."""
    url = (links or {}).get(int(feature))
    return f"## Feature {feature}" + (f" ([Neuronpedia]({url}))" if url else "")


def _show(token: str) -> str:
    return (
        token.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )


def _fence(lines: list[str]) -> str:
    """A code fence longer than any run of backticks in ``lines``."""
    longest = max((len(run) for line in lines for run in re.findall("`+", line)), default=0)
    return "`" * max(3, longest + 1)


def contexts_markdown(
    contexts: list[dict[str, Any]],
    *,
    title: str = "Top-activating contexts",
    joiner: str = " ",
    promoted: dict[int, dict[str, Any]] | None = None,
    links: dict[int, str] | None = None,
) -> str:
    """`top_contexts` as Markdown: per latent its density, then one line per example,
    ``activation  seq:pos  context`` with the activating token in ``[[ ]]``. ``joiner``
    goes between tokens (" " for ids, "" for text tokens that carry their own spaces).
    ``promoted``: `decoder_top_tokens` entries by feature, shown with each latent;
    ``links``: each latent's Neuronpedia page, linked from its heading."""
    lines = [f"# {title}", ""]
    for entry in contexts:
        f = entry["feature"]
        lines += [_heading(f, links), "", f"Density: {entry['density']:.3g} of tokens.", ""]
        if promoted and f in promoted:
            up = ", ".join(repr(t) for t, _ in promoted[f]["promoted"])
            down = ", ".join(repr(t) for t, _ in promoted[f]["suppressed"])
            lines += [f"Promotes: {_show(up)}", "", f"Suppresses: {_show(down)}", ""]
        if not entry["examples"]:
            lines += ["(never active on the cached tokens)", ""]
            continue
        body = []
        for ex in entry["examples"]:
            shown = [_show(t) for t in ex["tokens"]]
            shown[ex["target"]] = f"[[{shown[ex['target']]}]]"
            where = f"{ex['seq']}:{ex['pos']}"
            body.append(f"{ex['activation']:>9.3f}  {where:>9}  {joiner.join(shown)}")
        fence = _fence(body)
        lines += [fence, *body, fence, ""]
    return "\n".join(lines)


def save_contexts_markdown(contexts: list[dict[str, Any]], path: str | Path, **kwargs: Any) -> Path:
    """Write `contexts_markdown` (atomically); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, contexts_markdown(contexts, **kwargs) + "\n")
    return path


def decoder_markdown(
    top_tokens: dict[int, dict[str, Any]], *, title: str, links: dict[int, str] | None = None
) -> str:
    """`decoder_top_tokens` as Markdown: one table per latent, promoted beside suppressed;
    ``links``: each latent's Neuronpedia page, linked from its heading."""
    lines = [f"# {title}", ""]
    for f, entry in top_tokens.items():
        lines += [
            _heading(f, links),
            "",
            "| promoted | logit | suppressed | logit |",
            "|---|---:|---|---:|",
        ]
        for (up, up_value), (down, down_value) in zip(
            entry["promoted"], entry["suppressed"], strict=True
        ):
            cells = [_table_cell(up), f"{up_value:+.3f}", _table_cell(down), f"{down_value:+.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _table_cell(token: str) -> str:
    return "`" + _show(repr(token)[1:-1]).replace("|", "\\|").replace("`", "'") + "`"


def save_decoder_markdown(
    top_tokens: dict[int, dict[str, Any]],
    path: str | Path,
    *,
    title: str,
    links: dict[int, str] | None = None,
) -> Path:
    """Write `decoder_markdown` (atomically); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, decoder_markdown(top_tokens, title=title, links=links) + "\n")
    return path
