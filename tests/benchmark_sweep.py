"""Time a sweep of 8 toy patching points on a real single-node SLURM against the same points
run one after another in one process.

    python tests/benchmark_sweep.py [--n-samples 400] [--parallelism 2] [--project DIR]

SLURM: ``scripts/sweep.py --launcher slurm --parallelism 2`` of a generated project (one
submitit job array, two tasks at a time), on the cluster of ``$SLURM_CONF`` when set, else on
one started here (root, Linux, slurm-wlm: see tests/slurm_cluster.py). Sequential: the same
command with ``--launcher debug`` (every point in the driver's process, the model loaded per
point as a task does). Both wall times include Python's start-up. Prints a table with the
ratio; goal: SLURM time at most 1.5x the sequential time (each task pays its own start-up,
so the points must do some work: ``--n-samples``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TEMPLATE / "tests"))
from slurm_cluster import running_cluster, why_not  # noqa: E402


def bake(out: Path) -> Path:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out), str(TEMPLATE)],
        check=True,
        capture_output=True,
        env=env,
    )
    return next(p for p in out.iterdir() if p.is_dir())


def write_config(project: Path, name: str, n_samples: int) -> str:
    """The toy patching sweep with 8 points (4 seeds x 2 layers) and its own results."""
    raw = yaml.safe_load((project / "configs" / "toy_induction_sweep.yaml").read_text())
    raw["experiment"]["name"] = name
    raw["data"]["n_samples"] = n_samples
    raw["patching"]["components"] = ["head_out", "q", "k", "v"]
    raw["output"]["results_dir"] = f"data/results/{name}"
    raw["sweep"] = {"data.seed": [0, 1, 2, 3], "patching.layers": [[0], [1]]}
    path = project / "configs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path.relative_to(project))


def timed(project: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    env = {k: v for k, v in env.items() if k != "VIRTUAL_ENV"}
    env.update(HF_HUB_OFFLINE="1", MPLBACKEND="Agg", WANDB_MODE="disabled")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "scripts/sweep.py", *args], cwd=project, env=env, text=True,
        capture_output=True, timeout=3600,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"sweep.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=400, help="prompts per point")
    parser.add_argument("--parallelism", type=int, default=2, help="SLURM array parallelism")
    parser.add_argument("--project", type=Path, help="a generated project (default: bake one)")
    args = parser.parse_args()
    if "SLURM_CONF" not in os.environ and why_not():
        raise SystemExit(f"no SLURM: {why_not()}")
    with tempfile.TemporaryDirectory() as tmp:
        project = args.project or bake(Path(tmp) / "out")
        slurm_config = write_config(project, "bench_sweep_slurm", args.n_samples)
        local_config = write_config(project, "bench_sweep_sequential", args.n_samples)
        cluster = (
            nullcontext(dict(os.environ))
            if "SLURM_CONF" in os.environ
            else running_cluster(Path(tmp) / "slurm")
        )
        logs = str(Path(tmp) / "logs")
        with cluster as env:
            sequential, _ = timed(
                project, env, "--config", local_config, "--launcher", "debug",
                "--launcher-folder", logs,
            )  # fmt: skip
            slurm, printed = timed(
                project, env, "--config", slurm_config, "--launcher", "slurm",
                "--parallelism", str(args.parallelism), "--launcher-folder", logs,
            )  # fmt: skip
    print(printed)
    ratio = slurm / sequential
    print(f"{'run':<42} {'wall s':>8}")
    print(f"{'8 points, one after another, one process':<42} {sequential:>8.1f}")
    print(f"{f'8 points, SLURM job array, parallelism {args.parallelism}':<42} {slurm:>8.1f}")
    print(f"ratio SLURM / sequential: {ratio:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
