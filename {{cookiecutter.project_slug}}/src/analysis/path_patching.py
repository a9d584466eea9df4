"""Path patching: the effect of a sender head on the metric through one receiver head's
query, key or value input only (Wang et al. 2022, "Interpretability in the Wild").

For a sender head ``s`` and a receiver head ``r`` in a later layer, patching clean into
corrupted (0 = corrupted, 1 = clean, as ``activation_patch``):

1. Run the corrupted prompts with the sender's output (``hook_z`` of its head) from the
   clean run and every other component between the sender and the receiver frozen at its
   corrupted value (attention outputs of later layers, MLP outputs from the sender's layer
   on). The receiver's q/k/v input now differs from the corrupted run's by the sender's
   direct contribution only; record the receiver's q, k and v.
2. Run the corrupted prompts with only the receiver's q (or k, or v) replaced by the value
   of step 1, everything after it recomputed, and read the metric.

Batched: step 1 runs every sender of a layer in one forward (one slice of prompts each, all
receiver layers captured at once); step 2 runs many (sender, receiver, input) patches per
forward, starting at the receiver's layer on native bridges. Under grouped-query attention,
a receiver's k and v are its key/value head's (shared with the other heads of its group).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from src.analysis.forward import (
    Metric,
    block_out,
    capture,
    final_position_suffices,
    hook_points,
    hooked,
    is_native,
    model_device,
    patches_per_forward,
)
from src.analysis.sweep import check_tokens
from src.models.hooks import hook_name

PATH_INPUTS = ("q", "k", "v")


def _heads(name: str, pairs: Sequence[Sequence[int]] | None, model: Any) -> list[tuple[int, int]]:
    """``pairs`` of (layer, head) checked against the model; every head when None."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if pairs is None:
        return list(itertools.product(range(n_layers), range(n_heads)))
    out = []
    for pair in pairs:
        if len(pair) != 2 or not (0 <= pair[0] < n_layers and 0 <= pair[1] < n_heads):
            raise ValueError(
                f"{name} must be (layer, head) pairs with layer in [0, {n_layers}) and head "
                f"in [0, {n_heads}), got {tuple(pair)}"
            )
        out.append((int(pair[0]), int(pair[1])))
    if not out:
        raise ValueError(f"{name} must not be empty")
    return sorted(set(out))


def _set_heads(act: Tensor, hook: Any, *, mask: Tensor, target: Tensor) -> Tensor:
    """``act`` [slices * batch, pos, head, d] with ``target`` [slices, batch, pos, head, d]
    (or broadcastable) where ``mask`` [slices, 1, 1, head, 1] is True."""
    n_slices = mask.shape[0]
    slices = act.reshape(n_slices, -1, *act.shape[1:])
    return torch.where(mask, target, slices).reshape(act.shape)


def _replace(act: Tensor, hook: Any, *, value: Tensor) -> Tensor:
    """``act`` [slices * batch, ...] replaced by ``value`` [batch, ...] in every slice."""
    return value.repeat(act.shape[0] // value.shape[0], *[1] * (value.ndim - 1))


def _store(act: Tensor, hook: Any, *, store: dict[str, Tensor], name: str) -> None:
    store[name] = act.detach()


def _forward(
    model: Any,
    tokens: Tensor,
    n_slices: int,
    start: int,
    resid_pre: Tensor,
    hooks: list[tuple],
    stop: int | None = None,
    final_only: bool = False,
) -> Tensor | None:
    """The run of ``tokens`` repeated ``n_slices`` times with ``hooks``: from layer ``start``
    (its ``resid_pre`` [batch, pos, d_model]) by hand on native bridges; a full forward on
    others. ``stop``: run blocks up to ``stop`` only and return None; otherwise the logits
    (final position only if ``final_only``, native bridges)."""
    with hooked(hooks):
        if not is_native(model):
            return (
                model(tokens.repeat(n_slices, 1))
                if stop is None
                else _run_until(model, tokens.repeat(n_slices, 1), stop)
            )
        resid = resid_pre.repeat(n_slices, 1, 1)
        end = model.cfg.n_layers if stop is None else stop + 1
        for block in model.blocks[start:end]:
            resid = block_out(block(resid))
        if stop is not None:
            return None
        if final_only:
            resid = resid[:, -1:]
        return model.unembed(model.ln_final(resid))


def _run_until(model: Any, tokens: Tensor, stop: int) -> None:
    """A forward stopped once block ``stop``'s head outputs (after its q, k, v) are computed."""
    capture(model, hook_points(model), tokens, [hook_name("z", stop)], logits=False)
    return None


def path_patch(
    model: Any,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    metric: Metric,
    *,
    senders: Sequence[Sequence[int]] | None = None,
    receivers: Sequence[Sequence[int]] | None = None,
    inputs: Sequence[str] = PATH_INPUTS,
    memory_budget_mb: float = 1024,
) -> Tensor:
    """``metric`` of the corrupted run with the path sender head -> receiver head's
    ``inputs`` patched from the clean run (module docstring), for every sender and every
    receiver in a later layer: ``[n_layers, n_heads, n_layers, n_heads, len(inputs)]``
    (sender layer and head, receiver layer and head, input), plus a trailing prompt axis for
    a per-prompt metric; NaN where not computed (receiver not after the sender, or not
    asked for). ``senders`` / ``receivers``: (layer, head) pairs; None = all heads.
    """
    check_tokens("clean_tokens", clean_tokens)
    check_tokens("corrupted_tokens", corrupted_tokens)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError("clean_tokens and corrupted_tokens must have the same shape [batch, pos]")
    bad = [i for i in inputs if i not in PATH_INPUTS]
    if bad or not inputs:
        raise ValueError(f"inputs must be a non-empty subset of {PATH_INPUTS}, got {list(inputs)}")
    senders_, receivers_ = _heads("senders", senders, model), _heads("receivers", receivers, model)
    device = model_device(model)
    clean, corrupted = clean_tokens.to(device), corrupted_tokens.to(device)
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    group = n_heads // int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    attn_only = bool(getattr(cfg, "attn_only", False))
    n_prompts, n_pos = corrupted.shape
    points = hook_points(model)
    final_only = is_native(model) and final_position_suffices(model, metric, n_prompts, n_pos)
    k_max = patches_per_forward(model, n_prompts, n_pos, memory_budget_mb, not final_only)
    if device.type == "cpu":
        k_max = min(k_max, max(1, 2048 // (n_prompts * n_pos)))

    with torch.no_grad():
        names = [hook_name(p, layer) for layer in range(n_layers) for p in ("z", "resid_pre")]
        names += [hook_name("attn_out", layer) for layer in range(n_layers)]
        if not attn_only:
            names += [hook_name("mlp_out", layer) for layer in range(n_layers)]
        _, acts = capture(model, points, torch.cat([clean, corrupted]), names, logits=False)
        clean_act = {name: act[:n_prompts] for name, act in acts.items()}
        corr = {name: act[n_prompts:] for name, act in acts.items()}

        # step 1: the receivers' q/k/v with each sender's direct contribution only
        received: dict[tuple[int, int], dict[str, Tensor]] = {}
        for s_layer, s_group in itertools.groupby(senders_, key=lambda p: p[0]):
            s_heads = [h for _, h in s_group]
            later = sorted({layer for layer, _ in receivers_ if layer > s_layer})
            if not later:
                continue
            for lo in range(0, len(s_heads), k_max):
                chunk = s_heads[lo : lo + k_max]
                mask = torch.zeros(len(chunk), 1, 1, n_heads, 1, dtype=torch.bool, device=device)
                mask[torch.arange(len(chunk)), 0, 0, torch.tensor(chunk)] = True
                z = hook_name("z", s_layer)
                hooks = [(points[z], partial(_set_heads, mask=mask, target=clean_act[z]))]
                for layer in range(s_layer, later[-1]):
                    frozen = ["mlp_out"] if layer == s_layer else ["attn_out", "mlp_out"]
                    for point in frozen:
                        name = hook_name(point, layer)
                        if name in corr:
                            hooks.append((points[name], partial(_replace, value=corr[name])))
                store: dict[str, Tensor] = {}
                wanted = [hook_name(p, layer) for layer in later for p in inputs]
                hooks += [(points[n], partial(_store, store=store, name=n)) for n in wanted]
                resid = corr[hook_name("resid_pre", s_layer)]
                _forward(model, corrupted, len(chunk), s_layer, resid, hooks, stop=later[-1])
                for i, head in enumerate(chunk):
                    received[(s_layer, head)] = {
                        n: store[n].reshape(len(chunk), n_prompts, *store[n].shape[1:])[i]
                        for n in wanted
                    }

        # step 2: each receiver input patched alone
        jobs = [
            (sender, receiver, i)
            for sender in senders_
            for receiver in receivers_
            if receiver[0] > sender[0]
            for i in range(len(inputs))
        ]
        values: dict[tuple, Tensor] = {}
        for r_layer, r_jobs in itertools.groupby(
            sorted(jobs, key=lambda j: j[1][0]), key=lambda j: j[1][0]
        ):
            r_jobs = list(r_jobs)
            for lo in range(0, len(r_jobs), k_max):
                chunk = r_jobs[lo : lo + k_max]
                hooks = []
                for i, point in enumerate(inputs):
                    name = hook_name(point, r_layer)
                    act = received[chunk[0][0]][name]  # [batch, pos, head, d_head]
                    n_h = act.shape[2]
                    mask = torch.zeros(len(chunk), 1, 1, n_h, 1, dtype=torch.bool, device=device)
                    target = act.new_zeros(len(chunk), *act.shape)
                    for j, (sender, (_, r_head), inp) in enumerate(chunk):
                        if inp == i:
                            mask[j, 0, 0, r_head // group if point != "q" else r_head] = True
                            target[j] = received[sender][name]
                    hooks.append((points[name], partial(_set_heads, mask=mask, target=target)))
                resid = corr[hook_name("resid_pre", r_layer)]
                logits = _forward(model, corrupted, len(chunk), r_layer, resid, hooks,
                                  final_only=final_only)  # fmt: skip
                logits = logits.expand(-1, n_pos, -1)
                for j, job in enumerate(chunk):
                    values[job] = torch.as_tensor(
                        metric(logits[j * n_prompts : (j + 1) * n_prompts])
                    )
    extra = next(iter(values.values())).shape if values else ()
    result = torch.full((n_layers, n_heads, n_layers, n_heads, len(inputs), *extra), torch.nan)
    for (sender, receiver, i), value in values.items():
        result[(*sender, *receiver, i)] = value.float().cpu()
    return result
