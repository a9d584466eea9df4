"""scripts/update_docs.py rewrites only the generated sections of CLAUDE.md and AGENTS.md."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
update_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_docs)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of this project's docs, configs, scripts and src in a temporary folder."""
    for name in ("CLAUDE.md", "configs", "scripts", "src"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    (tmp_path / "data" / "results").mkdir(parents=True)
    return tmp_path


def test_sections_filled_and_hand_written_text_kept(project: Path):
    claude = project / "CLAUDE.md"
    claude.write_text(claude.read_text() + "\nHand-written note that must survive.\n")
    update_docs.update(project)
    text = claude.read_text()
    assert "Hand-written note that must survive." in text
    assert "- `src/models/load.py` - " in text
    assert "python scripts/run_experiment.py --config configs/toy_induction.yaml" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for config in (project / "configs").glob("*.yaml"):
        in_table = any(f"`configs/{config.name}`" in row for row in rows)
        assert in_table == (config.name != "project.yaml"), config.name  # settings, no experiment
    assert update_docs.main(["--root", str(project), "--check"]) == 0


def test_experiment_status_follows_the_logs(project: Path):
    update_docs.update(project)
    row = _status_row(project, "toy_induction.yaml")
    assert "Not started" in row
    name = row.split("|")[1].strip()
    log = {"name": name, "timestamp": "2026-01-02T03:04:05", "results": {"clean_logit_diff": 4.25}}
    (project / "data" / "results" / f"{name}_20260102_030405.json").write_text(json.dumps(log))
    assert update_docs.main(["--root", str(project), "--check"]) == 1  # now stale
    update_docs.update(project)
    row = _status_row(project, "toy_induction.yaml")
    assert "Complete (2026-01-02)" in row and "clean_logit_diff=4.25" in row


def test_commands_listed_only_when_their_files_exist(project: Path):
    assert not (project / ".pre-commit-config.yaml").exists()  # the fixture leaves it out
    update_docs.update(project)
    assert "pre-commit run --all-files" not in (project / "CLAUDE.md").read_text()
    (project / ".pre-commit-config.yaml").write_text("repos: []\n")
    update_docs.update(project)
    assert "pre-commit run --all-files" in (project / "CLAUDE.md").read_text()


def test_replace_section_without_markers_changes_nothing():
    text = "no markers here\n"
    assert update_docs.replace_section(text, "key-files", "body") == text


def test_shared_resources_read_the_cache_metadata(project: Path):
    (project / "AGENTS.md").write_text(
        "# Agents\n<!-- generated:shared-resources -->\n<!-- /generated:shared-resources -->\n"
    )
    done = project / "data" / "activations" / "toy-induction_0_induction_2000"
    partial = project / "data" / "activations" / "toy-induction_1_induction_4000"
    broken = project / "data" / "activations" / "half-written"
    for folder in (done, partial, broken):
        folder.mkdir(parents=True)
    meta = {
        "model": "toy-induction",
        "hook_names": ["blocks.0.hook_resid_pre"],
        "dataset": "induction",
        "n_tokens": 2000,
        "tokens_done": 2000,
        "dtype": "float32",
        "complete": True,
    }
    (done / "metadata.json").write_text(json.dumps(meta))
    meta.update(n_tokens=4000, tokens_done=1000, complete=False)
    (partial / "metadata.json").write_text(json.dumps(meta))
    sae = project / "data" / "results" / "sae_toy" / "sae"
    sae.mkdir(parents=True)
    (sae / "sae_weights.safetensors").write_bytes(b"")
    (sae / "cfg.json").write_text("{}")
    (sae.parent / "sae_toy_20260102_030405.json").write_text("{}")
    update_docs.update(project)
    lines = (project / "AGENTS.md").read_text().splitlines()

    def line_of(folder: Path) -> str:
        return next(
            line for line in lines if f"`{folder.relative_to(project).as_posix()}/`" in line
        )

    assert line_of(done).endswith(
        "toy-induction, `blocks.0.hook_resid_pre`, induction, 2000 tokens, float32, complete"
    )
    assert line_of(partial).endswith("partial: 1000 of 4000 tokens")
    assert "no readable metadata.json" in line_of(broken)
    assert "- `data/results/sae_toy/sae/`" in lines
    assert "- `data/results/sae_toy/sae_toy_20260102_030405.json`" in lines
    assert not any("cfg.json" in line for line in lines)


@pytest.mark.parametrize(
    ("results", "headline"),
    [
        ({"n_prompts": 10, "recovered": 0.912, "clean": 11.5}, "recovered=0.912"),
        (
            {"d_in": 64, "explained_variance": 0.8512, "l0": 7.25},
            "explained_variance=0.851 l0=7.25",
        ),
        ({"flag": True, "loss": 2.5}, "loss=2.5"),
        ({"note": "text only"}, ""),
    ],
)
def test_headline_prefers_the_result_that_matters(results, headline):
    assert update_docs._headline(results) == headline


def test_refresh_after_only_for_runs_inside_the_project(project: Path, tmp_path_factory):
    claude = project / "CLAUDE.md"
    before = claude.read_text()
    outside = tmp_path_factory.mktemp("elsewhere") / "log.json"
    assert update_docs.refresh_after(outside, project) == []
    assert claude.read_text() == before
    assert update_docs.refresh_after(project / "data" / "results" / "x.json", project) == [claude]


def test_sae_config_status_follows_its_results_folder(project: Path):
    config = project / "configs" / "toy_sae_training.yaml"
    folder = yaml.safe_load(config.read_text())["output"]["results_dir"]
    log = {
        "name": "sae_toy-induction_blocks.0.hook_resid_pre_topk",
        "timestamp": "2026-03-04T05:06:07",
        "config": {"output": {"results_dir": folder}},
        "results": {"kind": "sae_training", "d_in": 64, "explained_variance": 0.99, "l0": 4.0},
    }
    (project / "data" / "results" / "run.json").write_text(json.dumps(log))
    update_docs.update(project)
    row = _status_row(project, "toy_sae_training.yaml")
    assert "Complete (2026-03-04)" in row and "explained_variance=0.99 l0=4" in row


def _status_row(project: Path, config: str) -> str:
    """The row of CLAUDE.md's experiment status table for ``configs/<config>``."""
    text = (project / "CLAUDE.md").read_text()
    cell = f"`configs/{config}`"
    return next(line for line in text.splitlines() if line.startswith("|") and cell in line)


def _compute_section(project: Path) -> str:
    text = (project / "CLAUDE.md").read_text(encoding="utf-8")
    return text.split("<!-- generated:compute -->\n")[1].split("<!-- /generated:compute -->")[0]


def _set_project(project: Path, **values: object) -> None:
    path = project / "configs" / "project.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump({**settings, **values}), encoding="utf-8")


def test_compute_section_follows_project_yaml(project: Path):
    _set_project(project, model="gpt2-small", compute="Local RTX 3090", gpu_memory_gb=24)
    update_docs.update(project)
    section = _compute_section(project)
    assert section.startswith("- **GPU**: Local RTX 3090 (24 GB)\n")
    assert "holds `gpt2-small`'s 0.74 GB of float32 weights" in section
    assert "a full cache for `gpt2-small` uses ~" in section

    _set_project(project, gpu_memory_gb=80)  # a bigger GPU: the docs are stale until refreshed
    assert update_docs.main(["--root", str(project), "--check"]) == 1
    update_docs.update(project)
    assert "- **GPU**: Local RTX 3090 (80 GB)" in _compute_section(project)

    _set_project(project, model="gemma-2-2b", gpu_memory_gb=8)  # another model: stale again
    assert update_docs.main(["--root", str(project), "--check"]) == 1
    update_docs.update(project)
    section = _compute_section(project)
    assert "8 GB cannot hold `gemma-2-2b`'s 12.8 GB of float32 weights" in section
    assert update_docs.main(["--root", str(project), "--check"]) == 0


def test_compute_section_says_what_is_wrong(project: Path):
    _set_project(project, model="gpt5")
    update_docs.update(project)
    section = _compute_section(project)
    assert section.startswith("- Not derived: `configs/project.yaml` needs `model`")
    assert "unknown model family 'gpt5'" in section and "'toy-induction'" in section


def test_compute_answer_beyond_the_basic_plane_reads_back(project: Path):
    """Generation writes answers JSON-escaped; an emoji arrives as a surrogate pair."""
    path = project / "configs" / "project.yaml"
    path.write_text(
        'model: "toy-induction"\ncompute: "A100 \\ud83d\\ude80 \\"spot\\": #1"\n'
        "gpu_memory_gb: 0.5\n",
        encoding="utf-8",
    )
    update_docs.update(project)
    assert '- **GPU**: A100 \U0001f680 "spot": #1 (0.5 GB)' in _compute_section(project)


def test_unparsable_file_warns_once_and_the_refresh_succeeds(project: Path, capsys):
    """Work in progress that does not parse is listed without a description, with one warning
    naming it; the rest of the docs refresh as usual."""
    (project / "scripts" / "wip.py").write_text('"""Half written.\n\ndef broken(:\n')
    (project / "src" / "models" / "draft.py").write_text("def f(:\n    pass\n")
    capsys.readouterr()
    assert update_docs.main(["--root", str(project)]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: ") for line in warnings)
    assert any("scripts/wip.py: could not read its description (SyntaxError" in w for w in warnings)
    assert any("src/models/draft.py: could not read its description" in w for w in warnings)
    text = (project / "CLAUDE.md").read_text()
    assert "- `scripts/wip.py`\n" in text and "- `src/models/load.py` - " in text


def test_stage_refreshes_and_stages_after_a_commit(project: Path):
    """The post-commit hook's mode: the refreshed doc is staged (no unstaged change left, so
    pre-commit shows no failure); a doc with the user's unstaged edits is left alone."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.org", "-C", str(project)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init", "--no-verify"], check=True)
    (project / "configs" / "new_experiment.yaml").write_text("experiment:\n  name: new\n")
    assert update_docs.main(["--root", str(project), "--stage"]) == 0
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    assert "M  CLAUDE.md" in status.stdout.splitlines()  # staged, nothing unstaged in it
    assert "`configs/new_experiment.yaml`" in (project / "CLAUDE.md").read_text()

    subprocess.run([*git, "commit", "-qm", "docs", "--no-verify"], check=True)
    claude = project / "CLAUDE.md"
    claude.write_text(claude.read_text() + "\nMy own note.\n")
    (project / "configs" / "other.yaml").write_text("experiment:\n  name: other\n")
    assert update_docs.main(["--root", str(project), "--stage"]) == 0
    assert "`configs/other.yaml`" not in claude.read_text()  # the user's edits win
    assert claude.read_text().endswith("My own note.\n")


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("IOI (Wang et al. 2022, the paper). More text.", "IOI (Wang et al. 2022, the paper)."),
        ("Pick a model, e.g. GPT-2. Then run.", "Pick a model, e.g. GPT-2."),
        ("Graph (EAP-IG's. Hanna et al. 2024). Next.", "Graph (EAP-IG's. Hanna et al. 2024)."),
        ("One line, no period", "One line, no period"),
    ],
)
def test_first_sentence_is_never_cut_at_an_abbreviation(text, first):
    assert update_docs.first_sentence(text) == first
