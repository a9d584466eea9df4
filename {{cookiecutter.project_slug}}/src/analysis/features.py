"""SAE features over cached activations: how often each latent fires, what makes it fire,
what it writes.

- feature density: the fraction of tokens on which each latent is active (> 0);
- top-activating contexts: each latent's ``k`` largest activations over the cached tokens,
  with a window of surrounding tokens (text when the model has a tokenizer, else ids);
- decoder directions through the unembedding: ``W_dec[f] @ W_U``, the tokens a latent
  promotes (and suppresses) directly, as in the logit lens;
- activation histograms: each latent's active values in log-spaced bins (``HIST_EDGES``);
- feature ablation and steering on a few sequences (``src.analysis.feature_effects``).

``feature_stats`` takes ``(tokens, activations)`` chunks (one pass, one chunk in memory at a
time); ``store_chunks`` feeds it from an ``ActivationStore``, ``model_chunks`` from forwards of
a model on tokens (for an SAE with no cache of its own, e.g. a pretrained one);
``feature_report`` gathers all three as plain data, with each latent's Neuronpedia page when
the SAE has one, which the runners save beside the SAE for the figures. (sae-vis and
sae-dashboard cannot be installed beside transformer-lens 3; this is the small part of them
we need.) ``src.visualization.features`` draws the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.analysis.forward import capture, hook_points
from src.analysis.norms import final_norm_linear
from src.analysis.tokens import Decode, token_decoder
from src.models.saes import neuronpedia_url, sae_neuronpedia_id

Chunk = tuple[Tensor, Tensor]  # tokens [n_seq, ctx], activations [n_seq, ctx, d_in]
# Bins of the activation histograms: log-spaced over 1e-3 .. 1e3 (values outside go to the
# first or last bin), the same for every latent so one pass fills them all.
HIST_EDGES = torch.logspace(-3, 3, 49, dtype=torch.float64)


@dataclass
class FeatureStats:
    """One pass of an SAE over cached activations.

    ``top_values[j, f]`` is latent ``f``'s ``j``-th largest activation (descending) at the
    flat token index ``top_indices[j, f]`` (``seq * ctx + pos`` into ``tokens``); ``-1`` /
    ``-inf`` where fewer than ``k`` tokens were seen. Ignored tokens (``n_ignored`` of the
    ``n_tokens``) count as silent for every latent and are left out of the density.
    """

    counts: Tensor  # [d_sae] tokens on which the latent is > 0
    n_tokens: int
    top_values: Tensor  # [k, d_sae]
    top_indices: Tensor  # [k, d_sae] int64
    tokens: Tensor  # [n_seq, ctx] int64, all cached tokens
    n_ignored: int = 0
    histograms: Tensor | None = None  # [d_sae, len(HIST_EDGES) - 1] counts of active values

    @property
    def density(self) -> Tensor:
        """Fraction of the (not ignored) tokens on which each latent fires, [d_sae]."""
        return self.counts.double() / max(self.n_tokens - self.n_ignored, 1)

    @property
    def dead(self) -> Tensor:
        """Latents that never fired, [d_sae] bool."""
        return self.counts == 0


@dataclass
class _Running:
    """The running counts and top ``k`` activations of ``feature_stats``, on the SAE's device."""

    sae: Any
    k: int
    batch_size: int
    counts: Tensor = field(init=False)
    top_values: Tensor = field(init=False)
    top_indices: Tensor = field(init=False)
    histograms: Tensor = field(init=False)
    edges: Tensor = field(init=False)  # log10 of the inner bin edges, on the SAE's device

    def __post_init__(self) -> None:
        device, d_sae = self.sae.W_dec.device, int(self.sae.cfg.d_sae)
        self.counts = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.histograms = torch.zeros(
            d_sae * (len(HIST_EDGES) - 1), dtype=torch.long, device=device
        )
        self.edges = torch.log10(HIST_EDGES[1:-1]).float().to(device)
        self.top_values = torch.full((self.k, d_sae), -math.inf, device=device)
        self.top_indices = torch.full((self.k, d_sae), -1, dtype=torch.long, device=device)

    def add(self, flat: Tensor, offset: int, keep: Tensor | None = None) -> None:
        """Encode activations ``flat`` [n_tokens, d_in] whose first token has flat index
        ``offset``, ``batch_size`` tokens at a time; where ``keep`` [n_tokens] is False the
        latents count as 0."""
        if flat.shape[1] != self.sae.cfg.d_in:
            raise ValueError(
                f"activations have d={flat.shape[1]} but the SAE's d_in is {self.sae.cfg.d_in}"
            )
        device, dtype = self.sae.W_dec.device, self.sae.W_dec.dtype
        for start in range(0, flat.shape[0], self.batch_size):
            latents = self.sae.encode(flat[start : start + self.batch_size].to(device, dtype))
            latents = latents.float()
            if keep is not None:
                latents *= keep[start : start + self.batch_size, None].to(device)
            self.counts += (latents > 0).sum(0)
            self._histogram(latents)
            batch_values, batch_order = latents.topk(min(self.k, latents.shape[0]), dim=0)
            values = torch.cat([self.top_values, batch_values])
            indices = torch.cat([self.top_indices, batch_order + offset + start])
            self.top_values, order = values.topk(self.k, dim=0)
            self.top_indices = indices.gather(0, order)

    def _histogram(self, latents: Tensor) -> None:
        """Add the active values of ``latents`` [n, d_sae] to each latent's histogram."""
        rows, cols = torch.nonzero(latents > 0, as_tuple=True)
        bins = torch.bucketize(latents[rows, cols].log10(), self.edges)
        n_bins = len(HIST_EDGES) - 1
        self.histograms.scatter_add_(0, cols * n_bins + bins, torch.ones_like(bins))


def _check_chunk(tokens: Tensor, acts: Tensor, ctx: int | None) -> None:
    if tokens.ndim != 2 or acts.shape[:2] != tokens.shape:
        raise ValueError(
            f"a chunk must be tokens [n_seq, ctx] and activations [n_seq, ctx, d_in], got "
            f"{tuple(tokens.shape)} and {tuple(acts.shape)}"
        )
    if ctx is not None and tokens.shape[1] != ctx:
        raise ValueError(f"every chunk must have context {ctx}, got {tokens.shape[1]}")


@torch.no_grad()
def feature_stats(
    sae: Any,
    chunks: Iterable[Chunk],
    *,
    k: int = 10,
    batch_size: int = 1024,
    max_tokens: int | None = None,
    ignore_tokens: Sequence[int] = (),
    progress: bool = False,
) -> FeatureStats:
    """Firing counts and each latent's top ``k`` activations over ``chunks`` of
    ``(tokens [n_seq, ctx], activations [n_seq, ctx, d_in])`` (trailing activation
    dimensions are flattened), encoded ``batch_size`` tokens at a time on the SAE's device.

    ``ignore_tokens``: token ids whose positions are left out (e.g. BOS, whose residual
    stream is an outlier that many latents of a pretrained SAE fire on; Neuronpedia leaves
    it out too).

    ``max_tokens``: stop after the first sequences holding at least this many tokens (the
    statistics of a large cache settle long before its end). Memory: one batch of latents
    ``[batch_size, d_sae]`` plus ``[k, d_sae]`` running top values; the tokens on the CPU.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0 or None, got {max_tokens}")
    running = _Running(sae, k, batch_size)
    all_tokens: list[Tensor] = []
    offset, ctx, n_ignored = 0, None, 0
    ignored = torch.tensor(list(ignore_tokens), dtype=torch.long)
    for tokens, acts in tqdm(chunks, desc="encoding", unit="chunk", disable=not progress):
        _check_chunk(tokens, acts, ctx)
        ctx = tokens.shape[1]
        if max_tokens is not None:
            n_seq = math.ceil((max_tokens - offset) / ctx)
            tokens, acts = tokens[:n_seq], acts[:n_seq]
        keep = None
        if len(ignored):
            keep = ~torch.isin(tokens.reshape(-1).cpu().long(), ignored)
            n_ignored += int((~keep).sum())
        running.add(acts.reshape(tokens.numel(), -1), offset, keep)
        all_tokens.append(tokens.cpu().long())
        offset += tokens.numel()
        if max_tokens is not None and offset >= max_tokens:
            break
    if ctx is None:
        raise ValueError("no activations: the chunks were empty")
    return FeatureStats(
        running.counts.cpu(),
        offset,
        running.top_values.cpu(),
        running.top_indices.cpu(),
        torch.cat(all_tokens),
        n_ignored,
        running.histograms.reshape(len(running.counts), -1).cpu(),
    )


def store_chunks(store: Any, hook_name: str) -> Iterator[Chunk]:
    """``(tokens, activations)`` of an ``ActivationStore`` one shard at a time (the shard
    format: ``tokens`` and one tensor per hook name)."""
    from safetensors import safe_open

    for path in store.shard_paths:
        with safe_open(str(path), framework="pt") as shard:
            yield shard.get_tensor("tokens"), shard.get_tensor(hook_name)


@torch.no_grad()
def model_chunks(
    model: Any,
    tokens: Tensor,
    hook_name: str,
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "forward",
) -> Iterator[Chunk]:
    """``(tokens, activations)`` of ``model``'s hook ``hook_name`` on ``tokens`` [n_seq, ctx],
    ``batch_size`` sequences per forward, each forward stopped once the hook has fired
    (a progress bar labelled ``desc`` if ``progress``)."""
    points = hook_points(model)
    if hook_name not in points:
        raise ValueError(f"the model has no hook point {hook_name!r} (the SAE's hook_name)")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_seq, ctx], got {tuple(tokens.shape)}")
    device = next(model.parameters()).device
    for start in tqdm(
        range(0, len(tokens), batch_size), desc=desc, unit="batch", disable=not progress
    ):
        batch = tokens[start : start + batch_size]
        _, acts = capture(model, points, batch.to(device), [hook_name], logits=False)
        yield batch.cpu(), acts[hook_name]


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


def choose_features(density: Tensor, n: int, *, seed: int = 0) -> list[int]:
    """``n`` live latents chosen at random (seeded), in index order: an unbiased sample to
    look at (the densest ones are often the least interpretable)."""
    alive = torch.nonzero(torch.as_tensor(density) > 0).flatten()
    if len(alive) <= n:
        return alive.tolist()
    generator = torch.Generator().manual_seed(seed)
    return sorted(alive[torch.randperm(len(alive), generator=generator)[:n]].tolist())


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


@torch.no_grad()
def decoder_logits(
    W_dec: Tensor,
    W_U: Tensor,
    features: Sequence[int],
    norm: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``norm(W_dec[features]) @ W_U``: ``[len(features), d_vocab]``, float32 on the CPU.

    ``W_dec`` is the SAE's ``[d_sae, d_in]`` (d_in = d_model: an SAE on the residual
    stream), ``W_U`` the model's ``[d_model, d_vocab]``; ``norm`` e.g.
    ``src.analysis.norms.final_norm_linear``.
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


def feature_report(
    sae: Any,
    model: Any,
    activations: Any,
    hook_name: str,
    *,
    n_features: int = 20,
    k: int = 10,
    k_tokens: int = 10,
    max_tokens: int | None = 2**20,
    ignore_tokens: Sequence[int] = (),
    neuronpedia_id: str | None = None,
    progress: bool = False,
    effect_seqs: int = 16,
    batch_size: int = 64,
) -> dict[str, Any]:
    """What the SAE feature figures show, as JSON-able data: the density of every latent
    over the first ``max_tokens`` tokens of ``activations`` (an ``ActivationStore``, or
    ``(tokens, activations)`` chunks such as `model_chunks`), ``n_features`` live latents
    (`choose_features`), their top ``k`` contexts and the ``k_tokens`` tokens each decoder
    direction promotes and suppresses through ``model``'s unembedding; positions of
    ``ignore_tokens`` left out (`feature_stats`).

    ``{"hook_name", "n_tokens", "n_ignored", "density", "features", "joiner" (between context tokens),
    "contexts" (`top_contexts`), "decoder" (`decoder_top_tokens`, feature keys as text),
    "neuronpedia_id", "links" (feature as text -> its Neuronpedia page; empty without an
    id), "histograms" ({"edges", "counts": feature as text -> counts of its active values
    per bin}), "ablation" and "steering" (``src.analysis.feature_effects`` on the first
    ``effect_seqs`` sequences, each latent steered with its largest activation; empty for 0
    or for an SAE whose hook point the model lacks)}``. ``neuronpedia_id``: default the
    SAE's own (``SAE.from_pretrained`` sets it). ``batch_size``: rows per intervention
    forward.
    """
    if hasattr(activations, "shard_paths"):
        activations = store_chunks(activations, hook_name)
    stats = feature_stats(
        sae, activations, k=k, max_tokens=max_tokens, ignore_tokens=ignore_tokens,
        progress=progress,
    )  # fmt: skip
    features = choose_features(stats.density, n_features)
    decode = token_decoder(model)
    logits = decoder_logits(sae.W_dec, model.W_U, features, final_norm_linear(model))
    decoder = decoder_top_tokens(logits, features, k=k_tokens, decode=decode)
    neuronpedia_id = neuronpedia_id or sae_neuronpedia_id(sae)
    effects = _effects(
        sae, model, stats, hook_name, features, effect_seqs, ignore_tokens, batch_size
    )
    histograms = stats.histograms
    return {
        "hook_name": hook_name,
        "n_tokens": stats.n_tokens,
        "n_ignored": stats.n_ignored,
        "density": stats.density.tolist(),
        "features": features,
        "joiner": "" if getattr(model, "tokenizer", None) is not None else " ",
        "contexts": top_contexts(stats, features, decode=decode),
        "decoder": {str(f): entry for f, entry in decoder.items()},
        "neuronpedia_id": neuronpedia_id,
        "links": {str(f): neuronpedia_url(neuronpedia_id, f) for f in features}
        if neuronpedia_id
        else {},
        "histograms": {
            "edges": HIST_EDGES.tolist(),
            "counts": {str(f): histograms[f].tolist() for f in features}
            if histograms is not None
            else {},
        },
        **effects,
    }


def _effects(
    sae: Any,
    model: Any,
    stats: FeatureStats,
    hook_name: str,
    features: list[int],
    n_seq: int,
    ignore_tokens: Sequence[int],
    batch_size: int,
) -> dict[str, Any]:
    """Feature ablation and steering of ``features`` on the first ``n_seq`` sequences, as
    report entries (feature keys as text)."""
    from src.analysis.feature_effects import feature_ablation, feature_steering

    if n_seq <= 0 or not features or hook_name not in hook_points(model):
        return {"ablation": {}, "steering": {}}
    tokens = stats.tokens[:n_seq]
    keep = ~torch.isin(tokens, torch.tensor(list(ignore_tokens), dtype=torch.long))
    ablation = feature_ablation(
        model, sae, tokens, hook_name, features, keep=keep, batch_size=batch_size
    )
    coefficients = [max(float(stats.top_values[0, f]), 0.0) for f in features]
    steering = feature_steering(
        model, sae, tokens, hook_name, features, coefficients, decode=token_decoder(model),
        batch_size=batch_size,
    )  # fmt: skip
    return {
        "ablation": {str(f): v for f, v in ablation.items()},
        "steering": {str(f): v for f, v in steering.items()},
    }
