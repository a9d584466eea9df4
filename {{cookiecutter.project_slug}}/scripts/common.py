"""Shared by the scripts: ``src`` importable however a script is run, a run's model, and
the end of a run.

A script imports it first (``from common import PROJECT_ROOT, finish_run``; the script's own
folder is on ``sys.path`` when it runs). The end of a run is the same for every script that
logs one: the JSON log (and W&B when chosen), a printed summary, then the generated sections
of CLAUDE.md / AGENTS.md refreshed when the output lies inside this project.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


def load_env_file(path: Path = PROJECT_ROOT / ".env") -> None:
    """Export the ``KEY=value`` lines of ``path`` (HF_TOKEN, WANDB_API_KEY, ...) that the
    environment does not set already; git ignores the file, so secrets stay out of commits."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key and not key.startswith("#"):
            os.environ.setdefault(key.strip(), value.strip().strip("\"'"))


load_env_file()


def add_dataset_path_argument(parser: argparse.ArgumentParser) -> None:
    """``--dataset-path`` (alias ``--path``): where the text of ``--dataset text`` comes from."""
    parser.add_argument(
        "--dataset-path",
        "--path",
        dest="path",
        help="for --dataset text: a .txt or .jsonl file, a save_to_disk directory or a Hugging "
        "Face dataset id (default: the model's dataset in src/models/families.yaml)",
    )


def refresh_docs(written: Path | None, out: TextIO = sys.stdout) -> None:
    """Refresh the docs' generated sections after a run wrote ``written`` (a log or a cache
    folder); nothing when it lies outside the project (a run into a temporary folder). A failing
    refresh warns in one line: the run's results are saved and it still succeeds."""
    import update_docs

    if written is None or not Path(written).exists():
        return
    try:
        changed = update_docs.refresh_after(written, PROJECT_ROOT)
    except Exception as error:  # the run's results are saved: a doc refresh must not fail it
        print(
            f"warning: CLAUDE.md not refreshed ({type(error).__name__}: {error}); "
            "run python scripts/update_docs.py",
            file=sys.stderr,
        )
        return
    for path in changed:
        print(f"updated {path.relative_to(PROJECT_ROOT)}", file=out)


def error_exit(error: Exception, path: Path | str, *, named: type[Exception]) -> int:
    """Print a user-facing ``error`` as one line on stderr, prefixed by the config ``path``
    unless it is a ``named`` error (its message names the file already); return 2, the exit
    status of a usage error."""
    prefix = "" if isinstance(error, named) else f"{path}: "
    print(f"error: {prefix}{error}", file=sys.stderr)
    return 2


def check_fits_before_loading(
    name: str,
    device: str,
    dtype: str,
    batch: int,
    seq_len: int | None,
    *,
    gradients: bool = False,
    n_devices: int = 1,
    memory_gb: float | None = None,
) -> None:
    """Stop before loading model ``name`` when it and a forward on ``batch`` prompts of
    ``seq_len`` tokens (with a backward pass if ``gradients``) cannot fit ``device``'s free
    memory (or ``memory_gb``): InsufficientMemoryError, one line saying what would fit.
    Models whose dimensions are unknown without a download are not checked."""
    from src.models.load import parse_dtype, resolve_device
    from src.models.memory import check_fits, free_memory_gb, model_dims

    dims = model_dims(name)
    if dims is None:
        return
    resolved = resolve_device(device)
    check_fits(
        name,
        dims,
        str(parse_dtype(dtype)).removeprefix("torch."),
        batch,
        seq_len or min(dims.n_ctx, 128) or 128,
        memory_gb or free_memory_gb(resolved),
        device=str(resolved),
        gradients=gradients,
        n_devices=n_devices,
    )


def load_run_model(cfg: Any, batch: int = 1, gradients: bool = False) -> Any:
    """Seed the run (``data.seed``), check that the model and a forward on ``batch`` prompts
    (with a backward pass if ``gradients``) fit its device, and load it, saying so on stderr."""
    from src.models.load import load_model
    from src.utils.seed import set_seed

    set_seed(cfg.data.seed)
    model = cfg.model
    check_fits_before_loading(
        model.name,
        model.device,
        model.dtype,
        min(batch, getattr(cfg.data, "n_samples", batch)),
        getattr(cfg.data, "seq_length", None) or getattr(cfg.data, "context_size", None),
        gradients=gradients,
        n_devices=model.n_devices,
        memory_gb=model.memory_gb,
    )
    print(f"loading model {model.name} (device={model.device})", file=sys.stderr)
    return load_model(model.name, device=model.device, dtype=model.dtype, n_devices=model.n_devices)


def finish_run(
    name: str,
    config: Mapping[str, Any],
    results: Mapping[str, Any],
    *,
    results_dir: str | Path,
    wall_time_s: float,
    title: str,
    keys: Iterable[str] | None = None,
    extra: Iterable[str] = (),
    **log_options: Any,
) -> Path:
    """Log the run, print its title, its numbers (``keys``, or every number of ``results``),
    its figures, ``extra`` lines and the log's path, then refresh the docs. Returns the log."""
    from src.utils.tracking import log_experiment

    log_path = log_experiment(
        name, config, results, results_dir=results_dir, wall_time_s=wall_time_s, **log_options
    )
    print(f"{title} ({wall_time_s:.1f} s)")
    numbers = {k: v for k, v in results.items() if isinstance(v, int | float)}
    for key in numbers if keys is None else keys:
        print(f"  {key:<28} {numbers[key]:.4g}")
    for path in results.get("figures", []):
        print(f"figure: {path}")
    for line in extra:
        print(line)
    print(f"log: {log_path}")
    refresh_docs(log_path)
    return log_path
