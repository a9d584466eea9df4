"""Sparse autoencoders judged on activations they were not trained on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def evaluate_sae(sae: Any, batches: Iterable[Tensor]) -> dict[str, float]:
    """Reconstruction and sparsity of ``sae`` over ``batches`` of activations [n, d_in]:

    - ``l0``: mean number of latents != 0 per token;
    - ``explained_variance``: 1 - SSE / SST, SST around the mean over all tokens (1: exact,
      0: no better than predicting the mean);
    - ``dead_fraction``: fraction of latents that are 0 on every token;
    - ``mse``: mean squared error per element; ``n_eval_tokens``: tokens seen.
    """
    sae.eval()
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    n, active, sse, sum_sq = 0, 0, 0.0, 0.0
    total = torch.zeros(d_in, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.bool)
    for x in batches:
        if x.ndim != 2 or x.shape[1] != d_in:
            raise ValueError(f"activations must be [n, d_in={d_in}], got {tuple(x.shape)}")
        x = x.to(device=device, dtype=dtype)
        latents = sae.encode(x)
        recon = sae.decode(latents)
        nonzero = latents != 0
        n += x.shape[0]
        active += int(nonzero.sum())
        fired |= nonzero.any(0).cpu()
        sse += float((recon - x).double().pow(2).sum())
        x64 = x.double().cpu()
        total += x64.sum(0)
        sum_sq += float(x64.pow(2).sum())
    if n == 0:
        raise ValueError("no activations to evaluate the SAE on")
    sst = sum_sq - float(total.pow(2).sum()) / n
    if sst <= 0:
        raise ValueError("the activations are constant: explained variance is undefined")
    return {
        "l0": active / n,
        "explained_variance": 1.0 - sse / sst,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "mse": sse / (n * d_in),
        "n_eval_tokens": n,
    }
