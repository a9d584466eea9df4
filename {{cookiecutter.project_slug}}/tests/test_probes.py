"""Linear probes: labels, the control task, a separable known answer, and on the toy model
the previous token, which the layer-0 previous-token head writes into layer 1's input."""

from __future__ import annotations

import pytest
import torch

from src.analysis.probes import (
    IGNORE,
    control_labels,
    previous_token_labels,
    probe_layers,
    repeat_labels,
    train_probes,
)


def test_repeat_and_previous_token_labels():
    tokens = torch.tensor([[0, 5, 6, 5, 7, 6, 0]])
    assert repeat_labels(tokens).tolist() == [[IGNORE, 0, 0, 1, 0, 1, 0]]
    assert previous_token_labels(tokens).tolist() == [[IGNORE, 0, 5, 6, 5, 7, 6]]


def test_control_labels_are_one_label_per_token_type():
    tokens = torch.randint(1, 20, (50, 10), generator=torch.Generator().manual_seed(0))
    labels = repeat_labels(tokens)
    control = control_labels(tokens, labels, n_classes=2, seed=3)
    assert ((control == IGNORE) == (labels == IGNORE)).all()
    for t in tokens.unique():
        values = control[(tokens == t) & (control != IGNORE)].unique()
        assert len(values) <= 1


def test_a_separable_label_is_learned_exactly():
    generator = torch.Generator().manual_seed(0)

    def data(n):  # layer 0 carries the label with a margin, layer 1 is noise
        x = torch.randn(2, n, 8, generator=generator)
        y = (x[0, :, 0] > 0).long()
        x[0, :, 0] += torch.where(y == 1, 1.0, -1.0)
        return x, y

    x, y = data(400)
    predict = train_probes(x, y, n_classes=2, steps=100)
    test_x, test_y = data(200)
    accuracy = (predict(test_x) == test_y).float().mean(-1)
    assert accuracy[0] == 1.0 and abs(accuracy[1] - 0.5) < 0.15


@pytest.mark.slow
def test_toy_previous_token_appears_after_layer_0(toy_model):
    from src.analysis.forward import capture, hook_points
    from src.analysis.probes import layer_hooks
    from src.data.induction import make_induction_dataset

    tokens = make_induction_dataset(80, 31, 64, 0, seed=0).clean_tokens
    hooks = layer_hooks(2)
    _, acts = capture(toy_model, hook_points(toy_model), tokens, hooks, logits=False)
    results = probe_layers(acts, tokens, previous_token_labels(tokens), steps=150)
    assert results["n_classes"] == 64  # every token of the vocabulary (BOS too) precedes one
    per_hook = results["per_hook"]
    embed, layer1 = per_hook["blocks.0.hook_resid_pre"], per_hook["blocks.1.hook_resid_pre"]
    # The embedding cannot know the previous token (chance is 1/63) ...
    assert embed["accuracy"]["mean"] < 0.15
    # ... while its control (the current token's identity) is read off perfectly
    assert embed["control_accuracy"]["mean"] > 0.95 and embed["selectivity"]["high"] < -0.8
    # ... and after the previous-token head the previous token is there.
    assert layer1["accuracy"]["low"] > 0.95
    assert layer1["accuracy"]["mean"] - embed["accuracy"]["mean"] > 0.8
