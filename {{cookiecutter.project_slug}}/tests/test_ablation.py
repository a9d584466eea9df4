"""Ablations: the known answer on the trained toy (its induction circuit), agreement with
the plain TransformerLens-hooks sweep (scripts/benchmark_ablation.py), direction ablation,
the runner, and pretrained bridges."""

from __future__ import annotations

import pytest
import torch

from scripts.benchmark_ablation import reference_ablate
from src.analysis import ablation as ablation_module
from src.analysis.ablation import ABLATABLE, _draw, ablate
from src.data.repeated import repeated_random_tokens
from src.models.checkpoints import ARCHITECTURES
from src.models.toy import TOY_BOS_TOKEN_ID

HALF = 10


@pytest.fixture(scope="module")
def repeated():
    """16 prompts [BOS, x, x] with halves of 10 tokens, and a reference set of 32."""
    tokens = repeated_random_tokens(16, HALF, 64, TOY_BOS_TOKEN_ID, seed=1)
    reference = repeated_random_tokens(32, HALF, 64, TOY_BOS_TOKEN_ID, seed=2)
    return tokens, reference


def improvement(tokens):
    """Per prompt: loss on the first half minus loss on the repeated half (what induction
    buys), from logits of ``tokens`` repeated over slices."""

    def metric(logits):
        targets = tokens.repeat(logits.shape[0] // len(tokens), 1)[:, 1:]
        nll = -logits.log_softmax(-1)[:, :-1].gather(-1, targets[..., None])[..., 0]
        return nll[:, 1:HALF].mean(-1) - nll[:, HALF + 1 :].mean(-1)

    return metric


def test_known_answer_on_the_toy(toy_model, repeated):
    """Induction on the toy needs its previous-token head (a0.h2) and its layer-1 induction
    heads (all four, redundant: any one alone keeps most of it). Measured (zero / mean):
    improvement 9.09 nats; a0.h2 ablated 3.01 / 2.85; a0.h0 (unrelated) 8.82 / 8.88; the
    four induction heads at once (layer 1's attention output) 0.02 / 0.004."""
    tokens, reference = repeated
    metric = improvement(tokens)
    for kind in ("zero", "mean"):
        heads = ablate(toy_model, tokens, metric, "head_out", ablation=kind, reference=reference)
        base = heads.baseline.mean().item()
        assert base > 8.0  # the trained toy's induction
        values = heads.values.mean(-1)
        assert values[0, 2] < 0.4 * base  # the previous-token head
        assert values[0, 0] > 0.95 * base and values[0, 1] > 0.95 * base  # unrelated heads
        assert (values[1] > 0.85 * base).all()  # one induction head alone: redundant
        layers = ablate(toy_model, tokens, metric, "attn_out", ablation=kind, reference=reference)
        assert abs(layers.values.mean(-1)[1].item()) < 0.03 * base  # every induction head


def test_induction_heads_together(toy_model, repeated):
    """The four induction heads zero-ablated at once (one forward) leave 0.1% of the
    improvement (measured 0.008 of 9.09 nats); the three other layer-0 heads at once leave
    90%; one head "together" is its entry of the sweep."""
    tokens, _ = repeated
    metric = improvement(tokens)
    induction = ablate(toy_model, tokens, metric, "head_out", layers=[1], together=True)
    base = induction.baseline.mean().item()
    assert induction.axes == () and induction.values.shape == (16,)
    assert abs(induction.values.mean().item()) < 0.03 * base
    others = ablate(toy_model, tokens, metric, "head_out", layers=[0], heads=[0, 1, 3],
                    together=True)  # fmt: skip
    assert others.values.mean().item() > 0.85 * base
    one = ablate(toy_model, tokens, metric, "head_out", True, layers=[0], heads=[2],
                 positions=[12], together=True)  # fmt: skip
    sweep = ablate(toy_model, tokens, metric, "head_out", True, layers=[0], heads=[2],
                   positions=[12])  # fmt: skip
    torch.testing.assert_close(one.values, sweep.values[0, 12, 2], atol=1e-5, rtol=0)


def test_resample_averages_several_draws(toy_model, repeated):
    tokens, _ = repeated
    result = ablate(toy_model, tokens, improvement(tokens), "head_out", ablation="resample",
                    n_resamples=3, seed=0)  # fmt: skip
    assert result.values.shape == (3, 2, 4, 16) and result.axes == ("layer", "head")
    per_draw = result.values.mean(-1)
    assert (per_draw[:, 0, 2] < 3.0).all() and (per_draw[:, 0, 0] > 8.0).all()
    assert not torch.equal(per_draw[0], per_draw[1])  # different draws
    draw = _draw(16, 16, torch.Generator().manual_seed(0))
    assert not (draw == torch.arange(16)).any()  # never the prompt itself


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_matches_transformer_lens_hooks(toy_model, repeated, kind):
    """Index for index the plain sweep (one run_with_hooks forward per index)."""
    tokens, _ = repeated
    tokens = tokens[:4]
    metric = improvement(tokens)
    draw = _draw(4, 4, torch.Generator().manual_seed(0))
    for component, per_position, positions in (("head_out", True, [3, 12, 20]),
                                               ("resid_pre", True, None)):  # fmt: skip
        ours = ablate(toy_model, tokens, metric, component, per_position, ablation=kind,
                      n_resamples=1, positions=positions)  # fmt: skip
        values = ours.values[0] if kind == "resample" else ours.values
        ref = reference_ablate(toy_model, tokens, metric, component, per_position, ablation=kind,
                               draw=draw if kind == "resample" else None, positions=positions)  # fmt: skip
        assert values.shape == ref.shape
        torch.testing.assert_close(values, ref, atol=1e-4, rtol=0, equal_nan=True)
        assert (ref.nan_to_num() - ours.baseline.mean()).abs().max() > 0.1  # it does something


def test_direction_ablation(toy_model, repeated):
    """Zero-ablating a direction of resid_pre = the stream with its projection removed (by
    hand, one forward); mean-ablating it with the prompts as reference keeps the mean."""
    tokens, _ = repeated
    tokens = tokens[:4]
    metric = improvement(tokens)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
    unit = direction / direction.norm()
    ours = ablate(toy_model, tokens, metric, "resid_pre", ablation="zero", direction=direction)

    def project_out(act, hook):
        return act - (act @ unit)[..., None] * unit

    with torch.no_grad():
        ref = metric(toy_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre",
                                                                   project_out)]))  # fmt: skip
    torch.testing.assert_close(ours.values[1], ref, atol=1e-4, rtol=0)
    assert (ours.values[1] - ours.baseline).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ablation": "half"}, "ablation must be one of"),
        ({"component": "pattern"}, "cannot be ablated"),
        ({"direction": torch.ones(64), "component": "head_out"}, "direction applies to"),
        ({"direction": torch.ones(3)}, "direction must be"),
        ({"n_resamples": 0}, "n_resamples must be >= 1"),
        ({"ablation": "resample", "reference": torch.zeros(2, 5, dtype=torch.long)}, "length"),
    ],
)
def test_bad_arguments_raise(toy_model, repeated, kwargs, message):
    tokens, _ = repeated
    args = {"component": "resid_pre"} | kwargs
    component = args.pop("component")
    with pytest.raises(ValueError, match=message):
        ablate(toy_model, tokens[:2], improvement(tokens[:2]), component, **args)


def test_config_names_the_ablatable_components():
    from src.experiments import ablation as kind

    assert kind.ABLATABLE == ABLATABLE == ablation_module.ABLATABLE


def test_runner_reports_effects_with_cis(toy_model, tmp_path):
    from src.data.induction import make_induction_dataset
    from src.experiments.ablation import run_ablation_experiment
    from src.experiments.registry import experiment_config

    config = experiment_config().model_validate({
        "experiment": {"name": "ablation"}, "model": {"name": "toy-induction"},
        "data": {"dataset": "induction", "n_samples": 12, "seq_length": 21},
        "ablation": {"ablation": "resample", "n_resamples": 3, "components": ["head_out"]},
        "output": {"results_dir": str(tmp_path)},
    })  # fmt: skip
    data = make_induction_dataset(12, 21, 64, TOY_BOS_TOKEN_ID, seed=0)
    results = run_ablation_experiment(toy_model, data, config, batch_size=6)
    head_out = results["components"]["head_out"]
    top = head_out["top"][0]
    assert top["entry"] == "a0.h2" and top["low"] <= top["mean"] <= top["high"]
    assert 0.2 < top["mean"] < 1.0  # the previous-token head: a large share of the gap lost
    resamples = head_out["resamples"]
    assert resamples["n"] == 3 and len(resamples["low"]) == 8  # every (layer, head)
    assert all(lo <= hi for lo, hi in zip(resamples["low"], resamples["high"], strict=True))


def test_runner_ablates_together(toy_model, tmp_path):
    """The four induction heads mean-ablated at once lose most of the clean - corrupted gap
    (logit difference 11.2 -> about 0: measured 0.51 of the gap to -11.0, CI 0.46-0.56)."""
    from src.data.induction import make_induction_dataset
    from src.experiments.ablation import run_ablation_experiment
    from src.experiments.registry import experiment_config

    config = experiment_config().model_validate({
        "experiment": {"name": "ablation"}, "model": {"name": "toy-induction"},
        "data": {"dataset": "induction", "n_samples": 12, "seq_length": 21},
        "ablation": {"ablation": "zero", "layers": [1], "together": True,
                     "components": ["head_out"]},
        "output": {"results_dir": str(tmp_path)},
    })  # fmt: skip
    data = make_induction_dataset(12, 21, 64, TOY_BOS_TOKEN_ID, seed=0)
    results = run_ablation_experiment(toy_model, data, config, batch_size=12)
    entry = results["components"]["head_out"]
    assert entry["axes"] == [] and entry["top"] == []
    assert results["head_out_together_effect"] > 0.35
    assert entry["normalized"]["low"] <= results["head_out_together_effect"]


def _pretrained_check(model):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, model.cfg.d_vocab, (3, 9), generator=generator)
    answer = torch.randint(1, model.cfg.d_vocab, (3,), generator=generator)

    def metric(logits):
        return (
            logits[:, -1].log_softmax(-1).gather(-1, answer.repeat(len(logits) // 3)[:, None])[:, 0]
        )

    for kind in ("zero", "mean"):
        for component, per_position in (("head_out", False), ("attn_out", True), ("mlp_out", True)):
            ours = ablate(model, tokens, metric, component, per_position, ablation=kind)
            ref = reference_ablate(model, tokens, metric, component, per_position, ablation=kind)
            torch.testing.assert_close(ours.values, ref, atol=1e-4, rtol=0)


def test_pretrained_matches_hooks(pretrained_model):
    _pretrained_check(pretrained_model("qwen2"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pretrained_matches_hooks_every_arch(pretrained_model, arch):
    _pretrained_check(pretrained_model(arch))
