"""Metrics on final-position logits.

A patching metric is a callable ``logits -> scalar tensor`` (what
``transformer_lens.patching`` expects); ``bind_metric`` makes one from a metric name and a
ContrastDataset. The functions here take ``logits`` [batch, pos, d_vocab] (or final-position
logits [batch, d_vocab]) and return the batch mean, or one value per prompt with
``per_prompt=True``.
"""

from __future__ import annotations

from collections.abc import Callable

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


def top1_accuracy(logits: Tensor, answer_tokens: Tensor, *, per_prompt: bool = False) -> Tensor:
    """Fraction of prompts whose final-position top-1 token is the answer."""
    return _reduce((_final(logits).argmax(dim=-1) == answer_tokens).float(), per_prompt)


# Metric names usable in configs (patching.metric); keep in sync with config.MetricName.
METRICS: dict[str, Callable[..., Tensor]] = {"logit_diff": logit_diff, "answer_prob": answer_prob}


def bind_metric(
    name: str, answer_tokens: Tensor, wrong_tokens: Tensor
) -> Callable[[Tensor], Tensor]:
    """The metric ``name`` as a ``logits -> scalar`` callable for fixed answer tokens."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    fn = METRICS[name]

    def metric(logits: Tensor) -> Tensor:
        return fn(logits, answer_tokens.to(logits.device), wrong_tokens.to(logits.device))

    return metric
