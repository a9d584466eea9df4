"""TransformerLens 4 readiness: the generated project's tests pass on transformer-lens 4.

sae-lens 6 pins transformer-lens<4, so the project keeps `transformer-lens>=3.9,<4`. This
test installs transformer-lens 4 without sae-lens (pip cannot put them side by side) into a
fresh virtual environment and runs every test of the generated project that does not need
SAELens there: the day sae-lens lifts its pin, lifting ours is the only change.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import TEMPLATE
from test_generated_suite import summary

pytestmark = pytest.mark.slow  # installs transformer-lens 4 in a new venv

TL4 = "transformer-lens>=4,<5"
NOT_BESIDE_TL4 = ("sae-lens", "transformer-lens")  # sae-lens requires transformer-lens<4


def _requirements(tmp: Path) -> Path:
    """requirements-test.txt without sae-lens and with transformer-lens 4."""
    lines = (TEMPLATE / "requirements-test.txt").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if not line.startswith(NOT_BESIDE_TL4)]
    path = tmp / "requirements-tl4.txt"
    path.write_text("\n".join([*kept, TL4]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tl4_python(tmp_path_factory) -> Path:
    """The python of a virtual environment with transformer-lens 4 and no sae-lens."""
    tmp = tmp_path_factory.mktemp("tl4")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    torch = version("torch").split("+")[0]  # the build this suite runs on (CPU in CI)
    for args in (["torch==" + torch], ["-r", str(_requirements(tmp))]):
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *args],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            if "No matching distribution" in result.stderr or "connection" in result.stderr:
                pytest.skip(f"cannot install {args} from the package index: {result.stderr[-300:]}")
            raise AssertionError(f"pip install {args} failed:\n{result.stderr[-3000:]}")
    return python


def test_project_suite_passes_on_transformer_lens_4(default_project, tl4_python):
    installed = subprocess.run(
        [str(tl4_python), "-c", "import transformer_lens, importlib.util as u;"
         "from importlib.metadata import version as v;"
         "print(v('transformer-lens'), u.find_spec('sae_lens') is None)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert installed[0].startswith("4.") and installed[1] == "True", installed
    result = default_project.run(
        str(tl4_python), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", check=False
    )
    counts = summary(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:]
    assert counts.get("passed", 0) >= 300 and "failed" not in counts and "error" not in counts
    # the only tests left out are those that need SAELens
    skips = re.findall(r"^SKIPPED \[\d+\] (\S+?):\d+: (.*)$", result.stdout, re.M)
    assert skips and all(re.search("SAELens|sae_lens", reason) for _, reason in skips), skips
