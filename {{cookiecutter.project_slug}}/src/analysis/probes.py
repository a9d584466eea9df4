"""Linear probes on activations: logistic regression per layer, a held-out split of whole
sequences and a control task (Hewitt & Liang, 2019).

A probe reads a label off one activation vector per token. High held-out accuracy alone
says little (a linear probe on a wide residual stream can memorise a lot), so every probe
is trained twice, on the real labels and on *control* labels: a random label per token
*type*, with the real labels' class frequencies. The control can only be solved by
memorising token identities; ``selectivity = accuracy - control_accuracy`` says how much of
the accuracy comes from what the layer computed rather than from which token sits there.

Label functions (``[n_seq, ctx]`` tokens -> ``[n_seq, ctx]`` labels, -1 = not scored):

- ``repeat_labels``: does this token occur earlier in its sequence (1) or not (0)?
- ``previous_token_labels``: the id of the previous token; a previous-token head writes it
  into the residual stream, so it appears after that layer (on ``toy-induction``: 0.05
  held-out accuracy on the embedding, 1.00 at layer 1's input).

On ``toy-induction``, ``repeat`` is *not* linearly decodable at any layer (measured on
random tokens: 0.79 at every layer, the majority class's share): its induction heads write
the embedding of the token after the earlier occurrence, not a "seen before" direction, and
fall back to a diffuse pattern (no attention sink) when there is none; the repeat shows
in how sharp the attention is, which a linear read of the residual stream cannot see.

``train_probes`` fits one probe per layer, all layers in one batched optimisation (a
``[n_layers, d, n_classes]`` weight, full-batch Adam on standardised activations): no new
dependency and seconds on a CPU. ``probe_layers`` adds the split, the control task and
bootstrap confidence intervals over held-out sequences (``src.analysis.statistics``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from src.analysis.statistics import bootstrap_ci

IGNORE = -1  # label of positions that are not scored (BOS, the first token, ...)


def repeat_labels(tokens: Tensor, *, skip: int = 1) -> Tensor:
    """1 where the token already occurred earlier in its row (from position ``skip`` on:
    the BOS token does not count), else 0; the first ``skip`` positions are ``IGNORE``."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_seq, ctx], got {tuple(tokens.shape)}")
    same = tokens[:, :, None] == tokens[:, None, :]  # [n, q, k]
    ctx = tokens.shape[1]
    earlier = torch.ones(ctx, ctx, dtype=torch.bool).tril(-1)
    earlier[:, :skip] = False
    labels = (same & earlier).any(-1).long()
    labels[:, :skip] = IGNORE
    return labels


def previous_token_labels(tokens: Tensor, *, skip: int = 1) -> Tensor:
    """The previous token's id at each position; ``IGNORE`` at the first ``skip`` positions
    and where there is none."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_seq, ctx], got {tuple(tokens.shape)}")
    labels = torch.full_like(tokens, IGNORE)
    labels[:, 1:] = tokens[:, :-1]
    labels[:, : max(skip, 1)] = IGNORE
    return labels


LABELS: dict[str, Callable[[Tensor], Tensor]] = {
    "repeat": repeat_labels,
    "previous_token": previous_token_labels,
}


def control_labels(tokens: Tensor, labels: Tensor, *, n_classes: int, seed: int = 0) -> Tensor:
    """Hewitt & Liang's control task: each token *type* gets one label, drawn at random
    with the class frequencies of ``labels``; ``IGNORE`` where ``labels`` is."""
    scored = labels != IGNORE
    if not scored.any():
        raise ValueError("no scored positions (every label is IGNORE)")
    freq = torch.bincount(labels[scored], minlength=n_classes).double()
    generator = torch.Generator().manual_seed(seed)
    n_types = int(tokens.max()) + 1
    per_type = torch.multinomial(freq / freq.sum(), n_types, replacement=True, generator=generator)
    return torch.where(scored, per_type[tokens], torch.full_like(labels, IGNORE))


def split_sequences(n_seq: int, train_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random (seeded) train and test sequence indices: whole sequences, so no test token
    shares a context with a training one."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n_train = round(n_seq * train_fraction)
    if not 0 < n_train < n_seq:
        raise ValueError(f"{n_seq} sequences are too few to split {train_fraction:.2f} / rest")
    order = torch.randperm(n_seq, generator=torch.Generator().manual_seed(seed))
    return order[:n_train].sort().values, order[n_train:].sort().values


def train_probes(
    x: Tensor,
    y: Tensor,
    *,
    n_classes: int,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
) -> Callable[[Tensor], Tensor]:
    """Multinomial logistic regression per layer: ``x`` [n_layers, n, d] activations,
    ``y`` [n] labels in ``0..n_classes-1``. Full-batch Adam on standardised features with
    an L2 penalty ``weight_decay``. Returns ``predict(x [n_layers, m, d]) -> [n_layers, m]``.
    """
    if x.ndim != 3 or y.shape != (x.shape[1],):
        raise ValueError(
            f"x must be [n_layers, n, d] and y [n], got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x = x.float()
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True) + 1e-6
    n_layers, _, d = x.shape
    weight = torch.zeros(n_layers, d, n_classes, requires_grad=True)
    bias = torch.zeros(n_layers, 1, n_classes, requires_grad=True)
    z = (x - mean) / std
    target = y.expand(n_layers, -1).reshape(-1)
    params = (weight, bias)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    with torch.enable_grad():
        for step in range(1, steps + 1):
            logits = torch.baddbmm(bias, z, weight)
            loss = F.cross_entropy(logits.reshape(-1, n_classes), target) * n_layers
            loss = loss + weight_decay * weight.pow(2).sum()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():  # Adam, by hand: torch.optim's first use imports for seconds
                for p, g, (m, v) in zip(params, grads, moments, strict=True):
                    m.mul_(beta1).add_(g, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
                    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    weight, bias = weight.detach(), bias.detach()

    def predict(new: Tensor) -> Tensor:
        return torch.baddbmm(bias, (new.float() - mean) / std, weight).argmax(-1)

    return predict


def _accuracy_per_sequence(pred: Tensor, labels: Tensor) -> Tensor:
    """[n_layers, n_seq] fraction correct over each sequence's scored positions
    (sequences with none are dropped)."""
    scored = labels != IGNORE
    keep = scored.any(1)
    correct = (pred == labels).float() * scored
    return (correct.sum(-1) / scored.sum(-1).clamp(min=1))[:, keep]


@torch.no_grad()
def probe_layers(
    activations: dict[str, Tensor],
    tokens: Tensor,
    labels: Tensor,
    *,
    train_fraction: float = 0.8,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Probe every activation of ``activations`` (hook name -> [n_seq, ctx, d], one model
    run on ``tokens`` [n_seq, ctx]) for ``labels`` [n_seq, ctx] (``IGNORE`` = not scored)
    and for its control task; train on ``train_fraction`` of the sequences, test on the
    rest. The classes are the distinct labels present (e.g. the previous tokens that occur,
    not the whole vocabulary).

    Returns plain data: ``{"hooks", "n_classes", "n_train_tokens", "n_test_tokens", "majority" (the
    most frequent test label's share), "per_hook": {hook: {"accuracy", "control_accuracy",
    "selectivity" (each with "mean", "low", "high": a 95% bootstrap CI over test
    sequences)}}}``.
    """
    hooks = list(activations)
    if not hooks:
        raise ValueError("no activations to probe")
    if labels.shape != tokens.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match tokens {tuple(tokens.shape)}")
    scored_all = labels != IGNORE
    if not scored_all.any():
        raise ValueError("no scored positions (every label is IGNORE)")
    classes, compact = torch.unique(labels[scored_all], return_inverse=True)
    labels = torch.full_like(labels, IGNORE).masked_scatter(scored_all, compact)
    n_classes = len(classes)
    train, test = split_sequences(len(tokens), train_fraction, seed)
    control = control_labels(tokens, labels, n_classes=n_classes, seed=seed)
    stacked = torch.stack([activations[h].float().cpu() for h in hooks])  # [L, n, ctx, d]
    stacked = stacked.reshape(*stacked.shape[:3], -1)
    per_task = {}
    for task, target in (("accuracy", labels), ("control_accuracy", control)):
        scored = target[train] != IGNORE
        x = stacked[:, train][:, scored]
        predict = train_probes(
            x, target[train][scored], n_classes=n_classes, steps=steps, lr=lr,
            weight_decay=weight_decay,
        )  # fmt: skip
        test_x = stacked[:, test].reshape(len(hooks), -1, stacked.shape[-1])
        pred = predict(test_x).reshape(len(hooks), len(test), -1)
        per_task[task] = _accuracy_per_sequence(pred, target[test])
    per_task["selectivity"] = per_task["accuracy"] - per_task["control_accuracy"]
    test_labels = labels[test][labels[test] != IGNORE]
    majority = float(torch.bincount(test_labels, minlength=n_classes).max()) / len(test_labels)
    per_hook = {}
    for i, hook in enumerate(hooks):
        per_hook[hook] = {task: _ci(values[i]) for task, values in per_task.items()}
    return {
        "hooks": hooks,
        "n_classes": n_classes,
        "n_train_tokens": int((labels[train] != IGNORE).sum()),
        "n_test_tokens": len(test_labels),
        "majority": majority,
        "per_hook": per_hook,
    }


def _ci(values: Tensor) -> dict[str, float]:
    ci = bootstrap_ci(values)
    return {"mean": float(ci.estimate), "low": float(ci.low), "high": float(ci.high)}


def layer_hooks(
    n_layers: int, point: str = "resid_pre", layers: Sequence[int] | None = None
) -> list[str]:
    """The hook names of ``point`` at ``layers`` (default all), plus the final residual
    stream (``blocks.{n-1}.hook_resid_post``) for ``resid_pre``: every stage of the stream."""
    from src.models.hooks import hook_name

    chosen = list(range(n_layers)) if layers is None else list(layers)
    names = [hook_name(point, layer) for layer in chosen]
    if point == "resid_pre" and layers is None:
        names.append(hook_name("resid_post", n_layers - 1))
    return names
