"""Steering by activation addition: add ``coefficient * direction`` to one hook point's
activations and see what the model does (Turner et al., 2023, "ActAdd"; Rimsky et al.,
2024, contrastive activation addition).

- ``mean_difference``: the direction from contrastive prompts, the mean activation over a
  positive set minus that over a negative set (at the final position, or over all);
- ``sae_direction``: an SAE latent's decoder row (``W_dec[feature]``), e.g. to steer with a
  feature found by ``src.analysis.features``;
- ``steer``: a metric per prompt under every coefficient of a sweep, all coefficients in
  one forward (the prompts repeated along the batch, one coefficient per copy);
- ``steered_generation``: greedy continuations under every coefficient, batched likewise.

A coefficient of 0 (or a zero direction) adds exact zeros, so it reproduces the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor

from src.analysis.forward import capture, hook_points, hooked, model_device

Positions = Literal["all", "final"]
# A metric of logits [batch, pos, d_vocab] -> one value per prompt [batch], for prompts
# ``index`` (a LongTensor into the prompts being steered): the answer tokens of each copy.
PromptMetric = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def mean_activation(
    model: Any, tokens: Tensor, hook_name: str, *, position: int | None = -1, batch_size: int = 64
) -> Tensor:
    """Mean of ``hook_name``'s activation over ``tokens`` [n, seq] at ``position`` (None:
    over all positions), float32 [d] on the CPU; each forward stops at the hook."""
    points = hook_points(model)
    if hook_name not in points:
        raise ValueError(f"the model has no hook point {hook_name!r}")
    device = model_device(model)
    total, count = None, 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size].to(device)
        _, acts = capture(model, points, batch, [hook_name], logits=False)
        act = acts[hook_name].float()
        act = act.flatten(0, 1) if position is None else act[:, position]
        total = act.sum(0) if total is None else total + act.sum(0)
        count += act.shape[0]
    if total is None:
        raise ValueError("no prompts to average over")
    return (total / count).cpu()


def mean_difference(
    model: Any,
    positive: Tensor,
    negative: Tensor,
    hook_name: str,
    *,
    position: int | None = -1,
    batch_size: int = 64,
) -> Tensor:
    """The steering direction ``mean(positive) - mean(negative)`` of ``hook_name``'s
    activations (see ``mean_activation``): adding it to a negative prompt's activation at
    coefficient 1 moves it to the positive mean."""
    pos = mean_activation(model, positive, hook_name, position=position, batch_size=batch_size)
    neg = mean_activation(model, negative, hook_name, position=position, batch_size=batch_size)
    return pos - neg


def sae_direction(sae: Any, feature: int) -> Tensor:
    """Latent ``feature``'s decoder row ``W_dec[feature]`` [d_in], float32 on the CPU: what
    the SAE writes per unit of the latent."""
    d_sae = int(sae.W_dec.shape[0])
    if not 0 <= feature < d_sae:
        raise ValueError(f"feature {feature} is out of range for the SAE (0..{d_sae - 1})")
    return sae.W_dec[feature].detach().float().cpu()


@contextmanager
def adding(
    model: Any, hook_name: str, vectors: Tensor, positions: Positions = "all"
) -> Iterator[None]:
    """While active, ``vectors`` [batch, d] (one per row of the batch) are added to
    ``hook_name``'s activation at every position or at the final one."""
    points = hook_points(model)
    if hook_name not in points:
        raise ValueError(f"the model has no hook point {hook_name!r}")
    if positions not in ("all", "final"):
        raise ValueError(f"positions must be 'all' or 'final', got {positions!r}")

    def add(act: Tensor, hook: Any) -> Tensor:
        shift = vectors.to(act.device, act.dtype).reshape(len(act), *act.shape[2:])
        if positions == "all":
            return act + shift[:, None]
        act = act.clone()
        act[:, -1] += shift
        return act

    with hooked([(points[hook_name], add)]):
        yield


def _check(direction: Tensor, coefficients: Sequence[float]) -> Tensor:
    if direction.ndim != 1:
        raise ValueError(f"direction must be a vector [d], got {tuple(direction.shape)}")
    if len(coefficients) == 0:
        raise ValueError("coefficients must not be empty")
    return torch.as_tensor(list(coefficients), dtype=torch.float32)


@torch.no_grad()
def steer(
    model: Any,
    tokens: Tensor,
    direction: Tensor,
    hook_name: str,
    coefficients: Sequence[float],
    metric: PromptMetric,
    *,
    positions: Positions = "all",
    batch_size: int = 64,
) -> Tensor:
    """``metric`` of every prompt of ``tokens`` [n, seq] with ``c * direction`` added at
    ``hook_name``, for each ``c`` of ``coefficients``: [n_coefficients, n].

    Batched: each forward runs a chunk of prompts once per coefficient (``batch_size`` rows
    in all). ``metric(logits, index)`` gets the logits of the rows and the index of each
    row's prompt in ``tokens`` (to look up its answer tokens).
    """
    coefs = _check(direction, coefficients)
    n_coef = len(coefs)
    device = model_device(model)
    per_chunk = max(1, batch_size // n_coef)
    out = torch.empty(n_coef, len(tokens))
    for start in range(0, len(tokens), per_chunk):
        chunk = tokens[start : start + per_chunk].to(device)
        m = len(chunk)
        vectors = coefs.repeat_interleave(m)[:, None] * direction.float()[None]  # [c * m, d]
        index = torch.arange(start, start + m).repeat(n_coef)
        with adding(model, hook_name, vectors, positions):
            logits = model(chunk.repeat(n_coef, 1))
        out[:, start : start + m] = metric(logits, index).float().cpu().reshape(n_coef, m)
    return out


@torch.no_grad()
def steered_generation(
    model: Any,
    tokens: Tensor,
    direction: Tensor,
    hook_name: str,
    coefficients: Sequence[float],
    *,
    n_new: int = 8,
    positions: Positions = "all",
) -> Tensor:
    """Greedy continuations of ``n_new`` tokens of each prompt of ``tokens`` [n, seq]
    under each coefficient, all in one batch per step: [n_coefficients, n, n_new]. The
    direction is added at every step (to all positions, or to the newest token). Longer
    than the model's context: the oldest tokens are dropped."""
    coefs = _check(direction, coefficients)
    n_coef, n = len(coefs), len(tokens)
    device = model_device(model)
    rows = tokens.to(device).repeat(n_coef, 1)
    vectors = coefs.repeat_interleave(n)[:, None] * direction.float()[None]
    n_ctx = int(model.cfg.n_ctx)
    new = []
    with adding(model, hook_name, vectors, positions):
        for _ in range(n_new):
            logits = model(rows[:, -n_ctx:])
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            new.append(nxt)
            rows = torch.cat([rows, nxt], 1)
    return torch.cat(new, 1).cpu().reshape(n_coef, n, n_new)
