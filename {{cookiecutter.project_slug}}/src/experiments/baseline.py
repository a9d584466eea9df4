"""Baseline: how well the unpatched model does on a dataset, before any intervention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from src.experiments.registry import ExperimentKind

if TYPE_CHECKING:
    from torch import Tensor

    from src.data.dataset import ContrastDataset, TokenDataset


def run_baseline(
    model: Any,
    dataset: ContrastDataset | TokenDataset,
    config: Any = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, float]:
    """Clean/corrupted logit difference (mean, std over prompts) and top-1 accuracy of the
    answer for a ContrastDataset; next-token loss and accuracy for a TokenDataset.

    ``config`` is unused (every ``run_*`` takes ``(model, dataset, config)``).
    """
    import torch
    from tqdm.auto import tqdm

    from src.analysis.metrics import logit_diff, top1_accuracy
    from src.data.dataset import TokenDataset, batches

    device = next(model.parameters()).device
    steps = tqdm(
        batches(dataset, batch_size), desc="baseline", unit="batch", disable=not progress,
        leave=False,
    )  # fmt: skip
    with torch.no_grad():
        if isinstance(dataset, TokenDataset):
            return _language_model(model, steps, device, len(dataset))
        per_prompt: dict[str, list[Tensor]] = {
            k: [] for k in ("clean", "corrupted", "cacc", "xacc")
        }
        for batch in steps:
            batch = batch.to(device)
            clean = model(batch.clean_tokens)[:, -1].float()
            corrupted = model(batch.corrupted_tokens)[:, -1].float()
            answer, wrong = batch.answer_tokens, batch.wrong_tokens
            per_prompt["clean"].append(logit_diff(clean, answer, wrong, per_prompt=True))
            per_prompt["corrupted"].append(logit_diff(corrupted, answer, wrong, per_prompt=True))
            per_prompt["cacc"].append(top1_accuracy(clean, answer, per_prompt=True))
            per_prompt["xacc"].append(top1_accuracy(corrupted, answer, per_prompt=True))
    clean, corrupted, cacc, xacc = (torch.cat(v).cpu() for v in per_prompt.values())
    return {
        "n_samples": len(dataset),
        "clean_logit_diff": clean.mean().item(),
        "clean_logit_diff_std": clean.std().item() if len(clean) > 1 else 0.0,
        "corrupted_logit_diff": corrupted.mean().item(),
        "corrupted_logit_diff_std": corrupted.std().item() if len(corrupted) > 1 else 0.0,
        "clean_accuracy": cacc.mean().item(),
        "corrupted_accuracy": xacc.mean().item(),
    }


def _language_model(model: Any, batches: Any, device: Any, n_samples: int) -> dict[str, float]:
    """Mean next-token loss and top-1 accuracy over all positions."""
    import torch.nn.functional as F

    total_loss, total_correct, n_tokens = 0.0, 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        logits = model(batch.tokens)[:, :-1].float()
        targets = batch.tokens[:, 1:]
        total_loss += F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), reduction="sum"
        ).item()
        total_correct += (logits.argmax(-1) == targets).sum().item()
        n_tokens += targets.numel()
    return {
        "n_samples": n_samples,
        "loss": total_loss / n_tokens,
        "accuracy": total_correct / n_tokens,
    }


KIND = ExperimentKind(
    name="baseline",
    label="baseline",
    run=run_baseline,
    headline="clean_logit_diff",
)
