"""Fast activation patching: clean activations into the corrupted run, many patches per forward.

Same results and layouts as ``transformer_lens.patching`` (which runs one full forward per
patched index), computed with far fewer and shorter forwards:

1. Batching. The corrupted prompts are repeated once per patch in a forward and each hook
   patches every slice at once (one ``torch.where``); ``memory_budget_mb`` bounds the number
   of patches per forward.
2. Layer skipping. Nothing before the patched layer changes, so a patch at layer ``l``
   starts from the cached corrupted ``resid_pre`` of layer ``l``. Native bridges run
   ``blocks[l:]``, ``ln_final`` and ``unembed`` by hand, and the patches of a forward join
   it at their own layer. Other (pretrained, Hugging Face) bridges run their own forward,
   one layer's patches at a time, with ``blocks[:l]`` replaced by a passthrough: the parent
   model still computes rotary positions and causal or sliding-window masks. That this
   reproduces the model's logits is checked once per call (else: full forwards, still
   batched). Activations come from one forward on clean + corrupted that keeps only what
   is patched (and stops after the last of them on native bridges).
3. Final-position logits. When the metric reads only the last position (checked once, on
   random logits), only that position is unembedded (by hand on native bridges, with
   Hugging Face's ``logits_to_keep`` on others, whose head then applies its softcap) and
   the metric gets those logits broadcast to ``[batch, pos, d_vocab]`` (TL's metric
   contract). Then per-position patches at the last layer that cannot reach the final
   position (head outputs, queries, attention or MLP outputs at an earlier position) are
   not run: their value is the corrupted run's.
4. Position skipping (pretrained bridges, final-position metrics). Nothing before the
   patched position changes either, so a per-position patch at position ``p`` runs
   positions ``p..`` only, their attention reading the corrupted keys and values of the
   earlier positions from a Hugging Face cache filled in the capture forward; forwards
   take the latest positions first, several patches each. Checked once per call against
   the full forward (else: every position).

Exact identity: patching the whole ``resid_pre`` of a layer gives the clean run.

Attention patterns are patched through the head outputs: ``z = clean pattern @ corrupted
values`` for the patched head (and destination position); the identity ``z = pattern @ v``
is checked on the clean run. On native bridges ``hook_pattern`` fires after the attention
output is computed, so editing it changes nothing, and
``transformer_lens.patching.get_act_patch_attn_head_pattern_*`` return the corrupted
baseline for every head there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from src.analysis.forward import Metric, hook_points, model_device
from src.analysis.patch_engine import clean_metric, make_patcher, patch_all
from src.analysis.sweep import sweep_spec
from src.models.hooks import HEAD_COMPONENTS, available_components


def activation_patch(
    model: Any,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    metric: Metric,
    component: str,
    per_position: bool = False,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    memory_budget_mb: float = 1024,
    progress: bool = False,
) -> Tensor:
    """``metric`` of the corrupted run with one activation of the clean run patched in, for
    every index of ``component``; layout as ``transformer_lens.patching``:

    - resid_pre / attn_out / mlp_out: [n_layers, pos] (per_position) or [n_layers] (the
      whole layer, all positions, patched at once);
    - head_out (hook_z) / q / k / v: [n_layers, pos, n_heads] or [n_layers, n_heads];
    - pattern: [n_layers, n_heads, dest_pos] or [n_layers, n_heads].

    ``layers`` / ``heads`` / ``positions`` (negative = from the end; needs per_position)
    restrict the indices patched; the others are NaN. ``metric`` maps logits
    [batch, pos, d_vocab] to a scalar, or to one value per prompt [batch], which adds a
    trailing axis to the result. Many patches share a forward, as many as fit
    ``memory_budget_mb`` (on a CPU, also at most about 2048 tokens, which runs faster).
    Returns a float32 tensor on the CPU.
    """
    spec = sweep_spec(
        model, clean_tokens, corrupted_tokens, component, per_position, layers, heads, positions
    )
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
    device = model_device(model)
    clean, corrupted = clean_tokens.to(device), corrupted_tokens.to(device)
    indices = spec.indices()
    with torch.no_grad():
        points = hook_points(model)
        if component == "resid_pre" and not per_position:
            # the whole residual stream patched: the rest of the run is the clean run
            values = [clean_metric(model, points, clean, metric)] * len(indices)
        else:
            patcher = make_patcher(model, spec, metric, points, clean, corrupted)
            values = patch_all(patcher, indices, memory_budget_mb, progress)
    # one transfer: the values stay on the model's device until here
    stacked = torch.stack([torch.as_tensor(v, device=device) for v in values]).float().cpu()
    result = torch.full(spec.shape + stacked.shape[1:], math.nan)
    result[tuple(torch.tensor(indices).T)] = stacked
    return result


def activation_patch_all(
    model: Any,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    metric: Metric,
    per_position: bool = False,
    **kwargs: Any,
) -> dict[str, Tensor]:
    """``activation_patch`` for every component the model has (no mlp_out on attention-only
    models); ``heads`` is passed to the head components only."""
    results = {}
    for component in available_components(model):
        kw = dict(kwargs)
        if component not in HEAD_COMPONENTS:
            kw.pop("heads", None)
        results[component] = activation_patch(
            model, clean_tokens, corrupted_tokens, metric, component, per_position, **kw
        )
    return results
