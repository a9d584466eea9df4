"""Statistics: bootstrap CIs, permutation tests and seed summaries against known answers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from src.analysis.statistics import CI, bootstrap_ci, permutation_test, seed_summary


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_bootstrap_ci_of_a_normal_mean(method: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=400)
    ci = bootstrap_ci(x, method=method)
    assert isinstance(ci.low, float) and ci.n == 400 and ci.confidence == 0.95
    assert ci.estimate == pytest.approx(x.mean()) and ci.low < 3.0 < ci.high
    analytic = 2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert ci.high - ci.low == pytest.approx(analytic, rel=0.15)
    narrower = bootstrap_ci(x, confidence=0.5, method=method)
    assert ci.low < narrower.low < narrower.high < ci.high
    assert bootstrap_ci(x, method=method, seed=0) == ci  # deterministic per seed


def test_bootstrap_ci_coverage() -> None:
    """About 95% of 200 intervals of independent samples cover the true mean."""
    samples = np.random.default_rng(1).exponential(1.0, size=(200, 60))  # skewed
    ci = bootstrap_ci(samples, n_resamples=1000)
    coverage = ((ci.low < 1.0) & (ci.high > 1.0)).mean()
    assert 0.88 <= coverage <= 0.99


def test_bootstrap_vectorised_equals_per_entry_calls() -> None:
    values = np.random.default_rng(2).normal(size=(3, 4, 50))
    values[1, 2] = 0.25  # one constant entry among varying ones
    ci = bootstrap_ci(values)
    assert ci.estimate.shape == ci.low.shape == ci.high.shape == (3, 4)
    for i, j in np.ndindex(3, 4):
        one = bootstrap_ci(values[i, j])
        assert one.estimate == pytest.approx(ci.estimate[i, j], abs=1e-12)
        assert one.low == pytest.approx(ci.low[i, j], abs=1e-12)
        assert one.high == pytest.approx(ci.high[i, j], abs=1e-12)
    moved = bootstrap_ci(np.moveaxis(values, -1, 0), axis=0)  # the sample axis anywhere
    np.testing.assert_allclose(moved.low, ci.low, atol=1e-12)


def test_bootstrap_constant_data_has_zero_width_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("percentile", "BCa", "basic"):
            ci = bootstrap_ci(np.full(30, 0.7), method=method)
            assert ci.estimate == ci.low == ci.high == 0.7
        both = bootstrap_ci(np.stack([np.full(30, -2.0), np.arange(30.0)]), method="BCa")
        assert both.low[0] == both.high[0] == -2.0 and both.low[1] < 14.5 < both.high[1]
        # BCa is undefined for a median of near-constant data: percentile there.
        tied = np.r_[np.ones(99), 0.0]
        median = bootstrap_ci(tied, statistic="median", method="BCa")
        assert median.low == median.high == 1.0


def test_bootstrap_accepts_torch_and_serialises() -> None:
    values = torch.arange(20, dtype=torch.bfloat16).reshape(2, 10)
    ci = bootstrap_ci(values, statistic="median")
    np.testing.assert_allclose(ci.estimate, [4.5, 14.5])
    logged = json.loads(json.dumps(ci.to_dict()))
    assert logged["estimate"] == [4.5, 14.5] and logged["n"] == 10
    assert logged["method"] == "bootstrap-percentile" and len(logged["low"]) == 2


@pytest.mark.parametrize("n_prompts", [200, 100])
def test_bootstrap_speed(n_prompts: int) -> None:
    import time

    shape = (8, n_prompts) if n_prompts == 200 else (12, 12, n_prompts)
    values = np.random.default_rng(3).normal(size=shape)
    start = time.perf_counter()
    bootstrap_ci(values)
    assert time.perf_counter() - start < 1.5  # measured ~0.04 s and ~0.15 s on 2 CPU cores


def test_permutation_test_detects_shifts() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=100), rng.normal(size=100)
    same = permutation_test(a, b)
    assert same.statistic == pytest.approx(a.mean() - b.mean()) and same.p_value > 0.05
    shifted = permutation_test(a + 1.0, b)
    assert shifted.p_value < 0.01 and shifted.p_value > 0  # Monte Carlo: never exactly 0
    assert permutation_test(a + 1.0, b, alternative="greater").p_value < 0.01
    assert permutation_test(a + 1.0, b, alternative="less").p_value > 0.99
    assert permutation_test(a, b, seed=0) == same


def test_paired_permutation_test_removes_shared_noise() -> None:
    """Per-prompt noise shared by both conditions hides a small effect unless paired."""
    rng = np.random.default_rng(5)
    prompt = rng.normal(0, 5.0, size=60)
    a, b = prompt + 0.5 + rng.normal(0, 0.2, 60), prompt + rng.normal(0, 0.2, 60)
    paired = permutation_test(a, b, paired=True)
    independent = permutation_test(a, b)
    assert paired.statistic == pytest.approx(independent.statistic)
    assert paired.p_value < 0.001 < 0.3 < independent.p_value
    # Reference: scipy's paired t-test agrees on significance.
    assert stats.ttest_rel(a, b).pvalue < 0.001


def test_permutation_test_small_paired_is_exact() -> None:
    # 5 pairs, all differences +1: the exact two-sided p-value is 2 / 2**5.
    result = permutation_test(np.arange(5.0) + 1, np.arange(5.0), paired=True)
    assert result.p_value == pytest.approx(2 / 32) and result.statistic == 1.0


def test_permutation_test_vectorised() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(3, 40)), rng.normal(size=(3, 50))
    a[2] += 2.0
    result = permutation_test(a, b, n_resamples=2000)
    assert result.p_value.shape == (3,) and result.p_value[2] < 0.01
    one = permutation_test(a[2], b[2], n_resamples=2000)
    assert one.statistic == pytest.approx(result.statistic[2])


def test_seed_summary_is_scipys_t_interval() -> None:
    per_seed = np.array([0.81, 0.86, 0.78, 0.90, 0.84])
    ci = seed_summary(per_seed)
    reference = stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert ci.estimate == pytest.approx(0.838) and ci.n == 5 and ci.method == "student-t"
    assert (ci.low, ci.high) == pytest.approx((reference.low, reference.high))
    grid = np.random.default_rng(7).normal(size=(4, 2, 3))  # [n_seeds, layers, heads]
    grid[:, 1, 1] = 5.0
    many = seed_summary(torch.from_numpy(grid), confidence=0.9)
    reference = stats.ttest_1samp(grid[:, 0], 0.0, axis=0).confidence_interval(0.9)
    np.testing.assert_allclose(many.low[0], reference.low)
    np.testing.assert_allclose(many.high[0], reference.high)
    assert many.low[1, 1] == many.high[1, 1] == 5.0  # constant: zero width
    assert isinstance(many, CI) and many.to_dict()["low"][1][1] == 5.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bootstrap_ci([]), r"values needs >= 2 samples"),
        (lambda: bootstrap_ci([1.0]), r"values needs >= 2 samples"),
        (lambda: bootstrap_ci(np.zeros((3, 0))), r"values needs >= 2 samples"),
        (lambda: bootstrap_ci([1.0, np.nan]), r"values must be finite"),
        (lambda: bootstrap_ci([1.0, 2.0], confidence=1.0), r"confidence must be in \(0, 1\)"),
        (lambda: bootstrap_ci([1.0, 2.0], confidence=0), r"confidence must be in \(0, 1\)"),
        (lambda: bootstrap_ci([1.0, 2.0], statistic="max"), r"statistic must be 'mean'"),
        (lambda: bootstrap_ci([1.0, 2.0], method="bca"), r"method must be one of"),
        (lambda: bootstrap_ci([1.0, 2.0], axis=2), r"axis 2 is out of range for values"),
        (lambda: bootstrap_ci(3.0), r"values must have a sample axis"),
        (lambda: permutation_test([], [1.0, 2.0]), r"a needs >= 1 samples"),
        (lambda: permutation_test([1.0, 2.0], [np.inf]), r"b must be finite"),
        (
            lambda: permutation_test([1.0, 2.0], [1.0, 2.0, 3.0], paired=True),
            r"a and b must have the same shape when paired=True",
        ),
        (lambda: permutation_test([1.0], [2.0]), r"a and b need >= 3 samples"),
        (lambda: permutation_test([1.0, 2], [3.0], alternative="more"), r"alternative must be"),
        (lambda: seed_summary([0.5]), r"values_per_seed needs >= 2 samples along axis 0"),
        (lambda: seed_summary([0.5, np.nan]), r"values_per_seed must be finite"),
        (lambda: seed_summary([0.5, 0.6], confidence=95), r"confidence must be in \(0, 1\)"),
    ],
)
def test_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
