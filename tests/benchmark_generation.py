"""Time project generation with every hook (git init, pre-commit install, first commit).

    python tests/benchmark_generation.py [--runs 7]

Prints the median, min and max wall time of the `cookiecutter --no-input` command line, as a
user runs it (Python start-up and cookiecutter included). Goal: a median of at most 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]


def time_cli(out: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out), str(TEMPLATE)],
        check=True,
        capture_output=True,
        env=env,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            times.append(time_cli(Path(tmp) / str(i)))
    print(f"{'what':<38} {'median s':>9} {'min s':>7} {'max s':>7} {'goal':>6}")
    print(
        f"{'cookiecutter --no-input (all hooks)':<38} {statistics.median(times):>9.2f} "
        f"{min(times):>7.2f} {max(times):>7.2f} {'<=1.5':>6}"
    )


if __name__ == "__main__":
    main()
