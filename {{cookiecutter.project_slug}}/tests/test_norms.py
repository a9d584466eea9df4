"""The final norm's linear part (DLA and decoder directions through the unembedding)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from src.analysis.norms import final_norm_linear


@pytest.fixture(scope="module")
def rms_model(small_bridge):
    """A native bridge with RMSNorm whose final weight is not all ones."""
    model = small_bridge(n_layers=1, d_model=8, d_head=2, normalization_type="RMS")
    with torch.no_grad():
        model.ln_final.w.copy_(torch.linspace(-0.5, 0.5, 8))
    return model


def test_rmsnorm_offset_is_applied(rms_model, monkeypatch):
    """Gemma's RMSNorm multiplies by ``1 + w`` (``cfg.rmsnorm_uses_offset``); no centring."""
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    w = rms_model.ln_final.w.detach()
    assert torch.allclose(final_norm_linear(rms_model)(x), x * w)
    monkeypatch.setattr(rms_model, "cfg", dataclasses.replace(rms_model.cfg))
    rms_model.cfg.rmsnorm_uses_offset = True
    assert torch.allclose(final_norm_linear(rms_model)(x), x * (1 + w))
    scale = torch.tensor([[2.0], [4.0], [0.5]])
    assert torch.allclose(final_norm_linear(rms_model, scale)(x), x / scale * (1 + w))
    as_double = final_norm_linear(rms_model)(x.double())
    assert as_double.dtype == torch.float64 and torch.allclose(as_double, x.double() * (1 + w))
