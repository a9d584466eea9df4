"""Attribution patching: a gradient estimate of activation patching.

``attribution_patch`` is the linear (first-order Taylor) approximation of activation patching
(Nanda 2023, "Attribution patching"; Syed et al. 2023): the effect of patching a clean
activation into the corrupted run is estimated as ``(a_clean - a_corrupted) . dMetric/da``,
with the gradient taken on the corrupted run. Every component of a kind costs the same two
forwards (clean, corrupted) and one backward, instead of one forward per patched index. It
uses the component names, result layouts and patch direction (clean into corrupted) of
``transformer_lens.patching.get_act_patch_*``, and returns the *estimated patched metric*,
so a result can be compared entry by entry with activation patching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from src.analysis.sweep import SweepSpec, sweep_spec
from src.models.hooks import HEAD_COMPONENTS, hook_name
from src.models.hooks import component as get_component

Metric = Callable[[Tensor], Tensor]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the duration (no graph through them, no ``.grad``)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def run_capturing(
    model: torch.nn.Module,
    tokens: Tensor,
    names: Sequence[str],
    perturb: Sequence[str] = (),
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Logits, the activations at ``names`` and ``perturb``, and a zero leaf per ``perturb``.

    Each ``perturb`` activation becomes ``a + delta`` with ``delta`` a zero tensor requiring
    grad: ``d out / d delta`` is the total derivative with respect to the activation, through
    later perturbed activations too (a detached leaf in its place would cut those paths).
    """
    acts: dict[str, Tensor] = {}
    deltas: dict[str, Tensor] = {}

    def make_hook(name: str, add_delta: bool) -> Callable[..., Tensor | None]:
        def hook(act: Tensor, hook: object) -> Tensor | None:
            acts[name] = act.detach().clone()
            if not add_delta:
                return None
            deltas[name] = torch.zeros_like(act, requires_grad=True)
            return act + deltas[name]

        return hook

    hooks = [(n, make_hook(n, False)) for n in names if n not in perturb]
    hooks += [(n, make_hook(n, True)) for n in perturb]
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
    missing = [name for name, _ in hooks if name not in acts]
    if missing:
        raise RuntimeError(f"hooks did not fire during the forward pass: {missing}")
    return logits, acts, deltas


def _reduce(prod: Tensor, component: str, per_position: bool) -> Tensor:
    """Sum ``(a_clean - a_corr) * grad`` of one layer over features (and positions).

    ``prod`` is ``[batch, pos, d]``, ``[batch, pos, head, d_head]`` or (pattern)
    ``[batch, head, dest, src]``; the result keeps batch first, then the layout's axes.
    """
    if component == "pattern":
        return prod.sum(-1) if per_position else prod.sum((2, 3))
    if component in HEAD_COMPONENTS:
        return prod.sum(-1) if per_position else prod.sum((1, 3))
    return prod.sum(-1) if per_position else prod.sum((1, 2))


def attribution_patch(
    model: torch.nn.Module,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    metric: Metric,
    component: str,
    per_position: bool = False,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> Tensor:
    """Attribution-patching estimate of the patched metric for every ``component``.

    Linearises activation patching (clean activation into the corrupted run) around the
    corrupted run: ``metric(corrupted) + (a_clean - a_corrupted) . dmetric/da``, summed over
    the features (and, unless ``per_position``, the positions) of each patched index. Costs a
    clean forward, a corrupted forward and one backward for all layers at once.

    Returns the ESTIMATED PATCHED METRIC (not the attribution alone), so the numbers compare
    directly with activation patching / ``transformer_lens.patching.get_act_patch_*``; subtract
    ``metric(corrupted)`` for the attribution. Layouts (``result_axes``) are TransformerLens's:

    - ``resid_pre``, ``attn_out``, ``mlp_out``: ``[n_layers, pos]`` (``per_position``) or
      ``[n_layers]`` (whole activation patched at all positions).
    - ``head_out`` (``hook_z``), ``q``, ``k``, ``v``: ``[n_layers, pos, n_heads]`` or
      ``[n_layers, n_heads]`` (``get_act_patch_attn_head_*_by_pos`` / ``_all_pos``).
    - ``pattern``: ``[n_layers, n_heads, dest_pos]`` or ``[n_layers, n_heads]``.

    ``metric`` maps logits to a scalar or to one value per prompt (``[batch]``, e.g.
    ``bind_metric(..., per_prompt=True)``); the latter adds a trailing ``[batch]`` axis, each
    prompt's estimate using only its own activations (the backward runs on the sum of the
    per-prompt values: prompts do not interact, so that gives each prompt's gradient).

    ``pattern`` means patching the attention pattern with the values held at their corrupted
    ``v``; its gradient is read through ``z = pattern @ v``, because on native
    TransformerBridge models ``hook_pattern`` is read-only (an edit there does not reach the
    logits, so TransformerLens's pattern activation patching returns ``metric(corrupted)``).

    ``layers`` / ``heads`` / ``positions`` restrict the result; entries outside are NaN.
    ``positions`` needs ``per_position=True``; ``heads`` needs a head component.

    Estimates are exact for a metric linear in the activation and poor where the metric
    saturates or the patch is large (the residual stream, notably); check what matters with
    activation patching. Gradients go through a zero tensor added at each hook
    (``torch.autograd.grad``): parameters get no ``.grad``, their ``requires_grad`` is
    restored and the model's mode is untouched. The result is on the CPU, float32 (float64 for
    a float64 model).
    """
    spec = sweep_spec(
        model, clean_tokens, corrupted_tokens, component, per_position, layers, heads, positions
    )
    value, clean, corrupted, grads = _gradients(model, clean_tokens, corrupted_tokens, metric, spec)
    per_layer = []
    for layer in spec.values["layer"]:
        name = get_component(component).activation_hook(layer)
        if component == "pattern":
            grad = _pattern_grad(grads[hook_name("z", layer)], corrupted[hook_name("v", layer)])
        else:
            grad = grads[name]
        dtype = torch.promote_types(grad.dtype, torch.float32)
        prod = (clean[name].to(dtype) - corrupted[name].to(dtype)) * grad.to(dtype)
        per_layer.append(_reduce(prod, component, per_position))
    # [layer, batch, ...] -> [layer, ..., batch]; a scalar metric sums its batch.
    attribution = torch.stack(per_layer).movedim(1, -1).cpu()
    base = value.detach().to(attribution.dtype).cpu()
    estimate = base + (attribution.sum(-1) if value.ndim == 0 else attribution)
    return _layout(estimate, spec, model.cfg.n_layers)


def _gradients(
    model: torch.nn.Module, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Metric,
    spec: SweepSpec,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:  # fmt: skip
    """The corrupted run's metric, the clean and corrupted activations, and the metric's
    gradients at the ``grad`` hooks (zeros where the metric does not depend on one)."""
    device = _device(model)
    hooks = _hook_names(spec.component, spec.values["layer"])
    with torch.no_grad():
        _, clean, _ = run_capturing(model, clean_tokens.to(device), hooks["patch"])
    with _frozen_parameters(model), torch.enable_grad():
        logits, corrupted, deltas = run_capturing(
            model, corrupted_tokens.to(device), hooks["patch"] + hooks["read"], hooks["grad"]
        )
        value = metric(logits)
        batch = clean_tokens.shape[0]
        if value.ndim != 0 and tuple(value.shape) != (batch,):
            raise ValueError(
                f"metric must return a scalar or [batch={batch}] values, "
                f"got shape {tuple(value.shape)}"
            )
        if not value.requires_grad:
            raise RuntimeError(f"the metric does not depend on the {spec.component} activations")
        grads = torch.autograd.grad(
            value.sum(), [deltas[n] for n in hooks["grad"]], allow_unused=True
        )
    grads = {
        n: torch.zeros_like(deltas[n]) if g is None else g.detach()
        for n, g in zip(hooks["grad"], grads, strict=True)
    }
    return value, clean, corrupted, grads


def _layout(estimate: Tensor, spec: SweepSpec, n_layers: int) -> Tensor:
    """The estimates of the patched layers in the full layout, NaN outside the request."""
    out = torch.full((n_layers, *estimate.shape[1:]), float("nan"), dtype=estimate.dtype)
    out[spec.values["layer"]] = estimate
    for axis_name in ("head", "pos"):
        if axis_name in spec.axes:
            axis = spec.axes.index(axis_name)
            keep = spec.values[axis_name]
            drop = [i for i in range(out.shape[axis]) if i not in keep]
            out.index_fill_(axis, torch.tensor(drop, dtype=torch.long), float("nan"))
    return out


def _hook_names(component: str, layers: Sequence[int]) -> dict[str, list[str]]:
    """Hooks: the patched activation (``patch``, both runs), extra corrupted-run reads
    (``read``) and the activations to differentiate (``grad``).

    The pattern's gradient comes from ``hook_z`` and ``hook_v`` (``z = pattern @ v``):
    ``hook_pattern`` edits do not reach the logits of native bridges, and where they do the
    gradient is the same.
    """
    patch = [get_component(component).activation_hook(layer) for layer in layers]
    if component != "pattern":
        return {"patch": patch, "read": [], "grad": patch}
    return {
        "patch": patch,
        "read": [hook_name("v", layer) for layer in layers],
        "grad": [hook_name("z", layer) for layer in layers],
    }


def _pattern_grad(grad_z: Tensor, v: Tensor) -> Tensor:
    """``dmetric/dpattern [batch, head, dest, src]`` from ``dmetric/dz`` and ``v``.

    ``z[b, dest, h] = sum_src pattern[b, h, dest, src] v[b, src, h]``; grouped-query ``v``
    (fewer heads) is repeated per group, as the attention does.
    """
    if v.shape[2] != grad_z.shape[2]:
        v = v.repeat_interleave(grad_z.shape[2] // v.shape[2], dim=2)
    return torch.einsum("bqhd,bkhd->bhqk", grad_z, v.to(grad_z.dtype))
