"""scripts/update_docs.py rewrites only the generated sections of CLAUDE.md and AGENTS.md."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

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
    for config in (project / "configs").glob("*.yaml"):
        assert f"`configs/{config.name}`" in text
    assert update_docs.main(["--root", str(project), "--check"]) == 0


def test_experiment_status_follows_the_logs(project: Path):
    update_docs.update(project)
    row = next(
        line
        for line in (project / "CLAUDE.md").read_text().splitlines()
        if line.startswith("|") and "`configs/toy_induction.yaml`" in line
    )
    assert "Not started" in row
    name = row.split("|")[1].strip()
    log = {"name": name, "timestamp": "2026-01-02T03:04:05", "results": {"clean_logit_diff": 4.25}}
    (project / "data" / "results" / f"{name}_20260102_030405.json").write_text(json.dumps(log))
    assert update_docs.main(["--root", str(project), "--check"]) == 1  # now stale
    update_docs.update(project)
    row = next(
        line
        for line in (project / "CLAUDE.md").read_text().splitlines()
        if line.startswith("|") and "`configs/toy_induction.yaml`" in line
    )
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
