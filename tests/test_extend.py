"""The generated README's "Extend the project" section, followed in a rendered project.

The test takes the section's code blocks as they are written (a block whose first line is
`# <path>` is that file, or an entry to append to it) and checks what the section promises:
the new experiment kind runs, draws its figures and appears in CLAUDE.md, and the new model
family is known to the loader and to CLAUDE.md's compute section.
"""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.slow  # adds a kind and runs it in a rendered project

BLOCK = re.compile(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", re.DOTALL)


def section(readme: str) -> str:
    start = readme.index("## Extend the project")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


@pytest.fixture(scope="module")
def extended(bake):
    """A fresh project with every file of the section written or appended as it says."""
    project = bake()
    blocks = BLOCK.findall(section(project.read("README.md")))
    assert {path for path, _ in blocks} == {
        "src/experiments/head_ablation.py",
        "configs/toy_induction_head_ablation.yaml",
        "src/models/families.yaml",
    }
    for path, body in blocks:
        target = project.path / path
        if target.exists():  # an entry for an existing table
            target.write_text(target.read_text(encoding="utf-8") + "\n" + body, encoding="utf-8")
        else:
            target.write_text(body, encoding="utf-8")
    return project


def test_new_kind_runs_draws_and_is_documented(extended):
    config = "configs/toy_induction_head_ablation.yaml"
    result = extended.run("python", "scripts/run_experiment.py", "--config", config)
    figures = extended.path / "notebooks" / "figures"
    for suffix in ("png", "html"):
        assert (figures / f"toy_induction_head_ablation_head_out.{suffix}").is_file()
    (log_path,) = (extended.path / "data/results/toy_induction_head_ablation").glob("*.json")
    results = json.loads(log_path.read_text())["results"]
    assert results["kind"] == "head_ablation" and results["headline"] == "top_effect"
    # Known answer: the induction heads of layer 1 back each other up, but all of them read
    # the one previous-token head of layer 0: zeroing it costs the most.
    effect = results["components"]["head_out"]["normalized"]["mean"]
    assert min(effect[0]) < 0.9 and min(effect[0]) < min(effect[1]), effect
    row = next(
        line
        for line in extended.read("CLAUDE.md").splitlines()
        if line.startswith("| ") and f"`{config}`" in line
    )
    assert "Complete" in row and "top_effect=" in row, result.stdout


def test_new_model_family_is_known(extended):
    names = extended.run(
        "python",
        "-c",
        "from src.models.load import PRETRAINED_MODELS; "
        "print(PRETRAINED_MODELS['pythia-160m-deduped'])",
    )
    assert names.stdout.strip() == "EleutherAI/pythia-160m-deduped"
    project_yaml = extended.path / "configs" / "project.yaml"
    text = project_yaml.read_text(encoding="utf-8")
    project_yaml.write_text(re.sub(r"(?m)^model: .*$", 'model: "pythia-160m-deduped"', text))
    extended.run("python", "scripts/update_docs.py")
    claude = extended.read("CLAUDE.md")
    compute = claude[claude.index("<!-- generated:compute -->") :]
    assert "`pythia-160m-deduped`" in compute.split("<!-- /generated:compute -->")[0]
