"""SAE feature dashboards: one self-contained HTML page per SAE report (no scripts, no CDN,
styles and histograms inline), a section per chosen latent.

Each section shows what ``src.analysis.features.feature_report`` saved: the latent's
density and activation histogram (an inline SVG), its top-activating contexts (the
activating token shaded by its activation), the tokens its decoder direction promotes and
suppresses through the unembedding, the next tokens that steering with it promotes through
the whole model, the loss change when it is ablated, and its Neuronpedia page (a plain
link) when the SAE has one. Opens offline in any browser.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from src.utils.files import write_text_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
section { border-top: 1px solid #ccc; padding: 1em 0; }
table { border-collapse: collapse; margin: 0.5em 1em 0.5em 0; display: inline-table;
  vertical-align: top; }
td, th { padding: 0.1em 0.6em; font-size: 0.85em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ctx { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap;
  margin: 0.15em 0; }
.tok { border-radius: 2px; }
.meta { color: #666; font-size: 0.85em; }
nav a { margin-right: 0.6em; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def histogram_svg(
    edges: list[float], counts: list[int], *, width: int = 320, height: int = 90
) -> str:
    """Bars of ``counts`` over log-spaced ``edges`` as an inline SVG (x: log10 value)."""
    total = max(sum(counts), 1)
    peak = max(max(counts, default=0), 1)
    n = len(counts)
    bar = width / max(n, 1)
    rects = []
    for i, c in enumerate(counts):
        h = (height - 14) * c / peak
        rects.append(
            f'<rect x="{i * bar:.1f}" y="{height - 14 - h:.1f}" width="{bar * 0.9:.1f}" '
            f'height="{h:.1f}" fill="#4477aa"><title>{edges[i]:.3g}..{edges[i + 1]:.3g}: '
            f"{c} ({c / total:.1%})</title></rect>"
        )
    lo, hi = math.log10(edges[0]), math.log10(edges[-1])
    labels = "".join(
        f'<text x="{(v - lo) / (hi - lo) * width:.1f}" y="{height - 2}" font-size="9" '
        f'text-anchor="middle">1e{v:+d}</text>'
        for v in range(math.ceil(lo), math.floor(hi) + 1, 2)
    )
    return (
        f'<svg width="{width}" height="{height}" '
        f'role="img" aria-label="activation histogram">{"".join(rects)}{labels}</svg>'
    )


def _token_table(title: str, rows: list[tuple[str, float]], fmt: str = "{:+.3f}") -> str:
    body = "".join(
        f"<tr><td><code>{_e(_show(repr(t)[1:-1]))}</code></td>"
        f'<td class="num">{fmt.format(v)}</td></tr>'
        for t, v in rows
    )
    return f"<table><tr><th colspan=2>{_e(title)}</th></tr>{body}</table>"


def _contexts(entry: dict[str, Any], joiner: str) -> str:
    examples = entry["examples"]
    if not examples:
        return '<p class="meta">never active on the tokens seen</p>'
    peak = max(ex["activation"] for ex in examples) or 1.0
    lines = []
    for ex in examples:
        parts = []
        for i, token in enumerate(ex["tokens"]):
            text = _e(_show(token))
            if i == ex["target"]:
                alpha = 0.15 + 0.85 * max(ex["activation"], 0) / peak
                text = (
                    f'<span class="tok" style="background: rgba(238,102,119,{alpha:.2f})" '
                    f'title="{ex["activation"]:.3f}"><b>{text}</b></span>'
                )
            parts.append(text)
        where = f"{ex['seq']}:{ex['pos']}"
        lines.append(
            f'<div class="ctx"><span class="meta">{ex["activation"]:8.3f} {where:>8}</span> '
            f"{joiner.join(parts)}</div>"
        )
    return "".join(lines)


def _ci_text(ci: dict[str, float]) -> str:
    return f"{ci['mean']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]"


def feature_section(report: dict[str, Any], entry: dict[str, Any]) -> str:
    """One latent's section of the dashboard."""
    f = str(entry["feature"])
    link = report.get("links", {}).get(f)
    head = f"<h2>Feature {_e(f)}</h2>"
    if link:
        head = f'<h2>Feature {_e(f)} <a href="{_e(link)}">(Neuronpedia)</a></h2>'
    parts = [head, f'<p class="meta">density {entry["density"]:.3g} of tokens</p>']
    hist = report.get("histograms", {})
    if f in hist.get("counts", {}):
        parts.append(histogram_svg(hist["edges"], hist["counts"][f]))
    ablation = report.get("ablation", {}).get(f)
    if ablation:
        parts.append(
            f"<p>Ablation (its decoder contribution removed): next-token loss change "
            f"{_ci_text(ablation['delta_loss_active'])} where it fires "
            f"({ablation['n_active']} positions), {_ci_text(ablation['delta_loss'])} overall "
            f"(95% CIs over sequences)</p>"
        )
    tables = []
    decoder = report.get("decoder", {}).get(f)
    if decoder:
        tables.append(_token_table("decoder promotes (W_dec @ W_U)", decoder["promoted"]))
        tables.append(_token_table("decoder suppresses", decoder["suppressed"]))
    steering = report.get("steering", {}).get(f)
    if steering:
        title = f"steering x{steering['coefficient']:.3g}: log-prob up"
        tables.append(_token_table(title, steering["promoted"]))
        tables.append(_token_table("steering: log-prob down", steering["suppressed"]))
    parts.append("<div>" + "".join(tables) + "</div>")
    if steering:
        parts.append(
            f'<p class="meta">steering KL(steered || clean): {_ci_text(steering["kl"])}</p>'
        )
    parts.append("<h3>Top activations</h3>" + _contexts(entry, report.get("joiner", " ")))
    return f'<section id="feature-{_e(f)}">{"".join(parts)}</section>'


def dashboard_html(report: dict[str, Any], *, title: str) -> str:
    """The whole dashboard of a feature report as one HTML document."""
    nav = "".join(
        f'<a href="#feature-{_e(e["feature"])}">{_e(e["feature"])}</a>' for e in report["contexts"]
    )
    summary = (
        f'<p class="meta">{_e(report["hook_name"])}: {report["n_tokens"]:,} tokens '
        f"({report.get('n_ignored', 0):,} left out); {len(report['density'])} latents, "
        f"{sum(d == 0 for d in report['density'])} dead</p>"
    )
    sections = "".join(feature_section(report, entry) for entry in report["contexts"])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>{summary}<nav>features: {nav}</nav>{sections}</body></html>"
    )


def save_dashboard(report: dict[str, Any], path: str | Path, *, title: str) -> Path:
    """Write `dashboard_html` (atomically); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dashboard_html(report, title=title) + "\n")
    return path
