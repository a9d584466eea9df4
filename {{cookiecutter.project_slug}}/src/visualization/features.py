"""SAE feature figures: how often each latent fires, what makes it fire, what it writes.

Computed over cached activations (one pass, one chunk of sequences in memory at a time):

- feature density: the fraction of tokens on which each latent is active (> 0), drawn as a
  histogram of log10 density over the live latents, dead ones (never active) counted apart;
- top-activating contexts: each latent's ``k`` largest activations over the cached tokens,
  with a window of surrounding tokens (text when the model has a tokenizer, else ids);
- decoder directions through the unembedding: ``W_dec[f] @ W_U``, the tokens a latent
  promotes (and suppresses) directly, as in the logit lens.

The pure functions take tensors (`feature_stats` takes ``(tokens, activations)`` chunks);
`store_chunks` feeds it from an ``ActivationStore``. (sae-vis and sae-dashboard cannot be
installed beside transformer-lens 3; this is the small part of them we need.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from src.utils.files import write_atomic, write_text_atomic

Chunk = tuple[Tensor, Tensor]  # tokens [n_seq, ctx], activations [n_seq, ctx, d_in]
Decode = Callable[[int], str]


@dataclass
class FeatureStats:
    """One pass of an SAE over cached activations.

    ``top_values[j, f]`` is latent ``f``'s ``j``-th largest activation (descending) at the
    flat token index ``top_indices[j, f]`` (``seq * ctx + pos`` into ``tokens``); ``-1`` /
    ``-inf`` where fewer than ``k`` tokens were seen.
    """

    counts: Tensor  # [d_sae] tokens on which the latent is > 0
    n_tokens: int
    top_values: Tensor  # [k, d_sae]
    top_indices: Tensor  # [k, d_sae] int64
    tokens: Tensor  # [n_seq, ctx] int64, all cached tokens

    @property
    def density(self) -> Tensor:
        """Fraction of tokens on which each latent fires, [d_sae]."""
        return self.counts.double() / max(self.n_tokens, 1)

    @property
    def dead(self) -> Tensor:
        """Latents that never fired, [d_sae] bool."""
        return self.counts == 0


def _sae_device_dtype(sae: Any) -> tuple[torch.device, torch.dtype]:
    return sae.W_dec.device, sae.W_dec.dtype


@torch.no_grad()
def feature_stats(
    sae: Any,
    chunks: Iterable[Chunk],
    *,
    k: int = 10,
    batch_size: int = 1024,
    max_tokens: int | None = None,
    progress: bool = False,
) -> FeatureStats:
    """Firing counts and each latent's top ``k`` activations over ``chunks`` of
    ``(tokens [n_seq, ctx], activations [n_seq, ctx, d_in])`` (trailing activation
    dimensions are flattened), encoded ``batch_size`` tokens at a time on the SAE's device.

    ``max_tokens``: stop after the first sequences holding at least this many tokens (the
    statistics of a large cache settle long before its end). Memory: one batch of latents
    ``[batch_size, d_sae]`` plus ``[k, d_sae]`` running top values; the tokens on the CPU.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0 or None, got {max_tokens}")
    device, dtype = _sae_device_dtype(sae)
    d_sae = int(sae.cfg.d_sae)
    counts = torch.zeros(d_sae, dtype=torch.long, device=device)
    top_values = torch.full((k, d_sae), -math.inf, device=device)
    top_indices = torch.full((k, d_sae), -1, dtype=torch.long, device=device)
    all_tokens: list[Tensor] = []
    offset, ctx = 0, None
    for tokens, acts in tqdm(chunks, desc="encoding", unit="chunk", disable=not progress):
        if tokens.ndim != 2 or acts.shape[:2] != tokens.shape:
            raise ValueError(
                f"a chunk must be tokens [n_seq, ctx] and activations [n_seq, ctx, d_in], got "
                f"{tuple(tokens.shape)} and {tuple(acts.shape)}"
            )
        if ctx is not None and tokens.shape[1] != ctx:
            raise ValueError(f"every chunk must have context {ctx}, got {tokens.shape[1]}")
        ctx = tokens.shape[1]
        if max_tokens is not None:
            keep = math.ceil((max_tokens - offset) / ctx)
            tokens, acts = tokens[:keep], acts[:keep]
        flat = acts.reshape(tokens.numel(), -1)
        if flat.shape[1] != sae.cfg.d_in:
            raise ValueError(
                f"activations have d={flat.shape[1]} but the SAE's d_in is {sae.cfg.d_in}"
            )
        for start in range(0, flat.shape[0], batch_size):
            latents = sae.encode(flat[start : start + batch_size].to(device, dtype)).float()
            counts += (latents > 0).sum(0)
            batch_values, batch_order = latents.topk(min(k, latents.shape[0]), dim=0)
            values = torch.cat([top_values, batch_values])
            indices = torch.cat([top_indices, batch_order + offset + start])
            top_values, order = values.topk(k, dim=0)
            top_indices = indices.gather(0, order)
        all_tokens.append(tokens.cpu().long())
        offset += tokens.numel()
        if max_tokens is not None and offset >= max_tokens:
            break
    if ctx is None:
        raise ValueError("no activations: the chunks were empty")
    return FeatureStats(
        counts.cpu(), offset, top_values.cpu(), top_indices.cpu(), torch.cat(all_tokens)
    )


def store_chunks(store: Any, hook_name: str) -> Iterator[Chunk]:
    """``(tokens, activations)`` of an ``ActivationStore`` one shard at a time (the shard
    format: ``tokens`` and one tensor per hook name)."""
    from safetensors import safe_open

    for path in store.shard_paths:
        with safe_open(str(path), framework="pt") as shard:
            yield shard.get_tensor("tokens"), shard.get_tensor(hook_name)


def store_feature_stats(
    sae: Any,
    store: Any,
    hook_name: str,
    *,
    k: int = 10,
    max_tokens: int | None = None,
    progress: bool = False,
) -> FeatureStats:
    """`feature_stats` over an ``ActivationStore``'s ``hook_name`` (its first
    ``max_tokens`` tokens, or all)."""
    chunks = store_chunks(store, hook_name)
    return feature_stats(sae, chunks, k=k, max_tokens=max_tokens, progress=progress)


# --- density ----------------------------------------------------------------------------


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


def choose_features(density: Tensor, n: int, *, seed: int = 0) -> list[int]:
    """``n`` live latents chosen at random (seeded), in index order: an unbiased sample to
    look at (the densest ones are often the least interpretable)."""
    alive = torch.nonzero(torch.as_tensor(density) > 0).flatten()
    if len(alive) <= n:
        return alive.tolist()
    generator = torch.Generator().manual_seed(seed)
    return sorted(alive[torch.randperm(len(alive), generator=generator)[:n]].tolist())


# --- top-activating contexts ------------------------------------------------------------


def token_decoder(model: Any) -> Decode:
    """Token id -> text with the model's tokenizer; the id itself when it has none."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return str
    return lambda i: tokenizer.decode([i])


def top_contexts(
    stats: FeatureStats,
    features: Sequence[int],
    *,
    window: tuple[int, int] = (8, 3),
    decode: Decode | None = None,
) -> list[dict[str, Any]]:
    """For each latent in ``features``: its top activations, each with the tokens from
    ``window[0]`` before to ``window[1]`` after (within its sequence).

    Plain data: ``[{"feature", "density", "examples": [{"activation", "seq", "pos",
    "token_ids", "tokens", "target"}]}]``, where ``tokens`` are strings (``decode``, default
    the ids as text) and ``target`` indexes the activating token in them.
    """
    before, after = window
    if before < 0 or after < 0:
        raise ValueError(f"window must be two counts >= 0, got {window}")
    decode = decode or str
    n_seq, ctx = stats.tokens.shape
    density = stats.density
    out = []
    for f in features:
        if not 0 <= f < len(density):
            raise ValueError(f"feature {f} is out of range (0..{len(density) - 1})")
        examples = []
        for value, flat in zip(
            stats.top_values[:, f].tolist(), stats.top_indices[:, f].tolist(), strict=True
        ):
            if flat < 0 or value <= 0:
                break
            seq, pos = divmod(flat, ctx)
            start, stop = max(0, pos - before), min(ctx, pos + after + 1)
            ids = stats.tokens[seq, start:stop].tolist()
            examples.append(
                {
                    "activation": value,
                    "seq": seq,
                    "pos": pos,
                    "token_ids": ids,
                    "tokens": [decode(i) for i in ids],
                    "target": pos - start,
                }
            )
        out.append({"feature": int(f), "density": float(density[f]), "examples": examples})
    return out


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
) -> str:
    """`top_contexts` as Markdown: per latent its density, then one line per example,
    ``activation  seq:pos  context`` with the activating token in ``[[ ]]``. ``joiner``
    goes between tokens (" " for ids, "" for text tokens that carry their own spaces).
    ``promoted``: `decoder_top_tokens` entries by feature, shown with each latent."""
    lines = [f"# {title}", ""]
    for entry in contexts:
        f = entry["feature"]
        lines += [f"## Feature {f}", "", f"Density: {entry['density']:.3g} of tokens.", ""]
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


# --- decoder directions through the unembedding -----------------------------------------


def final_norm_linear(model: Any) -> Callable[[Tensor], Tensor] | None:
    """The linear part of the model's final norm applied to a direction: centre (LayerNorm,
    not RMSNorm) and multiply by its weight ``w``; None if the model has no final norm.

    The per-token scale and the bias are left out: a positive scale does not change which
    tokens a direction promotes, and the bias is the same for every latent. On models loaded
    with folded LayerNorm (pretrained models here) the weight and centring are already in
    ``W_U``, and this is (nearly) the identity.
    """
    norm = getattr(model, "ln_final", None)
    if norm is None or getattr(model.cfg, "normalization_type", None) is None:
        return None
    center = not getattr(norm, "uses_rms_norm", False) and model.cfg.normalization_type in (
        "LN",
        "LNPre",
    )
    weight = getattr(norm, "w", None)
    weight = None if weight is None else weight.detach().float().cpu()

    def apply(x: Tensor) -> Tensor:
        if center:
            x = x - x.mean(-1, keepdim=True)
        return x if weight is None else x * weight

    return apply


@torch.no_grad()
def decoder_logits(
    W_dec: Tensor,
    W_U: Tensor,
    features: Sequence[int],
    norm: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``norm(W_dec[features]) @ W_U``: ``[len(features), d_vocab]``, float32 on the CPU.

    ``W_dec`` is the SAE's ``[d_sae, d_in]`` (d_in = d_model: an SAE on the residual
    stream), ``W_U`` the model's ``[d_model, d_vocab]``; ``norm`` e.g. `final_norm_linear`.
    """
    if W_dec.shape[1] != W_U.shape[0]:
        raise ValueError(
            f"W_dec is [d_sae, {W_dec.shape[1]}] but W_U is [{W_U.shape[0]}, d_vocab]: the "
            f"decoder must write to the residual stream (d_model) to be unembedded"
        )
    directions = W_dec[list(features)].detach().float().cpu()
    if norm is not None:
        directions = norm(directions)
    return directions @ W_U.detach().float().cpu()


def decoder_top_tokens(
    logits: Tensor, features: Sequence[int], *, k: int = 10, decode: Decode | None = None
) -> dict[int, dict[str, Any]]:
    """The ``k`` tokens each latent's decoder direction promotes most and least:
    ``{feature: {"promoted": [(token, logit)], "suppressed": [(token, logit)]}}`` from the
    `decoder_logits` rows (one per feature, in order)."""
    decode = decode or str
    k = min(k, logits.shape[1])
    out = {}
    for row, f in zip(logits, features, strict=True):
        top, bottom = row.topk(k), row.topk(k, largest=False)
        out[int(f)] = {
            "promoted": [
                (decode(i), v)
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ],
            "suppressed": [
                (decode(i), v)
                for v, i in zip(bottom.values.tolist(), bottom.indices.tolist(), strict=True)
            ],
        }
    return out


def decoder_markdown(top_tokens: dict[int, dict[str, Any]], *, title: str) -> str:
    """`decoder_top_tokens` as Markdown: one table per latent, promoted beside suppressed."""
    lines = [f"# {title}", ""]
    for f, entry in top_tokens.items():
        lines += [
            f"## Feature {f}",
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
    top_tokens: dict[int, dict[str, Any]], path: str | Path, *, title: str
) -> Path:
    """Write `decoder_markdown` (atomically); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, decoder_markdown(top_tokens, title=title) + "\n")
    return path
