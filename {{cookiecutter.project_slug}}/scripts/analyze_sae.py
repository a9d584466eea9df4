"""Feature analysis of a pretrained or saved SAE on its model's activations, logged with figures.

    python scripts/analyze_sae.py --sae gpt2-small-res-jb --layer 8
    python scripts/analyze_sae.py --sae gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical --dataset-path FILE
    python scripts/analyze_sae.py --model pythia-70m-deduped --layer 3
    python scripts/analyze_sae.py --sae data/results/sae_toy_l0/sae

``--sae`` is a SAELens release (with ``--layer``: the id pattern of src/models/families.yaml),
``release/sae_id``, or a directory holding an SAE saved with SAELens; without it, the
``--model``'s default release (families.yaml). Pretrained SAEs download into the Hugging Face
cache once (``SAE.from_pretrained``). The model defaults to the one the SAE names (its
metadata), the hook point to the SAE's. The tokens: ``--dataset`` (``induction`` for a toy
model, else ``text`` from ``--dataset-path`` or the model's dataset in the family table), in
sequences of the SAE's training context (at most the model's).

Writes ``<results-dir>/sae_analysis_<sae>/features.json`` (density, top-activating contexts,
decoder directions through the unembedding and, where Neuronpedia hosts the SAE, each
latent's Neuronpedia page), the figures (density PNG, Markdown pages of contexts and decoder
tokens, latents linked to Neuronpedia; a self-contained HTML dashboard) into
``--figures-dir`` and the JSON log (L0, explained variance on these tokens). Errors are one
line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
from common import (  # noqa: E402  (puts the project root on sys.path too)
    add_dataset_path_argument,
    check_fits_before_loading,
    finish_run,
)

HEADLINE = ("explained_variance", "l0", "dead_fraction", "n_tokens")
DEFAULT_CONTEXT = 128  # when the SAE does not say its training context
LOW_FIT = 0.5  # explained variance under which the SAE probably does not fit the model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Errors exit with status 2."
    )
    parser.add_argument(
        "--sae",
        help="SAELens release (e.g. gpt2-small-res-jb, with --layer), release/sae_id, or a "
        "directory of a saved SAE (default: --model's release in src/models/families.yaml)",
    )
    parser.add_argument("--layer", type=int, help="layer of the release's SAE (families.yaml id)")
    parser.add_argument("--model", help="model.name (default: the model the SAE names)")
    parser.add_argument("--hook", help="hook point (default: the SAE's hook_name)")
    parser.add_argument("--dataset", help="dataset name (default: induction for toy, else text)")
    add_dataset_path_argument(parser)
    parser.add_argument("--n-tokens", type=int, default=2**16, help="tokens to analyse")
    parser.add_argument("--context-size", type=int, help="tokens per sequence (default: the SAE's)")
    parser.add_argument("--n-features", type=int, default=20, help="latents to show")
    parser.add_argument("--k", type=int, default=10, help="top contexts per latent")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sequences and latents")
    parser.add_argument(
        "--keep-bos",
        action="store_true",
        help="analyse the BOS positions too (left out by default)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    parser.add_argument("--dtype", default="float32", help="model and SAE dtype")
    parser.add_argument("--results-dir", type=Path, default=Path("data/results"))
    parser.add_argument("--figures-dir", type=Path, default=Path("notebooks/figures"))
    parser.add_argument("--notes", default="", help="free-text notes stored in the log")
    return parser.parse_args(argv)


def run_name(source: Any) -> str:
    """``sae_analysis_<release>-<id>``, or for a directory its last two path parts."""
    label = source.name if source.path is None else "-".join(source.path.parts[-2:])
    return "sae_analysis_" + label.replace("/", "-")


def context_size(sae: Any, n_ctx: int, args: argparse.Namespace) -> int:
    """--context-size, else the SAE's training context (at most the model's)."""
    return args.context_size or min(int(sae.cfg.metadata.context_size or DEFAULT_CONTEXT), n_ctx)


def check_memory(model_name: str, sae: Any, args: argparse.Namespace) -> None:
    """Stop before loading a model that, with a forward on a batch, does not fit the device."""
    from src.models.memory import model_dims

    dims = model_dims(model_name)
    n_ctx = dims.n_ctx if dims is not None else DEFAULT_CONTEXT
    seq_len = context_size(sae, n_ctx, args)
    check_fits_before_loading(model_name, args.device, args.dtype, args.batch_size, seq_len)


def analysis_tokens(model: Any, model_name: str, sae: Any, args: argparse.Namespace) -> Any:
    """``--n-tokens`` tokens of the dataset in sequences of the SAE's context (or the flag)."""
    from src.data.loading import token_chunks
    from src.data.text_sources import resolve_text_source
    from src.models.toy import TOY_MODELS

    context = context_size(sae, model.cfg.n_ctx, args)
    dataset = args.dataset or ("induction" if model_name in TOY_MODELS else "text")
    path = resolve_text_source(args.path, model_name) if dataset == "text" else args.path
    n_seq = max(1, args.n_tokens // context)
    tokens = token_chunks(dataset, n_seq, context, args.seed, model=model, path=path)
    return tokens, dataset


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/analyze_sae.py", *argv])
    start = time.perf_counter()
    from src.experiments.sae_analysis import run_sae_analysis
    from src.models.load import ModelNotAvailableError, bos_token_id, load_model
    from src.models.memory import InsufficientMemoryError
    from src.models.saes import NEURONPEDIA, load_sae, resolve_sae
    from src.utils.files import project_path
    from src.visualization.figures import draw_figures

    try:
        source = resolve_sae(args.sae, layer=args.layer, model_name=args.model)
        print(f"loading SAE {source.name}", file=sys.stderr)
        sae = load_sae(source, device=args.device, dtype=args.dtype)
        model_name = args.model or sae.cfg.metadata.model_name
        hook_name = args.hook or sae.cfg.metadata.hook_name
        if not model_name or not hook_name:
            raise ValueError("the SAE does not name its model and hook point: pass --model, --hook")
        check_memory(model_name, sae, args)
        print(f"loading model {model_name} (device={args.device})", file=sys.stderr)
        model = load_model(model_name, device=args.device, dtype=args.dtype)
        tokens, dataset = analysis_tokens(model, model_name, sae, args)
        name = run_name(source)
        bos = bos_token_id(model)
        ignore = [] if args.keep_bos or bos is None else [bos]
        print(f"analysing {hook_name} on {tokens.numel()} tokens of {dataset}", file=sys.stderr)
        results = run_sae_analysis(
            model, sae, tokens, hook_name=hook_name, out_dir=args.results_dir / name,
            n_features=args.n_features, k=args.k, batch_size=args.batch_size,
            ignore_tokens=ignore, progress=True,
        )  # fmt: skip
    except (ValueError, OSError, ModelNotAvailableError, InsufficientMemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = {"sae_path": project_path(source.path)} if source.path else {}
    results = {
        **results,
        "sae": source.name,
        "release": source.release,
        "sae_id": source.sae_id,
        **where,
        "model": model_name,
        "dataset": dataset,
    }
    results["figures"] = draw_figures(
        ("sae_features", "sae_dashboard"),
        name,
        results,
        args.figures_dir,
        label="SAE feature analysis",
    )
    config = {
        "sae_source": {"sae": args.sae, "layer": args.layer, "resolved": source.name},
        "model": {"name": model_name, "device": args.device, "dtype": args.dtype},
        "hook_name": hook_name,
        "data": {"dataset": dataset, "path": args.path, "n_tokens": args.n_tokens,
                 "context_size": results["context_size"], "seed": args.seed,
                 "ignore_tokens": ignore},
        "analysis": {"n_features": args.n_features, "k": args.k},
        "command": command,
    }  # fmt: skip
    extra = [f"features: {results['features_file']}"]
    if results["neuronpedia_id"]:
        extra.append(f"neuronpedia: {NEURONPEDIA}/{results['neuronpedia_id']}/<latent>")
    if results["explained_variance"] < LOW_FIT:
        kwargs = sae.cfg.metadata.model_from_pretrained_kwargs
        print(
            f"warning: the SAE explains {results['explained_variance']:.2f} of the variance of "
            f"{hook_name}: it may not fit this model as loaded (its training model kwargs: "
            f"{kwargs or 'not recorded'})",
            file=sys.stderr,
        )
    finish_run(
        name,
        config,
        results,
        notes=args.notes,
        results_dir=args.results_dir,
        wall_time_s=time.perf_counter() - start,
        title=f"{name} ({hook_name})",
        keys=HEADLINE,
        extra=extra,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
