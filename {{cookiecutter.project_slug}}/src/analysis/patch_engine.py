"""The batched forwards of ``activation_patch`` (see ``src.analysis.patching``).

One capture forward on clean + corrupted keeps what is patched; then each forward runs
many patches at once, one slice of prompts per patch, starting at the patched layer where
that is exact, and unembedding the final position only when the metric reads no other.
Native bridges run their blocks by hand, so patches of several layers share a forward;
other bridges run their own forward with the earlier blocks skipped, one layer a forward,
and per-position patches there also skip the positions before the patched one (their keys
and values come from the corrupted run's cache) where that is exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.analysis.forward import (
    Metric,
    block_out,
    cached_kv,
    can_start_at_layer,
    can_start_at_position,
    capture,
    final_position_suffices,
    forward_from_layer,
    hooked,
    is_native,
    model_logits,
    new_cache,
    patches_per_forward,
    prefix_cache,
    run_tail,
    takes_kv_cache,
)
from src.analysis.sweep import SweepSpec
from src.models.hooks import HEAD_COMPONENTS, hook_name, n_heads_of
from src.models.hooks import component as get_component

# On a CPU, forwards on more tokens than this cost more per token (activations spill out
# of the caches): about 1.8x on the toy model here; no loss on GPT-2-sized blocks.
CPU_TOKENS_PER_FORWARD = 2048

# Forwards that start at the patched position (see ``_from_position``) hold at most this
# many tokens on a CPU: smaller forwards waste fewer positions, and above a few hundred
# tokens a CPU gains little from batching.
CPU_TOKENS_FROM_POSITION = 512

# Components whose patch at the last layer changes the output of its own position only
# (o projection, MLP, norms and unembedding act position by position).
_LOCAL_AT_LAST_LAYER = ("head_out", "q", "attn_out", "mlp_out", "pattern")


def pattern_times_values(pattern: Tensor, v: Tensor) -> Tensor:
    """Head outputs z [batch, dest, head, d_head] of ``pattern`` [batch, head, dest, src]
    applied to values ``v`` [batch, src, kv_head, d_head] (kv heads shared as in GQA)."""
    v = v.repeat_interleave(pattern.shape[1] // v.shape[2], dim=2)
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


@dataclass
class Inputs:
    """What the patched forwards need, from one capture forward on clean + corrupted."""

    targets: dict[int, Tensor]  # layer -> clean values patched in [batch, pos, ...]
    resid_pre: dict[int, Tensor]  # layer -> corrupted resid_pre [batch, pos, d_model]
    corrupted_logits: Tensor | None  # final position only if final_only
    kv: list[tuple[Tensor, Tensor]] | None = None  # corrupted keys and values per layer


def capture_inputs(
    model: Any,
    points: dict[str, Any],
    clean: Tensor,
    corrupted: Tensor,
    spec: SweepSpec,
    logits: bool,
    final_only: bool = False,
    kv: bool = False,
) -> Inputs:
    """Capture the clean targets and corrupted residual streams in one forward (stopped
    after the last of them unless the corrupted ``logits`` are needed too), and with ``kv``
    (which needs ``logits``) the corrupted keys and values of every layer."""
    layers, component = spec.values["layer"], spec.component
    per_layer = (
        ["pattern", "v", "z"] if component == "pattern" else [get_component(component).point]
    )
    names = sorted({hook_name(p, layer) for layer in layers for p in [*per_layer, "resid_pre"]})
    n = clean.shape[0]
    cache = new_cache() if kv else None
    both_logits, acts = capture(
        model, points, torch.cat([clean, corrupted]), names, logits, final_only, cache
    )
    corrupted_logits = None if both_logits is None else both_logits[n:]
    corrupted_kv = None if cache is None else cached_kv(cache, slice(n, None))
    clean_acts = {name: act[:n] for name, act in acts.items()}
    corrupted_acts = {name: act[n:] for name, act in acts.items()}
    resid_pre = {layer: corrupted_acts[hook_name("resid_pre", layer)] for layer in layers}
    if component != "pattern":
        hook = get_component(component).hook
        targets = {layer: clean_acts[hook(layer)] for layer in layers}
        return Inputs(targets, resid_pre, corrupted_logits, corrupted_kv)
    targets = {
        layer: _pattern_target(layer, clean_acts, corrupted_acts[hook_name("v", layer)])
        for layer in layers
    }
    return Inputs(targets, resid_pre, corrupted_logits, corrupted_kv)


def _pattern_target(layer: int, clean_acts: dict[str, Tensor], corrupted_v: Tensor) -> Tensor:
    """The head outputs of the clean pattern on the corrupted values, after checking that
    ``z = pattern @ v`` holds on the clean run."""
    pattern = clean_acts[hook_name("pattern", layer)]
    z = pattern_times_values(pattern, clean_acts[hook_name("v", layer)])
    expected = clean_acts[hook_name("z", layer)]
    if z.shape != expected.shape or not torch.allclose(z, expected, rtol=1e-3, atol=1e-4):
        raise RuntimeError(
            f"layer {layer}: the head outputs are not pattern @ values, so the attention "
            "pattern cannot be patched through them for this model"
        )
    return pattern_times_values(pattern, corrupted_v)


def _patch_hook(act: Tensor, hook: Any, *, mask: Tensor, target: Tensor) -> Tensor:
    """Patch ``target`` [batch, ...] into the slices of ``act`` [slices * batch, ...] where
    ``mask`` [slices, 1, ...] is True: all slices in one ``torch.where``."""
    n_slices = mask.shape[0]
    act_slices = act.reshape(n_slices, -1, *act.shape[1:])
    return torch.where(mask, target, act_slices).reshape(act.shape)


def _layer_mask(
    spec: SweepSpec, index: list[tuple[int, ...]], lo: int, n_slices: int, n_pos: int, n_heads: int
) -> Tensor:
    """Boolean mask [n_slices, 1, pos, 1] (residual-like) or [n_slices, 1, pos, head, 1]
    (heads), True where slice ``lo + i`` patches ``index[i]``."""
    heads_axis = spec.component in HEAD_COMPONENTS
    mask = torch.zeros(n_slices, n_pos, n_heads if heads_axis else 1, dtype=torch.bool)
    rows = torch.arange(lo, lo + len(index))
    named = [dict(zip(spec.axes, ix, strict=True)) for ix in index]
    pos = torch.tensor([ix["pos"] for ix in named]) if spec.per_position else slice(None)
    head = torch.tensor([ix["head"] for ix in named]) if heads_axis else 0
    mask[rows, pos, head] = True
    if heads_axis:
        return mask[:, None, :, :, None]
    return mask[:, None, :, :]


@dataclass
class Patcher:
    """Runs the patched forwards of one ``activation_patch`` call."""

    model: Any
    spec: SweepSpec
    metric: Metric
    points: dict[str, Any]
    corrupted: Tensor
    inputs: Inputs
    start_at_layer: bool
    final_only: bool
    # keys and values of the corrupted run per layer, when forwards may start at the patched
    # position (per-position patches of a final-position metric, on other than native bridges)
    kv: list[tuple[Tensor, Tensor]] | None = None

    @property
    def by_hand(self) -> bool:
        """Blocks run by hand from the cached residual streams (native bridges): patches
        of several layers share a forward, each joining it at its own layer. Other bridges
        starting at a layer run their own forward, for the patches of one layer."""
        return self.start_at_layer and is_native(self.model)

    def start_position(self, chunk: list[tuple[int, ...]]) -> int:
        """The first position the forward of ``chunk`` runs: its first patched position when
        the earlier ones come from the key/value cache, else 0."""
        if self.kv is None:
            return 0
        pos_axis = self.spec.axes.index("pos")
        return min(ix[pos_axis] for ix in chunk)

    def hooks(
        self, chunk: list[tuple[int, ...]], counts: dict[int, int], start: int = 0
    ) -> list[tuple]:
        """One patch hook per layer of ``chunk`` (sorted by layer; ``counts``: patches per
        layer), each patching its slices of prompts (of the positions from ``start``)."""
        n_pos = self.corrupted.shape[1]
        n_heads = n_heads_of(self.model, self.spec.component)
        hook = get_component(self.spec.component).hook
        hooks, lo = [], 0
        for layer, n in counts.items():
            # from the cache, rows join at their own layer, so this layer's slices come last
            present = lo + n if self.by_hand else len(chunk)
            mask = _layer_mask(self.spec, chunk[lo : lo + n], lo, present, n_pos, n_heads)
            target = self.inputs.targets[layer][:, start:]
            mask = mask[:, :, start:].to(target.device)
            fn = partial(_patch_hook, mask=mask, target=target)
            hooks.append((self.points[hook(layer)], fn))
            lo += n
        return hooks

    def logits(self, chunk: list[tuple[int, ...]]) -> Tensor:
        """Logits of the corrupted run with one patch per slice of prompts, for the indices
        of ``chunk`` (sorted by layer): [slices * batch, pos (1 if final_only), d_vocab]."""
        layer_of = [ix[0] for ix in chunk]
        counts = {layer: layer_of.count(layer) for layer in sorted(set(layer_of))}
        start = self.start_position(chunk)
        with hooked(self.hooks(chunk, counts, start)):
            if not self.by_hand:
                tokens = self.corrupted[:, start:].repeat(len(chunk), 1)
                if not self.start_at_layer:
                    return self.model(tokens)
                (layer,) = counts  # one layer per forward (patch_all)
                resid = self.inputs.resid_pre[layer][:, start:].repeat(len(chunk), 1, 1)
                prefix = prefix_cache(self.kv, start, len(chunk)) if start else None
                return forward_from_layer(self.model, tokens, resid, layer, self.final_only, prefix)
            resid = None
            first = layer_of[0]
            for layer, block in enumerate(self.model.blocks[first:], start=first):
                if layer in counts:
                    new = self.inputs.resid_pre[layer].repeat(counts[layer], 1, 1)
                    resid = new if resid is None else torch.cat([resid, new])
                resid = block_out(block(resid))
            if self.final_only:
                resid = resid[:, -1:]
            return self.model.unembed(self.model.ln_final(resid))

    def run(self, chunk: list[tuple[int, ...]]) -> list[Tensor]:
        """The metric of each patch of ``chunk``."""
        return self.evaluate(self.logits(chunk), len(chunk))

    def evaluate(self, logits: Tensor, n_slices: int) -> list[Tensor]:
        """The metric of each slice of prompts of ``logits`` (one position: broadcast)."""
        n_prompts, n_pos = self.corrupted.shape
        logits = logits.expand(-1, n_pos, -1)
        return [
            torch.as_tensor(self.metric(logits[s * n_prompts : (s + 1) * n_prompts]))
            for s in range(n_slices)
        ]


def patch_all(
    patcher: Patcher, indices: list[tuple[int, ...]], memory_budget_mb: float, progress: bool
) -> list[Tensor]:
    """Metric values of every index, in forwards of as many patches as the budget allows."""
    model, corrupted = patcher.model, patcher.corrupted
    bar = tqdm(
        total=len(indices),
        desc=f"patch {patcher.spec.component}",
        unit="patch",
        disable=not progress,
    )
    values: dict[tuple[int, ...], Tensor] = {}
    if patcher.final_only:
        values = _unreachable(patcher, indices)
        bar.update(len(values))
    todo = [index for index in indices if index not in values]
    n_prompts, n_pos = corrupted.shape
    k = patches_per_forward(model, n_prompts, n_pos, memory_budget_mb, not patcher.final_only)
    if corrupted.device.type == "cpu":
        k = min(k, max(1, CPU_TOKENS_PER_FORWARD // (n_prompts * n_pos)))
    by_layer = patcher.start_at_layer and not patcher.by_hand
    groups = [list(g) for _, g in itertools.groupby(todo, lambda ix: ix[0])] if by_layer else [todo]
    if patcher.kv is None:
        chunks = [group[lo : lo + k] for group in groups for lo in range(0, len(group), k)]
    else:
        tokens = k * n_prompts * n_pos
        if corrupted.device.type == "cpu":
            tokens = min(tokens, CPU_TOKENS_FROM_POSITION)
        pos_axis = patcher.spec.axes.index("pos")
        chunks = [
            chunk
            for group in groups
            for chunk in _from_position(group, pos_axis, n_prompts, n_pos, k, tokens)
        ]
    for chunk in chunks:
        values.update(zip(chunk, patcher.run(chunk), strict=True))
        bar.update(len(chunk))
    bar.close()
    return [values[index] for index in indices]


def _from_position(
    group: list[tuple[int, ...]], pos_axis: int, n_prompts: int, n_pos: int, k: int, tokens: int
) -> list[list[tuple[int, ...]]]:
    """Chunks of the patches of one layer for forwards that start at their chunk's first
    patched position: latest positions first, each chunk of at most ``k`` patches and
    ``tokens`` tokens (prompts x positions run), so that patches late in the prompt share
    short forwards and few positions are run that a patch does not need."""
    chunks: list[list[tuple[int, ...]]] = []
    for index in sorted(group, key=lambda ix: -ix[pos_axis]):
        run = n_prompts * (n_pos - index[pos_axis])  # tokens of a forward from its position
        if chunks and len(chunks[-1]) < k and (len(chunks[-1]) + 1) * run <= tokens:
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return chunks


def make_patcher(
    model: Any,
    spec: SweepSpec,
    metric: Metric,
    points: dict[str, Any],
    clean: Tensor,
    corrupted: Tensor,
) -> Patcher:
    """The patcher of one call, from its capture forward: starting at the patched layer
    where that gives the model's logits (checked once, at the last layer patched, on other
    than native bridges), and unembedding only the final position when the metric reads no
    other."""
    final_only = final_position_suffices(model, metric, *corrupted.shape)
    # the corrupted logits are needed to check a non-native bridge's forwards only
    logits = not is_native(model)
    # keys and values, to start per-position patches at their position (checked below)
    kv = final_only and spec.per_position and takes_kv_cache(model)
    inputs = capture_inputs(
        model, points, clean, corrupted, spec, logits, logits and final_only, kv
    )
    last = spec.values["layer"][-1]
    start_at_layer = can_start_at_layer(
        model, corrupted, inputs.resid_pre[last], last, inputs.corrupted_logits, final_only
    )
    final_only = final_only and start_at_layer
    prefix = inputs.kv if final_only else None
    first = spec.values["layer"][0]
    if prefix is not None and not can_start_at_position(
        model, corrupted, inputs.resid_pre[first], first, prefix, inputs.corrupted_logits
    ):
        prefix = None
    return Patcher(
        model, spec, metric, points, corrupted, inputs, start_at_layer, final_only, prefix
    )


def _unreachable(patcher: Patcher, indices: list[tuple[int, ...]]) -> dict[tuple, Tensor]:
    """Indices whose patch cannot reach the final position, with their value: the corrupted
    run's metric. These are per-position patches at the last layer, before the final
    position, of a component in ``_LOCAL_AT_LAST_LAYER``; only for a metric that reads the
    final position alone."""
    spec, model = patcher.spec, patcher.model
    last_layer, last_pos = model.cfg.n_layers - 1, patcher.corrupted.shape[1] - 1
    if not spec.per_position or spec.component not in _LOCAL_AT_LAST_LAYER:
        return {}
    pos_axis = spec.axes.index("pos")
    skipped = [ix for ix in indices if ix[0] == last_layer and ix[pos_axis] != last_pos]
    if not skipped:
        return {}
    logits = patcher.inputs.corrupted_logits
    if logits is None:  # native bridges: not captured
        logits = run_tail(model, patcher.inputs.resid_pre[last_layer], last_layer, True)
    baseline = patcher.evaluate(logits, n_slices=1)[0]
    return dict.fromkeys(skipped, baseline)


def clean_metric(model: Any, points: dict[str, Any], clean: Tensor, metric: Metric) -> Tensor:
    """``metric`` of the clean run; with a final-position metric, only the final position
    is unembedded (by hand on native bridges)."""
    n_pos = clean.shape[1]
    if not final_position_suffices(model, metric, *clean.shape):
        return torch.as_tensor(metric(model(clean)))
    if is_native(model):
        last = model.cfg.n_layers - 1
        name = hook_name("resid_pre", last)
        _, acts = capture(model, points, clean, [name], logits=False)
        logits = run_tail(model, acts[name], last, final_only=True)
    else:
        logits = model_logits(model, clean, final_only=True)
    return torch.as_tensor(metric(logits.expand(-1, n_pos, -1)))
