"""Sparse autoencoders trained with SAELens on cached activations, then evaluated held out.

``run_sae_training(model, config)`` does the whole run:

1. Caches the training tokens' activations at the config's hook point in
   ``data/activations/{model}_{layer}_{dataset}_{n_tokens}`` ({dataset}: for text, the
   source's short name, e.g. ``openwebtext``; the scheme of
   ``scripts/cache_activations.py``, with the same tokens, so either script reuses the other's
   cache), and the held-out tokens' in its subfolder ``heldout_{n_eval_tokens}`` (held out
   from that cache's prompts, so it belongs with it). An existing cache is reused after
   checking that it holds this model, hook, dataset and seed (a mismatch raises
   ``CacheError`` naming the field); an interrupted one is resumed.
2. Trains the SAE (``src.analysis.sae.build_sae``: standard, topk, batchtopk or jumprelu)
   with SAELens's ``SAETrainer`` on shuffled batches of the training cache, looping over it
   as needed.
3. Saves it in SAELens's format (``<results_dir>/sae/``, loadable with
   ``sae_lens.SAE.load_from_disk``), loads it back and evaluates what was saved on the
   held-out cache (``src.analysis.sae.evaluate_sae``): L0, explained variance, dead-latent
   fraction, MSE.
4. Saves what the feature figures show (``feature_report``: density, top contexts, decoder
   directions) as ``features.json`` in the SAE's folder.

Text (dataset ``text``) comes from ``data.path`` (a .txt or .jsonl file, a save_to_disk
directory or a Hugging Face dataset id, streamed) or, when it is null, from the model's
default dataset in ``src/models/families.yaml`` (``with_text_source``), packed into rows as
SAELens packs it (``src.data.text``); its held-out rows are the ones after the training
rows. Other datasets draw held-out prompts with another seed and drop every training prompt.

Only light modules are imported at the top: the registry imports every kind's module to
list the kinds and build the config schema, so listing the kinds or validating a config must
not import torch, SAELens or TransformerLens (seconds). Each function imports what it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.experiments.registry import ExperimentKind
from src.utils.config import SAETrainingConfig
from src.utils.files import project_path, write_text_atomic

if TYPE_CHECKING:
    import torch
    from sae_lens import TrainingSAE

    from src.data.activation_cache import ActivationStore

ACTIVATIONS_DIR = Path("data/activations")


def run_sae_training(
    model: Any,
    config: SAETrainingConfig,
    *,
    activations_dir: str | Path = ACTIVATIONS_DIR,
    progress: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Cache (or reuse), train, save and evaluate the SAE ``config`` describes on ``model``'s
    activations; return the results for the JSON log (see the module docstring).

    The SAE trains on the model's device. ``command`` is recorded in new caches' metadata.
    Raises ValueError (CacheError included) for a hook the model lacks, a dataset that
    cannot be made (no default text dataset, or a source that cannot be read), or a cache
    made with other settings.
    """
    import torch
    from sae_lens import SAE

    from src.analysis.features import feature_report
    from src.analysis.sae import evaluate_sae, save_sae

    config = with_text_source(config)
    hook = config.hook
    if hook.layer >= model.cfg.n_layers:
        raise ValueError(
            f"hook.layer: {hook.layer} is out of range for this model (0..{model.cfg.n_layers - 1})"
        )
    if hook.name not in model.hook_dict:
        raise ValueError(f"hook.hook_point: this model has no {hook.name}")
    device = next(model.parameters()).device
    train_store, eval_store = _caches(model, config, Path(activations_dir), progress, command)
    sae, stats = _train(config, train_store, device)
    sae_path = save_sae(sae, Path(config.output.results_dir) / "sae")
    saved = SAE.load_from_disk(sae_path, device=str(device))
    metrics = evaluate_sae(
        saved,
        eval_store.iter_batches(hook.name, 4096, shuffle=False, device=device, dtype=torch.float32),
    )
    # what the feature figures show, saved beside the SAE (the figures need no model)
    report = feature_report(saved, model, train_store, hook.name, progress=progress)
    write_text_atomic(sae_path / "features.json", json.dumps(report))
    return {
        "kind": "sae_training",
        "sae_path": project_path(sae_path),
        "cache_dir": project_path(train_store.path),
        "eval_cache_dir": project_path(eval_store.path),
        "features_file": project_path(sae_path / "features.json"),
        "hook_name": hook.name,
        "architecture": config.sae.architecture,
        "d_in": train_store.metadata["d"],
        "d_sae": saved.cfg.d_sae,
        "k": config.sae.k,
        **metrics,
        "n_tokens": stats["n_tokens"],
        "n_steps": stats["n_steps"],
        "n_cache_tokens": train_store.n_tokens,
        "tokens_per_s": stats["tokens_per_s"],
        "train_time_s": stats["train_time_s"],
    }


def with_text_source(config: SAETrainingConfig) -> SAETrainingConfig:
    """``config`` with its text source filled in: ``data.path`` when set, else the model's
    default dataset (its row of ``src/models/families.yaml``); unchanged for other datasets.
    Raises ValueError (one line naming ``--dataset-path`` / ``data.path``) for a model with
    no default, such as a local checkpoint."""
    from src.data.text_sources import default_text_source

    data = config.data
    if data.dataset != "text" or data.path is not None:
        return config
    data = data.model_copy(update={"path": default_text_source(config.model.name)})
    return config.model_copy(update={"data": data})


def _train(
    config: SAETrainingConfig, train_store: ActivationStore, device: torch.device
) -> tuple[TrainingSAE, dict[str, float]]:
    """A new SAE (seeded by ``data.seed``) trained on ``train_store``, and its training
    statistics."""
    import torch

    from src.analysis.sae import build_sae, train_sae

    hook, data = config.hook, config.data
    torch.manual_seed(data.seed)
    sae = build_sae(
        train_store.metadata["d"],
        **config.sae.model_dump(),
        device=device,
        metadata={
            "model_name": config.model.name,
            "hook_name": hook.name,
            "context_size": data.context_size,
            "dataset_path": data.path or data.dataset,
        },
    )
    batches = train_store.iter_batches(
        hook.name,
        config.training.batch_size,
        seed=data.seed,
        device=device,
        loop=True,
        dtype=torch.float32,
    )
    return sae, train_sae(sae, batches, **config.training.model_dump(), device=device)


def _caches(
    model: Any,
    config: SAETrainingConfig,
    activations_dir: Path,
    progress: bool,
    command: str | None,
) -> tuple[ActivationStore, ActivationStore]:
    """The training cache and, in its subfolder, the held-out cache (made or reused)."""
    from src.data.activation_cache import cache_name
    from src.data.cached import ensure_cache
    from src.data.loading import HELDOUT_SEED_OFFSET, dataset_tokens, heldout_tokens
    from src.data.text_sources import dataset_short_name
    from src.models.load import parse_dtype

    model_name, hook, data = config.model.name, config.hook, config.data
    n_cache_tokens = data.n_tokens or config.training.n_tokens
    common = {"model": model_name, "dataset": data.dataset}
    if data.path is not None:
        common["path"] = data.path
    options = {
        "batch_size": data.batch_size,
        "dtype": parse_dtype(data.dtype) if data.dtype else None,
        "progress": progress,
    }
    command_meta = {"command": command} if command else {}
    dataset_name = dataset_short_name(data.dataset, data.path)
    train_dir = activations_dir / cache_name(model_name, hook.layer, dataset_name, n_cache_tokens)
    train_store = ensure_cache(
        model,
        train_dir,
        hook.name,
        lambda: dataset_tokens(model, data, n_cache_tokens, data.seed),
        common | {"seed": data.seed} | command_meta,
        **options,
    )
    eval_store = ensure_cache(
        model,
        train_dir / f"heldout_{data.n_eval_tokens}",
        hook.name,
        lambda: heldout_tokens(model, data, train_store.tokens()),
        common | {"seed": data.seed + HELDOUT_SEED_OFFSET} | command_meta,
        **options,
    )
    return train_store, eval_store


# Selected by a config's top-level `sae` section (an SAETrainingConfig, not an experiment
# config) and run by scripts/train_sae.py as run_sae_training(model, config).
KIND = ExperimentKind(
    name="sae_training",
    label="SAE training",
    run=run_sae_training,
    figures=("sae_features", "sae_dashboard"),
    headline="explained_variance",
)
