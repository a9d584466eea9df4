"""SAE feature analysis beyond training: activation histograms, feature ablation and
steering (checked against one-at-a-time TransformerLens hooks), and the self-contained HTML
dashboards, on the toy model and on a tiny pretrained checkpoint with a saved SAE."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("sae_lens", reason="needs SAELens")

from sae_lens import SAE, StandardSAE, StandardSAEConfig  # noqa: E402

from src.analysis.feature_effects import feature_ablation, feature_steering  # noqa: E402
from src.analysis.features import HIST_EDGES, feature_report, model_chunks  # noqa: E402
from src.data.induction import make_induction_dataset  # noqa: E402
from src.visualization.dashboards import dashboard_html  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"


def random_sae(d_in: int, *, dead: int | None = None, seed: int = 0) -> StandardSAE:
    """A sparse random SAE (negative encoder bias); latent ``dead`` never fires."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=generator) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=generator) / d_in**0.5)
        sae.b_enc.copy_(-0.3 + 0.1 * torch.randn(sae.b_enc.shape, generator=generator))
        sae.b_dec.zero_()
        if dead is not None:
            sae.b_enc[dead] = -1e4
    return sae.eval()


@pytest.fixture(scope="module")
def toy_tokens():
    return make_induction_dataset(6, 31, 64, 0, seed=5).clean_tokens


def reference_ablation(model, sae, tokens, feature):
    """Next-token loss change with the latent's contribution removed, one forward through
    TransformerLens's own hooks (run_with_hooks)."""

    def hook(act, hook):
        z = sae.encode(act)[..., feature]
        return act - z[..., None] * sae.W_dec[feature]

    def loss(logits):
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none"
        )

    with torch.no_grad():
        clean = loss(model(tokens))
        ablated = loss(model.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)]))
    return (ablated - clean).mean(-1)


def test_batched_ablation_equals_one_feature_at_a_time(toy_model, toy_tokens):
    sae = random_sae(64, dead=3)
    features = [0, 3, 5, 17]
    out = feature_ablation(toy_model, sae, toy_tokens, HOOK, features, batch_size=12)
    for f in features:
        expected = reference_ablation(toy_model, sae, toy_tokens, f)
        assert out[f]["delta_loss"]["mean"] == pytest.approx(expected.mean().item(), abs=1e-5)
    # a latent that never fires changes nothing, exactly
    assert out[3]["delta_loss"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert out[3]["n_active"] == 0
    assert any(abs(out[f]["delta_loss"]["mean"]) > 1e-3 for f in (0, 5, 17))  # a real test


def test_steering_with_coefficient_zero_changes_nothing(toy_model, toy_tokens):
    sae = random_sae(64)
    out = feature_steering(toy_model, sae, toy_tokens, HOOK, [1, 2], [0.0, 4.0], k=3)
    assert all(v == 0.0 for _, v in out[1]["promoted"] + out[1]["suppressed"])
    assert out[1]["kl"]["mean"] == 0.0
    assert out[2]["kl"]["mean"] > 1e-3 and out[2]["promoted"][0][1] > 0


def test_histograms_count_every_active_value(toy_model, toy_tokens):
    sae = random_sae(64)
    chunks = model_chunks(toy_model, toy_tokens, HOOK, batch_size=4)
    report = feature_report(sae, toy_model, chunks, HOOK, n_features=5, k=3, effect_seqs=4)
    n = report["n_tokens"]
    assert report["histograms"]["edges"] == pytest.approx(HIST_EDGES.tolist())
    for f in report["features"]:
        counts = report["histograms"]["counts"][str(f)]
        assert sum(counts) == round(report["density"][f] * n)
        assert (
            set(report["ablation"])
            == set(report["steering"])
            == {str(f) for f in report["features"]}
        )


def _external_sources(page: str) -> list[str]:
    return re.findall(r"<(?:script|link|img|iframe)[^>]*(?:src|href)=\"https?://", page, re.I)


def test_dashboard_is_self_contained(toy_model, toy_tokens):
    sae = random_sae(64)
    chunks = model_chunks(toy_model, toy_tokens, HOOK, batch_size=4)
    report = feature_report(sae, toy_model, chunks, HOOK, n_features=4, k=3, effect_seqs=3)
    report = json.loads(json.dumps(report))  # as the figure rebuild reads it
    report["links"] = {str(f): f"https://www.neuronpedia.org/x/{f}" for f in report["features"]}
    page = dashboard_html(report, title="toy <SAE>")
    assert page.startswith("<!DOCTYPE html>") and "<title>toy &lt;SAE&gt;</title>" in page
    assert _external_sources(page) == [] and "<script" not in page and "<link" not in page
    assert "http://" not in page.replace('href="https://www.neuronpedia.org', "")
    for f in report["features"]:
        assert f'<section id="feature-{f}">' in page
        assert f'<a href="https://www.neuronpedia.org/x/{f}">' in page
    assert page.count("<svg") == len(report["features"])
    assert _external_sources('<script src="https://cdn.x/y.js"></script>')  # the check works


@pytest.mark.parametrize(
    "arch",
    ["gpt2", *(pytest.param(a, marks=pytest.mark.slow) for a in ("gpt-neox", "gemma-2", "qwen2"))],
)
def test_analysis_of_a_saved_sae_on_a_pretrained_checkpoint(
    arch, pretrained_model, tiny_corpus, tmp_path
):
    from src.data.loading import token_chunks
    from src.experiments.sae_analysis import run_sae_analysis
    from src.models.load import bos_token_id
    from src.visualization.figures import draw_figures

    model = pretrained_model(arch)
    hook = "blocks.1.hook_resid_pre"
    random_sae(model.cfg.d_model).save_model(tmp_path / "sae")
    sae = SAE.load_from_disk(tmp_path / "sae")
    tokens = token_chunks("text", 8, 32, 0, model=model, path=tiny_corpus)
    bos = bos_token_id(model)
    results = run_sae_analysis(
        model, sae, tokens, hook_name=hook, out_dir=tmp_path / "out", n_features=4, k=3,
        ignore_tokens=[bos],
    )  # fmt: skip
    report = json.loads((tmp_path / "out" / "features.json").read_text())
    f = report["features"][0]
    assert (
        set(report["ablation"]) == set(report["steering"]) == {str(g) for g in report["features"]}
    )
    # the batched ablation agrees with TransformerLens hooks on the bridge
    out = feature_ablation(model, sae, tokens, hook, report["features"])
    for g in report["features"]:
        expected = reference_ablation(model, sae, tokens, g).mean().item()
        assert out[g]["delta_loss"]["mean"] == pytest.approx(expected, abs=1e-5)
    made = draw_figures(("sae_dashboard",), "p", results, tmp_path / "fig")
    page = (tmp_path / "fig" / "p_dashboard.html").read_text()
    assert made and _external_sources(page) == [] and f'id="feature-{f}"' in page
