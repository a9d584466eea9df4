"""Cache a model's activations at one layer's hook point(s) as safetensors shards.

    python scripts/cache_activations.py --model toy-induction --layer 0
    python scripts/cache_activations.py --model gpt2-small --layer 8 --dataset text \
        --n-tokens 1000000
    python scripts/cache_activations.py --model path/to/checkpoint --layer 1 --dataset text \
        --dataset-path data/datasets/train.txt
    python scripts/cache_activations.py --config configs/sae_training.yaml --n-tokens 1000000

Sharded (src/data/shards.py): N tasks each cache 1/N of the sequences, then a merge checks
them and writes the metadata; the merged cache reads like, and holds the same values as, the
one-process cache of the same flags:

    python scripts/cache_activations.py ... --n-shards 8 --launcher slurm --partition gpu --gpus 1
    python scripts/cache_activations.py ... --n-shards 8 --shard 3   # one task, by hand
    python scripts/cache_activations.py ... --n-shards 8 --merge     # after all 8

Writes data/activations/{model}_{layer}_{dataset}_{n_tokens}/ (shards + metadata.json; see
src/data/activation_cache.py); for text, {dataset} is the source's short name (openwebtext,
a file's stem). An interrupted run keeps its complete shards: rerun the same command to
resume (a sharded run resumes each of its tasks). Defaults (without --config): dataset
"induction" for toy models and "text" otherwise, read from --dataset-path (a .txt or .jsonl
file, a save_to_disk directory or a Hugging Face dataset id) or else the model's dataset in
src/models/families.yaml (streamed from the Hub), 32768 tokens, context min(n_ctx, 128), the
model's dtype. Only a cache in this project's data/activations/ is listed in the docs
(AGENTS.md / CLAUDE.md, Cached Activations); see ``refresh_cache_docs``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
from common import (  # noqa: E402  (puts the project root on sys.path too)
    PROJECT_ROOT,
    add_dataset_path_argument,
    check_fits_before_loading,
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
        help="cache folder (default data/activations/{model}_{layer}_{dataset}_{n_tokens}; "
        "a folder elsewhere, e.g. /tmp/..., for a throwaway cache the docs do not list)",
    )
    shards = parser.add_argument_group("sharded caching (src/data/shards.py)")
    shards.add_argument(
        "--n-shards",
        type=int,
        help="split the sequences into N shards, run as N tasks on --launcher (default local), "
        "then merged; at most one per sequence",
    )
    shards.add_argument("--shard", type=int, help="run only shard I (0 to N-1) of --n-shards N")
    shards.add_argument(
        "--merge", action="store_true", help="merge the shards of --n-shards N (after all ran)"
    )
    from src.scale.launchers import add_launcher_arguments

    add_launcher_arguments(parser)
    return parser.parse_args(argv)


def check_shard_flags(args: argparse.Namespace) -> None:
    """ValueError (one line) for sharding flags that do not go together."""
    if args.shard is not None and args.n_shards is None:
        raise ValueError("--shard needs --n-shards")
    if args.n_shards is not None and args.n_shards < 1:
        raise ValueError(f"--n-shards must be >= 1, got {args.n_shards}")
    if args.shard is not None and not 0 <= args.shard < args.n_shards:
        raise ValueError(f"--shard {args.shard} is out of range: 0-{args.n_shards - 1}")
    if args.merge and args.shard is not None:
        raise ValueError("--merge and --shard are separate steps: merge after every shard ran")
    if args.launcher is not None and (args.n_shards is None or args.shard is not None):
        raise ValueError("--launcher runs the N tasks of --n-shards N (and not with --shard)")


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


def base_launcher(config: Path | None) -> Any:
    """The launcher before the flags, as for scripts/sweep.py: configs/project.yaml's
    ``launcher:`` section (preset from the compute answer) with the ``--config``'s own
    ``launcher:`` keys over it; a LauncherConfig, or None when neither has one."""
    from src.scale.launchers import LauncherConfig
    from src.utils.validation import read_yaml, validate

    sections = {}
    for path in (PROJECT_ROOT / "configs" / "project.yaml", config):
        if path is not None and Path(path).is_file():
            sections |= read_yaml(path).get("launcher") or {}
    where = f"{config or 'configs/project.yaml'}: launcher"
    return validate(LauncherConfig, sections, where) if sections else None


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


def default_out_dir(settings: dict) -> Path:
    """data/activations/{model}_{layer}_{dataset}_{n_tokens} (relative to the working folder)."""
    from src.data.activation_cache import cache_name
    from src.data.text_sources import dataset_short_name

    dataset = dataset_short_name(settings["dataset"], settings["path"])
    name = cache_name(settings["model"], settings["layer"], dataset, settings["n_tokens"])
    return Path("data/activations") / name


def cache_one_process(settings: dict, out_dir: Path, args: argparse.Namespace, command: str):
    """The cache in one process (resuming an interrupted one)."""
    import torch

    from src.data.activation_cache import cache_activations

    store_dtype = _store_dtype(settings)
    model, names, tokens = load_inputs(settings)
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


def _store_dtype(settings: dict) -> Any:
    from src.models.load import parse_dtype

    return parse_dtype(settings["dtype"]) if settings["dtype"] else None


def run_shard(task: dict) -> str:
    """One shard task, what ``--shard I --n-shards N`` runs (and what the launcher's tasks
    run: a module-level function of plain data, so it pickles): load the model and the
    tokens, cache the shard; return its record's path. ``task["threads"]``: torch threads
    (tasks sharing a machine use their share of its cores, not all of them each)."""
    import torch

    from src.data.shards import cache_shard

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    settings = dict(task["settings"])
    store_dtype = _store_dtype(settings)
    model, names, tokens = load_inputs(settings)
    path = cache_shard(
        model,
        tokens,
        names,
        task["out_dir"],
        task["index"],
        task["n_shards"],
        batch_size=settings["batch_size"],
        dtype=store_dtype,
        shard_tokens=task["shard_tokens"],
        metadata=cache_metadata(settings, task["command"]),
        progress=task.get("progress", False),
    )
    return str(path)


def check_n_shards_early(settings: dict, n_shards: int) -> None:
    """The shard count against the sequences before any task starts, when the context size
    is known without loading the model (else each task checks it)."""
    from src.data.shards import check_n_shards
    from src.models.memory import model_dims
    from src.models.toy import TOY_MODELS

    context = settings["context_size"]
    if context is None:
        name = settings["model"]
        dims = TOY_MODELS.get(name) or model_dims(name)
        context = min(dims.n_ctx, DEFAULT_CONTEXT) if dims is not None else None
    if context is not None:
        check_n_shards(n_shards, settings["n_tokens"] // context)


def task_threads(launcher: Any, n_shards: int) -> int | None:
    """torch threads per task: local tasks share this machine's cores; a SLURM task has
    its --cpus; debug (in this process) and Modal keep torch's default."""
    import os

    if launcher.name == "local":
        at_once = min(n_shards, launcher.array_parallelism)
        return max(1, (os.cpu_count() or 1) // at_once)
    if launcher.name == "slurm":
        return launcher.cpus_per_task
    return None


def cache_sharded(
    settings: dict, out_dir: Path, args: argparse.Namespace, command: str, base: Any
) -> int:
    """Run the ``--n-shards`` tasks on the launcher, then merge; 1 if a task failed (its
    log named; rerunning resumes the others' complete files). On Modal the cache lives on
    the project's Volume (mounted as data/), so the merge runs there too."""
    from src.scale.launchers import launcher_from_args, map_tasks

    launcher = launcher_from_args(args, base)
    check_n_shards_early(settings, args.n_shards)
    where = task_out_dir(out_dir, launcher.name)
    threads = task_threads(launcher, args.n_shards)
    tasks = [
        {
            "settings": settings,
            "index": index,
            "n_shards": args.n_shards,
            "out_dir": where,
            "shard_tokens": args.shard_tokens,
            "command": command,
            "threads": threads,
            "progress": launcher.name != "debug",
        }
        for index in range(args.n_shards)
    ]
    print(
        f"caching {settings['n_tokens']} tokens of {settings['model']} in {args.n_shards} "
        f"shards on launcher {launcher.name} into {out_dir}",
        file=sys.stderr,
    )
    name = f"cache_{out_dir.name}"
    outcomes = map_tasks(run_shard, tasks, launcher, name)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    for outcome in failed:
        log = f" (log: {outcome.log_path})" if outcome.log_path else ""
        print(f"shard {outcome.item['index']} failed: {outcome.error}{log}", file=sys.stderr)
    if failed:
        print(
            f"{len(failed)} of {args.n_shards} shards failed; rerun the same command to "
            "finish them (complete files are kept), then it merges",
            file=sys.stderr,
        )
        return 1
    merge = {"out_dir": where, "command": command}
    if launcher.name != "modal":
        merge_task(merge)
        return 0
    (outcome,) = map_tasks(merge_task, [merge], launcher, f"{name}_merge")
    if not outcome.ok:
        print(f"error: the merge on Modal failed: {outcome.error}", file=sys.stderr)
        return 1
    from src.scale.modal_app import VOLUME_NAME

    inside = Path(where).relative_to("data")
    print(
        f"the cache is on the Modal Volume {VOLUME_NAME}: modal volume get {VOLUME_NAME} "
        f"{inside.as_posix()} {out_dir}",
        file=sys.stderr,
    )
    return 0


def merge_task(task: dict) -> str:
    """The merge as a task (on Modal, where the shards are): ``merge_shards``."""
    from src.data.shards import merge_shards

    return str(merge_shards(task["out_dir"], command=task["command"]))


def task_out_dir(out_dir: Path, launcher: str) -> str:
    """The cache folder as the tasks see it: absolute here and on SLURM (a shared file
    system), relative to the project on Modal, where only data/ persists (the Volume)."""
    path = out_dir.resolve()
    if launcher != "modal":
        return str(path)
    try:
        inside = path.relative_to(PROJECT_ROOT)
    except ValueError:
        inside = None
    if inside is None or inside.parts[:1] != ("data",):
        raise ValueError(
            f"--launcher modal writes to the Modal Volume mounted as data/: --out-dir must lie "
            f"in this project's data/, not {out_dir}"
        )
    return inside.as_posix()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import shlex

    from src.data.activation_cache import CacheError
    from src.data.shards import merge_shards
    from src.models.load import ModelNotAvailableError
    from src.models.memory import InsufficientMemoryError
    from src.utils.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/cache_activations.py", *argv])
    out_dir = None
    status = 0
    try:
        check_shard_flags(args)
        settings = resolve_settings(args)
        _store_dtype(settings)  # a bad --dtype fails before anything loads
        out_dir = args.out_dir or default_out_dir(settings)
        if args.merge:
            merge_shards(out_dir)
        elif args.shard is not None:
            check_n_shards_early(settings, args.n_shards)
            task = {"settings": settings, "index": args.shard, "n_shards": args.n_shards}
            task |= {"out_dir": out_dir, "shard_tokens": args.shard_tokens, "command": command}
            print(f"caching shard {args.shard} of {args.n_shards} into {out_dir}", file=sys.stderr)
            print(run_shard(task | {"progress": True}))
            return 0  # a shard alone changes nothing the docs list
        elif args.n_shards is not None:
            status = cache_sharded(settings, out_dir, args, command, base_launcher(args.config))
        else:
            cache_one_process(settings, out_dir, args, command)
    except (
        CacheError,
        ConfigError,
        ValueError,
        OSError,
        ModelNotAvailableError,
        InsufficientMemoryError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {out_dir}" if out_dir else ""
        print(f"interrupted: complete shards are kept{where}; rerun to resume", file=sys.stderr)
        refresh_cache_docs(out_dir)
        return 130
    refresh_cache_docs(out_dir)
    if status == 0:
        print(out_dir)
    return status


def refresh_cache_docs(out_dir: Path | None, root: Path = PROJECT_ROOT) -> list[Path]:
    """Rewrite the Cached Activations list of the docs under ``root`` (CLAUDE.md / AGENTS.md:
    their generated ``shared-resources`` section, nothing else) when ``out_dir`` is a cache
    in ``root``'s data/activations/; return the files changed (each written only if its text
    changed, so a rerun of a complete cache writes nothing).

    Why so narrow: caching used to refresh every generated section, so the docs changed
    whenever any other section had drifted (results, key files), and a throwaway cache left
    the tree dirty. What a cache changes is that list, and the list shows data/activations/
    only: a cache anywhere else (``--out-dir /tmp/...``, a benchmark, a test) leaves the docs
    alone. Shard tasks never touch them (N tasks would race on the files): the merge does,
    once the folder has its metadata.json.
    """
    import update_docs

    from src.utils.files import write_text_atomic

    if out_dir is None or not (Path(out_dir) / "metadata.json").is_file():
        return []  # no cache here (yet): shards not merged, or nothing written
    documented = (root / "data" / "activations").resolve()
    if Path(out_dir).resolve().parent != documented:
        return []
    section = "shared-resources"
    body = update_docs.SECTIONS[section](root)
    changed = []
    for path in (root / doc for doc in update_docs.DOCS):
        if path.exists():
            old = path.read_text(encoding="utf-8")
            new = update_docs.replace_section(old, section, body)
            if new != old:
                write_text_atomic(path, new)
                changed.append(path)
                print(f"updated {path.relative_to(root)}", file=sys.stderr)
    return changed


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops as Ctrl-C does: the shards already queued are kept


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
