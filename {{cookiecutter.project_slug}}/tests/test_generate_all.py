"""`python -m src.visualization.generate_all` on real runs of every kind, made here in tmp:
every figure drawn from the logs and the files they name, no model loaded."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sae_lens", reason="needs SAELens (sae-lens pins transformer-lens<4)")

from sae_lens import StandardSAE, StandardSAEConfig  # noqa: E402

from src.analysis.attention import head_effects  # noqa: E402
from src.analysis.features import feature_report  # noqa: E402
from src.analysis.norms import final_norm_linear  # noqa: E402
from src.data.activation_cache import cache_activations, open_cache  # noqa: E402
from src.data.loading import config_dataset, load_dataset  # noqa: E402
from src.experiments.registry import get_kind, load_config  # noqa: E402
from src.utils.config import config_to_dict  # noqa: E402
from src.utils.tracking import log_experiment  # noqa: E402
from src.visualization import generate_all as G  # noqa: E402
from src.visualization.figures import draw_figures  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_pre"
N_PROMPTS = 8


def run_config(model, config_file: str, results_dir: Path, figures_dir: Path) -> Path:
    """Run a project config (on N_PROMPTS prompts) with its runner and draw its figures, as
    scripts/run_experiment.py does; return the log's path."""
    cfg = load_config(PROJECT_ROOT / "configs" / config_file)
    out = cfg.output.model_copy(
        update={"results_dir": str(results_dir), "figures_dir": str(figures_dir), "figures": True}
    )
    data = cfg.data.model_copy(update={"n_samples": N_PROMPTS})
    cfg = cfg.model_copy(update={"output": out, "data": data})
    if cfg.kind == "attribution":  # keep it quick: no comparison with activation patching
        section = cfg.attribution.model_copy(update={"compare": False, "components": ("head_out",)})
        cfg = cfg.model_copy(update={"attribution": section})
    if cfg.kind == "patching":
        section = cfg.patching.model_copy(update={"components": ("head_out",)})
        cfg = cfg.model_copy(update={"patching": section})
    dataset = config_dataset(cfg.data, model)
    kind = get_kind(cfg.kind)
    results = kind.run(model, dataset, cfg)
    name = cfg.experiment.name
    results["figures"] = draw_figures(kind.figures, name, results, figures_dir, label=kind.label)
    return log_experiment(
        cfg.experiment.name, config_to_dict(cfg), results, results_dir=results_dir
    )


def make_sae_run(model, root: Path) -> tuple[Path, StandardSAE, torch.Tensor, torch.Tensor]:
    """An SAE on the toy's layer-0 residual stream (random weights), its activation cache and
    log, per the SAE results contract. Returns (log, sae, tokens, activations)."""
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=16))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=generator))
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=generator))
        sae.b_enc.fill_(-2.0)  # sparse: fires on the tokens that point its way
        sae.b_dec.zero_()
    sae_dir, cache_dir = root / "sae_toy_l0" / "sae", root / "activations" / "toy_l0"
    sae.save_model(sae_dir)
    tokens = load_dataset("induction", N_PROMPTS, 31, 0, model=model).clean_tokens
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    acts = cache[HOOK].cpu()
    cache_activations(model, tokens, [HOOK], cache_dir, shard_tokens=5 * 31)  # two shards
    report = feature_report(sae, model, open_cache(cache_dir), HOOK)  # as run_sae_training
    (sae_dir / "features.json").write_text(json.dumps(report))
    results = {
        "kind": "sae_training", "sae_path": str(sae_dir), "cache_dir": str(cache_dir),
        "features_file": str(sae_dir / "features.json"),
        "hook_name": HOOK, "architecture": "standard", "d_in": 64, "d_sae": 16,
        "n_tokens": tokens.numel(), "l0": 1.0, "explained_variance": 0.5, "dead_fraction": 0.0,
    }  # fmt: skip
    config = {
        "model": {"name": "toy-induction", "device": "cpu", "dtype": "float32"},
        "hook": {"layer": 0, "hook_point": "resid_pre"},
        "sae": {"architecture": "standard", "expansion_factor": 16},
    }
    log = log_experiment("sae_toy_l0", config, results, results_dir=root / "results" / "sae_toy_l0")
    return log, sae, tokens, acts


def generate(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = G.main(list(args))
    return code, out.getvalue()


def section(output: str, title: str) -> list[str]:
    """The lines listed under ``made`` or ``could not make``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        body.append(line.strip())
    return body


def same(one: Path, other: Path) -> bool:
    """Equal files, but for the random element id of circuitsvis's attention pages."""
    ids = re.compile(rb"circuits-vis-[0-9a-f-]+")
    return ids.sub(b"", one.read_bytes()) == ids.sub(b"", other.read_bytes())


def head_names(html_file: Path) -> list[str]:
    """The heads shown in a circuitsvis attention page."""
    text = html_file.read_text(encoding="utf-8")
    return json.loads(re.search(r'"attentionHeadNames": (\[[^\]]*\])', text).group(1))


@pytest.fixture(scope="module")
def run(toy_model, tmp_path_factory):
    """A patching run, an SAE run and a broken log in one results folder, and generate_all
    over them (the other kinds: the slow test)."""
    root = tmp_path_factory.mktemp("project")
    results, runner_figures = root / "results", root / "runner_figures"
    logs = {
        "patching": run_config(toy_model, "toy_induction_patching.yaml", results, runner_figures)
    }
    (results / "broken.json").write_text('{"name": "x", "results": ')
    logs["sae"], sae, tokens, acts = make_sae_run(toy_model, root)
    figures = root / "figures"
    code, output = generate("--results-dir", str(results), "--figures-dir", str(figures))
    return SimpleNamespace(
        root=root, logs=logs, code=code, output=output, figures=figures,
        runner_figures=runner_figures, sae=sae, tokens=tokens, acts=acts,
    )  # fmt: skip


EXPECTED = {
    "toy_induction_patching_head_out.png", "toy_induction_patching_head_out.html",
    "toy_induction_patching_attention.png", "toy_induction_patching_attention.html",
    "sae_toy_l0_feature_density.png", "sae_toy_l0_top_contexts.md", "sae_toy_l0_decoder_logits.md",
    "sae_toy_l0_dashboard.html",
}  # fmt: skip


def test_lists_every_figure_it_made(run):
    made = section(run.output, "made (")
    assert {Path(line).name for line in made} == EXPECTED and len(made) == len(EXPECTED)
    assert {p.name for p in run.figures.iterdir()} == EXPECTED  # and nothing else (no temp files)


def test_reports_the_broken_log_and_draws_the_rest(run):
    (error,) = section(run.output, "could not make (")
    assert re.match(r"ERROR \S*broken\.json: unreadable \(", error)
    assert run.code == 1  # a broken log is a real error, reported after the rest was drawn


def test_redrawn_figures_equal_the_runners(run):
    """From the JSON log alone, the same heatmaps and attention patterns as the run drew."""
    redrawn = list(run.runner_figures.iterdir())
    assert len(redrawn) == 4  # PNG and HTML of each
    for runner_file in redrawn:
        assert same(run.figures / runner_file.name, runner_file)


def test_attention_shows_the_strongest_heads(run):
    log = json.loads(run.logs["patching"].read_text())
    effects = head_effects(log["results"]["components"]["head_out"])
    strongest = sorted(effects, key=lambda h: -effects[h])[:4]
    assert head_names(run.figures / "toy_induction_patching_attention.html") == [
        f"a{layer}.h{head}" for layer, head in strongest
    ]
    assert strongest[0][0] == 1  # an induction head carries the answer


def test_max_heads_keeps_the_strongest_stored_heads(run, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "log.json").write_text(run.logs["patching"].read_text())
    figures = tmp_path / "f"
    assert generate("--results-dir", str(results), "--figures-dir", str(figures),
                    "--max-heads", "1")[0] == 0  # fmt: skip
    stored = json.loads(run.logs["patching"].read_text())["results"]["attention"]["heads"]
    assert head_names(figures / "toy_induction_patching_attention.html") == stored[:1]


def test_draws_every_figure_without_a_model(run, tmp_path, monkeypatch):
    """No model, no SAE weights, no activation cache: the same files, byte for byte."""
    import sae_lens

    import src.models.load

    def unavailable(*args, **kwargs):
        raise AssertionError("generate_all must not load a model or an SAE")

    monkeypatch.setattr(src.models.load, "load_model", unavailable)
    monkeypatch.setattr(sae_lens.SAE, "load_from_disk", unavailable)
    for weights in (run.root / "sae_toy_l0").rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".moved"))
    for shard in (run.root / "activations").rglob("*.safetensors"):
        shard.rename(shard.with_suffix(".moved"))
    try:
        code, output = generate(
            "--results-dir", str(run.root / "results"), "--figures-dir", str(tmp_path / "f")
        )
    finally:
        for moved in run.root.rglob("*.moved"):
            moved.rename(moved.with_suffix(".safetensors"))
    assert {Path(line).name for line in section(output, "made (")} == EXPECTED
    for path in run.figures.iterdir():
        assert same(tmp_path / "f" / path.name, path)


@pytest.mark.slow
def test_attribution_circuit_baseline_and_superseded_logs(toy_model, tmp_path):
    results, runner_figures, figures = tmp_path / "results", tmp_path / "rf", tmp_path / "f"
    configs = ["attribution", "circuit"]
    logs = {
        c: run_config(toy_model, f"toy_induction_{c}.yaml", results, runner_figures)
        for c in configs
    }
    run_config(toy_model, "toy_induction.yaml", results, runner_figures)
    older = run_config(toy_model, "toy_induction.yaml", results, runner_figures)
    newer = older.with_name(older.stem + "-later.json")  # same name, later timestamp
    log = json.loads(older.read_text())
    newer.write_text(json.dumps(log | {"timestamp": log["timestamp"] + "Z"}))
    code, output = generate("--results-dir", str(results), "--figures-dir", str(figures))
    assert code == 0
    made = {Path(line).name for line in section(output, "made (")}
    assert made == {
        "toy_induction_attribution_head_out.png", "toy_induction_attribution_head_out.html",
        "toy_induction_attribution_dla_heads.png",
        "toy_induction_attribution_attention.png", "toy_induction_attribution_attention.html",
        "toy_induction_circuit_circuit.png", "toy_induction_circuit_circuit.html",
        "toy_induction_circuit_attention.png", "toy_induction_circuit_attention.html",
    }  # fmt: skip
    for runner_file in runner_figures.iterdir():  # heatmaps, DLA, circuit, attention
        assert same(figures / runner_file.name, runner_file)
    not_made = section(output, "could not make (")
    assert len(not_made) == 2
    assert any("toy_induction_baseline: older logs superseded by" in line for line in not_made)
    assert any(line.endswith("baseline results are numbers only, no figure") for line in not_made)
    summary = json.loads(logs["circuit"].read_text())["results"]
    circuit = json.loads(Path(summary["circuit_file"]).read_text())
    scores = {
        n["name"]: abs(n["score"]) for n in circuit["nodes"] if "head" in n and n["in_circuit"]
    }
    shown = head_names(figures / "toy_induction_circuit_attention.html")
    assert shown == sorted(scores, key=lambda name: -scores[name])[:4]  # in-circuit heads only


def test_sae_figures_by_hand(run, toy_model):
    with torch.no_grad():
        latents = run.sae.encode(run.acts.reshape(-1, 64))
    density = (latents > 0).float().mean(0)
    top = latents.max(0).values
    contexts = (run.figures / "sae_toy_l0_top_contexts.md").read_text()
    features = [int(f) for f in re.findall(r"^## Feature (\d+)$", contexts, re.M)]
    assert features == torch.nonzero(density > 0).flatten().tolist()  # every live latent
    for f in features:
        block = contexts.split(f"## Feature {f}\n")[1].split("## Feature")[0]
        assert f"Density: {density[f].item():.3g} of tokens." in block
        first = re.search(r"^\s*([\d.]+)\s+(\d+):(\d+)\s+(.*\[\[(\d+)\]\].*)$", block, re.M)
        assert float(first.group(1)) == pytest.approx(top[f].item(), abs=1e-3)
        seq, pos = int(first.group(2)), int(first.group(3))
        assert latents[seq * 31 + pos, f] == top[f] and int(first.group(5)) == run.tokens[seq, pos]
    decoder = (run.figures / "sae_toy_l0_decoder_logits.md").read_text()
    logits = final_norm_linear(toy_model)(run.sae.W_dec.detach()) @ toy_model.W_U.detach()
    for f in features:
        row = decoder.split(f"## Feature {f}\n")[1].split("## Feature")[0]
        best = re.search(r"\|---\|---:\|---\|---:\|\n\| `(\d+)` \| ([-+\d.]+) \|", row)
        assert int(best.group(1)) == logits[f].argmax().item()
        assert float(best.group(2)) == pytest.approx(logits[f].max().item(), abs=1e-3)


def test_sae_log_without_a_feature_report_asks_for_a_rerun(run, tmp_path):
    results = tmp_path / "results"
    log = json.loads(run.logs["sae"].read_text())
    del log["results"]["features_file"]  # a log from before the report was saved
    (results / "sae").mkdir(parents=True)
    (results / "sae" / "sae_toy_l0.json").write_text(json.dumps(log))
    code, output = generate("--results-dir", str(results), "--figures-dir", str(tmp_path / "f"))
    assert code == 0 and section(output, "made (") == []
    line, dashboard = section(output, "could not make (")
    assert "SAE figures: rerun the SAE training to store its feature report" in line
    assert "SAE dashboard: rerun the SAE run to store its feature report" in dashboard


def test_missing_inputs_are_listed_not_errors(tmp_path):
    results = tmp_path / "results"
    config = {"model": {"name": "toy-induction"}, "data": {}, "circuit_discovery": {"top_n": 3}}
    circuit_log = log_experiment(
        "gone", config, {"circuit_file": str(tmp_path / "nowhere.json")}, results_dir=results
    )
    sae_results = {"kind": "sae_training", "sae_path": str(tmp_path / "no_sae"),
                   "features_file": str(tmp_path / "no_sae" / "features.json"),
                   "cache_dir": str(tmp_path / "no_cache"), "hook_name": HOOK}  # fmt: skip
    log_experiment(
        "sae_gone", {"model": {"name": "toy-induction"}}, sae_results, results_dir=results
    )
    (results / "notes.json").write_text("[1, 2]")
    code, output = generate("--results-dir", str(results), "--figures-dir", str(tmp_path / "f"))
    assert code == 0 and section(output, "made (") == []
    not_made = "\n".join(section(output, "could not make ("))
    assert (
        f"{circuit_log.name}: circuit figure: " in not_made and "nowhere.json not found" in not_made
    )
    assert "attention figure: rerun the experiment to store the attention patterns" in not_made
    assert "SAE figures: feature report" in not_made
    assert "no_sae/features.json not found" in not_made
    assert "notes.json: not an experiment log or circuit file" in not_made
    assert generate("--results-dir", str(tmp_path / "missing"))[0] == 2
