"""Feature analysis of a given SAE (pretrained, or saved on disk) on a model's activations.

``run_sae_analysis(model, sae, tokens, ...)`` runs ``model`` on ``tokens`` up to the SAE's
hook point (no activation cache: each forward stops once the hook has fired), leaves out the
positions of ``ignore_tokens`` (the script leaves out BOS, as Neuronpedia does: its residual
stream is an outlier that many latents of a pretrained SAE fire on), and

1. judges the SAE on these activations (``src.analysis.sae.evaluate_sae``: L0, explained
   variance, dead fraction, MSE): a low explained variance says the SAE does not fit this
   model or this hook (another model, or other weight processing than it was trained on);
2. saves what the feature figures and the HTML dashboard show (``feature_report``:
   density, activation histograms, top contexts, decoder directions, feature ablation and
   steering, and each latent's Neuronpedia page when the SAE has a Neuronpedia id) as
   ``features.json`` in ``out_dir``.

``scripts/analyze_sae.py`` loads the SAE (``src.models.saes.load_sae``) and the model, runs
this, draws the ``sae_features`` figures and logs the run. Light imports only at the top
(see ``src/experiments/__init__.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.experiments.registry import ExperimentKind
from src.utils.files import project_path, write_text_atomic

if TYPE_CHECKING:
    from torch import Tensor


def run_sae_analysis(
    model: Any,
    sae: Any,
    tokens: Tensor,
    *,
    hook_name: str,
    out_dir: str | Path,
    n_features: int = 20,
    k: int = 10,
    batch_size: int = 16,
    ignore_tokens: Sequence[int] = (),
    neuronpedia_id: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``sae`` on ``model``'s ``hook_name`` activations over ``tokens``
    [n_seq, ctx] and save its feature report in ``out_dir``; return the results for the
    JSON log. Positions of ``ignore_tokens`` (e.g. BOS) are left out of both.
    ``neuronpedia_id``: default the SAE's own (see ``feature_report``).

    Raises ValueError for a hook the model lacks or activations of another width than
    the SAE's d_in.
    """
    import torch

    from src.analysis.features import feature_report, model_chunks
    from src.analysis.sae import evaluate_sae

    def chunks(desc: str) -> Any:
        return model_chunks(
            model, tokens, hook_name, batch_size=batch_size, progress=progress, desc=desc
        )

    d_in = int(sae.cfg.d_in)
    ignored = torch.tensor(list(ignore_tokens), dtype=torch.long)

    def batches() -> Any:
        for batch, acts in chunks("evaluating"):
            if acts[0, 0].numel() != d_in:
                raise ValueError(
                    f"{hook_name} has d={acts[0, 0].numel()} but the SAE's d_in is {d_in}: "
                    "the SAE was trained on another model or hook point"
                )
            keep = ~torch.isin(batch.reshape(-1), ignored)
            yield acts.reshape(-1, d_in)[keep.to(acts.device)]

    metrics = evaluate_sae(sae, batches())
    report = feature_report(
        sae, model, chunks("features"), hook_name, n_features=n_features, k=k,
        max_tokens=None, ignore_tokens=ignore_tokens, neuronpedia_id=neuronpedia_id,
    )  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features_file = out_dir / "features.json"
    write_text_atomic(features_file, json.dumps(report))
    return {
        "kind": "sae_analysis",
        "headline": "explained_variance",
        "hook_name": hook_name,
        "d_in": d_in,
        "d_sae": int(sae.cfg.d_sae),
        "n_tokens": report["n_tokens"],
        "n_ignored": report["n_ignored"],
        "context_size": int(tokens.shape[1]),
        **metrics,
        "neuronpedia_id": report["neuronpedia_id"],
        "features_file": project_path(features_file),
    }


# Run by scripts/analyze_sae.py (no config section selects it); its logs name the kind.
KIND = ExperimentKind(
    name="sae_analysis",
    label="SAE feature analysis",
    run=run_sae_analysis,
    figures=("sae_features", "sae_dashboard"),
    headline="explained_variance",
)
