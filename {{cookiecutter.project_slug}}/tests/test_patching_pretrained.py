"""Fast activation patching on pretrained (Hugging Face) bridges: the tiny checkpoint of each
architecture agrees with `transformer_lens.patching`, and the patched forwards skip the
blocks before the patched layer (inside the model's own forward, so rotary positions and
sliding-window masks stay the model's)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from src.analysis import forward, patch_engine
from src.analysis.metrics import bind_metric
from src.analysis.patching import activation_patch
from src.data.ioi import make_ioi_dataset
from src.models.checkpoints import ARCHITECTURES
from tests.test_patching import tl_reference

# (component, per_position): every component, both layouts among them
CASES = [
    ("resid_pre", True),
    ("attn_out", False),
    ("attn_out", True),
    ("mlp_out", True),
    ("head_out", False),
    ("head_out", True),
    ("q", True),
    ("k", True),
    ("v", False),
    ("pattern", True),
]


@pytest.fixture(scope="module")
def ioi(pretrained_model):
    """Architecture -> three IOI prompts of the tiny tokenizer: clean, corrupted, answer,
    their logit-difference metric and the positions patched by per-position rows (the
    first corrupted one and the last: TL's reference runs one forward per index)."""
    cached = {}

    def get(arch):
        if arch not in cached:
            data = make_ioi_dataset(pretrained_model(arch).tokenizer, 3, seed=0)
            clean, corrupted = data.clean_tokens, data.corrupted_tokens
            cached[arch] = SimpleNamespace(
                clean=clean,
                corrupted=corrupted,
                answer=data.answer_tokens,
                metric=bind_metric("logit_diff", data.answer_tokens, data.wrong_tokens),
                positions=[int((clean != corrupted).any(0).nonzero()[0]), clean.shape[1] - 1],
            )
        return cached[arch]

    return get


@pytest.mark.parametrize(("component", "per_position"), CASES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pretrained_matches_transformer_lens(pretrained_model, ioi, arch, component, per_position):
    data = ioi(arch)
    args = (pretrained_model(arch), data.clean, data.corrupted, data.metric, component)
    positions = data.positions if per_position else None
    ours = activation_patch(*args, per_position, positions=positions)
    ref = tl_reference(*args, per_position, {"pos": positions} if per_position else None)
    patched = ~ref.isnan()
    assert torch.equal(patched, ~ours.isnan())
    torch.testing.assert_close(ours[patched], ref[patched], atol=1e-4, rtol=0)
    assert ref[patched].abs().max() > 1e-3  # the patches do something


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patches_skip_the_blocks_before_their_layer(pretrained_model, ioi, arch):
    """Patches at layer 1 never run the Hugging Face block of layer 0 beyond the one capture
    forward (on clean + corrupted): not in the exactness check, not in the patched forwards,
    of which a tiny memory budget makes one per patch."""
    model, data = pretrained_model(arch), ioi(arch)
    args = (model, data.clean, data.corrupted, data.metric, "resid_pre", True)
    calls = []
    hf_block = model.blocks[0].original_component
    handle = hf_block.register_forward_pre_hook(lambda *_: calls.append(None))
    try:
        ours = activation_patch(*args, layers=[1], memory_budget_mb=1e-6)
    finally:
        handle.remove()
    assert len(calls) == 1
    ref = tl_reference(*args, {"layer": [1]})
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, equal_nan=True)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_per_position_patches_start_at_their_position(pretrained_model, ioi, arch):
    """Per-position patches run only the positions from the patched one: the Hugging Face
    block of the last layer sees the capture forward and the two checks (from the layer, and
    from the middle position), then forwards that hold the positions from their first patched
    one only (the earlier keys and values come from the corrupted run's cache): one per
    patch, latest first, with a tiny memory budget; else one from the earliest. Equal to TL."""
    model, data = pretrained_model(arch), ioi(arch)
    n_pos, n_heads = data.clean.shape[1], model.cfg.n_heads
    first, last = data.positions
    args = (model, data.clean, data.corrupted, data.metric, "head_out", True)
    ref = tl_reference(*args, {"layer": [0], "pos": data.positions})
    checks = [n_pos, n_pos, n_pos - n_pos // 2]
    per_patch = [1] * n_heads + [n_pos - first] * n_heads
    lengths = []

    def record(module, args, kwargs):
        lengths.append((args[0] if args else kwargs["hidden_states"]).shape[1])

    handle = model.blocks[1].original_component.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for budget, forwards in [(1e-6, per_patch), (1024, [n_pos - first])]:
            lengths.clear()
            ours = activation_patch(
                *args, layers=[0], positions=data.positions, memory_budget_mb=budget
            )
            assert last == n_pos - 1 and lengths == checks + forwards
            torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, equal_nan=True)
    finally:
        handle.remove()


def test_can_start_at_position_checks_the_forward(pretrained_model, ioi):
    """Starting at a position is accepted when the final logits of the forward on the later
    positions, reading the corrupted keys and values of the earlier ones, are the model's;
    wrong logits, wrong keys or a layer's keys missing are refused."""
    model, tokens = pretrained_model("gemma-2"), ioi("gemma-2").corrupted
    cache, name = forward.new_cache(), "blocks.1.hook_resid_pre"
    with torch.no_grad():
        points = forward.hook_points(model)
        logits, acts = forward.capture(model, points, tokens, [name], True, False, cache)
        kv, resid = forward.cached_kv(cache, slice(None)), acts[name]
        assert len(kv) == model.cfg.n_layers
        assert forward.can_start_at_position(model, tokens, resid, 1, kv, logits)
        assert not forward.can_start_at_position(model, tokens, resid, 1, kv, logits + 1)
        wrong_keys = [(k.flip(2), v) for k, v in kv]
        assert not forward.can_start_at_position(model, tokens, resid, 1, wrong_keys, logits)
        assert not forward.can_start_at_position(model, tokens, resid, 1, kv[:1], logits)


def test_full_forward_fallback_on_pretrained(pretrained_model, ioi, monkeypatch):
    """Where starting at a layer is not exact, full (batched) forwards give the same."""
    monkeypatch.setattr(patch_engine, "can_start_at_layer", lambda *args: False)
    data = ioi("qwen2")
    args = (pretrained_model("qwen2"), data.clean, data.corrupted, data.metric, "head_out", True)
    ours = activation_patch(*args, positions=data.positions)
    ref = tl_reference(*args, {"pos": data.positions})
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, equal_nan=True)


def test_metric_reading_every_position_on_pretrained(pretrained_model, ioi):
    """A metric of all positions gets full logits from the forwards that skip layers."""
    data = ioi("gemma-2")

    def mean_answer_logit(logits):
        return logits[torch.arange(len(data.answer)), :, data.answer].mean()

    args = (pretrained_model("gemma-2"), data.clean, data.corrupted, mean_answer_logit, "v", True)
    ours = activation_patch(*args, positions=data.positions)
    ref = tl_reference(*args, {"pos": data.positions})
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, equal_nan=True)


def test_can_start_at_layer_checks_the_forward(pretrained_model, toy_model, ioi):
    """Native bridges can; others when the forward from the layer gives the model's logits
    (a rotary model here), at the final position only or at every position."""
    assert forward.can_start_at_layer(toy_model, torch.zeros(1, 3, dtype=torch.long), None, 1, None)
    model, tokens = pretrained_model("qwen2"), ioi("qwen2").corrupted
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        resid = cache["blocks.1.hook_resid_pre"]
        for final_only in (False, True):
            assert forward.can_start_at_layer(model, tokens, resid, 1, logits, final_only)
            assert not forward.can_start_at_layer(model, tokens, resid, 1, logits + 1, final_only)
        layer_0 = cache["blocks.0.hook_resid_pre"]
        assert not forward.can_start_at_layer(model, tokens, layer_0, 1, logits)  # wrong layer
        assert not forward.can_start_at_layer(model, tokens, resid, 1, None)  # nothing to check
