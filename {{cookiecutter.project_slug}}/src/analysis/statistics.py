"""Confidence intervals and significance tests for experiment results (via scipy.stats).

- ``bootstrap_ci``: CI of a mean (or median) over prompts, for every entry of an array at
  once, e.g. per-head patching effects ``[n_layers, n_heads, n_prompts]``.
- ``permutation_test``: is the mean over prompts different between two conditions?
- ``seed_summary``: mean and Student-t CI over a few training or data seeds.

Inputs are numpy arrays, torch tensors or lists (converted to float64); outputs are floats
for 1-D input and numpy arrays (the input's shape without the sample axis) otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

Alternative = Literal["two-sided", "less", "greater"]
_STATISTICS = {"mean": np.mean, "median": np.median}
_METHODS = ("percentile", "basic", "BCa")


def _plain(value: Any) -> Any:
    """A 0-d array or numpy scalar as a Python float; arrays as they are."""
    return float(value) if np.ndim(value) == 0 else np.asarray(value)


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


@dataclass(frozen=True)
class CI:
    """An estimate with its confidence interval ``[low, high]`` at level ``confidence``,
    from ``n`` samples (prompts or seeds) by ``method``. Floats, or arrays of one shape."""

    estimate: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    confidence: float
    n: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: arrays become nested lists."""
        return {
            "estimate": _jsonable(self.estimate),
            "low": _jsonable(self.low),
            "high": _jsonable(self.high),
            "confidence": self.confidence,
            "n": self.n,
            "method": self.method,
        }


@dataclass(frozen=True)
class PermutationResult:
    """``statistic`` = mean(a) - mean(b) (mean of a - b when paired) and its p-value."""

    statistic: float | np.ndarray
    p_value: float | np.ndarray
    n_resamples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": _jsonable(self.statistic),
            "p_value": _jsonable(self.p_value),
            "n_resamples": self.n_resamples,
        }


def _as_samples(values: Any, name: str, axis: int, min_n: int) -> np.ndarray:
    """``values`` as float64 with the sample axis last, checked non-empty and finite."""
    if hasattr(values, "detach"):  # a torch tensor (any dtype or device)
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError(f"{name} must have a sample axis, got a scalar")
    try:
        array = np.moveaxis(array, axis, -1)
    except np.exceptions.AxisError as error:
        raise ValueError(
            f"axis {axis} is out of range for {name} of shape {array.shape}"
        ) from error
    if array.shape[-1] < min_n or array.size == 0:
        raise ValueError(
            f"{name} needs >= {min_n} samples along axis {axis}, got shape {np.shape(values)}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ci(
    values: Any,
    *,
    axis: int = -1,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    statistic: Literal["mean", "median"] = "mean",
    method: Literal["percentile", "basic", "BCa"] = "percentile",
) -> CI:
    """Bootstrap CI of ``statistic`` over ``axis`` (the samples, e.g. prompts) for every
    other entry of ``values``, in one vectorised ``scipy.stats.bootstrap`` call.

    ``method="percentile"`` (default) is fast and robust (no jackknife; defined for ties
    and 0/1 metrics); ``"BCa"`` corrects for skew in small samples but costs O(n^2) per
    entry, and falls back to percentile where it is undefined. Entries whose samples are
    constant get the zero-width interval (v, v), without warnings. Deterministic per seed.
    """
    _check_confidence(confidence)
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if n_resamples <= 0:
        raise ValueError(f"n_resamples must be > 0, got {n_resamples}")
    array = _as_samples(values, "values", axis, min_n=2)
    n, shape = array.shape[-1], array.shape[:-1]
    rows = array.reshape(-1, n)
    fn = _STATISTICS[statistic]
    varies = np.ptp(rows, axis=-1) > 0
    estimate = np.where(varies, fn(rows, axis=-1), rows[:, 0])  # exact v for constant rows
    low, high = estimate.copy(), estimate.copy()
    if varies.any():
        low[varies], high[varies] = _bootstrap(
            rows[varies], fn, confidence, n_resamples, seed, method
        )
    return CI(
        estimate=_plain(estimate.reshape(shape)),
        low=_plain(low.reshape(shape)),
        high=_plain(high.reshape(shape)),
        confidence=confidence,
        n=n,
        method=f"bootstrap-{method}",
    )


def _bootstrap(
    rows: np.ndarray, fn: Any, confidence: float, n_resamples: int, seed: int, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per row of ``rows`` [m, n]; rows where BCa is undefined (its jackknife
    acceleration is 0/0, e.g. a median of near-constant data) fall back to percentile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # BCa's 0/0, handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        low, high = stats.bootstrap(
            (rows,),
            fn,
            axis=-1,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            batch=max(1, 2**23 // rows.size),  # bound the resamples' memory to ~64 MiB
            rng=np.random.default_rng(seed),
        ).confidence_interval
    undefined = np.isnan(low) | np.isnan(high)
    if undefined.any() and method != "percentile":
        low[undefined], high[undefined] = _bootstrap(
            rows[undefined], fn, confidence, n_resamples, seed, "percentile"
        )
    return low, high


def permutation_test(
    a: Any,
    b: Any,
    *,
    paired: bool = False,
    axis: int = -1,
    n_resamples: int = 10_000,
    seed: int = 0,
    alternative: Alternative = "two-sided",
) -> PermutationResult:
    """Permutation test of mean(a) - mean(b) over ``axis`` (the prompts).

    ``paired=True``: ``a[i]`` and ``b[i]`` are the same prompt under two conditions; the
    test swaps labels within pairs (scipy ``permutation_type="samples"``). Otherwise the
    samples are independent and are pooled and re-split (``"independent"``). Exact when
    there are no more distinct permutations than ``n_resamples``; the Monte-Carlo p-value
    is never 0. Other axes of equal shape are tested entry by entry.
    """
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(
            f"alternative must be 'two-sided', 'less' or 'greater', got {alternative!r}"
        )
    if n_resamples <= 0:
        raise ValueError(f"n_resamples must be > 0, got {n_resamples}")
    x = _as_samples(a, "a", axis, min_n=2 if paired else 1)
    y = _as_samples(b, "b", axis, min_n=2 if paired else 1)
    if paired and x.shape != y.shape:
        raise ValueError(
            f"a and b must have the same shape when paired=True, got {x.shape} and {y.shape}"
        )
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"a and b differ in their other axes: {x.shape} and {y.shape}")
    if not paired and x.shape[-1] + y.shape[-1] < 3:
        raise ValueError("a and b need >= 3 samples together to permute")

    def difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        if paired:
            return np.mean(x - y, axis=axis)
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    result = stats.permutation_test(
        (x, y),
        difference,
        permutation_type="samples" if paired else "independent",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alternative,
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    return PermutationResult(
        statistic=_plain(result.statistic),
        p_value=_plain(result.pvalue),
        n_resamples=n_resamples,
    )


def seed_summary(values_per_seed: Any, *, axis: int = 0, confidence: float = 0.95) -> CI:
    """Mean over seeds (``axis``, default 0: ``[n_seeds, ...]``) with a Student-t interval,
    mean +- t_{n-1} * s / sqrt(n), as ``scipy.stats.ttest_1samp(...).confidence_interval``.

    A t-interval, not a bootstrap: with the 3-10 seeds one can afford, a bootstrap
    resamples too few values to cover the mean reliably. It assumes roughly normal
    per-seed results. Constant entries get (v, v).
    """
    _check_confidence(confidence)
    array = _as_samples(values_per_seed, "values_per_seed", axis, min_n=2)
    n = array.shape[-1]
    varies = np.ptp(array, axis=-1) > 0
    mean = np.where(varies, array.mean(axis=-1), array[..., 0])  # exact v for constant entries
    half = stats.t.ppf((1 + confidence) / 2, df=n - 1) * array.std(axis=-1, ddof=1) / np.sqrt(n)
    half = np.where(varies, half, 0.0)
    return CI(
        estimate=_plain(mean),
        low=_plain(mean - half),
        high=_plain(mean + half),
        confidence=confidence,
        n=n,
        method="student-t",
    )
