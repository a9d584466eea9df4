"""Metrics on hand-built logits."""

from __future__ import annotations

import pytest
import torch

from src.analysis.metrics import (
    answer_logprob,
    answer_loss,
    answer_prob,
    bind_metric,
    logit_diff,
    normalize,
    top1_accuracy,
)


@pytest.fixture
def logits() -> torch.Tensor:
    """[batch 2, pos 3, vocab 4]; only the final position should matter."""
    out = torch.full((2, 3, 4), 100.0)
    out[:, -1] = torch.tensor([[1.0, 4.0, 0.0, 0.0], [3.0, 0.0, 2.0, 0.0]])
    return out


ANSWER, WRONG = torch.tensor([1, 2]), torch.tensor([0, 0])


def test_logit_diff(logits: torch.Tensor) -> None:
    per_prompt = logit_diff(logits, ANSWER, WRONG, per_prompt=True)
    assert per_prompt.tolist() == [3.0, -1.0]
    assert logit_diff(logits, ANSWER, WRONG).item() == 1.0
    assert logit_diff(logits[:, -1], ANSWER, WRONG).item() == 1.0  # final logits only
    assert logit_diff(logits, WRONG, ANSWER).item() == -1.0  # antisymmetric


def test_top1_accuracy_and_answer_prob(logits: torch.Tensor) -> None:
    assert top1_accuracy(logits, ANSWER, per_prompt=True).tolist() == [1.0, 0.0]
    assert top1_accuracy(logits, torch.tensor([1, 0])).item() == 1.0
    expected = torch.tensor([1.0, 4.0, 0.0, 0.0]).softmax(-1)[1]
    assert answer_prob(logits, ANSWER, per_prompt=True)[0].item() == pytest.approx(expected.item())


def test_bind_metric(logits: torch.Tensor) -> None:
    metric = bind_metric("logit_diff", ANSWER, WRONG)
    assert metric(logits).ndim == 0 and metric(logits).item() == 1.0
    with pytest.raises(
        ValueError,
        match="unknown metric 'kl'; known: logit_diff, answer_prob, answer_logprob, answer_loss",
    ):
        bind_metric("kl", ANSWER, WRONG)


def test_logprob_loss_and_per_prompt_binding(logits: torch.Tensor) -> None:
    expected = torch.tensor([1.0, 4.0, 0.0, 0.0]).log_softmax(-1)[1].item()
    assert answer_logprob(logits, ANSWER, per_prompt=True)[0].item() == pytest.approx(expected)
    assert answer_loss(logits, ANSWER).item() == pytest.approx(
        -answer_logprob(logits, ANSWER).item()
    )
    per_prompt = bind_metric("logit_diff", ANSWER, WRONG, per_prompt=True)(logits)
    assert per_prompt.tolist() == [3.0, -1.0]


def test_normalize() -> None:
    assert normalize(2.0, clean=4.0, corrupted=-4.0).item() == pytest.approx(0.75)
    values = normalize(torch.tensor([4.0, -4.0]), clean=4.0, corrupted=-4.0)
    assert values.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="baselines are equal"):
        normalize(1.0, clean=2.0, corrupted=2.0)


def test_near_zero_gap_warns_in_output_and_log(caplog):
    """The case found on a random model: baselines -0.01064 and -0.01048 gave normalized
    effects of -1.95 silently; now a warning (warnings + logging) stored with the results."""
    from src.analysis.effects import gap_warning
    from src.experiments.common import results_header

    assert gap_warning(11.6, -11.5) is None and gap_warning(1.0, 0.9) is None
    assert gap_warning(1.0, 0.96) is not None  # 4% of the size: under the 5% tolerance
    clean, corrupted = torch.tensor([-0.01064, -0.01064]), torch.tensor([-0.01048, -0.01048])
    with pytest.warns(RuntimeWarning, match="normalized effects .* are unreliable"):
        header = results_header(clean, corrupted, "logit_diff")
    (message,) = header["warnings"]
    assert "differ by 0.00016" in message and message in caplog.text
    assert "warnings" not in results_header(torch.tensor([2.0]), torch.tensor([0.0]), "x")
