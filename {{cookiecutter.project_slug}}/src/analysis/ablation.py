"""Ablations: zero, mean and resample ablation of heads, attention / MLP outputs, the
residual stream and directions in it, batched like the fast activation patching.

An ablation is a patch whose value is not another prompt's activation but zeros, the mean
over a reference dataset, or a resampled reference prompt's activation. So it reuses the
machinery of ``src.analysis.patching``: one capture forward, forwards that start at the
ablated layer, many ablations per forward (one slice of prompts each). Layouts are those of
``activation_patch`` (``src.models.hooks.result_axes``), NaN outside ``layers`` / ``heads`` /
``positions``.

A ``direction`` (a unit vector in d_model, or one per layer) ablates only the stream's
component along it at a residual-like point (``resid_pre``, ``attn_out``, ``mlp_out``): zero
sets the projection to 0, mean to its mean over the reference, resample to a reference
prompt's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from src.analysis.forward import Metric, capture, hook_points, model_device
from src.analysis.patch_engine import make_patcher, patch_all
from src.analysis.sweep import check_tokens, sweep_spec
from src.models.hooks import HEAD_COMPONENTS
from src.models.hooks import component as get_component

AblationKind = Literal["zero", "mean", "resample"]
ABLATIONS = ("zero", "mean", "resample")
# Components an ablation replaces (the attention pattern is patched through z: not here).
ABLATABLE = ("resid_pre", "attn_out", "mlp_out", "head_out", "q", "k", "v")


@dataclass
class AblationResult:
    """Ablated metric per entry, and the unablated baseline.

    ``values``: [*layout] or [*layout, batch] (per-prompt metric); resample ablation adds a
    leading resample axis: [n_resamples, *layout(, batch)]. ``baseline``: the metric of the
    unablated run (scalar or [batch]).
    """

    values: Tensor
    baseline: Tensor
    axes: tuple[str, ...]


def _unit_directions(direction: Tensor, n_layers: int, d_model: int) -> Tensor:
    """``direction`` [d_model] or [n_layers, d_model] as unit vectors [n_layers, d_model]."""
    direction = torch.as_tensor(direction, dtype=torch.float32)
    if direction.shape == (d_model,):
        direction = direction.expand(n_layers, d_model)
    if direction.shape != (n_layers, d_model):
        raise ValueError(
            f"direction must be [d_model] = [{d_model}] or [n_layers, d_model] = "
            f"[{n_layers}, {d_model}], got {list(direction.shape)}"
        )
    norms = direction.norm(dim=-1, keepdim=True)
    if not (norms > 0).all():
        raise ValueError("direction must be non-zero")
    return direction / norms


def ablate(
    model: Any,
    tokens: Tensor,
    metric: Metric,
    component: str,
    per_position: bool = False,
    *,
    ablation: AblationKind = "zero",
    reference: Tensor | None = None,
    direction: Tensor | None = None,
    n_resamples: int = 5,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    memory_budget_mb: float = 1024,
    together: bool = False,
    progress: bool = False,
) -> AblationResult:
    """``metric`` of the run on ``tokens`` with one activation of ``component`` ablated, for
    every index (layout as ``activation_patch``).

    ``ablation``: "zero"; "mean" (the mean over the ``reference`` prompts [m, pos] at each
    position; over positions too when their length differs from ``tokens``'); "resample"
    (each prompt gets the activation of a random ``reference`` prompt, ``n_resamples`` draws
    with ``seed``; the reference must have ``tokens``' length). ``reference`` defaults to
    ``tokens`` (resampling then draws another prompt of the batch where it can).
    ``direction``: ablate only along it (see the module docstring). ``together``: every
    selected index ablated at once, in one forward (e.g. all induction heads): ``values``
    is then one value (per prompt), ``axes`` empty.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if component not in ABLATABLE:
        raise ValueError(f"component={component!r} cannot be ablated; allowed: {ABLATABLE}")
    if direction is not None and component in HEAD_COMPONENTS:
        raise ValueError(
            f"direction applies to resid_pre, attn_out or mlp_out, not to {component!r}"
        )
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    check_tokens("tokens", tokens)
    device = model_device(model)
    tokens = tokens.to(device)
    reference = tokens if reference is None else reference.to(device)
    check_tokens("reference", reference)
    if ablation == "resample" and reference.shape[1] != tokens.shape[1]:
        raise ValueError(
            f"resample ablation needs reference prompts of the tokens' length "
            f"{tokens.shape[1]}, got {reference.shape[1]}"
        )
    spec = sweep_spec(model, tokens, tokens, component, per_position, layers, heads, positions)
    layers_used = spec.values["layer"]
    hook = get_component(component).hook
    points = hook_points(model)
    units = None
    if direction is not None:
        units = _unit_directions(direction, model.cfg.n_layers, model.cfg.d_model).to(device)

    with torch.no_grad():
        # one capture forward: the ablated prompts' residual streams, with the reference's
        # activations (as patching's clean run) where their lengths match, or the prompts'
        # own ones for a direction (then the reference gets a forward of its own)
        same_length = reference.shape[1] == tokens.shape[1]
        if units is not None or (ablation != "zero" and not same_length):
            source = tokens
        else:
            source = reference if ablation != "zero" else tokens[:0]
        patcher = make_patcher(model, spec, metric, points, source, tokens)
        own = patcher.inputs.targets  # [len(source), pos, ...] per layer
        reference_acts: dict[int, Tensor] = {}
        if ablation != "zero":
            if source is reference:
                reference_acts = own
            else:
                names = [hook(layer) for layer in layers_used]
                _, acts = capture(model, points, reference, names, logits=False)
                reference_acts = {layer: acts[hook(layer)] for layer in layers_used}
        baseline = torch.as_tensor(patcher.evaluate(_unablated_logits(patcher), 1)[0])

        def run(targets: dict[int, Tensor]) -> Tensor:
            patcher.inputs.targets = targets
            if together:
                return _ablate_together(patcher, spec).float().cpu()
            values = patch_all(patcher, spec.indices(), memory_budget_mb, progress)
            stacked = torch.stack([torch.as_tensor(v, device=device) for v in values])
            result = torch.full(spec.shape + stacked.shape[1:], torch.nan)
            result[tuple(torch.tensor(spec.indices()).T)] = stacked.float().cpu()
            return result

        if ablation == "resample":
            generator = torch.Generator().manual_seed(seed)
            draws = [_draw(len(tokens), len(reference), generator) for _ in range(n_resamples)]
            values = torch.stack(
                [run(_targets(own, reference_acts, layers_used, units, draw)) for draw in draws]
            )
        else:
            values = run(_targets(own, reference_acts, layers_used, units, None))
    axes = () if together else spec.axes
    return AblationResult(values=values, baseline=baseline.float().cpu(), axes=axes)


def _ablate_together(patcher: Any, spec: Any) -> Tensor:
    """The metric with every index of ``spec`` ablated at once (the patcher's targets): one
    forward, from the first ablated layer on native bridges."""
    from functools import partial

    from src.analysis.forward import hooked, is_native, run_tail
    from src.analysis.patch_engine import _layer_mask, _patch_hook
    from src.models.hooks import n_heads_of

    model, tokens = patcher.model, patcher.corrupted
    n_pos, n_heads = tokens.shape[1], n_heads_of(model, spec.component)
    indices = spec.indices()
    hooks = []
    for layer in sorted({ix[0] for ix in indices}):
        mine = [ix for ix in indices if ix[0] == layer]
        mask = _layer_mask(spec, mine, 0, len(mine), n_pos, n_heads).any(0, keepdim=True)
        target = patcher.inputs.targets[layer]
        fn = partial(_patch_hook, mask=mask.to(target.device), target=target)
        hooks.append((patcher.points[get_component(spec.component).hook(layer)], fn))
    with hooked(hooks):
        if is_native(model):
            start = min(ix[0] for ix in indices)
            logits = run_tail(model, patcher.inputs.resid_pre[start], start, patcher.final_only)
        else:
            logits = model(tokens)
    return patcher.evaluate(logits, 1)[0]


def _draw(n: int, m: int, generator: torch.Generator) -> Tensor:
    """For each of ``n`` prompts, a random reference prompt; when the reference is the
    prompts themselves (m == n > 1), never the prompt itself."""
    if m == n and n > 1:
        return (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
    return torch.randint(0, m, (n,), generator=generator)


def _targets(
    own: dict[int, Tensor],
    reference: dict[int, Tensor],
    layers: list[int],
    units: Tensor | None,
    draw: Tensor | None,
) -> dict[int, Tensor]:
    """The value patched in at each layer: zeros (no reference), the reference mean, or the
    drawn reference prompts; along ``units`` only when given."""
    targets = {}
    for layer in layers:
        act = own[layer]
        if not reference:
            value = act.new_zeros(1, *act.shape[1:])
        elif draw is not None:
            value = reference[layer][draw.to(act.device)]
        else:
            ref = reference[layer]
            same_length = ref.shape[1] == act.shape[1]
            value = ref.mean(0, keepdim=True) if same_length else ref.mean((0, 1), keepdim=True)
        if units is not None:
            unit = units[layer].to(act.dtype)
            projection = (value * unit).sum(-1, keepdim=True)
            value = act - ((act * unit).sum(-1, keepdim=True) - projection) * unit
        targets[layer] = value.to(act.dtype)
    return targets


def _unablated_logits(patcher: Any) -> Tensor:
    """Logits of the unablated run (final position only where the patcher reads no other)."""
    from src.analysis.forward import is_native, model_logits, run_tail

    model = patcher.model
    if patcher.inputs.corrupted_logits is not None:
        return patcher.inputs.corrupted_logits
    if is_native(model):
        start = min(patcher.inputs.resid_pre)
        return run_tail(model, patcher.inputs.resid_pre[start], start, patcher.final_only)
    return model_logits(model, patcher.corrupted, patcher.final_only)
