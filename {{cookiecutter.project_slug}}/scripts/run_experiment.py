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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
from common import finish_run  # noqa: E402  (puts the project root on sys.path too)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from src.experiments.registry import get_kind, load_config
    from src.utils.config import ConfigError, ExperimentConfig, check_model_fit, config_to_dict

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not isinstance(cfg, ExperimentConfig):
        print(
            f"error: {args.config}: an SAE training config; use scripts/train_sae.py",
            file=sys.stderr,
        )
        return 2
    if args.device:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": args.device})})
    for key in ("results_dir", "figures_dir"):
        if getattr(args, key):
            output = cfg.output.model_copy(update={key: str(getattr(args, key))})
            cfg = cfg.model_copy(update={"output": output})

    start = time.perf_counter()
    from src.data.loading import load_dataset
    from src.models.load import ModelNotAvailableError, load_model
    from src.utils.seed import set_seed

    kind = get_kind(cfg.kind)

    set_seed(cfg.data.seed)
    print(f"loading model {cfg.model.name} (device={cfg.model.device})", file=sys.stderr)
    data = cfg.data
    try:  # user-facing errors (unknown or unavailable model, bad dataset) as one line
        model = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
        mc = model.cfg
        check_model_fit(
            cfg, args.config, n_layers=mc.n_layers, n_heads=mc.n_heads, attn_only=mc.attn_only
        )
        dataset = load_dataset(
            data.dataset,
            data.n_samples,
            data.seq_length,
            data.seed,
            model=model,
            path=data.path,
            corruption=data.corruption,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ModelNotAvailableError) as e:
        print(f"error: {args.config}: {e}", file=sys.stderr)
        return 2
    print(f"running {cfg.kind} on {len(dataset)} x {dataset.seq_length} tokens", file=sys.stderr)
    results = kind.run(model, dataset, cfg, batch_size=args.batch_size, progress=True)
    results = {"kind": kind.name, "headline": kind.headline, **results}
    if cfg.output.figures and kind.figures:
        from src.visualization.figures import draw_figures

        results["figures"] = draw_figures(
            kind.figures, cfg.experiment.name, results, cfg.output.figures_dir, label=kind.label
        )
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
