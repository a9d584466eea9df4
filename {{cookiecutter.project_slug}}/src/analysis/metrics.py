"""Metrics on final-position logits.

A patching metric is a callable ``logits -> scalar tensor`` (what
``transformer_lens.patching`` expects); ``bind_metric`` makes one from a metric name and
answer tokens (``per_prompt=True``: one value per prompt, for confidence intervals). The
functions here take ``logits`` [batch, pos, d_vocab] (or final-position logits
[batch, d_vocab]) and return the batch mean, or one value per prompt with
``per_prompt=True``. ``normalize`` maps a metric onto 0 (corrupted run) .. 1 (clean run).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _final(logits: Tensor) -> Tensor:
    return logits[:, -1, :] if logits.ndim == 3 else logits


def _reduce(values: Tensor, per_prompt: bool) -> Tensor:
    return values if per_prompt else values.mean()


def logit_diff(
    logits: Tensor, answer_tokens: Tensor, wrong_tokens: Tensor, *, per_prompt: bool = False
) -> Tensor:
    """Final-position logit of the answer minus that of the wrong token."""
    final = _final(logits)
    answer = final.gather(-1, answer_tokens.unsqueeze(-1)).squeeze(-1)
    wrong = final.gather(-1, wrong_tokens.unsqueeze(-1)).squeeze(-1)
    return _reduce(answer - wrong, per_prompt)


def answer_prob(
    logits: Tensor,
    answer_tokens: Tensor,
    wrong_tokens: Tensor | None = None,
    *,
    per_prompt: bool = False,
) -> Tensor:
    """Final-position probability of the answer token (``wrong_tokens`` is unused)."""
    probs = _final(logits).float().softmax(dim=-1)
    return _reduce(probs.gather(-1, answer_tokens.unsqueeze(-1)).squeeze(-1), per_prompt)


def answer_logprob(
    logits: Tensor,
    answer_tokens: Tensor,
    wrong_tokens: Tensor | None = None,
    *,
    per_prompt: bool = False,
) -> Tensor:
    """Final-position log-probability of the answer token (``wrong_tokens`` is unused)."""
    logprobs = _final(logits).float().log_softmax(dim=-1)
    return _reduce(logprobs.gather(-1, answer_tokens.unsqueeze(-1)).squeeze(-1), per_prompt)


def answer_loss(
    logits: Tensor,
    answer_tokens: Tensor,
    wrong_tokens: Tensor | None = None,
    *,
    per_prompt: bool = False,
) -> Tensor:
    """Cross-entropy loss of the answer at the final position (``-answer_logprob``)."""
    return -answer_logprob(logits, answer_tokens, per_prompt=per_prompt)


def top1_accuracy(logits: Tensor, answer_tokens: Tensor, *, per_prompt: bool = False) -> Tensor:
    """Fraction of prompts whose final-position top-1 token is the answer."""
    return _reduce((_final(logits).argmax(dim=-1) == answer_tokens).float(), per_prompt)


def normalize(value: Tensor | float, clean: Tensor | float, corrupted: Tensor | float) -> Tensor:
    """``value`` on the scale 0 = corrupted baseline, 1 = clean baseline.

    Raises ValueError when the two baselines are equal (the scale is undefined).
    """
    value, clean, corrupted = (
        torch.as_tensor(v, dtype=torch.float) for v in (value, clean, corrupted)
    )
    gap = clean - corrupted
    if torch.any(gap == 0):
        raise ValueError(
            f"clean and corrupted baselines are equal ({clean.tolist()}): cannot normalize"
        )
    return (value - corrupted) / gap


# Metric names usable in configs (e.g. patching.metric); keep in sync with config.MetricName.
METRICS: dict[str, Callable[..., Tensor]] = {
    "logit_diff": logit_diff,
    "answer_prob": answer_prob,
    "answer_logprob": answer_logprob,
    "answer_loss": answer_loss,
}


def bind_metric(
    name: str, answer_tokens: Tensor, wrong_tokens: Tensor, *, per_prompt: bool = False
) -> Callable[[Tensor], Tensor]:
    """The metric ``name`` as a ``logits -> scalar`` callable for fixed answer tokens
    (``logits -> [batch]`` with ``per_prompt=True``)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    fn = METRICS[name]

    def metric(logits: Tensor) -> Tensor:
        device = logits.device
        return fn(logits, answer_tokens.to(device), wrong_tokens.to(device), per_prompt=per_prompt)

    return metric
