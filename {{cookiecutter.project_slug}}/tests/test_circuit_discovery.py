"""Edge attribution patching and circuit evaluation: exact invariants, a finite-difference
check of the scores, and the toy model's known induction circuit."""

from __future__ import annotations

import pytest
import torch

from src.analysis.circuit_graph import model_graph
from src.analysis.circuits import evaluate_circuit, prune, run_with_edges, select_edges
from src.analysis.eap import edge_scores
from src.analysis.metrics import bind_metric
from src.data.induction import make_induction_dataset


@pytest.fixture(scope="module")
def previous_dataset():
    """Corrupts the token before the answer: only the key path (prev-token head) matters."""
    return make_induction_dataset(64, 31, 64, 0, seed=1, corruption="previous")


@pytest.fixture(scope="module")
def mlp_model(small_bridge):
    """A random 2-layer model with MLPs (the toy has none)."""
    return small_bridge(d_vocab=40)


def test_graph_names_and_edges(toy_model, mlp_model) -> None:
    graph = model_graph(toy_model)
    assert graph.upstream == ["input"] + [f"a{i}.h{h}" for i in range(2) for h in range(4)]
    assert len(graph.downstream) == 2 * 3 * 4 + 1 and graph.downstream[-1] == ("logits", None)
    valid = graph.valid_edges()
    # input feeds 24 head inputs and the logits; layer-0 heads feed layer-1 q/k/v and logits
    assert valid[0].sum() == 25 and valid[1].sum() == 13 and valid[5].sum() == 1
    big = model_graph(mlp_model)
    assert big.upstream[:6] == ["input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0"]
    m0 = big.upstream.index("m0")
    assert big.valid_edges()[big.upstream.index("a0.h0"), big.downstream.index(("m0", None))]
    assert not big.valid_edges()[m0, big.downstream.index(("m0", None))]


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
@pytest.mark.parametrize("which", ["toy", "mlp"])
def test_keeping_every_edge_is_the_clean_run(toy_model, mlp_model, which, ablation) -> None:
    model = toy_model if which == "toy" else mlp_model
    graph = model_graph(model)
    batch = make_induction_dataset(6, 15, model.cfg.d_vocab, 0, seed=2)
    everything = torch.ones(len(graph.upstream), len(graph.downstream))
    mean = torch.zeros(15, len(graph.upstream), model.cfg.d_model)  # unused when all kept
    logits = run_with_edges(model, batch, everything, ablation=ablation, mean=mean)
    torch.testing.assert_close(logits, model(batch.clean_tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", ["toy", "mlp"])
def test_ablating_every_edge_is_the_corrupted_run(toy_model, mlp_model, which) -> None:
    model = toy_model if which == "toy" else mlp_model
    graph = model_graph(model)
    batch = make_induction_dataset(6, 15, model.cfg.d_vocab, 0, seed=2)
    nothing = torch.zeros(len(graph.upstream), len(graph.downstream))
    logits = run_with_edges(model, batch, nothing, ablation="corrupted")
    torch.testing.assert_close(logits, model(batch.corrupted_tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", ["toy", "mlp"])
def test_eap_scores_are_the_derivative_of_edge_ablation(toy_model, mlp_model, which) -> None:
    """EAP's score of an edge = d metric / d (fraction of the edge ablated), at 0."""
    model = toy_model if which == "toy" else mlp_model
    dataset = make_induction_dataset(16, 15, model.cfg.d_vocab, 0, seed=3)
    scores = edge_scores(model, dataset, batch_size=8)
    metric = bind_metric("logit_diff", dataset.answer_tokens, dataset.wrong_tokens)
    clean = metric(model(dataset.clean_tokens)).item()
    everything = torch.ones_like(scores)
    top = scores.abs().flatten().topk(3).indices.tolist()
    eps = 1e-3
    for flat in top:
        i, j = divmod(flat, scores.shape[1])
        keep = everything.clone()
        keep[i, j] = 1 - eps
        slope = (metric(run_with_edges(model, dataset, keep)).item() - clean) / eps
        assert slope == pytest.approx(scores[i, j].item(), rel=0.05, abs=0.02), (i, j)


def test_induction_circuit_is_found_and_faithful(toy_model, previous_dataset) -> None:
    """The known answer: the previous-token head a0.h2 feeds the keys of the layer-1
    induction heads; with everything else ablated the circuit keeps >= 80% of the effect."""
    graph = model_graph(toy_model)
    scores = edge_scores(toy_model, previous_dataset, ig_steps=5)
    keep = prune(select_edges(scores, graph.valid_edges(), top_n=10), graph)
    kept = {(graph.upstream[i], graph.downstream[j]) for i, j in keep.nonzero().tolist()}
    assert ("input", ("a0.h2", "v")) in kept  # the prev-token head reads the previous token
    k_edges = {v for u, (v, x) in kept if u == "a0.h2" and x == "k"}
    assert len(k_edges) >= 2 and k_edges <= {f"a1.h{h}" for h in range(4)}
    assert {("a1.h0", ("logits", None)), ("a1.h1", ("logits", None))} <= kept
    result = evaluate_circuit(toy_model, previous_dataset, keep)
    assert result["recovered"] >= 0.8
    assert result["clean"].mean() > 8 and abs(result["ablated"].mean()) < 2


def test_plain_eap_misses_what_eap_ig_finds(toy_model, previous_dataset) -> None:
    """Why ig_steps: the metric saturates on the clean run, so plain gradients there miss the
    prev-token head's input edge that integrated gradients rank first."""
    graph = model_graph(toy_model)
    edge = (graph.upstream.index("input"), graph.downstream.index(("a0.h2", "v")))
    plain = edge_scores(toy_model, previous_dataset).abs()
    integrated = edge_scores(toy_model, previous_dataset, ig_steps=5).abs()
    assert integrated[edge] == integrated.max()
    assert plain[edge] < 0.5 * plain.max()


def test_selection_and_pruning(toy_model) -> None:
    graph = model_graph(toy_model)
    valid = graph.valid_edges()
    scores = torch.zeros(valid.shape)
    u = graph.upstream.index
    d = graph.downstream.index
    scores[u("input"), d(("a0.h2", "v"))] = 3.0
    scores[u("a0.h2"), d(("a1.h0", "k"))] = -2.0
    scores[u("a1.h0"), d(("logits", None))] = 1.5
    scores[u("a0.h1"), d(("logits", None))] = 0.1  # kept by top-4, but fed by nothing
    keep = select_edges(scores, valid, top_n=4)
    assert int(keep.sum()) == 4
    assert int(select_edges(scores, valid, threshold=1.0).sum()) == 3
    pruned = prune(keep, graph)
    assert int(pruned.sum()) == 3 and not pruned[u("a0.h1")].any()
    with pytest.raises(ValueError, match="exactly one of top_n and threshold"):
        select_edges(scores, valid)
    with pytest.raises(ValueError, match="top_n must be > 0"):
        select_edges(scores, valid, top_n=0)


def test_bad_arguments(toy_model) -> None:
    dataset = make_induction_dataset(4, 11, 64, 0)
    with pytest.raises(ValueError, match="ablation must be one of corrupted, mean; got 'zero'"):
        edge_scores(toy_model, dataset, ablation="zero")
    with pytest.raises(ValueError, match="ig_steps must be >= 0"):
        edge_scores(toy_model, dataset, ig_steps=-1)
