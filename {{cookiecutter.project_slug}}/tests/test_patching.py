"""Fast activation patching agrees with `transformer_lens.patching`, index for index."""

from __future__ import annotations

import itertools
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformer_lens.patching as tlp

from scripts.tl_reference import TL_FUNCTIONS, TL_SPECS, pattern_z_cache, run_tl
from src.analysis import forward, patch_engine
from src.analysis.forward import patches_per_forward
from src.analysis.metrics import bind_metric, normalize
from src.analysis.patching import activation_patch, activation_patch_all
from src.data.induction import make_induction_dataset
from src.models.hooks import COMPONENTS
from src.models.toy import TOY_BOS_TOKEN_ID

TOY_COMPONENTS = [c for c in COMPONENTS if c != "mlp_out"]
BENCHMARK = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_patching.py"


def tl_reference(model, clean, corrupted, metric, component, per_position, subset=None):
    """TL's one-forward-per-index result (`generic_activation_patch`) in our layout; only
    the indices of ``subset`` (axis -> indices, e.g. {"pos": [3, 10]}; NaN elsewhere) if
    given."""
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        if component == "pattern":
            _, corrupted_cache = model.run_with_cache(corrupted)
            cache = pattern_z_cache(model, cache, corrupted_cache)
        if subset:
            return run_tl(model, corrupted, cache, metric, component, per_position, subset)
        name, setter, axes = TL_SPECS[(component, per_position)]
        return tlp.generic_activation_patch(
            model, corrupted, cache, metric, setter, name, index_axis_names=axes
        ).cpu()


@pytest.fixture(scope="module")
def toy_data():
    return make_induction_dataset(4, 11, d_vocab=64, bos_token_id=TOY_BOS_TOKEN_ID, seed=0)


@pytest.fixture(scope="module")
def toy_metric(toy_data):
    return bind_metric("logit_diff", toy_data.answer_tokens, toy_data.wrong_tokens)


@pytest.fixture(scope="module")
def toy_refs(toy_model, toy_data, toy_metric):
    """TL references on the toy, computed once per (component, per_position)."""
    refs = {}

    def get(component, per_position):
        key = (component, per_position)
        if key not in refs:
            inputs = (toy_data.clean_tokens, toy_data.corrupted_tokens, toy_metric)
            refs[key] = tl_reference(toy_model, *inputs, component, per_position)
        return refs[key]

    return get


@pytest.fixture(scope="module")
def mlp_model(small_bridge):
    return small_bridge()


@pytest.fixture(scope="module")
def mlp_data():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50, (3, 8), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 1) % 50
    answer, wrong = torch.randint(0, 50, (2, 3), generator=generator)
    return clean, corrupted, bind_metric("logit_diff", answer, wrong)


def test_references_are_the_named_transformer_lens_functions():
    """The TL references (scripts/tl_reference.py) are the partials behind TL's named
    functions."""
    assert len(TL_FUNCTIONS) == 11
    for key, name in TL_FUNCTIONS.items():
        activation, setter, axes = TL_SPECS[key]
        assert getattr(tlp, name).keywords == {
            "patch_setter": setter,
            "activation_name": activation,
            "index_axis_names": axes,
        }, name


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("component", TOY_COMPONENTS)
def test_toy_matches_transformer_lens(
    toy_model, toy_data, toy_metric, toy_refs, component, per_position
):
    inputs = (toy_data.clean_tokens, toy_data.corrupted_tokens, toy_metric)
    ours = activation_patch(toy_model, *inputs, component, per_position)
    ref = toy_refs(component, per_position)
    assert ours.shape == ref.shape
    assert ours.dtype == torch.float32 and not ours.isnan().any()
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "head_out"])
def test_model_with_mlps_matches_transformer_lens(mlp_model, mlp_data, component, per_position):
    clean, corrupted, metric = mlp_data
    ours = activation_patch(mlp_model, clean, corrupted, metric, component, per_position)
    ref = tl_reference(mlp_model, clean, corrupted, metric, component, per_position)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert ref.abs().max() > 0.01  # the patches do something


@pytest.mark.parametrize(
    ("component", "per_position"), [("k", True), ("v", False), ("q", True), ("pattern", True)]
)
def test_grouped_query_rotary_model_matches_transformer_lens(
    small_bridge, mlp_data, component, per_position
):
    """Two key/value heads shared by four query heads, rotary positions, RMSNorm."""
    model = small_bridge(
        n_key_value_heads=2,
        positional_embedding_type="rotary",
        normalization_type="RMS",
        gated_mlp=True,
        act_fn="silu",
    )
    clean, corrupted, metric = mlp_data
    ours = activation_patch(model, clean, corrupted, metric, component, per_position)
    ref = tl_reference(model, clean, corrupted, metric, component, per_position)
    shapes = {"k": (2, 8, 2), "v": (2, 2), "q": (2, 8, 4), "pattern": (2, 4, 8)}
    assert ours.shape == shapes[component]  # k and v index the 2 key/value heads
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_small_memory_budget_batches_correctly(toy_model, toy_data, toy_metric, toy_refs):
    """K = 3 patches per forward (88 indices: 29 forwards of 3 and one of 1), and K = 1."""
    n_prompts, n_pos = toy_data.clean_tokens.shape
    row_mb = forward.bytes_per_row(toy_model, n_pos, full_logits=False) / 2**20
    budget = 3.5 * n_prompts * row_mb
    assert patches_per_forward(toy_model, n_prompts, n_pos, budget, full_logits=False) == 3
    chunks: list[int] = []
    run = patch_engine.Patcher.run

    def spy(self, chunk):
        chunks.append(len(chunk))
        return run(self, chunk)

    ref = toy_refs("k", True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patch_engine.Patcher, "run", spy)
        for budget_mb, sizes in ((budget, [3] * 29 + [1]), (1e-6, [1] * 88)):
            chunks.clear()
            ours = activation_patch(
                toy_model,
                toy_data.clean_tokens,
                toy_data.corrupted_tokens,
                toy_metric,
                "k",
                per_position=True,
                memory_budget_mb=budget_mb,
            )
            assert chunks == sizes
            torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_full_forward_fallback_matches(toy_model, toy_data, toy_metric, toy_refs, monkeypatch):
    """Bridges whose blocks cannot be run by hand get full (batched) forwards."""
    monkeypatch.setattr(patch_engine, "can_start_at_layer", lambda *args: False)
    for component in ("head_out", "pattern"):
        ours = activation_patch(
            toy_model,
            toy_data.clean_tokens,
            toy_data.corrupted_tokens,
            toy_metric,
            component,
            per_position=True,
        )
        torch.testing.assert_close(ours, toy_refs(component, True), atol=1e-4, rtol=0)


def test_metric_reading_every_position_gets_full_logits(toy_model, toy_data):
    """A metric of all positions (not only the last) still agrees with TL."""
    answer = toy_data.answer_tokens

    def mean_answer_logit(logits):
        return logits[torch.arange(len(answer)), :, answer].mean()

    clean, corrupted = toy_data.clean_tokens, toy_data.corrupted_tokens
    ours = activation_patch(toy_model, clean, corrupted, mean_answer_logit, "v", True)
    ref = tl_reference(toy_model, clean, corrupted, mean_answer_logit, "v", True)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_known_answer_induction_heads(toy_model):
    """Normalised head-output patching (0 = corrupted, 1 = clean) on induction prompts
    whose corruption replaces the token after the first copy of the final token: the
    layer-1 (induction) heads carry the effect; the previous-token head L0H2 does not,
    since the corrupted token changes the values copied, not the keys it writes; nor do
    queries, keys or patterns."""
    data = make_induction_dataset(16, 31, d_vocab=64, bos_token_id=TOY_BOS_TOKEN_ID, seed=0)
    metric = bind_metric("logit_diff", data.answer_tokens, data.wrong_tokens)
    with torch.no_grad():
        clean_value = metric(toy_model(data.clean_tokens))
        corrupted_value = metric(toy_model(data.corrupted_tokens))
    args = (toy_model, data.clean_tokens, data.corrupted_tokens, metric)
    heads = normalize(activation_patch(*args, "head_out"), clean_value, corrupted_value)
    # measured: L0 [0.049, -0.003, -0.002, 0.116], L1 [0.259, 0.278, 0.234, 0.098]
    assert abs(heads[0, 2]) < 0.02
    assert (heads[1] > 0.05).all()
    top3 = torch.topk(heads.flatten(), 3).indices
    assert (top3 // 4 == 1).all()  # the three largest effects are layer-1 heads
    assert heads[1].sum() > 2 * heads[0].sum()
    values = normalize(activation_patch(*args, "v"), clean_value, corrupted_value)
    torch.testing.assert_close(values, heads, atol=0.02, rtol=0)
    for component in ("q", "k", "pattern"):
        effect = normalize(activation_patch(*args, component), clean_value, corrupted_value)
        assert effect.abs().max() < 0.02, component


def test_per_prompt_metric_adds_a_batch_axis(toy_model, toy_data, toy_metric):
    per_prompt = bind_metric(
        "logit_diff", toy_data.answer_tokens, toy_data.wrong_tokens, per_prompt=True
    )
    args = (toy_model, toy_data.clean_tokens, toy_data.corrupted_tokens)
    for component, per_position in (("head_out", True), ("attn_out", False), ("resid_pre", False)):
        scalar = activation_patch(*args, toy_metric, component, per_position)
        values = activation_patch(*args, per_prompt, component, per_position)
        assert values.shape == (*scalar.shape, 4)
        torch.testing.assert_close(values.mean(-1), scalar, atol=1e-5, rtol=0)
        assert values.std(-1).max() > 0  # prompts differ


def test_subsets_are_nan_elsewhere(toy_model, toy_data, toy_metric, toy_refs):
    ours = activation_patch(
        toy_model,
        toy_data.clean_tokens,
        toy_data.corrupted_tokens,
        toy_metric,
        "head_out",
        per_position=True,
        layers=[1],
        heads=[0, 2],
        positions=[3, -1],
    )
    ref = toy_refs("head_out", True)
    inside = torch.zeros_like(ref, dtype=torch.bool)
    for layer, pos, head in itertools.product([1], [3, 10], [0, 2]):
        inside[layer, pos, head] = True
    assert torch.equal(~ours.isnan(), inside)
    torch.testing.assert_close(ours[inside], ref[inside], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"component": "mlp"}, "component='mlp' is unknown; allowed: resid_pre"),
        ({"component": "mlp_out"}, "attention-only"),
        ({"layers": [2]}, r"layers \[2\] out of range; allowed: \[0, 2\)"),
        ({"layers": [-1]}, r"layers \[-1\] out of range"),
        ({"heads": [4]}, r"heads \[4\] out of range; allowed: \[0, 4\)"),
        ({"heads": [0], "component": "attn_out"}, "heads applies to the head components"),
        ({"positions": [11], "per_position": True}, r"positions \[11\] out of range; allowed"),
        ({"positions": [-12], "per_position": True}, r"allowed: \[-11, 11\)"),
        ({"positions": [0]}, "positions needs per_position=True"),
        ({"layers": []}, "layers must not be empty"),
        ({"layers": [0.5]}, "layers must be a list of ints"),
        ({"memory_budget_mb": 0}, "memory_budget_mb must be > 0"),
    ],
)
def test_bad_arguments_raise_before_any_forward(toy_model, toy_data, toy_metric, kwargs, match):
    # a stand-in with the toy's config and no weights: any forward would fail otherwise
    model = SimpleNamespace(cfg=toy_model.cfg)
    kwargs = {"component": "head_out", **kwargs}
    with pytest.raises(ValueError, match=match):
        activation_patch(
            model, toy_data.clean_tokens, toy_data.corrupted_tokens, toy_metric, **kwargs
        )


def test_token_shapes_must_match(toy_model, toy_data, toy_metric):
    model = SimpleNamespace(cfg=toy_model.cfg)
    with pytest.raises(ValueError, match=r"clean_tokens \(4, 11\) and corrupted_tokens \(4, 10\)"):
        activation_patch(
            model, toy_data.clean_tokens, toy_data.corrupted_tokens[:, :10], toy_metric, "v"
        )


def test_activation_patch_all_skips_mlp_on_attention_only(toy_model, toy_data, toy_metric):
    results = activation_patch_all(
        toy_model, toy_data.clean_tokens, toy_data.corrupted_tokens, toy_metric, heads=[1]
    )
    assert list(results) == TOY_COMPONENTS
    assert results["attn_out"].shape == (2,) and not results["attn_out"].isnan().any()
    assert results["head_out"].shape == (2, 4)
    assert results["head_out"][:, 1].isfinite().all() and results["head_out"][:, 0].isnan().all()


def test_activation_patch_all_includes_mlp_out(mlp_model, mlp_data):
    clean, corrupted, metric = mlp_data
    results = activation_patch_all(mlp_model, clean, corrupted, metric, per_position=True)
    assert list(results) == list(COMPONENTS)
    assert results["mlp_out"].shape == (2, 8)


def test_benchmark_script_runs_on_the_toy(toy_model, capsys):
    """scripts/benchmark_patching.py: one component on the toy, both layouts, equal to TL."""
    main = runpy.run_path(str(BENCHMARK))["main"]
    args = ["--model", "toy", "--device", "cpu", "--components", "v", "--n-prompts", "2"]
    assert main([*args, "--seq", "9"]) == 0
    out = capsys.readouterr().out
    row = re.compile(r"^v +(\[[a-z, ]+\]) +(\d+) +[\d.]+ +[\d.]+ +[\d.]+x +[\d.]+x +(\S+)$")
    rows = [m.groups() for m in map(row.match, out.splitlines()) if m]
    assert [(layout, int(n)) for layout, n, _ in rows] == [
        ("[layer, head]", 8),
        ("[layer, pos, head]", 72),
    ]
    assert all(float(diff) < 1e-4 for _, _, diff in rows)  # max |ours - TL|
