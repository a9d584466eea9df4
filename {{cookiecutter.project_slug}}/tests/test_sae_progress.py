"""The SAE training progress bar moves at every step (SAELens's own moved every 100 steps,
so a short run showed 0 until it ended)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens", reason="needs SAELens")

from src.analysis import sae as sae_module  # noqa: E402


def test_progress_bar_moves_at_every_step(monkeypatch):
    seen: list[int] = []
    update = sae_module._Trainer._update_pbar

    def spy(self, step_output, pbar, update_interval=100):
        update(self, step_output, pbar, update_interval)
        seen.append(pbar.n)

    monkeypatch.setattr(sae_module._Trainer, "_update_pbar", spy)
    sae = sae_module.build_sae(
        8, architecture="standard", expansion_factor=2, k=None, l1_coefficient=1.0,
        l1_warm_up_steps=0, normalize_activations="none",
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    batches = iter(lambda: torch.randn(16, 8, generator=generator), None)
    stats = sae_module.train_sae(
        sae, batches, n_tokens=80, batch_size=16, lr=1e-3, lr_warm_up_steps=0, lr_decay_steps=0
    )
    assert stats["n_steps"] == 5
    assert seen == [16, 32, 48, 64, 80]
