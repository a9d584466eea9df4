"""Render the template for the defaults and a matrix of options; check every output file."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml
from conftest import DEFAULTS, Baked
from slugify import slugify

TRICKY = {
    "project_name": 'Ünïcode "Quotes": back\\slash — test',
    "project_slug": "tricky_project",
    "research_goal": 'Find: the "circuit" that\'s # not a comment & <b>bold</b> \\n — ok?',
    "research_questions": "What: is 'this'?; Does \"it\" hold\\? ; ;Ünï: çødé?",
    "author_name": 'O\'Brien "Bob" \\ Ñandú',
    "compute": 'A100: 80GB "spot" \\ queue #1 \U0001f680',
    "gpu_memory_gb": "80",
}
OPTIONS = {
    "defaults": {},
    "minimal": {
        "multi_agent": "no",
        "license": "none",
        "model_name": "toy-induction",
        "python_version": "3.10",
        "gpu_memory_gb": "0.5",
    },
    "wandb-apache-pythia": {
        "experiment_tracking": "wandb",
        "license": "Apache-2.0",
        "model_name": "pythia-70m-deduped",
        "python_version": "3.13",
    },
    "gemma-bsd-small-gpu": {
        "model_name": "gemma-2-2b",
        "license": "BSD-3-Clause",
        "gpu_memory_gb": "8",
    },
    "tricky-answers": TRICKY,
}
SEED_PLACEHOLDERS = re.compile(
    r"\[(Name|One sentence|Primary question|Secondary question|Open problem|e\.g\.|Any gotchas|"
    r"Things that|Decisions made|Links to|Internal docs|Brief note|Agent|Date|Description|X\])"
)


def answers(option: str) -> dict[str, str]:
    return {
        **{k: v[0] if isinstance(v, list) else v for k, v in DEFAULTS.items()},
        **OPTIONS[option],
    }


@pytest.fixture(scope="module", params=list(OPTIONS))
def case(request, bake, default_project) -> tuple[dict[str, str], Baked]:
    option = request.param
    project = default_project if option == "defaults" else bake(**OPTIONS[option])
    return answers(option), project


def test_no_unrendered_template_syntax(case):
    _, project = case
    # `${{ ... }}` is a GitHub Actions expression (kept by `{% raw %}`), not Jinja left over
    leftovers = [
        name
        for name in project.files()
        if re.search(r"(?<!\$){{|{%|cookiecutter\.", project.read(name))
    ]
    assert leftovers == []


def test_structured_files_parse(case):
    _, project = case
    for name in project.files():
        text = project.read(name)
        if name.endswith((".yaml", ".yml")):
            yaml.safe_load(text)
        elif name.endswith(".toml"):
            tomllib.loads(text)
        elif name.endswith((".json", ".ipynb")):
            json.loads(text)


def test_answers_round_trip(case):
    given, project = case
    pyproject = tomllib.loads(project.read("pyproject.toml"))["project"]
    slug = given["project_slug"]
    if "{{" in slug:  # the default: derived from the project name as cookiecutter.json says
        slug = slugify(given["project_name"])
    assert pyproject["name"] == slug
    assert pyproject["description"] == given["research_goal"]
    assert pyproject["authors"] == [{"name": given["author_name"], "email": given["author_email"]}]
    assert pyproject["requires-python"] == f">={given['python_version']}"
    assert ("wandb>=0.17" in pyproject["dependencies"]) == (given["experiment_tracking"] == "wandb")
    assert project.path.name == pyproject["name"]


def test_pruned_to_the_answers(case):
    given, project = case
    files = project.files()
    assert ("AGENTS.md" in files) == (given["multi_agent"] == "yes")
    assert ("LICENSE" in files) == (given["license"] != "none")
    if given["license"] != "none":
        first = project.read("LICENSE").splitlines()[0]
        assert first.startswith(
            {"MIT": "MIT", "Apache-2.0": "Copyright", "BSD-3-Clause": "BSD"}[given["license"]]
        )
    tracking = project.read("src/utils/tracking.py")
    assert ("wandb" in tracking) == (given["experiment_tracking"] == "wandb")


def test_claude_md_filled(case):
    given, project = case
    claude = project.read("CLAUDE.md")
    assert claude.startswith(f"# Project: {given['project_name']}\n")
    assert given["research_goal"] in claude
    questions = [q.strip() for q in given["research_questions"].split(";") if q.strip()]
    numbered = "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))
    assert f"## Active Research Questions\n\n{numbered}\n" in claude
    assert f"- **GPU**: {given['compute']} ({float(given['gpu_memory_gb']):g} GB)" in claude
    assert re.search(r"uses ~[\d.]+ GB per 1k tokens", claude)
    assert "<!-- fill:" not in claude
    for doc in ("CLAUDE.md", "AGENTS.md"):
        if doc in project.files():
            assert SEED_PLACEHOLDERS.findall(project.read(doc)) == [], doc
    # key files list what exists after pruning, and only that
    listed = set(re.findall(r"^- `([^`]+)`", claude, re.M))
    assert "src/models/load.py" in listed and "scripts/run_experiment.py" in listed
    assert all((project.path / name).exists() for name in listed)
    # the experiments table has a row per shipped experiment config
    rows = "\n".join(line for line in claude.splitlines() if line.startswith("| "))
    configs = {p.name for p in (project.path / "configs").glob("*.yaml")} - {"project.yaml"}
    assert configs and all(f"`configs/{name}`" in rows for name in configs)
    assert "`configs/project.yaml`" not in rows
    # nothing false for the chosen options
    if given["multi_agent"] == "no":
        assert "AGENTS.md" not in claude
    if given["model_name"] == "toy-induction":
        assert "HF Hub" not in project.read("configs/experiment.yaml")
    # key-file descriptions end where their sentence ends ("Wang et al. 2022" is not an end)
    notes = re.findall(r"^- `[^`]+` - (.*)$", claude, re.M)
    assert notes and [n for n in notes if n.count("(") != n.count(")")] == []
    assert [n for n in notes if n.endswith((" al.", " e.g.", " i.e."))] == []


def test_model_defaults_from_the_family_table(case):
    """configs/experiment.yaml's model-dependent values and configs/project.yaml's answers."""
    given, project = case
    row = yaml.safe_load(project.read("src/models/families.yaml"))[given["model_name"]]
    experiment = yaml.safe_load(project.read("configs/experiment.yaml"))
    assert experiment["patching"]["layers"] == row["patching_defaults"]["layers"]
    assert experiment["data"]["n_samples"] == row["patching_defaults"]["n_samples"]
    assert experiment["data"]["seq_length"] == row["patching_defaults"]["seq_length"]
    settings = yaml.safe_load(project.read("configs/project.yaml"))
    assert settings["model"] == given["model_name"]
    compute = settings["compute"].encode("utf-16", "surrogatepass").decode("utf-16")
    assert compute == given["compute"]
    assert float(settings["gpu_memory_gb"]) == float(given["gpu_memory_gb"])


def test_ruff_passes(case):
    _, project = case
    project.run("ruff", "check", ".")
    project.run("ruff", "format", "--check", ".")


def test_git_one_clean_commit(case):
    _, project = case
    assert project.git("rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert project.git("rev-list", "--count", "HEAD") == "1"
    assert project.git("status", "--porcelain") == ""
    committed = set(project.git("ls-files").splitlines())
    ignored = set(
        project.git("ls-files", "--others", "--ignored", "--exclude-standard").splitlines()
    )
    assert committed == project.files() - ignored
    assert (project.path / ".git" / "hooks" / "pre-commit").exists()


def test_shipped_configs_validate(case):
    _, project = case
    check = (
        "import pathlib; from src.experiments.registry import load_config; "
        "[load_config(p) for p in sorted(pathlib.Path('configs').glob('*.yaml'))"
        " if p.name != 'project.yaml']"
    )
    project.run("python", "-c", check)


MEASURE_GPT2_CACHE = """
import torch
from src.models.load import gpt2_shaped_model

model = gpt2_shaped_model("cpu")  # built from the gpt2-small row of src/models/families.yaml
with torch.no_grad():
    _, cache = model.run_with_cache(torch.randint(0, 50257, (1, 128)))
distinct = {}  # aliased hook names share one tensor: count each storage once
for t in (cache[name] for name in cache.keys()):
    distinct[(t.untyped_storage().data_ptr(), t.storage_offset(), t.shape)] = t.numel()
print(sum(distinct.values()) * 4 / 128 * 1000 / 1e9)
"""


@pytest.mark.slow
def test_cache_estimate_matches_a_real_cache(bake, default_project):
    """CLAUDE.md's GB per 1k tokens for gpt2-small equals a GPT-2-shaped model's real cache."""
    gpt2 = default_project
    if DEFAULTS["model_name"][0] != "gpt2-small":  # a fork with another default model
        gpt2 = bake(model_name="gpt2-small")
    found = re.search(
        r"uses ~([\d.]+) GB per 1k tokens at sequence length 128", gpt2.read("CLAUDE.md")
    )
    measured = float(gpt2.run("python", "-c", MEASURE_GPT2_CACHE).stdout.split()[-1])
    assert float(found.group(1)) == pytest.approx(measured, rel=0.01)


@pytest.mark.slow
def test_project_builds_as_a_package(case, tmp_path):
    """`pip install -e .` works: the pyproject (license expression, package list) builds."""
    _, project = case
    build = ["python", "-m", "pip", "wheel", "-q", "--no-deps", "--ignore-requires-python"]
    project.run(*build, "-w", str(tmp_path), ".")
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith(project.path.name.replace("-", "_") + "-0.1.0-")


def test_day_one_files(case):
    """CITATION.cff from the answers (valid CFF 1.2), .env.example with the keys the project
    reads and .env ignored, and the commit hooks a project needs from day one."""
    given, project = case
    cff = yaml.safe_load(project.read("CITATION.cff"))
    assert (cff["title"], cff["abstract"]) == (given["project_name"], given["research_goal"])
    (author,) = cff["authors"]
    name = " ".join(filter(None, (author.get("given-names"), author["family-names"])))
    assert (name, author["email"]) == (given["author_name"].strip(), given["author_email"])
    assert cff.get("license") == (None if given["license"] == "none" else given["license"])
    project.run("check-jsonschema", "--builtin-schema", "vendor.citation-file-format",
                "CITATION.cff")  # fmt: skip
    example = project.read(".env.example")
    assert re.findall(r"^(\w+)=$", example, re.M) == ["HF_TOKEN", "WANDB_API_KEY"]
    assert ".env.example" in project.git("ls-files").splitlines()
    assert project.run("git", "check-ignore", "-q", ".env", check=False).returncode == 0
    config = yaml.safe_load(project.read(".pre-commit-config.yaml"))
    hooks = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert {"codespell", "check-merge-conflict", "detect-private-key"} <= hooks
    assert {repo["repo"] for repo in config["repos"]} == {"local"}  # PyPI only, no git clones
