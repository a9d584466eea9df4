"""SAE feature figures on a tiny SAE with known weights: every number checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

pytest.importorskip("sae_lens", reason="needs SAELens (sae-lens pins transformer-lens<4)")

from sae_lens import StandardSAE, StandardSAEConfig  # noqa: E402

from src.analysis.features import (  # noqa: E402
    choose_features,
    decoder_logits,
    decoder_top_tokens,
    feature_stats,
    top_contexts,
)
from src.analysis.norms import final_norm_linear  # noqa: E402
from src.visualization.features import (  # noqa: E402
    contexts_markdown,
    decoder_markdown,
    density_figure,
    plot_feature_density,
    save_contexts_markdown,
)


def identity_sae() -> StandardSAE:
    """d_in 4, d_sae 6: latent i < 4 is relu(x_i); latent 4 is relu(-x_0), 5 is relu(-x_1)."""
    sae = StandardSAE(StandardSAEConfig(d_in=4, d_sae=6))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(4), -torch.eye(4)[:, :2]], dim=1))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.W_dec.copy_(sae.W_enc.T)
    return sae


# 3 sequences of 5 tokens; activations chosen so the answers are known:
TOKENS = torch.arange(100, 115).reshape(3, 5)
ACTS = torch.zeros(3, 5, 4)
ACTS[0, 1, 0], ACTS[1, 3, 0], ACTS[2, 0, 0] = 2.0, 5.0, 1.0  # latent 0: 3 tokens
ACTS[2, 4, 1] = 3.0  # latent 1: 1 token
ACTS[:, :, 2] = 0.5  # latent 2: every token
ACTS[:, :, 3] = -1.0  # latent 3: never (dead)
ACTS[0, 0, 0] = -4.0  # latent 4 = relu(-x0): 1 token; latent 5: dead


def test_feature_stats_counts_and_top_activations_by_hand():
    sae = identity_sae()
    # two chunks, encoded 4 tokens at a time: batches and chunks must not change the answer
    chunks = [(TOKENS[:2], ACTS[:2]), (TOKENS[2:], ACTS[2:])]
    stats = feature_stats(sae, chunks, k=2, batch_size=4)
    assert stats.n_tokens == 15
    assert stats.counts.tolist() == [3, 1, 15, 0, 1, 0]
    assert stats.density.tolist() == [n / 15 for n in (3, 1, 15, 0, 1, 0)]
    assert stats.dead.tolist() == [False, False, False, True, False, True]
    # latent 0: 5.0 at (seq 1, pos 3) = flat 8, then 2.0 at (0, 1) = flat 1
    assert stats.top_values[:, 0].tolist() == [5.0, 2.0]
    assert stats.top_indices[:, 0].tolist() == [8, 1]
    assert stats.top_values[:, 4].tolist() == [4.0, 0.0]
    assert torch.equal(stats.tokens, TOKENS)
    # max_tokens: whole sequences until at least 6 tokens, i.e. the first two
    first = feature_stats(sae, chunks, k=2, max_tokens=6)
    assert first.n_tokens == 10 and first.counts.tolist() == [2, 0, 10, 0, 1, 0]
    assert torch.equal(first.tokens, TOKENS[:2])


def test_top_contexts_windows_and_labels():
    stats = feature_stats(identity_sae(), [(TOKENS, ACTS)], k=3)
    decode = {i: f"t{i}" for i in range(100, 115)}.__getitem__
    (f0, f1, f3) = top_contexts(stats, [0, 1, 3], window=(2, 1), decode=decode)
    assert [(e["seq"], e["pos"], e["activation"]) for e in f0["examples"]] == [
        (1, 3, 5.0),
        (0, 1, 2.0),
        (2, 0, 1.0),
    ]
    first = f0["examples"][0]  # seq 1 = ids 105..109, pos 3 -> window positions 1..4
    assert first["token_ids"] == [106, 107, 108, 109] and first["target"] == 2
    assert first["tokens"] == ["t106", "t107", "t108", "t109"]
    clipped = f0["examples"][2]  # pos 0: nothing before it
    assert clipped["token_ids"] == [110, 111] and clipped["target"] == 0
    assert f1["examples"][0]["token_ids"] == [112, 113, 114]  # pos 4: nothing after
    assert f1["density"] == pytest.approx(1 / 15) and len(f1["examples"]) == 1
    assert f3["examples"] == []  # dead: no example
    with pytest.raises(ValueError, match="feature 6 is out of range"):
        top_contexts(stats, [6])


def test_contexts_markdown_marks_the_activating_token(tmp_path):
    stats = feature_stats(identity_sae(), [(TOKENS, ACTS)], k=2)
    shown = {108: "```", 109: "\n"}
    contexts = top_contexts(stats, [0, 3], window=(1, 1), decode=lambda i: shown.get(i, "x"))
    promoted = {0: {"promoted": [("a|b", 1.0)], "suppressed": [("c", -1.0)]}}
    text = contexts_markdown(contexts, title="T", promoted=promoted)
    assert "## Feature 0" in text and "Density: 0.2 of tokens." in text
    assert "x [[```]] \\n" in text  # newline shown escaped
    assert "\n````\n" in text  # a fence longer than the backticks inside
    assert "Promotes: 'a|b'" in text
    assert "(never active on the cached tokens)" in text
    path = save_contexts_markdown(contexts, tmp_path / "c.md", title="T")
    assert path.read_text().startswith("# T\n")


def test_density_figure_counts_live_and_dead():
    density = torch.tensor([0.0, 0.0, 1e-3, 1e-3, 1e-2, 0.5])
    fig = density_figure(density, title="d", bins=10)
    (ax,) = fig.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert sum(bar.get_height() for bar in bars) == 4  # the live latents
    lows = [bar.get_x() for bar in bars]
    assert min(lows) == pytest.approx(-3.0) and max(lows) < math.log10(0.5)
    (legend,) = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == "4 live latents; 2 dead (33.3%)"
    everything_dead = density_figure(torch.zeros(3))
    assert "every latent is dead" in [t.get_text() for t in everything_dead.axes[0].texts]


def test_plot_feature_density_writes_png(tmp_path):
    path = plot_feature_density(torch.tensor([0.0, 0.1, 0.2]), tmp_path / "f" / "d.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_choose_features_live_only_seeded():
    density = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.0, 0.4])
    assert choose_features(density, 10) == [0, 2, 3, 5]
    chosen = choose_features(density, 2, seed=1)
    assert len(chosen) == 2 and chosen == sorted(chosen) and set(chosen) <= {0, 2, 3, 5}
    assert chosen == choose_features(density, 2, seed=1)


def test_decoder_logits_equal_w_dec_times_w_u():
    generator = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(6, 4, generator=generator), torch.randn(4, 9, generator=generator)
    features = [5, 1]
    logits = decoder_logits(W_dec, W_U, features)
    assert torch.allclose(logits, torch.stack([W_dec[5] @ W_U, W_dec[1] @ W_U]))
    top = decoder_top_tokens(logits, features, k=3, decode=lambda i: f"tok{i}")
    for row, f in enumerate(features):
        by_hand = np.argsort(-(W_dec[f] @ W_U).numpy())
        assert [t for t, _ in top[f]["promoted"]] == [f"tok{i}" for i in by_hand[:3]]
        assert [t for t, _ in top[f]["suppressed"]] == [f"tok{i}" for i in by_hand[::-1][:3]]
        assert top[f]["promoted"][0][1] == pytest.approx(logits[row].max().item())
    text = decoder_markdown(top, title="D")
    assert text.count("| promoted | logit |") == 2 and "`tok" in text
    with pytest.raises(ValueError, match="decoder must write to the residual stream"):
        decoder_logits(torch.zeros(2, 5), W_U, [0])


def test_final_norm_linear_is_ln_final_up_to_scale_and_bias(toy_model):
    """On the toy model (unfolded LayerNorm): ln_final(x) = norm(x) / scale + b."""
    norm = final_norm_linear(toy_model)
    x = torch.randn(3, toy_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + toy_model.cfg.eps).sqrt()
    with torch.no_grad():
        expected = toy_model.ln_final(x[None])[0] - toy_model.ln_final.b
    assert torch.allclose(norm(x) / scale, expected, atol=1e-5)
    # through W_U, with the SAE's decoder as the direction
    W_dec = torch.randn(2, toy_model.cfg.d_model)
    logits = decoder_logits(W_dec, toy_model.W_U, [0, 1], norm)
    assert torch.allclose(logits, norm(W_dec) @ toy_model.W_U.detach(), atol=1e-5)


def test_feature_stats_leave_out_ignored_tokens():
    """Token 108 (seq 1, pos 3, latent 0's 5.0) and 110 (seq 2, pos 0, its 1.0) ignored:
    neither counted nor shown, and the density is over the 13 other tokens."""
    stats = feature_stats(identity_sae(), [(TOKENS, ACTS)], k=3, ignore_tokens=[108, 110])
    assert stats.n_tokens == 15 and stats.n_ignored == 2
    assert stats.counts.tolist() == [1, 1, 13, 0, 1, 0]
    assert stats.density.tolist() == [n / 13 for n in (1, 1, 13, 0, 1, 0)]
    (f0,) = top_contexts(stats, [0])
    assert [(e["seq"], e["pos"], e["activation"]) for e in f0["examples"]] == [(0, 1, 2.0)]
