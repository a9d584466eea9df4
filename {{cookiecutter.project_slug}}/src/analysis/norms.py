"""The final norm's linear part, for reading directions through the unembedding.

Direct logit attribution and the decoder directions of SAE latents both map a residual
direction to logits through ``ln_final`` and ``W_U``; both use ``final_norm_linear``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor


def final_norm_linear(model: Any, scale: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The model's final norm without its bias: centre (LayerNorm, not RMSNorm), divide by
    ``scale`` if given (a cached per-token scale, which makes DLA linear) and multiply by
    the weight: ``1 + w`` on models whose RMSNorm stores the offset
    (``cfg.rmsnorm_uses_offset``, Gemma), else ``w``. The identity without a final norm.

    The bias is no component's contribution, and the same for every direction. Without
    ``scale``, a positive per-token scale does not change which tokens a direction promotes.
    On models loaded with folded LayerNorm (pretrained models here) the weight and centring
    are already in ``W_U``, and this is (nearly) the identity.
    """
    norm = getattr(model, "ln_final", None)
    normalization = getattr(model.cfg, "normalization_type", None)
    if norm is None or normalization is None:
        return lambda x: x
    center = not getattr(norm, "uses_rms_norm", False) and normalization in ("LN", "LNPre")
    weight = getattr(norm, "w", None)
    if weight is not None and getattr(model.cfg, "rmsnorm_uses_offset", False):
        weight = 1.0 + weight
    weight = None if weight is None else weight.detach()

    def apply(x: Tensor) -> Tensor:
        if center:
            x = x - x.mean(-1, keepdim=True)
        if scale is not None:
            x = x / scale
        return x if weight is None else x * weight.to(x.device, x.dtype)

    return apply
