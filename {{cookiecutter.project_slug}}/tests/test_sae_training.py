"""SAE training: each architecture trains from its config, the evaluation metrics on known
answers, the saved SAE loads in SAELens unchanged, held-out prompts, cache checks, and the
train_sae.py CLI on the toy config (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_lens", reason="needs SAELens (sae-lens pins transformer-lens<4)")

from sae_lens import SAE, JumpReLUSAE, StandardSAE, StandardSAEConfig  # noqa: E402

from src.analysis.sae import ARCHITECTURES, build_sae, evaluate_sae, save_sae, train_sae  # noqa: E402
from src.data.activation_cache import CacheError, cache_activations, open_cache  # noqa: E402
from src.data.cached import ensure_cache  # noqa: E402
from src.data.loading import dataset_tokens, heldout_tokens  # noqa: E402
from src.experiments.registry import load_config  # noqa: E402
from src.experiments.sae_training import run_sae_training  # noqa: E402
from src.utils.config import (  # noqa: E402
    ConfigError,
    HookConfig,
    ModelConfig,
    SAEConfig,
    SAEDataConfig,
    SAEOutputConfig,
    SAETrainingConfig,
    TrainingConfig,
)
from src.visualization.figures import draw_figures  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import train_sae as cli  # noqa: E402

D_IN, N_FEATURES = 16, 32
RESULTS_KEYS = {
    "kind",
    "sae_path",
    "cache_dir",
    "features_file",
    "hook_name",
    "architecture",
    "d_in",
    "d_sae",
    "n_tokens",
    "l0",
    "explained_variance",
    "dead_fraction",
    "tokens_per_s",
}


def sparse_data(n: int, seed: int = 0) -> torch.Tensor:
    """[n, D_IN] tokens, each the sum of 2 of N_FEATURES fixed unit directions (a known
    sparse code) with magnitudes in [1, 2)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(N_FEATURES, D_IN, generator=g), dim=1)
    codes = torch.zeros(n, N_FEATURES)
    picks = torch.rand(n, N_FEATURES, generator=g).topk(2, dim=1).indices
    codes.scatter_(1, picks, 1 + torch.rand(n, 2, generator=g))
    return codes @ directions


def looping(data: torch.Tensor, batch_size: int):
    while True:
        for start in range(0, len(data) - batch_size + 1, batch_size):
            yield data[start : start + batch_size]


def sae_config(architecture: str) -> SAEConfig:
    sparse = architecture in ("standard", "jumprelu")
    return SAEConfig(
        architecture=architecture,
        expansion_factor=4,
        k=None if sparse else 4,
        l1_coefficient={"standard": 0.3, "jumprelu": 0.05}.get(architecture, 0.0),
    )


@pytest.fixture(scope="module")
def trained():
    """architecture -> (SAE before training's EV, trained SAE); held-out data beside."""
    train, held_out = sparse_data(8192), sparse_data(2048, seed=1)
    saes = {}
    for architecture in ARCHITECTURES:
        torch.manual_seed(0)
        sae = build_sae(
            D_IN, **sae_config(architecture).model_dump(), metadata={"hook_name": "test.hook"}
        )
        before = evaluate_sae(sae, [held_out])["explained_variance"]
        training = TrainingConfig(n_tokens=40 * 256, batch_size=256, lr=1e-2)
        stats = train_sae(sae, looping(train, 256), **training.model_dump())
        saes[architecture] = (before, sae, stats)
    return saes, held_out


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_each_architecture_trains(trained, architecture: str) -> None:
    saes, held_out = trained
    before, sae, stats = saes[architecture]
    assert type(sae) is ARCHITECTURES[architecture][1]
    assert sae.cfg.d_sae == 4 * D_IN
    assert stats["n_steps"] == 40 and stats["n_tokens"] == 40 * 256
    assert stats["tokens_per_s"] > 0
    metrics = evaluate_sae(sae, [held_out])
    assert metrics["explained_variance"] > before + 0.3, (before, metrics)
    assert metrics["explained_variance"] > 0.35
    if architecture == "topk":
        assert metrics["l0"] == 4  # exactly k per token
    assert 0 < metrics["l0"] < sae.cfg.d_sae


def identity_sae(d_in: int, n_dead: int = 0, scale: float = 1.0) -> StandardSAE:
    """ReLU(x) - ReLU(-x) = x: latents [x+, x-] (2 d_in), then ``n_dead`` that never fire;
    the decoder multiplies by ``scale``."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in + n_dead))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye, torch.zeros(d_in, n_dead)], dim=1))
        sae.b_enc.copy_(torch.cat([torch.zeros(2 * d_in), -torch.ones(n_dead)]))
        sae.W_dec.copy_(scale * torch.cat([eye, -eye, torch.zeros(n_dead, d_in)]))
        sae.b_dec.zero_()
    return sae


def test_evaluate_identity_sae_is_exact() -> None:
    x = torch.randn(500, 8)
    metrics = evaluate_sae(identity_sae(8, n_dead=8), [x[:200], x[200:]])
    assert metrics["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["mse"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["l0"] == 8  # one of x+, x- per (nonzero) coordinate
    assert metrics["dead_fraction"] == pytest.approx(8 / 24)  # the 8 that never fire
    assert metrics["n_eval_tokens"] == 500


def test_evaluate_counts_l0_and_scaled_reconstruction() -> None:
    x = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 2.0, 0.0], [1.0, 1.0, -3.0], [0.0, 0.0, 0.0]])
    metrics = evaluate_sae(identity_sae(3, scale=0.5), [x])
    assert metrics["l0"] == pytest.approx((1 + 2 + 3 + 0) / 4)
    assert metrics["dead_fraction"] == pytest.approx(2 / 6)  # x[2] > 0 and x[1] < 0: never
    # recon = x / 2: SSE = sum(x^2) / 4, SST around the column means
    sse = (x / 2 - x).pow(2).sum()
    sst = (x - x.mean(0)).pow(2).sum()
    assert metrics["explained_variance"] == pytest.approx(float(1 - sse / sst))
    assert metrics["mse"] == pytest.approx(float(sse / x.numel()))


def test_evaluate_mean_predictor_explains_nothing() -> None:
    x = torch.randn(300, 6) * 3 + 5
    sae = StandardSAE(StandardSAEConfig(d_in=6, d_sae=12, apply_b_dec_to_input=False))
    with torch.no_grad():
        for param in (sae.W_enc, sae.b_enc, sae.W_dec):
            param.zero_()
        sae.b_dec.copy_(x.mean(0))  # predicts the mean for every token
    metrics = evaluate_sae(sae, [x])
    assert metrics["explained_variance"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["l0"] == 0 and metrics["dead_fraction"] == 1.0


def test_evaluate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no activations"):
        evaluate_sae(identity_sae(4), [])
    with pytest.raises(ValueError, match=r"d_in=4"):
        evaluate_sae(identity_sae(4), [torch.randn(3, 5)])


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_saved_sae_loads_unchanged(trained, architecture: str, tmp_path: Path) -> None:
    saes, held_out = trained
    sae = saes[architecture][1]
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "stale.txt").write_text("replaced")
    path = save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temp folders left
    assert not (path / "stale.txt").exists()
    loaded = SAE.load_from_disk(path)
    assert loaded.cfg.metadata.hook_name == "test.hook"
    x = held_out[:256]
    with torch.no_grad():
        if architecture == "batchtopk":  # saved as JumpReLU with the learned threshold
            assert isinstance(loaded, JumpReLUSAE)
            assert torch.allclose(loaded.threshold, sae.topk_threshold.float().expand(64))
            again = SAE.load_from_disk(path)
            assert torch.equal(loaded.decode(loaded.encode(x)), again.decode(again.encode(x)))
        else:
            expected = sae.decode(sae.encode(x))
            assert torch.allclose(loaded.decode(loaded.encode(x)), expected, atol=1e-5)
            if architecture != "topk":  # topk folds decoder norms into the latents
                assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-5)


def test_unknown_architecture_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: standard, topk, batchtopk, jumprelu"):
        build_sae(D_IN, **(sae_config("standard").model_dump() | {"architecture": "gated"}))
    config = PROJECT_ROOT / "configs" / "toy_sae_training.yaml"
    path = tmp_path / "bad.yaml"
    path.write_text(config.read_text().replace('architecture: "topk"', 'architecture: "gated"'))
    with pytest.raises(ConfigError, match="sae.architecture: expected one of 'standard', 'topk'"):
        load_config(path)


def tiny_config(tmp_path: Path, hook_point: str = "resid_pre") -> SAETrainingConfig:
    return SAETrainingConfig(
        model=ModelConfig(name="toy-induction", device="cpu"),
        hook=HookConfig(layer=0, hook_point=hook_point),
        data=SAEDataConfig(dataset="induction", context_size=32, n_tokens=2048, n_eval_tokens=512),
        sae=SAEConfig(architecture="topk", expansion_factor=2, k=4),
        training=TrainingConfig(n_tokens=8192, batch_size=512, lr=2e-3),
        output=SAEOutputConfig(results_dir=str(tmp_path / "results")),
    )


def test_run_caches_trains_saves_and_reuses(toy_model, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    acts = tmp_path / "activations"
    results = run_sae_training(toy_model, cfg, activations_dir=acts)
    assert results.keys() >= RESULTS_KEYS
    assert results["kind"] == "sae_training" and results["hook_name"] == "blocks.0.hook_resid_pre"
    assert (results["d_in"], results["d_sae"], results["n_tokens"]) == (64, 128, 8192)
    assert results["l0"] == 4 and results["n_eval_tokens"] == 512
    assert Path(results["cache_dir"]) == acts / "toy-induction_0_induction_2048"
    assert Path(results["eval_cache_dir"]) == Path(results["cache_dir"]) / "heldout_512"
    train, held_out = open_cache(results["cache_dir"]), open_cache(results["eval_cache_dir"])
    train_rows = {tuple(row.tolist()) for row in train.tokens()}
    assert not train_rows & {tuple(row.tolist()) for row in held_out.tokens()}
    assert SAE.load_from_disk(results["sae_path"]).cfg.d_sae == 128
    check_feature_report(results, tmp_path / "figures")

    mtimes = {p: p.stat().st_mtime_ns for p in acts.rglob("*")}
    again = run_sae_training(toy_model, cfg, activations_dir=acts)  # reuses both caches
    assert {p: p.stat().st_mtime_ns for p in acts.rglob("*")} == mtimes
    assert again["explained_variance"] == pytest.approx(results["explained_variance"], abs=1e-4)

    other_hook = tiny_config(tmp_path, hook_point="resid_post")
    with pytest.raises(CacheError, match="hook_names differ"):
        run_sae_training(toy_model, other_hook, activations_dir=acts)


def check_feature_report(results: dict, figures_dir: Path) -> None:
    """The feature report saved beside the SAE: density of every latent over the training
    cache, the chosen live latents with their contexts and decoder tokens; its figures."""
    path = Path(results["features_file"])
    assert path == Path(results["sae_path"]) / "features.json"
    report = json.loads(path.read_text())
    assert report["n_tokens"] == 2048 and len(report["density"]) == 128
    assert report["hook_name"] == results["hook_name"]
    features = report["features"]
    assert 0 < len(features) <= 20 and all(report["density"][f] > 0 for f in features)
    assert [entry["feature"] for entry in report["contexts"]] == features
    assert all(0 < len(entry["examples"]) <= 10 for entry in report["contexts"])
    assert [int(f) for f in report["decoder"]] == features
    drawn = draw_figures(("sae_features",), "toy_sae", results, figures_dir)
    assert [Path(p).name for p in drawn] == [
        "toy_sae_feature_density.png", "toy_sae_decoder_logits.md", "toy_sae_top_contexts.md"
    ]  # fmt: skip


def test_mismatched_cache_names_the_field(toy_model, tmp_path: Path) -> None:
    tokens = dataset_tokens(toy_model, tiny_config(tmp_path).data, 128, seed=0)
    hook, out = "blocks.0.hook_resid_pre", tmp_path / "cache"
    meta = {"model": "toy-induction", "dataset": "induction", "seed": 0}
    cache_activations(toy_model, tokens, [hook], out, metadata=meta)

    def reuse(hook_name: str = hook, **changes):
        return ensure_cache(toy_model, out, hook_name, lambda: tokens, meta | changes)

    assert reuse().n_tokens == 128
    with pytest.raises(CacheError, match="model differs: the cache has 'toy-induction'"):
        reuse(model="gpt2-small")
    with pytest.raises(CacheError, match="seed differs"):
        reuse(seed=1)
    with pytest.raises(CacheError, match="hook_names differ"):
        reuse("blocks.1.hook_resid_pre")


def test_heldout_tokens_skip_training_prompts(toy_model, tmp_path: Path) -> None:
    data = tiny_config(tmp_path).data.model_copy(update={"n_eval_tokens": 10 * 32})
    first = heldout_tokens(toy_model, data, torch.zeros(0, 32, dtype=torch.long))
    assert first.shape == (10, 32)
    # Pretend the first 4 held-out prompts were trained on: the next ones take their place.
    second = heldout_tokens(toy_model, data, first[:4])
    assert second.shape == (10, 32)
    assert torch.equal(second[:6], first[4:])
    assert not {tuple(r.tolist()) for r in second} & {tuple(r.tolist()) for r in first[:4]}


def test_cli_errors_are_one_line(capsys, tmp_path: Path) -> None:
    args = ["--model", "toy-induction", "--layer", "0", "--results-dir", str(tmp_path)]
    assert cli.main([*args, "--n-tokens", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: training.n_tokens: must be >= batch_size (from the command line)"
    assert cli.main([*args, "--architecture", "batchtopk", "--config", "nope.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: nope.yaml: config file not found"
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--architecture", "gated"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gated' (choose from 'standard', 'topk'" in capsys.readouterr().err


def test_cli_config_defaults_and_overrides() -> None:
    toy = cli.parse_args(["--model", "toy-induction", "--layer", "0"])
    assert cli.config_path(toy).name == "toy_sae_training.yaml"
    gpt2 = cli.parse_args(["--model", "gpt2-small", "--layer", "8"])
    assert cli.config_path(gpt2).name == "sae_training.yaml"
    cfg = load_config(PROJECT_ROOT / cli.config_path(gpt2))
    args = cli.parse_args(["--layer", "3", "--architecture", "topk", "--k", "16"])
    changed = cli.apply_overrides(cfg, args)
    assert (changed.hook.layer, changed.sae.architecture, changed.sae.k) == (3, "topk", 16)
    back = cli.apply_overrides(changed, cli.parse_args(["--architecture", "jumprelu"]))
    assert back.sae.k is None  # k belongs to topk and batchtopk only


@pytest.mark.slow
def test_cli_trains_the_toy_sae(capsys, monkeypatch, tmp_path: Path) -> None:
    """The offline command of CLAUDE.md: a small SAE on the toy model that explains >= 70%
    of the held-out variance."""
    monkeypatch.chdir(tmp_path)  # data/activations/ and the log go here
    results_dir = tmp_path / "results"
    argv = ["--model", "toy-induction", "--layer", "0", "--results-dir", str(results_dir)]
{%- if cookiecutter.experiment_tracking == "wandb" %}
    argv.append("--no-wandb")
{%- endif %}
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    (log_path,) = results_dir.glob("sae_*.json")
    assert f"log: {log_path}" in out
    log = json.loads(log_path.read_text())
    results = log["results"]
    assert results.keys() >= RESULTS_KEYS
    assert log["config"]["model"]["name"] == "toy-induction"
    assert results["hook_name"] == "blocks.0.hook_resid_pre"
    assert results["explained_variance"] >= 0.7
    assert 0 < results["l0"] <= log["config"]["sae"]["k"]
    assert 0 <= results["dead_fraction"] < 0.5
    assert results["tokens_per_s"] > 0
    assert f"sae: {results['sae_path']}" in out
    sae = SAE.load_from_disk(results["sae_path"])
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_pre"
    assert (tmp_path / results["cache_dir"] / "metadata.json").is_file()
