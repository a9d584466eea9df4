"""Steering figures: the metric against the steering coefficient (with 95% CIs and the
positive and negative baselines), and the steered continuations as Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.utils.files import write_atomic, write_text_atomic


def steering_figure(results: dict[str, Any], *, title: str) -> Figure:
    """Mean metric per coefficient (``run_steering_experiment`` results), its CI as a band."""
    coefs = results["coefficients"]
    steered = results["steered_metric"]
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(coefs, [e["mean"] for e in steered], "o-", color="#4477aa", label="steered negatives")
    ax.fill_between(
        coefs, [e["low"] for e in steered], [e["high"] for e in steered], color="#4477aa", alpha=0.2
    )
    for key, label, color in (
        ("positive_metric", "positive prompts (unsteered)", "#228833"),
        ("negative_metric", "negative prompts (unsteered)", "#cc6677"),
    ):
        ax.axhline(results[key]["mean"], color=color, ls="--", lw=1, label=label)
    ax.set_xlabel(f"coefficient (direction norm {results['direction_norm']:.3g})")
    ax.set_ylabel(results["metric"])
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.set_title(title, fontsize=9)
    return fig


def generation_markdown(results: dict[str, Any], *, title: str) -> str:
    """The steered continuations: one table per prompt, a row per coefficient."""
    lines = [f"# {title}", ""]
    for i, prompt in enumerate(results.get("prompts", [])):
        lines += [f"## Prompt {i}", "", f"`{_cell(prompt)}`", "", "| coefficient | continuation |"]
        lines.append("|---:|---|")
        for entry in results["generation"]:
            lines.append(f"| {entry['coefficient']:g} | `{_cell(entry['continuations'][i])}` |")
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("\n", "\\n").replace("|", "\\|").replace("`", "'")


def save_steering_figures(results: dict[str, Any], stem: str | Path, *, title: str) -> list[Path]:
    """``{stem}.png`` (the metric per coefficient) and ``{stem}_text.md`` (continuations,
    when the run generated any); return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = stem.with_name(f"{stem.name}.png")
    fig = steering_figure(results, title=title)
    write_atomic(png, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    made = [png]
    if results.get("generation"):
        md = stem.with_name(f"{stem.name}_text.md")
        write_text_atomic(md, generation_markdown(results, title=f"{title}: continuations") + "\n")
        made.append(md)
    return made
