"""Steering by activation addition on the toy model: a zero direction changes nothing
(exactly), and the difference of means of the final residual stream between prompts that
answer A and prompts that answer W moves the latter to the former at coefficient 1."""

from __future__ import annotations

import pytest
import torch

from src.analysis.metrics import logit_diff
from src.analysis.steering import mean_difference, sae_direction, steer, steered_generation
from src.data.induction import make_induction_dataset

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def shared():
    data = make_induction_dataset(48, 31, 64, 0, seed=0, shared_answer=True)
    return data[:24], data[24:]


def _metric(data):
    def metric(logits, index):
        return logit_diff(
            logits, data.answer_tokens[index], data.wrong_tokens[index], per_prompt=True
        )

    return metric


def test_shared_answer_dataset():
    data = make_induction_dataset(20, 31, 64, 0, seed=3, shared_answer=True)
    assert set(data.answer_tokens.tolist()) == {1} and set(data.wrong_tokens.tolist()) == {2}
    # tokens within a prompt stay distinct: the answer appears once in the first half only
    assert ((data.clean_tokens == 1).sum(1) == 1).all()
    assert ((data.clean_tokens == 2).sum(1) == 0).all()


def test_a_zero_direction_changes_nothing(toy_model, shared):
    _, test = shared
    metric = _metric(test)
    plain = logit_diff(toy_model(test.corrupted_tokens), test.answer_tokens, test.wrong_tokens,
                       per_prompt=True)  # fmt: skip
    zero = torch.zeros(toy_model.cfg.d_model)
    for positions in ("all", "final"):
        out = steer(toy_model, test.corrupted_tokens, zero, HOOK, [0.0, 1.0, 8.0], metric,
                    positions=positions)  # fmt: skip
        assert torch.equal(out, plain.expand(3, -1))


def test_the_difference_of_means_moves_the_metric_to_the_positive_set(toy_model, shared):
    train, test = shared
    direction = mean_difference(toy_model, train.clean_tokens, train.corrupted_tokens, HOOK)
    metric = _metric(test)
    coefficients = [0.0, 0.25, 0.5, 1.0]
    # batched (all coefficients in one forward) equals a forward per coefficient
    out = steer(toy_model, test.corrupted_tokens, direction, HOOK, coefficients, metric)
    one = steer(toy_model, test.corrupted_tokens, direction, HOOK, coefficients, metric,
                batch_size=1)  # fmt: skip
    torch.testing.assert_close(out, one, atol=1e-4, rtol=1e-5)
    negative = out[0].mean().item()
    positive = logit_diff(toy_model(test.clean_tokens), test.answer_tokens, test.wrong_tokens)
    toward = (out.mean(1) - negative) / (positive.item() - negative)
    # measured: 0, 0.19, 0.52, 1.00 of the way (negative -12.0, positive +13.0)
    assert negative < -5 and positive > 5
    assert (toward.diff() > 0.1).all()  # monotone in the coefficient
    assert abs(toward[-1].item() - 1.0) < 0.1
    # the greedy continuation switches from the wrong token to the answer
    new = steered_generation(toy_model, test.corrupted_tokens[:4], direction, HOOK, [0.0, 1.0],
                             n_new=2)  # fmt: skip
    assert (new[0, :, 0] == 2).all() and (new[1, :, 0] == 1).all()


def test_sae_direction_is_the_decoder_row():
    class SAE:
        W_dec = torch.arange(12.0).reshape(3, 4)

    assert torch.equal(sae_direction(SAE(), 1), torch.tensor([4.0, 5.0, 6.0, 7.0]))
    with pytest.raises(ValueError, match="feature 3 is out of range"):
        sae_direction(SAE(), 3)


@pytest.mark.slow
def test_an_sae_latent_with_the_difference_as_decoder_row_steers_the_same(toy_model, tmp_path):
    """The kind end to end (scripts/run_experiment.py): source "sae" with a saved SAE whose
    latent 3 writes the difference of means gives the numbers of source "mean_diff"."""
    import json
    import runpy
    from pathlib import Path

    import yaml

    pytest.importorskip("sae_lens", reason="needs SAELens")
    from sae_lens import StandardSAE, StandardSAEConfig

    from src.data.loading import load_dataset

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "configs" / "toy_induction_steering.yaml").read_text())
    config["data"]["n_samples"] = 40
    data = load_dataset("induction_shared", 40, 31, 0, model=toy_model)
    direction = mean_difference(toy_model, data.clean_tokens[:20], data.corrupted_tokens[:20], HOOK)
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=8))
    with torch.no_grad():
        sae.W_dec[3] = direction
    sae.save_model(tmp_path / "sae")
    main = runpy.run_path(str(root / "scripts" / "run_experiment.py"))["main"]
    results = {}
    for source in ("mean_diff", "sae"):
        config["steering"] |= {"source": source}
        if source == "sae":
            config["steering"] |= {"sae": str(tmp_path / "sae"), "feature": 3}
        path = tmp_path / f"{source}.yaml"
        path.write_text(yaml.safe_dump(config))
        out = tmp_path / source
        args = ["--config", str(path), "--device", "cpu", "--results-dir", str(out)]
        assert main([*args, "--figures-dir", str(out / "figures")]) == 0
        (log,) = out.glob("*_2*.json")
        results[source] = json.loads(log.read_text())["results"]
        assert sorted(p.name for p in (out / "figures").iterdir()) == [
            "toy_induction_steering_steering.png", "toy_induction_steering_steering_text.md"
        ]  # fmt: skip
    steered = {s: [e["mean"] for e in r["steered_metric"]] for s, r in results.items()}
    assert steered["sae"] == pytest.approx(steered["mean_diff"], abs=1e-4)
    assert results["sae"]["feature"] == 3 and results["mean_diff"]["toward_positive"][-1] > 1
    assert results["sae"]["generation"] == results["mean_diff"]["generation"]
