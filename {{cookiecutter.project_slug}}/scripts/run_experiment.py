"""Run one experiment from a YAML config and log its results.

    python scripts/run_experiment.py --config configs/toy_induction.yaml [--device cpu]

What runs is the experiment kind whose section the config has (``patching``,
``attribution``, ``circuit_discovery``, ...: the kinds of ``src.experiments.registry``); a
config with none runs the baseline. Results go to a JSON log in ``output.results_dir``,
figures to ``output.figures_dir`` when ``output.figures`` is true.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
from common import error_exit, finish_run, load_run_model  # noqa: E402  (puts the project root on sys.path too)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="experiment YAML config")
    parser.add_argument("--device", help="override model.device (cpu, cuda, mps, auto)")
    parser.add_argument("--results-dir", type=Path, help="override output.results_dir")
    parser.add_argument("--figures-dir", type=Path, help="override output.figures_dir")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass")
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


def load_run_config(args: argparse.Namespace) -> Any:
    """The experiment config of ``--config`` with the command line's overrides; ConfigError
    for an invalid one or an SAE training config."""
    from src.experiments.registry import load_config
    from src.utils.config import ConfigError, ExperimentConfig

    cfg = load_config(args.config)
    if not isinstance(cfg, ExperimentConfig):
        raise ConfigError(f"{args.config}: an SAE training config; use scripts/train_sae.py")
    if args.device:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": args.device})})
    for key in ("results_dir", "figures_dir"):
        if getattr(args, key):
            output = cfg.output.model_copy(update={key: str(getattr(args, key))})
            cfg = cfg.model_copy(update={"output": output})
    return cfg


def load_inputs(cfg: Any, config_path: Path, batch_size: int) -> tuple[Any, Any]:
    """The run's model (its memory checked before loading, then its size against the
    config) and dataset."""
    from src.data.loading import config_dataset
    from src.experiments.registry import get_kind
    from src.utils.config import check_model_fit

    model = load_run_model(cfg, batch_size, gradients=get_kind(cfg.kind).gradients)
    mc = model.cfg
    check_model_fit(
        cfg, config_path, n_layers=mc.n_layers, n_heads=mc.n_heads, attn_only=mc.attn_only
    )
    return model, config_dataset(cfg.data, model)


def run_kind(cfg: Any, model: Any, dataset: Any, batch_size: int) -> dict[str, Any]:
    """Run the config's experiment kind and draw its figures (when ``output.figures``)."""
    from src.experiments.registry import get_kind

    kind = get_kind(cfg.kind)
    print(f"running {cfg.kind} on {len(dataset)} x {dataset.seq_length} tokens", file=sys.stderr)
    results = kind.run(model, dataset, cfg, batch_size=batch_size, progress=True)
    results = {"kind": kind.name, "headline": kind.headline, **results}
    if cfg.output.figures and kind.figures:
        from src.visualization.figures import draw_figures

        results["figures"] = draw_figures(
            kind.figures, cfg.experiment.name, results, cfg.output.figures_dir, label=kind.label
        )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from src.utils.config import ConfigError, config_to_dict

    try:
        cfg = load_run_config(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    from src.models.load import ModelNotAvailableError
    from src.models.memory import InsufficientMemoryError

    try:  # user-facing errors (unknown, unavailable or too big a model, bad dataset): one line
        model, dataset = load_inputs(cfg, args.config, args.batch_size)
    except (ValueError, OSError, ModelNotAvailableError, InsufficientMemoryError) as e:
        return error_exit(e, args.config, named=ConfigError)
    results = run_kind(cfg, model, dataset, args.batch_size)
    wall_time_s = time.perf_counter() - start

    finish_run(
        cfg.experiment.name,
        config_to_dict(cfg),
        results,
        notes=args.notes,
        results_dir=cfg.output.results_dir,
        wall_time_s=wall_time_s,
        title=f"{cfg.experiment.name} ({cfg.kind})",
{%- if cookiecutter.experiment_tracking == "wandb" %}
        use_wandb=args.wandb,
{%- endif %}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
