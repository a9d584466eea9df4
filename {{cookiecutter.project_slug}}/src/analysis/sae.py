"""Sparse autoencoders: built and trained with SAELens, saved in its format, and judged on
activations they were not trained on."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    LoggingConfig,
    SAETrainer,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.config import SAETrainerConfig
from torch import Tensor

SMALL_SAE_WEIGHTS = 2**20  # d_in * d_sae up to which a CPU trains on one thread

# config architecture -> (SAELens training config class, training SAE class)
ARCHITECTURES: dict[str, tuple[type, type[TrainingSAE]]] = {
    "standard": (StandardTrainingSAEConfig, StandardTrainingSAE),
    "topk": (TopKTrainingSAEConfig, TopKTrainingSAE),
    "batchtopk": (BatchTopKTrainingSAEConfig, BatchTopKTrainingSAE),
    "jumprelu": (JumpReLUTrainingSAEConfig, JumpReLUTrainingSAE),
}


def build_sae(
    d_in: int,
    *,
    architecture: str,
    expansion_factor: int,
    k: int | None,
    l1_coefficient: float,
    l1_warm_up_steps: int,
    normalize_activations: str,
    device: str | torch.device = "cpu",
    metadata: dict[str, Any] | None = None,
) -> TrainingSAE:
    """A freshly initialised SAELens training SAE of width ``expansion_factor * d_in``.

    The keywords are an ``sae`` config section's fields (``**config.sae.model_dump()``):
    ``k`` is used by topk and batchtopk, ``l1_*`` by standard (L1) and jumprelu (L0).
    ``metadata``: SAELens metadata fields (model_name, hook_name, context_size, ...) saved
    with the SAE. Raises ValueError listing the known architectures for an unknown one.
    """
    arch = architecture
    if arch not in ARCHITECTURES:
        raise ValueError(f"sae.architecture: unknown {arch!r}; known: {', '.join(ARCHITECTURES)}")
    config_cls, sae_cls = ARCHITECTURES[arch]
    options: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": expansion_factor * d_in,
        "device": str(device),
        "normalize_activations": normalize_activations,
    }
    if arch == "standard":
        options |= {
            "l1_coefficient": l1_coefficient,
            "l1_warm_up_steps": l1_warm_up_steps,
        }
    elif arch == "jumprelu":
        options |= {
            "l0_coefficient": l1_coefficient,
            "l0_warm_up_steps": l1_warm_up_steps,
        }
    else:
        options["k"] = k
    cfg = config_cls(**options)
    for key, value in (metadata or {}).items():
        setattr(cfg.metadata, key, value)
    return sae_cls(cfg)


class _Trainer(SAETrainer):
    """SAELens's trainer, with a progress bar that moves at every step: its own moves every
    100 steps, so a short run's bar stayed at 0 until training ended."""

    @torch.no_grad()
    def _update_pbar(self, step_output: Any, pbar: Any, update_interval: int = 100) -> None:
        pbar.update(self.cfg.train_batch_size_samples)
        steps = -(-self.cfg.total_training_samples // self.cfg.train_batch_size_samples)
        every = max(1, min(update_interval, steps // 20))  # the losses: ~20 times a run
        if self.n_training_steps % every == 0 or self.n_training_steps == steps:
            losses = " | ".join(
                f"{name}: {float(value):.5f}" for name, value in step_output.losses.items()
            )
            pbar.set_description(f"{self.n_training_steps}| {losses}")


def train_sae(
    sae: TrainingSAE,
    batches: Iterator[Tensor],
    *,
    n_tokens: int,
    batch_size: int,
    lr: float,
    lr_warm_up_steps: int,
    lr_decay_steps: int,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Train ``sae`` in place with SAELens's ``SAETrainer`` on ``batches`` ([batch_size, d_in]
    each; at least ``n_tokens`` tokens' worth). The keywords are a ``training`` config
    section's fields (``**config.training.model_dump()``). Returns the number of steps and
    tokens, the training time and tokens/s. A progress bar (SAELens's) advances every step.
    """
    steps = -(-n_tokens // batch_size)  # the trainer's full batches
    warm_up = min(lr_warm_up_steps, steps)
    decay = min(lr_decay_steps, steps - warm_up)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_tokens,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,  # constant schedule: the decay starts from lr
        lr_warm_up_steps=warm_up,
        lr_decay_steps=decay,
        device=str(device),
        # A latent silent this long counts as dead (TopK's auxiliary loss revives those):
        # SAELens's 1000 steps, or a tenth of a short run.
        dead_feature_window=max(1, min(1000, steps // 10)),
        n_batches_for_norm_estimate=max(1, min(100, steps)),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = _Trainer(cfg=trainer_cfg, sae=sae, data_provider=batches)
    # A small SAE's matrices are too small to gain from several CPU threads, and threads
    # that wait for a busy core make each step several times slower: use one.
    small = sae.cfg.d_in * sae.cfg.d_sae <= SMALL_SAE_WEIGHTS
    threads = torch.get_num_threads()
    if small and torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    return {
        "n_steps": trainer.n_training_steps,
        "n_tokens": trainer.n_training_samples,
        "train_time_s": seconds,
        "tokens_per_s": trainer.n_training_samples / seconds,
    }


def save_sae(sae: TrainingSAE, path: str | Path) -> Path:
    """Save ``sae``'s inference form (what ``SAE.load_from_disk(path)`` returns; BatchTopK
    becomes JumpReLU) to the folder ``path``, replacing what is there; return ``path``.

    Written to a temporary folder beside it and renamed, so ``path`` never holds half an SAE.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = path.with_name(f".{path.name}.old.{os.getpid()}")
    try:
        sae.save_inference_model(tmp)
        for file in tmp.iterdir():
            file.chmod(0o644)  # readable by all, like the caches: results may be shared
        tmp.chmod(0o755)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


@torch.no_grad()
def evaluate_sae(sae: Any, batches: Iterable[Tensor]) -> dict[str, float]:
    """Reconstruction and sparsity of ``sae`` over ``batches`` of activations [n, d_in]:

    - ``l0``: mean number of latents != 0 per token;
    - ``explained_variance``: 1 - SSE / SST, SST around the mean over all tokens (1: exact,
      0: no better than predicting the mean);
    - ``dead_fraction``: fraction of latents that are 0 on every token;
    - ``mse``: mean squared error per element; ``n_eval_tokens``: tokens seen.
    """
    sae.eval()
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    n, active, sse, sum_sq = 0, 0, 0.0, 0.0
    total = torch.zeros(d_in, dtype=torch.float64)
    fired = torch.zeros(d_sae, dtype=torch.bool)
    for x in batches:
        if x.ndim != 2 or x.shape[1] != d_in:
            raise ValueError(f"activations must be [n, d_in={d_in}], got {tuple(x.shape)}")
        x = x.to(device=device, dtype=dtype)
        latents = sae.encode(x)
        recon = sae.decode(latents)
        nonzero = latents != 0
        n += x.shape[0]
        active += int(nonzero.sum())
        fired |= nonzero.any(0).cpu()
        sse += float((recon - x).double().pow(2).sum())
        x64 = x.double().cpu()
        total += x64.sum(0)
        sum_sq += float(x64.pow(2).sum())
    if n == 0:
        raise ValueError("no activations to evaluate the SAE on")
    sst = sum_sq - float(total.pow(2).sum()) / n
    if sst <= 0:
        raise ValueError("the activations are constant: explained variance is undefined")
    return {
        "l0": active / n,
        "explained_variance": 1.0 - sse / sst,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "mse": sse / (n * d_in),
        "n_eval_tokens": n,
    }
