"""Cache a model's activations at one layer's hook point(s) as safetensors shards.

    python scripts/cache_activations.py --model toy-induction --layer 0
    python scripts/cache_activations.py --model gpt2-small --layer 8 --dataset text \
        --n-tokens 1000000
    python scripts/cache_activations.py --model path/to/checkpoint --layer 1 --dataset text \
        --dataset-path data/datasets/train.txt
    python scripts/cache_activations.py --config configs/sae_training.yaml --n-tokens 1000000

Writes data/activations/{model}_{layer}_{dataset}_{n_tokens}/ (shards + metadata.json; see
src/data/activation_cache.py); for text, {dataset} is the source's short name (openwebtext,
a file's stem). An interrupted run keeps its complete shards: rerun the same command to
resume. Defaults (without --config): dataset "induction" for toy models and "text"
otherwise, read from --dataset-path (a .txt or .jsonl file, a save_to_disk directory or a
Hugging Face dataset id) or else the model's dataset in src/models/families.yaml (streamed
from the Hub), 32768 tokens, context min(n_ctx, 128), the model's dtype.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
from common import (  # noqa: E402  (puts the project root on sys.path too)
    add_dataset_path_argument,
    check_fits_before_loading,
    refresh_docs,
)

DEFAULT_N_TOKENS = 32_768
DEFAULT_CONTEXT = 128  # at most; the model's n_ctx when smaller


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Flags override the --config values. Errors exit with status 2.",
    )
    parser.add_argument("--config", type=Path, help="SAE training YAML (configs/sae_training.yaml)")
    parser.add_argument("--model", help="model name, e.g. toy-induction, gpt2-small")
    parser.add_argument("--layer", type=int, help="layer of the hook point")
    parser.add_argument(
        "--hook-point",
        help="resid_pre (default), resid_mid, resid_post, attn_out, mlp_out, z, q, k, v, ...: "
        "blocks.{layer}.hook_{point} (blocks.{layer}.attn.hook_{point} for attention "
        "internals); several comma-separated",
    )
    parser.add_argument(
        "--dataset", help="induction, text, ioi; default: induction for toy models, else text"
    )
    add_dataset_path_argument(parser)
    parser.add_argument(
        "--n-tokens",
        type=int,
        help=f"tokens to cache, rounded down to whole sequences (default {DEFAULT_N_TOKENS}; "
        "with --config, data.n_tokens or training.n_tokens)",
    )
    parser.add_argument(
        "--context-size",
        type=int,
        help=f"tokens per sequence (default min(n_ctx, {DEFAULT_CONTEXT}))",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass")
    parser.add_argument(
        "--dtype",
        help="stored dtype: float32, bfloat16, ... (default: the config's, else the model's)",
    )
    parser.add_argument("--seed", type=int, help="dataset seed (default 0)")
    parser.add_argument("--device", help="cpu, cuda, mps or auto (default auto)")
    parser.add_argument(
        "--shard-tokens", type=int, default=2**16, help="tokens per shard file (default 65536)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="cache folder (default data/activations/{model}_{layer}_{dataset}_{n_tokens})",
    )
    return parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> dict:
    """Settings from --config (if any) with the flags on top; raises ValueError if incomplete."""
    from src.experiments.registry import load_config
    from src.utils.config import SAETrainingConfig

    settings = {
        "model": None,
        "layer": None,
        "hook_point": "resid_pre",
        "dataset": None,
        "path": None,
        "n_tokens": DEFAULT_N_TOKENS,
        "context_size": None,
        "seed": 0,
        "device": "auto",
        "model_dtype": "float32",
        "dtype": None,
    }
    if args.config is not None:
        cfg = load_config(args.config)
        if not isinstance(cfg, SAETrainingConfig):
            raise ValueError(f"{args.config}: not an SAE training config (it has no sae section)")
        settings |= {
            "model": cfg.model.name,
            "layer": cfg.hook.layer,
            "hook_point": cfg.hook.hook_point,
            "dataset": cfg.data.dataset,
            "path": cfg.data.path,
            "n_tokens": cfg.data.n_tokens or cfg.training.n_tokens,
            "context_size": cfg.data.context_size,
            "seed": cfg.data.seed,
            "device": cfg.model.device,
            "model_dtype": cfg.model.dtype,
            "dtype": cfg.data.dtype,
        }
    for key in ("model", "layer", "hook_point", "dataset", "path", "n_tokens", "context_size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    for key in ("seed", "device", "dtype"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["model"] is None or settings["layer"] is None:
        raise ValueError("--model and --layer are required (or a --config that sets them)")
    if settings["dataset"] is None:
        from src.models.toy import TOY_MODELS

        settings["dataset"] = "induction" if settings["model"] in TOY_MODELS else "text"
    if settings["dataset"] == "text":  # before the model loads: no dataset, no wait
        from src.data.text_sources import resolve_text_source

        settings["path"] = resolve_text_source(settings["path"], settings["model"])
    checks = {
        "n_tokens": settings["n_tokens"],
        "context_size": settings["context_size"],
        "batch_size": args.batch_size,
        "shard_tokens": args.shard_tokens,
    }
    for key, value in checks.items():
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    settings["batch_size"] = args.batch_size  # sizes the memory check before loading
    return settings


def hook_names(model, layer: int, points: str) -> list[str]:
    """TransformerLens hook names for the comma-separated ``points`` at ``layer``."""
    n_layers = model.cfg.n_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"--layer {layer} is out of range: the model has layers 0-{n_layers - 1}")
    from src.models.hooks import block_hook_name, block_points

    available = model.hook_dict
    names = []
    for point in points.split(","):
        point = point.strip().removeprefix("hook_")
        name = block_hook_name(point, layer)
        if name not in available:
            known = block_points(available, layer)
            raise ValueError(f"--hook-point {point!r}: no {name} in this model; known: {known}")
        names.append(name)
    return names


def load_tokens(model, settings: dict):
    """Token ids [n_seq, context] of the dataset (the clean prompts of a contrast dataset)."""
    from src.data.loading import token_chunks

    n_seq = settings["n_tokens"] // settings["context_size"]
    if n_seq < 1:
        raise ValueError(
            f"--n-tokens {settings['n_tokens']} is less than one sequence "
            f"(--context-size {settings['context_size']})"
        )
    return token_chunks(
        settings["dataset"],
        n_seq,
        settings["context_size"],
        settings["seed"],
        model=model,
        path=settings["path"],
    )


def load_inputs(settings: dict) -> tuple[Any, list[str], Any]:
    """The model, the hook names to cache and the token ids, filling in the settings'
    context size default."""
    from src.models.load import load_model

    name, device, dtype = settings["model"], settings["device"], settings["model_dtype"]
    batch, seq_len = settings["batch_size"], settings["context_size"]
    check_fits_before_loading(name, device, dtype, batch, seq_len)
    model = load_model(name, device=device, dtype=dtype)
    names = hook_names(model, settings["layer"], settings["hook_point"])
    if settings["context_size"] is None:
        settings["context_size"] = min(model.cfg.n_ctx, DEFAULT_CONTEXT)
    if settings["context_size"] > model.cfg.n_ctx:
        raise ValueError(
            f"--context-size {settings['context_size']} exceeds the model's n_ctx={model.cfg.n_ctx}"
        )
    try:
        tokens = load_tokens(model, settings)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"--dataset {settings['dataset']}: {e}") from None
    return model, names, tokens


def cache_metadata(settings: dict, command: str) -> dict:
    """What the cache's metadata.json records of the run besides its tokens and hooks."""
    metadata = {
        "model": settings["model"],
        "dataset": settings["dataset"],
        "seed": settings["seed"],
        "command": command,
    }
    if settings["path"] is not None:
        metadata["path"] = str(settings["path"])
    return metadata


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import shlex

    import torch

    from src.data.activation_cache import cache_activations, cache_name
    from src.data.text_sources import dataset_short_name
    from src.models.load import ModelNotAvailableError, parse_dtype
    from src.models.memory import InsufficientMemoryError
    from src.utils.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/cache_activations.py", *argv])
    out_dir = None
    try:
        settings = resolve_settings(args)
        store_dtype = parse_dtype(settings["dtype"]) if settings["dtype"] else None
        model, names, tokens = load_inputs(settings)
        dataset_name = dataset_short_name(settings["dataset"], settings["path"])
        out_dir = args.out_dir or Path("data/activations") / cache_name(
            settings["model"], settings["layer"], dataset_name, settings["n_tokens"]
        )
        device = next(model.parameters()).device
        print(
            f"caching {tokens.numel()} tokens of {settings['model']} at {', '.join(names)} "
            f"on {device} into {out_dir}",
            file=sys.stderr,
        )
        with torch.no_grad():
            cache_activations(
                model,
                tokens,
                names,
                out_dir,
                batch_size=args.batch_size,
                dtype=store_dtype,
                shard_tokens=args.shard_tokens,
                metadata=cache_metadata(settings, command),
                progress=True,
            )
    except (ConfigError, ValueError, OSError, ModelNotAvailableError, InsufficientMemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {out_dir}" if out_dir else ""
        print(f"interrupted: complete shards are kept{where}; rerun to resume", file=sys.stderr)
        refresh_docs(out_dir, sys.stderr)
        return 130
    refresh_docs(out_dir, sys.stderr)
    print(out_dir)
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops as Ctrl-C does: the shards already queued are kept


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
