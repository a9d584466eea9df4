"""Pretrained and saved SAEs (src/models/saes.py) and their feature analysis
(src/experiments/sae_analysis.py, scripts/analyze_sae.py), offline.

SAELens's registry is read from the installed package (no network). The SAEs analysed are
random-init SAELens SAEs saved to a folder and read back through ``SAE.load_from_disk``, as a
downloaded one is, on the tiny GPT-2 checkpoint (text of ``tiny_corpus``) and on the toy model;
every number is checked against the SAE's own encode / decode on the model's activations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

pytest.importorskip("sae_lens", reason="needs SAELens (sae-lens pins transformer-lens<4)")

from sae_lens import SAE, StandardSAE, StandardSAEConfig  # noqa: E402

from src.analysis.features import model_chunks  # noqa: E402
from src.data.loading import token_chunks  # noqa: E402
from src.experiments.sae_analysis import run_sae_analysis  # noqa: E402
from src.models.families import load_families  # noqa: E402
from src.models.load import bos_token_id  # noqa: E402
from src.models.saes import (  # noqa: E402
    SAENotAvailableError,
    SAESource,
    default_sae,
    load_sae,
    neuronpedia_id,
    neuronpedia_url,
    registry,
    resolve_sae,
    sae_neuronpedia_id,
)
from src.visualization.figures import draw_figures  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import analyze_sae as cli  # noqa: E402

GPT2_RES_JB = ("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
GEMMA_SCOPE = ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
FAKE_NEURONPEDIA = "gpt2-small/8-res-jb"  # given to a local SAE, as a downloaded one has


def save_random_sae(
    path: Path, d_in: int, hook_name: str, model_name: str, neuronpedia: str | None = None
) -> StandardSAE:
    """A random-init SAELens SAE (d_sae = 2 d_in, sparse: negative encoder bias) with the
    metadata SAE.from_pretrained gives, saved to ``path`` with ``save_model``."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=generator) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=generator) / d_in**0.5)
        sae.b_enc.copy_(-0.3 + 0.1 * torch.randn(sae.b_enc.shape, generator=generator))
        sae.b_dec.copy_(0.1 * torch.randn(sae.b_dec.shape, generator=generator))
    metadata = {"hook_name": hook_name, "model_name": model_name, "context_size": 32}
    for key, value in (metadata | {"neuronpedia_id": neuronpedia}).items():
        setattr(sae.cfg.metadata, key, value)
    sae.save_model(path)
    return sae


# --- the registry, offline --------------------------------------------------------------


def test_neuronpedia_urls_are_the_registrys():
    lookup = registry()[GPT2_RES_JB[0]]
    assert lookup.neuronpedia_id[GPT2_RES_JB[1]] == "gpt2-small/8-res-jb"
    assert neuronpedia_id(*GPT2_RES_JB) == "gpt2-small/8-res-jb"
    url = neuronpedia_url(neuronpedia_id(*GPT2_RES_JB), 5)
    assert url == "https://www.neuronpedia.org/gpt2-small/8-res-jb/5"
    gemma = neuronpedia_id(*GEMMA_SCOPE)
    assert gemma == registry()[GEMMA_SCOPE[0]].neuronpedia_id[GEMMA_SCOPE[1]]
    assert gemma == "gemma-2-2b/12-gemmascope-res-16k"
    assert (
        neuronpedia_url(gemma, 0)
        == "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/0"
    )


def test_sources_resolve_to_release_and_id(tmp_path):
    assert resolve_sae("gpt2-small-res-jb", layer=8) == SAESource(*GPT2_RES_JB)
    assert resolve_sae("/".join(GEMMA_SCOPE)) == SAESource(*GEMMA_SCOPE)
    assert resolve_sae(None, model_name="gemma-2-2b", layer=12) == SAESource(*GEMMA_SCOPE)
    assert resolve_sae(None, model_name="gpt2", layer=8) == SAESource(*GPT2_RES_JB)  # HF id
    pythia = resolve_sae(None, model_name="pythia-70m-deduped", layer=3)
    assert pythia == SAESource("pythia-70m-deduped-res-sm", "blocks.3.hook_resid_post")
    assert SAESource(*GEMMA_SCOPE).name == "/".join(GEMMA_SCOPE)
    save_random_sae(tmp_path / "my_sae", 8, "blocks.0.hook_resid_pre", "toy-induction")
    local = resolve_sae(str(tmp_path / "my_sae"), layer=3)  # a folder: the layer is unused
    assert local == SAESource(path=(tmp_path / "my_sae").resolve()) and local.name == "my_sae"


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        ("no-such-release", {"layer": 1}, "unknown SAE release 'no-such-release'"),
        ("gpt2-small-res-jb/blocks.99.hook_resid_pre", {}, "has no id 'blocks.99.hook_resid_pre'"),
        ("gpt2-small-res-jb", {}, "needs a layer for its id 'blocks.{layer}.hook_resid_pre'"),
        ("gpt2-small-res-jb", {"layer": 12}, r"layer 12 is out of range for gpt2-small \(0..11\)"),
        (None, {"model_name": "qwen2.5-0.5b", "layer": 0}, "has no default SAE release"),
        ("gpt2-small-resid-post-v5-32k", {"layer": 8}, "has no id pattern"),
    ],
)
def test_bad_sources_are_one_line_errors(source, options, message):
    with pytest.raises(ValueError, match=message) as caught:
        resolve_sae(source, **options)
    assert "\n" not in str(caught.value)


def test_a_folder_without_an_sae_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a directory but not a saved SAE"):
        load_sae(str(tmp_path))


def test_every_familys_default_sae_is_in_the_registry():
    """The table's release and id pattern name a real SAE at every layer, of that model."""
    with_saes = {name: row for name, row in load_families().items() if row.sae_release}
    assert {"gpt2-small", "pythia-70m-deduped", "gemma-2-2b"} <= set(with_saes)
    for name, row in with_saes.items():
        lookup = registry()[row.sae_release]
        assert lookup.model == name
        for layer in range(row.n_layers):
            release, sae_id = default_sae(name, layer)
            assert release == row.sae_release and sae_id in lookup.saes_map, (name, layer)
            assert lookup.neuronpedia_id[sae_id], (name, layer)  # Neuronpedia hosts each


def test_offline_pretrained_sae_is_a_clear_error(monkeypatch, tmp_path):
    # as tests/test_load.py: the Hub offline and an empty cache, whatever this machine holds
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SAENotAvailableError) as caught:
        load_sae("gpt2-small-res-jb", layer=8)
    message = str(caught.value)
    assert "the SAE gpt2-small-res-jb/blocks.8.hook_resid_pre" in message
    assert "'jbloom/GPT2-Small-SAEs-Reformatted'" in message
    assert (
        "hf download jbloom/GPT2-Small-SAEs-Reformatted --include 'blocks.8.hook_resid_pre/*'"
        in message
    )
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message
    assert isinstance(caught.value.__cause__, OSError)  # SAELens's loader ran and failed
    with pytest.raises(SAENotAvailableError, match="'google/gemma-scope-2b-pt-res'"):
        load_sae(None, model_name="gemma-2-2b", layer=12)


# --- feature analysis on a model --------------------------------------------------------


def by_hand(sae, acts: torch.Tensor, keep: torch.Tensor) -> dict:
    """What the analysis must find, from the SAE's own encode and forward on the ``keep``
    rows of ``acts``; the latents of the others set to 0."""
    flat = acts.reshape(-1, acts.shape[-1])
    x = flat[keep].double()
    with torch.no_grad():
        latents = sae.encode(flat).double() * keep[:, None]
        recon = sae(flat[keep]).double()
    sst = (x - x.mean(0)).pow(2).sum()
    return {
        "latents": latents,
        "density": (latents > 0).double().sum(0) / keep.sum(),
        "l0": (latents[keep] != 0).sum(1).double().mean().item(),
        "explained_variance": 1 - ((recon - x).pow(2).sum() / sst).item(),
    }


def check_report(
    report: dict, results: dict, sae, model, acts: torch.Tensor, tokens, bos: int
) -> None:
    """The report and results agree with `by_hand` (BOS positions left out) and with
    W_dec @ W_U."""
    keep = tokens.reshape(-1) != bos
    assert 0 < keep.sum() < len(keep)  # BOS is there to leave out
    expected = by_hand(sae, acts, keep)
    assert report["n_tokens"] == tokens.numel() == results["n_tokens"]
    assert report["n_ignored"] == results["n_ignored"] == (~keep).sum()
    np.testing.assert_allclose(report["density"], expected["density"].numpy(), atol=1e-12)
    assert results["l0"] == pytest.approx(expected["l0"], rel=1e-6)
    assert results["explained_variance"] == pytest.approx(expected["explained_variance"], abs=1e-4)
    assert 0 < results["l0"] < sae.cfg.d_sae  # sparse but alive: a real test
    ctx = tokens.shape[1]
    for entry in report["contexts"]:
        f = entry["feature"]
        column = expected["latents"][:, f]
        top = column.topk(len(entry["examples"]))
        assert [e["activation"] for e in entry["examples"]] == pytest.approx(
            top.values.tolist(), rel=1e-5
        )
        first = entry["examples"][0]
        assert first["seq"] * ctx + first["pos"] == top.indices[0]
        assert first["token_ids"][first["target"]] == tokens[first["seq"], first["pos"]] != bos
    # decoder directions through the unembedding: by hand, the final LayerNorm's centring
    # and weight (folded into W_U on a pretrained model)
    W_dec, W_U = sae.W_dec.detach().double(), model.W_U.detach().double()
    weight = getattr(model.ln_final, "w", None)
    weight = 1.0 if weight is None else weight.detach().double()
    for f in report["features"]:
        row = ((W_dec[f] - W_dec[f].mean()) * weight) @ W_U
        order = torch.argsort(row, descending=True)
        promoted = report["decoder"][str(f)]["promoted"]
        assert [v for _, v in promoted] == pytest.approx(
            row[order[: len(promoted)]].tolist(), abs=1e-4
        )


@pytest.fixture(scope="module")
def gpt2_analysis(pretrained_model, tiny_corpus, tmp_path_factory):
    """A random SAE on the tiny GPT-2's blocks.1.hook_resid_pre, saved and loaded back with
    load_sae, analysed on 16 sequences of 32 tokens of the corpus."""
    model = pretrained_model("gpt2")
    root = tmp_path_factory.mktemp("gpt2_sae")
    hook = "blocks.1.hook_resid_pre"
    saved = save_random_sae(root / "sae", model.cfg.d_model, hook, "gpt2", FAKE_NEURONPEDIA)
    sae = load_sae(str(root / "sae"))
    tokens = token_chunks("text", 16, 32, 0, model=model, path=tiny_corpus)
    results = run_sae_analysis(
        model, sae, tokens, hook_name=hook, out_dir=root / "out", n_features=6, k=4,
        batch_size=5, ignore_tokens=[bos_token_id(model)],
    )  # fmt: skip
    report = json.loads((root / "out" / "features.json").read_text())
    return model, saved, sae, tokens, results, report, root


def test_local_sae_loads_as_saved(gpt2_analysis):
    _, saved, sae, *_ = gpt2_analysis
    assert isinstance(sae, SAE) and not sae.training
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(sae, name), getattr(saved, name)), name
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert sae_neuronpedia_id(sae) == FAKE_NEURONPEDIA  # saving keeps the registry's id


def test_model_chunks_are_the_hooks_activations(gpt2_analysis):
    model, _, _, tokens, *_ = gpt2_analysis
    hook = "blocks.1.hook_resid_pre"
    chunks = list(model_chunks(model, tokens, hook, batch_size=5))
    assert [len(t) for t, _ in chunks] == [5, 5, 5, 1]
    assert torch.equal(torch.cat([t for t, _ in chunks]), tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
    torch.testing.assert_close(torch.cat([a for _, a in chunks]), cache[hook], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no hook point 'blocks.9.hook_resid_pre'"):
        next(model_chunks(model, tokens, "blocks.9.hook_resid_pre"))


def test_feature_analysis_of_a_saved_sae_on_a_pretrained_model(gpt2_analysis):
    model, _, sae, tokens, results, report, _ = gpt2_analysis
    hook = "blocks.1.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
    check_report(report, results, sae, model, cache[hook], tokens, bos_token_id(model))
    assert results["kind"] == "sae_analysis" and results["d_sae"] == 128
    assert results["neuronpedia_id"] == report["neuronpedia_id"] == FAKE_NEURONPEDIA
    assert report["links"] == {
        str(f): f"https://www.neuronpedia.org/gpt2-small/8-res-jb/{f}" for f in report["features"]
    }
    assert len(report["features"]) == 6 and report["joiner"] == ""


def test_feature_figures_link_each_feature_to_neuronpedia(gpt2_analysis, tmp_path):
    *_, results, report, _ = gpt2_analysis
    made = draw_figures(("sae_features",), "np", results, tmp_path, label="SAE feature analysis")
    assert sorted(Path(p).name for p in made) == [
        "np_decoder_logits.md", "np_feature_density.png", "np_top_contexts.md",
    ]  # fmt: skip
    for page in ("np_decoder_logits.md", "np_top_contexts.md"):
        text = (tmp_path / page).read_text()
        for f in report["features"]:
            link = f"## Feature {f} ([Neuronpedia](https://www.neuronpedia.org/gpt2-small/8-res-jb/{f}))"
            assert link in text, (page, f)


def test_an_sae_of_another_width_is_a_clear_error(gpt2_analysis, tmp_path):
    model, *_, tokens, _, _, _ = gpt2_analysis
    save_random_sae(tmp_path / "wide", 48, "blocks.1.hook_resid_pre", "gpt2")
    with pytest.raises(ValueError, match="has d=64 but the SAE's d_in is 48"):
        run_sae_analysis(
            model, load_sae(tmp_path / "wide"), tokens, hook_name="blocks.1.hook_resid_pre",
            out_dir=tmp_path / "out",
        )  # fmt: skip


def test_cli_analyses_a_saved_sae_on_the_toy(toy_model, tmp_path, monkeypatch, capsys):
    """scripts/analyze_sae.py end to end on the toy: the model and hook from the SAE's
    metadata, induction prompts of its context, the report, the figures and the log."""
    hook = "blocks.0.hook_resid_pre"
    sae = save_random_sae(tmp_path / "sae_toy" / "sae", 64, hook, "toy-induction")
    monkeypatch.chdir(tmp_path)
    argv = [
        "--sae", "sae_toy/sae", "--n-tokens", "640", "--n-features", "5", "--device", "cpu",
        "--results-dir", "results", "--figures-dir", "figures",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    (log_path,) = (tmp_path / "results").glob("sae_analysis_sae_toy-sae_*.json")
    log = json.loads(log_path.read_text())
    results = log["results"]
    assert results["kind"] == "sae_analysis" and results["model"] == "toy-induction"
    assert results["hook_name"] == hook and results["context_size"] == 32
    assert results["n_tokens"] == 640 and results["dataset"] == "induction"
    report = json.loads(Path(results["features_file"]).read_text())
    assert report["links"] == {} and report["neuronpedia_id"] is None  # no page for it
    tokens = token_chunks("induction", 20, 32, 0, model=toy_model)
    with torch.no_grad():
        _, cache = toy_model.run_with_cache(tokens, names_filter=hook)
    check_report(report, results, sae, toy_model, cache[hook], tokens, bos_token_id(toy_model))
    assert sorted(Path(p).name for p in results["figures"]) == sorted(
        f"sae_analysis_sae_toy-sae_{suffix}"
        for suffix in (
            "feature_density.png",
            "decoder_logits.md",
            "top_contexts.md",
            "dashboard.html",
        )
    )
    assert all((tmp_path / p).exists() for p in results["figures"])
    assert "Neuronpedia" not in (tmp_path / results["figures"][2]).read_text()
    assert f"log: {log_path.relative_to(tmp_path)}" in out or f"log: {log_path}" in out
    assert "explained_variance" in out


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert cli.main(["--sae", "no-such-release"]) == 2
    assert cli.main(["--sae", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2].startswith("error: unknown SAE release 'no-such-release'")
    assert err[-1].startswith("error: SAE") and "not a saved SAE" in err[-1]
    # the memory check runs before the model loads
    save_random_sae(tmp_path / "sae", 64, "blocks.0.hook_resid_pre", "toy-induction")
    monkeypatch.setattr("src.models.memory.free_memory_gb", lambda device: 1e-6)
    assert cli.main(["--sae", str(tmp_path / "sae"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: toy-induction needs about") and "loading model" not in err[-2]
