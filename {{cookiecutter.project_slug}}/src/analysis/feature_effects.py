"""What SAE latents do to the model's output, by intervention at the SAE's hook point.

- ``feature_ablation``: remove a latent's contribution ``z_f * W_dec[f]`` from the
  activation (the SAE's reconstruction error stays, so nothing else changes) and measure
  the next-token loss: how much the model relies on the latent where it fires;
- ``feature_steering``: add ``coefficient * W_dec[f]`` at every position and see which
  next tokens gain log-probability through the whole rest of the model (the decoder-logit
  table, ``W_dec[f] @ W_U``, is only the direct path).

Both run several latents per forward (the sequences repeated, one latent per copy; as
many as ``batch_size`` rows and a bound on the logits' memory allow) and return plain data with bootstrap CIs over sequences (``src.analysis.statistics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from src.analysis.forward import hook_points, hooked, model_device
from src.analysis.statistics import bootstrap_ci
from src.analysis.steering import adding
from src.analysis.tokens import Decode


def _next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-position next-token loss [batch, seq - 1]."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")


def _ci(values: Tensor) -> dict[str, float]:
    values = values.double()
    if len(values) < 2:
        mean = float(values.mean()) if len(values) else float("nan")
        return {"mean": mean, "low": mean, "high": mean}
    ci = bootstrap_ci(values)
    return {"mean": float(ci.estimate), "low": float(ci.low), "high": float(ci.high)}


LOGITS_BUDGET = 2**26  # logit entries per forward (256 MiB in float32)


def _chunks(
    features: Sequence[int], tokens: Tensor, batch_size: int, d_vocab: int
) -> list[list[int]]:
    """Features per forward: ``batch_size`` rows at most (the sequences once per feature),
    and no more full-vocabulary logits than ``LOGITS_BUDGET``; one feature at least."""
    n_seq, ctx = tokens.shape
    rows = min(batch_size, LOGITS_BUDGET // max(ctx * d_vocab, 1))
    per = max(1, rows // max(n_seq, 1))
    return [list(features[i : i + per]) for i in range(0, len(features), per)]


@torch.no_grad()
def feature_ablation(
    model: Any,
    sae: Any,
    tokens: Tensor,
    hook_name: str,
    features: Sequence[int],
    *,
    keep: Tensor | None = None,
    batch_size: int = 64,
) -> dict[int, dict[str, Any]]:
    """Next-token loss with each latent of ``features`` removed at ``hook_name`` (where it
    fires and ``keep`` [n_seq, ctx] allows; default everywhere) minus the loss without,
    over ``tokens`` [n_seq, ctx].

    ``{feature: {"delta_loss": CI over sequences of the mean change over all predicted
    positions, "delta_loss_active": the same over the positions where the latent fired
    (NaN-free: sequences where it never fired are left out), "n_active": positions}}``.
    """
    points = hook_points(model)
    if hook_name not in points:
        raise ValueError(f"the model has no hook point {hook_name!r} (the SAE's hook_name)")
    device = model_device(model)
    tokens = tokens.to(device)
    n_seq = len(tokens)
    keep = torch.ones_like(tokens, dtype=torch.bool) if keep is None else keep.to(device)
    base = _next_token_loss(model(tokens), tokens)
    w_dec = sae.W_dec
    out: dict[int, dict[str, Any]] = {}
    for group in _chunks(features, tokens, batch_size, int(model.cfg.d_vocab)):
        index = torch.tensor(group, device=w_dec.device)
        fired: dict[str, Tensor] = {}

        def ablate(act: Tensor, hook: Any, index: Tensor = index, fired: dict = fired) -> Tensor:
            first = act[:n_seq]  # every copy is the same up to here
            z = sae.encode(first.to(w_dec.device, w_dec.dtype))[..., index]  # [n, ctx, g]
            z = z * keep[..., None].to(z.device)
            fired["z"] = z
            remove = torch.einsum("nsg,gd->gnsd", z, w_dec[index]).to(act.dtype)
            return act - remove.reshape(act.shape).to(act.device)

        with hooked([(points[hook_name], ablate)]):
            logits = model(tokens.repeat(len(group), 1))
        loss = _next_token_loss(logits, tokens.repeat(len(group), 1))
        delta = (loss - base.repeat(len(group), 1)).reshape(len(group), n_seq, -1).cpu()
        active = (fired["z"] > 0).permute(2, 0, 1)[:, :, :-1].cpu()  # predicted positions
        for i, f in enumerate(group):
            n_active = active[i].sum(-1)
            on = n_active > 0
            per_seq = (delta[i] * active[i]).sum(-1)[on] / n_active[on]
            out[int(f)] = {
                "delta_loss": _ci(delta[i].mean(-1)),
                "delta_loss_active": _ci(per_seq),
                "n_active": int(n_active.sum()),
            }
    return out


@torch.no_grad()
def feature_steering(
    model: Any,
    sae: Any,
    tokens: Tensor,
    hook_name: str,
    features: Sequence[int],
    coefficients: Sequence[float],
    *,
    k: int = 10,
    decode: Decode | None = None,
    batch_size: int = 64,
) -> dict[int, dict[str, Any]]:
    """Add ``coefficients[i] * W_dec[features[i]]`` at ``hook_name`` (every position of
    ``tokens`` [n_seq, ctx]) and average the change of each next token's log-probability.

    ``{feature: {"coefficient", "promoted": [(token, mean delta log-prob)] (top ``k``),
    "suppressed": [...], "kl": CI over sequences of the mean KL(steered || clean)}}``.
    """
    if len(coefficients) != len(features):
        raise ValueError("one coefficient per feature")
    decode = decode or str
    device = model_device(model)
    tokens = tokens.to(device)
    n_seq = len(tokens)
    base = model(tokens).float().log_softmax(-1)
    out: dict[int, dict[str, Any]] = {}
    for group in _chunks(list(range(len(features))), tokens, batch_size, int(model.cfg.d_vocab)):
        feats = [features[i] for i in group]
        coefs = torch.tensor([float(coefficients[i]) for i in group])
        rows = sae.W_dec[torch.tensor(feats)].detach().float().cpu() * coefs[:, None]
        vectors = rows.repeat_interleave(n_seq, 0)
        with adding(model, hook_name, vectors, "all"):
            steered = model(tokens.repeat(len(group), 1)).float().log_softmax(-1)
        steered = steered.reshape(len(group), n_seq, *steered.shape[1:])
        delta = (steered - base).mean((1, 2)).cpu()  # [g, d_vocab]
        kl = (steered.exp() * (steered - base)).sum(-1).mean(-1).cpu()  # [g, n_seq]
        for i, f in enumerate(feats):
            top, bottom = delta[i].topk(k), delta[i].topk(k, largest=False)
            out[int(f)] = {
                "coefficient": float(coefs[i]),
                "promoted": [
                    (decode(t), v)
                    for v, t in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                ],
                "suppressed": [
                    (decode(t), v)
                    for v, t in zip(bottom.values.tolist(), bottom.indices.tolist(), strict=True)
                ],
                "kl": _ci(kl[i]),
            }
    return out
