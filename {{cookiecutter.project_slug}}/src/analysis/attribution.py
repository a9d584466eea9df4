"""Attribution patching and direct logit attribution (DLA): gradient- and linear-read estimates.

``attribution_patch`` is the linear (first-order Taylor) approximation of activation patching
(Nanda 2023, "Attribution patching"; Syed et al. 2023): the effect of patching a clean
activation into the corrupted run is estimated as ``(a_clean - a_corrupted) . dMetric/da``,
with the gradient taken on the corrupted run. Every component of a kind costs the same two
forwards (clean, corrupted) and one backward, instead of one forward per patched index. It
uses the component names, result layouts and patch direction (clean into corrupted) of
``transformer_lens.patching.get_act_patch_*``, and returns the *estimated patched metric*,
so a result can be compared entry by entry with activation patching.

``direct_logit_attribution`` splits the final-position logit difference (answer minus wrong
token) into each component's direct path to the logits, with the final LayerNorm scale frozen
at its cached value (as TransformerLens's ``ActivationCache.apply_ln_to_stack``), which makes
the split linear and exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

# Component -> hook name within block `l` (`blocks.{l}.<suffix>`), as transformer_lens.patching.
COMPONENT_HOOKS: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "head_out": "attn.hook_z",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
}
HEAD_COMPONENTS = ("head_out", "q", "k", "v", "pattern")
DLA_UNITS = ("head", "component")

Metric = Callable[[Tensor], Tensor]


def result_axes(component: str, per_position: bool) -> tuple[str, ...]:
    """Axis names of an ``attribution_patch`` result (before the optional batch axis).

    The layouts of ``transformer_lens.patching``: ``resid_pre``/``attn_out``/``mlp_out`` ->
    ``(layer, pos)`` or ``(layer,)``; ``head_out``/``q``/``k``/``v`` -> ``(layer, pos, head)``
    or ``(layer, head)``; ``pattern`` -> ``(layer, head, pos)`` (pos = destination) or
    ``(layer, head)``.
    """
    if component not in COMPONENT_HOOKS:
        raise ValueError(f"component must be one of {list(COMPONENT_HOOKS)}, got {component!r}")
    if component == "pattern":
        return ("layer", "head", "pos") if per_position else ("layer", "head")
    if component in HEAD_COMPONENTS:
        return ("layer", "pos", "head") if per_position else ("layer", "head")
    return ("layer", "pos") if per_position else ("layer",)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _n_heads(model: torch.nn.Module, component: str) -> int:
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    return n_kv if component in ("k", "v") and n_kv else model.cfg.n_heads


def _check_indices(name: str, values: Sequence[int] | None, size: int) -> list[int] | None:
    """``values`` as a sorted list of indices in ``[0, size)`` (negatives count from the end)."""
    if values is None:
        return None
    values = [values] if isinstance(values, int) else list(values)
    if not values:
        raise ValueError(f"{name} is empty; pass None for all")
    bad = [v for v in values if not isinstance(v, int) or not -size <= v < size]
    if bad:
        raise ValueError(f"{name} {bad} out of range: expected integers in [0, {size})")
    return sorted({v % size for v in values})


def _check_tokens(name: str, tokens: Tensor) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{name} must be an integer tensor [batch, pos], got {shape}")


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


def _run_capturing(
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
    axes = result_axes(component, per_position)
    _check_tokens("clean_tokens", clean_tokens)
    _check_tokens("corrupted_tokens", corrupted_tokens)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean_tokens shape {tuple(clean_tokens.shape)} != corrupted_tokens shape "
            f"{tuple(corrupted_tokens.shape)}: patching needs aligned prompts"
        )
    if component == "mlp_out" and getattr(model.cfg, "attn_only", False):
        raise ValueError("component 'mlp_out' is unavailable: the model is attention-only")
    if heads is not None and component not in HEAD_COMPONENTS:
        raise ValueError(f"heads applies to {HEAD_COMPONENTS}, not component {component!r}")
    if positions is not None and not per_position:
        raise ValueError("positions needs per_position=True (the all-position layout has no pos)")
    n_layers, n_pos = model.cfg.n_layers, clean_tokens.shape[-1]
    layer_list = _check_indices("layers", layers, n_layers) or list(range(n_layers))
    head_list = _check_indices("heads", heads, _n_heads(model, component))
    pos_list = _check_indices("positions", positions, n_pos)

    device = _device(model)
    hooks = _hook_names(component, layer_list)
    with torch.no_grad():
        _, clean, _ = _run_capturing(model, clean_tokens.to(device), hooks["patch"])
    with _frozen_parameters(model), torch.enable_grad():
        logits, corrupted, deltas = _run_capturing(
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
            raise RuntimeError(f"the metric does not depend on the {component} activations")
        grads = torch.autograd.grad(
            value.sum(), [deltas[n] for n in hooks["grad"]], allow_unused=True
        )
    grads = {
        n: torch.zeros_like(deltas[n]) if g is None else g.detach()
        for n, g in zip(hooks["grad"], grads, strict=True)
    }

    per_layer = []
    for layer in layer_list:
        name = f"blocks.{layer}.{COMPONENT_HOOKS[component]}"
        if component == "pattern":
            grad = _pattern_grad(
                grads[f"blocks.{layer}.attn.hook_z"], corrupted[f"blocks.{layer}.attn.hook_v"]
            )
        else:
            grad = grads[name]
        dtype = torch.promote_types(grad.dtype, torch.float32)
        prod = (clean[name].to(dtype) - corrupted[name].to(dtype)) * grad.to(dtype)
        per_layer.append(_reduce(prod, component, per_position))
    # [layer, batch, ...] -> [layer, ..., batch]; a scalar metric sums its batch.
    attribution = torch.stack(per_layer).movedim(1, -1).cpu()
    base = value.detach().to(attribution.dtype).cpu()
    estimate = base + (attribution.sum(-1) if value.ndim == 0 else attribution)

    out = torch.full((n_layers, *estimate.shape[1:]), float("nan"), dtype=estimate.dtype)
    out[layer_list] = estimate
    for axis_name, keep in (("head", head_list), ("pos", pos_list)):
        if keep is not None:
            axis = axes.index(axis_name)
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
    patch = [f"blocks.{layer}.{COMPONENT_HOOKS[component]}" for layer in layers]
    if component != "pattern":
        return {"patch": patch, "read": [], "grad": patch}
    return {
        "patch": patch,
        "read": [f"blocks.{layer}.attn.hook_v" for layer in layers],
        "grad": [f"blocks.{layer}.attn.hook_z" for layer in layers],
    }


def _pattern_grad(grad_z: Tensor, v: Tensor) -> Tensor:
    """``dmetric/dpattern [batch, head, dest, src]`` from ``dmetric/dz`` and ``v``.

    ``z[b, dest, h] = sum_src pattern[b, h, dest, src] v[b, src, h]``; grouped-query ``v``
    (fewer heads) is repeated per group, as the attention does.
    """
    if v.shape[2] != grad_z.shape[2]:
        v = v.repeat_interleave(grad_z.shape[2] // v.shape[2], dim=2)
    return torch.einsum("bqhd,bkhd->bhqk", grad_z, v.to(grad_z.dtype))


@dataclass
class DLAResult:
    """Direct logit attribution of the final-position logit difference.

    ``values[i]`` (mean over prompts) and ``per_prompt[i]`` ([batch]) belong to ``labels[i]``;
    ``sum(values) + remainder == logit_diff`` (and per prompt with the ``_per_prompt`` fields).
    """

    labels: list[str]
    values: Tensor
    per_prompt: Tensor
    remainder: float
    logit_diff: float
    remainder_per_prompt: Tensor
    logit_diff_per_prompt: Tensor

    def by_head(self) -> Tensor:
        """The per-head terms (labels ``a{layer}.h{head}``) as ``[n_layers, n_heads]``."""
        found = [
            (re.fullmatch(r"a(\d+)\.h(\d+)", label), value)
            for label, value in zip(self.labels, self.values, strict=True)
        ]
        found = [(int(m[1]), int(m[2]), value) for m, value in found if m]
        if not found:
            raise ValueError("by_head needs a result of direct_logit_attribution(by='head')")
        grid = torch.full((max(f[0] for f in found) + 1, max(f[1] for f in found) + 1), torch.nan)
        for layer, head, value in found:
            grid[layer, head] = value
        return grid


def _final_norm(model: torch.nn.Module, scale: Tensor | None) -> Callable[[Tensor], Tensor]:
    """The final norm's linear part with its scale frozen: ``x -> centre(x) / scale * w``.

    No bias: the bias is no component's contribution (it is in the DLA remainder).
    """
    norm = getattr(model, "ln_final", None)
    if norm is None or scale is None:
        return lambda x: x
    center = not getattr(norm, "uses_rms_norm", False)
    weight = getattr(norm, "w", None)
    if weight is not None and getattr(model.cfg, "rmsnorm_uses_offset", False):
        weight = 1.0 + weight
    weight = None if weight is None else weight.detach().double()

    def apply(x: Tensor) -> Tensor:
        if center:
            x = x - x.mean(-1, keepdim=True)
        x = x / scale
        return x if weight is None else x * weight

    return apply


def _as_batch_tokens(name: str, tokens: Tensor | int, batch: int, d_vocab: int) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 0:
        tokens = tokens.expand(batch)
    if tokens.shape != (batch,) or tokens.dtype.is_floating_point:
        raise ValueError(f"{name} must be integers of shape [{batch}], got {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= d_vocab:
        raise ValueError(f"{name} must be token ids in [0, {d_vocab})")
    return tokens


def direct_logit_attribution(
    model: torch.nn.Module,
    tokens: Tensor,
    answer_tokens: Tensor | int,
    wrong_tokens: Tensor | int,
    *,
    by: str = "head",
) -> DLAResult:
    """Each component's direct contribution to the final-position logit difference.

    The final residual stream is a sum of component outputs; with the final norm's scale
    frozen at its cached value, ``logit[answer] - logit[wrong]`` is linear in it, and each
    component contributes ``(centre(c) / scale * w_ln) . (W_U[:, answer] - W_U[:, wrong])``
    (what ``ActivationCache.apply_ln_to_stack`` + ``logit_attrs`` compute on a model with
    the norm's weight folded into ``W_U``). Terms, in order:

    - ``by="head"``: ``embed``, ``pos_embed`` (if the model has one), then per layer each
      head ``a{layer}.h{head}`` (its ``z @ W_O``), the output bias ``a{layer}.bias``
      (``b_O``) and the MLP ``m{layer}`` (if any).
    - ``by="component"``: ``embed``, ``pos_embed``, ``attn_0``, ``mlp_0``, ``attn_1``, ...
      (``hook_attn_out`` / ``hook_mlp_out``).

    ``remainder = logit_diff - sum(terms)`` per prompt, so the total is exact. It holds what
    no component writes: the final norm's bias along the answer direction,
    ``b_ln . (W_U[:, answer] - W_U[:, wrong])``, and ``b_U[answer] - b_U[wrong]``, plus
    float rounding (~1e-6) and any part of the residual stream the terms miss (none on
    standard GPT-2-style blocks). On the toy model it is 0.05 logits on average (at most 0.17)
    of an 11.5 logit difference, about half ``b_ln`` and half ``b_U``. The final position is
    the last one of every prompt (no padding). Values are float32 on the CPU.
    """
    if by not in DLA_UNITS:
        raise ValueError(f"by must be one of {DLA_UNITS}, got {by!r}")
    _check_tokens("tokens", tokens)
    batch, d_vocab = tokens.shape[0], model.cfg.d_vocab
    answer = _as_batch_tokens("answer_tokens", answer_tokens, batch, d_vocab)
    wrong = _as_batch_tokens("wrong_tokens", wrong_tokens, batch, d_vocab)

    device = _device(model)
    n_layers = model.cfg.n_layers
    has_mlp = not getattr(model.cfg, "attn_only", False)
    hook_names = set(model.hook_dict)
    embeds = [n for n in ("hook_embed", "hook_pos_embed") if n in hook_names]
    scale_name = "ln_final.hook_scale" if "ln_final.hook_scale" in hook_names else None
    layer_hooks = ["attn.hook_z"] if by == "head" else ["hook_attn_out"]
    layer_hooks += ["hook_mlp_out"] if has_mlp else []
    names = embeds + [f"blocks.{i}.{h}" for i in range(n_layers) for h in layer_hooks]
    names += [scale_name] if scale_name else []
    with torch.no_grad():
        logits, acts, _ = _run_capturing(model, tokens.to(device), names)
    final = {name: act[:, -1].double() for name, act in acts.items()}  # [batch, ...]

    labels = [n.removeprefix("hook_") for n in embeds]
    outputs = [final[n] for n in embeds]  # each [batch, d_model]
    for layer in range(n_layers):
        if by == "head":
            attn = model.blocks[layer].attn
            heads = torch.einsum(
                "bhd,hdm->hbm", final[f"blocks.{layer}.attn.hook_z"], attn.W_O.detach().double()
            )
            labels += [f"a{layer}.h{h}" for h in range(heads.shape[0])] + [f"a{layer}.bias"]
            b_o = attn.b_O.detach().double() if getattr(attn, "b_O", None) is not None else 0.0
            outputs += list(heads) + [torch.zeros_like(heads[0]) + b_o]
        else:
            labels.append(f"attn_{layer}")
            outputs.append(final[f"blocks.{layer}.hook_attn_out"])
        if has_mlp:
            labels.append(f"m{layer}" if by == "head" else f"mlp_{layer}")
            outputs.append(final[f"blocks.{layer}.hook_mlp_out"])

    norm = _final_norm(model, final[scale_name] if scale_name else None)
    w_u = model.W_U.detach().double()
    direction = (w_u[:, answer.to(device)] - w_u[:, wrong.to(device)]).T  # [batch, d_model]
    terms = torch.stack([(norm(out) * direction).sum(-1) for out in outputs])  # [n, batch]
    final_logits = logits[:, -1].detach().double()
    idx = torch.arange(batch, device=final_logits.device)
    real = final_logits[idx, answer.to(device)] - final_logits[idx, wrong.to(device)]
    remainder = real - terms.sum(0)
    return DLAResult(
        labels=labels,
        values=terms.mean(1).float().cpu(),
        per_prompt=terms.float().cpu(),
        remainder=remainder.mean().item(),
        logit_diff=real.mean().item(),
        remainder_per_prompt=remainder.float().cpu(),
        logit_diff_per_prompt=real.float().cpu(),
    )
