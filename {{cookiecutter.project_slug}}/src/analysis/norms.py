"""The linear part of a model's norms, for reading directions through them.

Direct logit attribution and the decoder directions of SAE latents both map a residual
direction to logits through ``ln_final`` and ``W_U`` (``final_norm_linear``); DLA and circuit
discovery split a post-normed sublayer output (Gemma-2's ``ln1_post`` / ``ln2_post``) into
its heads through ``norm_linear`` with the norm's scale frozen at its cached value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor


def norm_linear(model: Any, norm: Any, scale: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The norm module ``norm`` of ``model`` without its bias: centre (LayerNorm, not
    RMSNorm), divide by ``scale`` if given (the cached per-token ``hook_scale``, which makes
    the norm linear) and multiply by the weight: ``1 + w`` on models whose RMSNorm stores
    the offset (``cfg.rmsnorm_uses_offset``, Gemma), else ``w``. The identity when ``norm``
    is None or the model has no normalization."""
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


def final_norm_linear(model: Any, scale: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The model's final norm without its bias (``norm_linear`` of ``ln_final``). The
    identity without a final norm.

    The bias is no component's contribution, and the same for every direction. Without
    ``scale``, a positive per-token scale does not change which tokens a direction promotes.
    On models loaded with folded LayerNorm (pretrained models here) the weight and centring
    are already in ``W_U``, and this is (nearly) the identity.
    """
    return norm_linear(model, getattr(model, "ln_final", None), scale)
