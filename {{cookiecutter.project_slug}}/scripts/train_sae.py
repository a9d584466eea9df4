"""Train a sparse autoencoder with SAELens on cached activations and log it.

    python scripts/train_sae.py --model toy-induction --layer 0
    python scripts/train_sae.py --model gpt2-small --layer 8
    python scripts/train_sae.py --model path/to/checkpoint --layer 4 --dataset-path corpus.jsonl
    python scripts/train_sae.py --config configs/sae_training.yaml --architecture topk

Everything not given as a flag comes from ``--config``: by default
``configs/toy_sae_training.yaml`` for toy models and ``configs/sae_training.yaml`` otherwise.
Text comes from ``--dataset-path`` (``data.path``: a .txt or .jsonl file, a save_to_disk
directory or a Hugging Face dataset id), else from the model's default dataset in
``src/models/families.yaml`` (streamed from the Hub; a local checkpoint has none).
Caches the activations first when ``data/activations/`` lacks them (see
src/experiments/sae_training.py), saves the SAE in SAELens's format in
``<results_dir>/sae/`` and writes the JSON log (L0, explained variance, dead fraction,
tokens/s) beside it, then refreshes the generated sections of CLAUDE.md / AGENTS.md.
Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
from common import (  # noqa: E402  (puts the project root on sys.path too)
    PROJECT_ROOT,
    error_exit,
    finish_run,
    load_run_model,
)

DEFAULT_CONFIG = Path("configs/sae_training.yaml")
DEFAULT_TOY_CONFIG = Path("configs/toy_sae_training.yaml")
HEADLINE = ("explained_variance", "l0", "dead_fraction", "mse", "tokens_per_s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from typing import get_args

    from src.utils.config import HookPoint, SAEArchitecture

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Flags override the config's values. Errors exit with status 2.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"SAE training YAML (default {DEFAULT_CONFIG}; {DEFAULT_TOY_CONFIG} for toy models)",
    )
    parser.add_argument("--model", help="model.name, e.g. toy-induction, gpt2-small")
    parser.add_argument("--layer", type=int, help="hook.layer")
    parser.add_argument("--hook-point", choices=get_args(HookPoint), help="hook.hook_point")
    parser.add_argument(
        "--architecture", choices=get_args(SAEArchitecture), help="sae.architecture"
    )
    parser.add_argument("--k", type=int, help="sae.k, latents per token (topk, batchtopk)")
    parser.add_argument("--n-tokens", type=int, help="training.n_tokens (tokens to train on)")
    parser.add_argument(
        "--dataset-path",
        help="data.path: text as a .txt or .jsonl file, a save_to_disk directory or a Hugging "
        "Face dataset id (default: the model's dataset in src/models/families.yaml)",
    )
    parser.add_argument("--device", help="model.device: cpu, cuda, mps or auto")
    parser.add_argument("--results-dir", type=Path, help="output.results_dir")
    parser.add_argument("--notes", default="", help="free-text notes stored in the log")
{%- if cookiecutter.experiment_tracking == "wandb" %}
    parser.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also log the run to Weights & Biases (default: yes)",
    )
{%- endif %}
    return parser.parse_args(argv)


def config_path(args: argparse.Namespace) -> Path:
    """--config, else the default for the model (toy models have their own)."""
    if args.config is not None:
        return args.config
    from src.models.toy import TOY_MODELS

    default = DEFAULT_TOY_CONFIG if args.model in TOY_MODELS else DEFAULT_CONFIG
    return default if default.exists() else PROJECT_ROOT / default


def apply_overrides(cfg, args: argparse.Namespace):
    """``cfg`` with the flags' values in place; raises ConfigError naming the flag or key."""
    from src.utils.config import ConfigError
    from src.utils.validation import validate

    sae = {"architecture": args.architecture, "k": args.k}
    if args.architecture in ("standard", "jumprelu"):
        sae["k"] = None  # k belongs to topk and batchtopk only
    elif args.architecture is not None and args.k is None:
        sae["k"] = cfg.sae.k
        if sae["k"] is None:
            raise ConfigError(f"--architecture {args.architecture} needs --k (latents per token)")
    if args.dataset_path is not None and cfg.data.dataset != "text":
        raise ConfigError(f"--dataset-path needs data.dataset 'text', not {cfg.data.dataset!r}")
    flags = {
        "model": {"name": args.model, "device": args.device},
        "hook": {"layer": args.layer, "hook_point": args.hook_point},
        "data": {"path": args.dataset_path},
        "sae": sae if args.architecture is not None else {"k": args.k},
        "training": {"n_tokens": args.n_tokens},
        "output": {"results_dir": None if args.results_dir is None else str(args.results_dir)},
    }
    for section, values in flags.items():
        changes = {key: value for key, value in values.items() if value is not None}
        if section == "sae" and args.architecture is not None:
            changes = values  # k may become None
        if changes:
            new = getattr(cfg, section).model_copy(update=changes)
            cfg = cfg.model_copy(update={section: new})
    try:  # model_copy skips validation: check the result as if read from a file
        return validate(type(cfg), cfg.model_dump())
    except ConfigError as e:
        raise ConfigError(f"{e} (from the command line)") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/train_sae.py", *argv])
    from src.experiments.registry import load_config
    from src.experiments.sae_training import with_text_source
    from src.utils.config import ConfigError, SAETrainingConfig, config_to_dict

    path = config_path(args)
    try:
        cfg = load_config(path)
        if not isinstance(cfg, SAETrainingConfig):
            raise ConfigError(f"{path}: not an SAE training config (no sae section)")
        cfg = with_text_source(apply_overrides(cfg, args))  # before the model: fail fast
    except ValueError as e:  # ConfigError, or no text dataset for this model
        print(f"error: {e}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    from src.data.activation_cache import CacheError
    from src.data.activation_store import model_short_name
    from src.data.text_sources import TextSourceError
    from src.experiments.sae_training import run_sae_training
    from src.models.load import ModelNotAvailableError
    from src.models.memory import InsufficientMemoryError

    try:
        model = load_run_model(cfg)
        print(
            f"training a {cfg.sae.architecture} SAE on {cfg.hook.name} "
            f"({cfg.training.n_tokens} tokens)",
            file=sys.stderr,
        )
        results = run_sae_training(model, cfg, progress=True, command=command)
    except TextSourceError as e:  # names the source already
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ModelNotAvailableError, InsufficientMemoryError) as e:
        return error_exit(e, path, named=CacheError)  # CacheError included
    wall_time_s = time.perf_counter() - start

    model_name = model_short_name(cfg.model.name)  # a checkpoint's folder, never its path
    name = f"sae_{model_name}_{cfg.hook.name}_{cfg.sae.architecture}".replace("/", "-")
    finish_run(
        name,
        config_to_dict(cfg),
        results,
        notes=args.notes,
        results_dir=cfg.output.results_dir,
        wall_time_s=wall_time_s,
        title=name,
        keys=HEADLINE,
        extra=[f"sae: {results['sae_path']}"],
{%- if cookiecutter.experiment_tracking == "wandb" %}
        use_wandb=args.wandb,
{%- endif %}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
