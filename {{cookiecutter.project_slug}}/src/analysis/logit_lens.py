"""Logit lens: the residual stream after each layer read through the model's final norm and
unembedding (nostalgebraist 2020), and a tuned lens (Belrose et al. 2023) option: one
learned affine map per layer applied first, trained on cached activations to match the
model's final distribution.

Lens points: ``embed`` (``resid_pre`` of block 0), then the ``resid_post`` of every block;
the last point is the model's own output (equal to its logits up to float error; a final
logit softcap, Gemma-2's, is applied as the model does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from src.analysis.forward import capture, hook_points, model_device
from src.analysis.sweep import check_tokens
from src.models.hooks import hook_name


def lens_hooks(model: Any) -> list[str]:
    """The hook read at each lens point: ``resid_pre`` of block 0, then each ``resid_post``."""
    n = model.cfg.n_layers
    return [hook_name("resid_pre", 0)] + [hook_name("resid_post", layer) for layer in range(n)]


def lens_labels(model: Any) -> list[str]:
    """``embed``, ``L0``, ``L1``, ...: the lens points (after each layer)."""
    return ["embed"] + [f"L{layer}" for layer in range(model.cfg.n_layers)]


def unembed(model: Any, resid: Tensor) -> Tensor:
    """Logits of residual vectors ``resid`` [..., d_model]: final norm, unembedding and the
    model's final softcap if it has one (``cfg.output_logits_soft_cap`` > 0)."""
    shape = resid.shape
    logits = model.unembed(model.ln_final(resid.reshape(-1, 1, shape[-1])))[:, 0]
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits.reshape(*shape[:-1], logits.shape[-1])


class TunedLens(nn.Module):
    """Per lens point, an affine translator ``h -> h + A h + b`` (A, b start at zero: the
    plain logit lens); the last point (the model's output) keeps the identity."""

    def __init__(self, n_points: int, d_model: int) -> None:
        super().__init__()
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_points - 1))
        for layer in self.translators:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, resid: Tensor) -> Tensor:
        """``resid`` [n_points, ..., d_model] translated point by point."""
        parts = [h + t(h) for h, t in zip(resid[:-1], self.translators, strict=True)]
        return torch.stack([*parts, resid[-1]])


@torch.no_grad()
def lens_residuals(model: Any, tokens: Tensor, final_only: bool = True) -> tuple[Tensor, Tensor]:
    """The residual stream at every lens point, [n_points, batch(, pos), d_model] (the
    final position only if ``final_only``), and the model's logits there."""
    check_tokens("tokens", tokens)
    tokens = tokens.to(model_device(model))
    names = lens_hooks(model)
    logits, acts = capture(model, hook_points(model), tokens, names, logits=True)
    resid = torch.stack([acts[name] for name in names])
    if final_only:
        return resid[:, :, -1], logits[:, -1]
    return resid, logits


def _kl(final_logits: Tensor, lens_logits: Tensor) -> Tensor:
    """KL(final || lens) per entry (last axis: vocabulary), in nats."""
    final = final_logits.float().log_softmax(-1)
    lens = lens_logits.float().log_softmax(-1)
    return (final.exp() * (final - lens)).sum(-1)


@dataclass
class LensResult:
    """Per lens point (``labels``) and prompt: the answer token's probability and rank and
    the KL divergence from the model's final distribution (nats), at the final position."""

    labels: list[str]
    answer_prob: Tensor  # [n_points, batch]
    answer_rank: Tensor  # [n_points, batch] (0 = top-1)
    kl_to_final: Tensor  # [n_points, batch]
    model_answer_prob: Tensor  # [batch], from the model's own logits


def logit_lens(
    model: Any, tokens: Tensor, answer_tokens: Tensor, *, tuned: TunedLens | None = None
) -> LensResult:
    """The (tuned, if ``tuned``) lens at the final position of ``tokens`` [batch, pos] for
    the ``answer_tokens`` [batch]."""
    if answer_tokens.shape != (tokens.shape[0],):
        raise ValueError(
            f"answer_tokens must be [batch] = [{tokens.shape[0]}], got {list(answer_tokens.shape)}"
        )
    resid, final = lens_residuals(model, tokens)
    with torch.no_grad():
        if tuned is not None:
            resid = tuned.to(resid.device, resid.dtype)(resid)
        logits = unembed(model, resid).float()  # [n_points, batch, vocab]
        answer = answer_tokens.to(logits.device)[None, :, None].expand(len(logits), -1, 1)
        probs = logits.softmax(-1)
        answer_logit = logits.gather(-1, answer)
        rank = (logits > answer_logit).sum(-1)
        return LensResult(
            labels=lens_labels(model),
            answer_prob=probs.gather(-1, answer)[..., 0].cpu(),
            answer_rank=rank.cpu(),
            kl_to_final=_kl(final[None], logits).cpu(),
            model_answer_prob=final.float().softmax(-1).gather(-1, answer[0])[:, 0].cpu(),
        )


def lens_kl(model: Any, tokens: Tensor, tuned: TunedLens | None = None) -> Tensor:
    """Mean KL(final || lens) over every position of ``tokens``, per lens point
    [n_points]: how far each point's reading is from the model's output."""
    resid, final = lens_residuals(model, tokens, final_only=False)
    with torch.no_grad():
        if tuned is not None:
            resid = tuned.to(resid.device, resid.dtype)(resid)
        return _kl(final[None], unembed(model, resid)).mean((1, 2)).cpu()


def train_tuned_lens(
    model: Any,
    tokens: Tensor,
    *,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
) -> tuple[TunedLens, list[float]]:
    """A tuned lens fitted (``fit_tuned_lens``) to the activations of ``tokens`` [n, pos] at
    every lens point, cached by one forward."""
    resid, final = lens_residuals(model, tokens, final_only=False)
    return fit_tuned_lens(model, resid, final, steps=steps, lr=lr, batch_size=batch_size, seed=seed)


def fit_tuned_lens(
    model: Any,
    resid: Tensor,
    final_logits: Tensor,
    *,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
) -> tuple[TunedLens, list[float]]:
    """A tuned lens trained on cached activations: ``resid`` [n_points, ..., d_model] (the
    lens points' residual stream at the same tokens) and the model's ``final_logits`` there
    [..., d_vocab]. Adam on KL(final || lens), summed over lens points, on random batches of
    tokens; no model forward, only the final norm and unembedding, whose parameters get no
    gradients. Returns the lens and the loss per step."""
    if steps < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"steps, lr and batch_size must be > 0, got {steps}, {lr}, {batch_size}")
    d_model = resid.shape[-1]
    resid = resid.reshape(len(resid), -1, d_model).float()  # [n_points, n_tokens, d_model]
    target = final_logits.reshape(-1, final_logits.shape[-1]).float().log_softmax(-1)
    if target.shape[0] != resid.shape[1]:
        raise ValueError(f"final_logits cover {target.shape[0]} tokens but resid {resid.shape[1]}")
    lens = TunedLens(len(resid), d_model).to(resid.device)
    params = list(lens.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    losses = []
    with torch.enable_grad():  # also where the caller turned gradients off (notebooks)
        for _ in range(steps):
            rows = torch.randint(0, resid.shape[1], (batch_size,), generator=generator)
            rows = rows.to(resid.device)
            translated = lens(resid[:, rows])[:-1]  # the last point is the identity
            logits = unembed(model, translated.to(dtype)).float().log_softmax(-1)
            loss = (target[rows].exp() * (target[rows] - logits)).sum(-1).mean(-1).sum()
            # gradients of the lens only (the model's .grad stay untouched)
            grads = torch.autograd.grad(loss, params)
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            optimizer.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise RuntimeError("tuned lens training diverged (loss is not finite): lower lr")
    return lens.eval(), losses
