"""Circuits from edge scores: which edges to keep, and how faithful the circuit is.

``evaluate_circuit`` really ablates every edge outside the circuit: each downstream input is
recomputed from the current run's upstream outputs with the non-circuit edges' outputs
swapped for their ablated values (one forward). With all edges kept it gives the clean run
and with none the fully ablated one, exactly (the tests check both). ``circuit_dict`` is the
saved format, with EAP-IG's node names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import einops
import torch
from torch import Tensor

from src.analysis.circuit_graph import (
    QKV,
    Graph,
    ablated_upstream,
    check_args,
    mean_upstream,
    model_graph,
    qkv_weights,
    upstream_hooks,
)
from src.analysis.effects import ci_dict
from src.analysis.metrics import bind_metric
from src.data.dataset import ContrastDataset, batches
from src.models.hooks import LN_FINAL_IN, hook_name


def select_edges(
    scores: Tensor, valid: Tensor, *, top_n: int | None = None, threshold: float | None = None
) -> Tensor:
    """Edges to keep: the ``top_n`` largest |score|, or every |score| >= ``threshold``; then
    pruned to edges on a path from input to logits. Returns [n_upstream, n_downstream] bool."""
    if (top_n is None) == (threshold is None):
        raise ValueError("select_edges: give exactly one of top_n and threshold")
    magnitude = scores.abs().masked_fill(~valid, -1.0)
    if top_n is not None:
        if top_n <= 0:
            raise ValueError(f"top_n must be > 0, got {top_n}")
        keep = torch.zeros_like(valid)
        keep.view(-1)[magnitude.view(-1).topk(min(top_n, int(valid.sum()))).indices] = True
    else:
        keep = (magnitude >= threshold) & valid
    return keep


def prune(keep: Tensor, graph: Graph) -> Tensor:
    """Drop edges that cannot carry signal from input to logits: an edge whose source has no
    kept edge into it (except ``input``) or whose target node has no kept edge out of it
    (except ``logits``). Repeats until nothing changes."""
    keep = keep.clone()
    up_names = graph.upstream
    readers = graph.readers()
    # downstream columns each upstream node reads (its q, its group's k and v, or its input)
    columns = {u: [j for j, nodes in enumerate(readers) if u in nodes] for u in up_names}
    rows = [[up_names.index(v) for v in nodes] for nodes in readers]
    while True:
        before = int(keep.sum())
        for i, u in enumerate(up_names):
            if u != "input" and not keep[:, columns[u]].any():
                keep[i] = False  # receives nothing: its output is the ablated one anyway
        for j, v in enumerate(graph.downstream):
            if v[0] != "logits" and not keep[rows[j]].any():
                keep[:, j] = False  # feeds nothing kept
        if int(keep.sum()) == before:
            return keep


def _correction(current: Tensor, ablated: Tensor, missing: Tensor, columns: slice | int) -> Tensor:
    """Sum over ablated edges into ``columns`` of (current - ablated) upstream output."""
    weights = missing[:, columns]
    if weights.ndim == 1:
        return einops.einsum(current - ablated, weights, "b p u d, u -> b p d")
    return einops.einsum(current - ablated, weights, "b p u d, u v -> b p v d")


def _without(x: Tensor, current: Tensor, ablated: Tensor, missing: Tensor, column: int) -> Tensor:
    """The input ``x`` of downstream ``column`` with its missing edges ablated."""
    return (x - _correction(current, ablated, missing, column)).to(x.dtype)


def _ablation_hooks(
    model: Any, graph: Graph, ablated: Tensor, missing: Tensor, current: Tensor
) -> list[tuple[str, Callable]]:
    """Hooks that rebuild each downstream input with the ``missing`` edges' upstream outputs
    (weight 1 = fully ablated) replaced by ``ablated``; ``current`` collects this run's."""
    hooks = upstream_hooks(model, graph, current, detach=False)
    resid: dict[int, Tensor] = {}
    for layer in range(graph.n_layers):
        block = model.blocks[layer]
        hooks.append(
            (hook_name("resid_pre", layer), lambda x, hook, i=layer: resid.__setitem__(i, x))
        )
        for x in QKV:
            start = graph.downstream_index(layer, x)
            cols = slice(start, start + graph.n_inputs(x))
            if not missing[:, cols].any():
                continue

            def rebuild(act: Tensor, hook: Any, i=layer, cols=cols, x=x, block=block) -> Tensor:
                inputs = resid[i][:, :, None] - _correction(current, ablated, missing, cols)
                inputs = inputs.to(act.dtype)  # the corrections are float32
                weight, bias = qkv_weights(model, i, x)
                return einops.einsum(block.ln1(inputs), weight, "b p h d, h d e -> b p h e") + bias

            hooks.append((hook_name(x, layer), rebuild))
        if graph.has_mlp:
            col = graph.downstream_index(layer)
            if missing[:, col].any():
                hooks.append(
                    (
                        hook_name("ln2_in", layer),
                        lambda x, hook, col=col: _without(x, current, ablated, missing, col),
                    )
                )
    if missing[:, -1].any():
        hooks.append((LN_FINAL_IN, lambda x, hook: _without(x, current, ablated, missing, -1)))
    return hooks


@torch.no_grad()
def run_with_edges(
    model: Any,
    batch: ContrastDataset,
    keep: Tensor,
    *,
    ablation: str = "corrupted",
    mean: Tensor | None = None,
) -> Tensor:
    """Logits of the clean prompts with every edge outside ``keep`` ablated.

    ``keep`` is [n_upstream, n_downstream], bool or float in [0, 1] (the fraction of each
    edge kept; 1 - keep is ablated). Invalid edges are ignored.
    """
    graph = model_graph(model)
    valid = graph.valid_edges().to(keep.device)
    missing = (1.0 - keep.float()) * valid
    tokens = batch.clean_tokens
    ablated = ablated_upstream(model, batch, graph, ablation, mean)
    current = torch.zeros_like(ablated)
    with model.hooks(fwd_hooks=_ablation_hooks(model, graph, ablated, missing, current)):
        return model(tokens)


def evaluate_circuit(
    model: Any,
    dataset: ContrastDataset,
    keep: Tensor,
    metric: str = "logit_diff",
    *,
    ablation: str = "corrupted",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Faithfulness: the metric with everything outside the circuit ablated, per prompt.

    Returns per-prompt tensors ``clean``, ``ablated`` (every edge ablated) and ``circuit``,
    and ``recovered`` = (circuit - ablated) / (clean - ablated) of the means.
    """
    check_args(ablation, 0)
    graph = model_graph(model)
    device = next(model.parameters()).device
    keep = keep.to(device)
    mean = mean_upstream(model, dataset, graph, batch_size) if ablation == "mean" else None
    out: dict[str, list[Tensor]] = {"clean": [], "ablated": [], "circuit": []}
    for batch in batches(dataset, batch_size):
        batch = batch.to(device)
        fn = bind_metric(metric, batch.answer_tokens, batch.wrong_tokens, per_prompt=True)
        out["clean"].append(fn(model(batch.clean_tokens)))
        nothing = torch.zeros_like(keep, dtype=torch.float)
        out["ablated"].append(
            fn(run_with_edges(model, batch, nothing, ablation=ablation, mean=mean))
        )
        out["circuit"].append(fn(run_with_edges(model, batch, keep, ablation=ablation, mean=mean)))
    values = {k: torch.cat(v).float().cpu() for k, v in out.items()}
    clean, ablated, circuit = (values[k].mean().item() for k in ("clean", "ablated", "circuit"))
    recovered = (circuit - ablated) / (clean - ablated) if clean != ablated else float("nan")
    return {**values, "recovered": recovered}


def faithfulness(check: dict[str, Any], metric: str, ablation: str, n_edges: int) -> dict:
    """The ``faithfulness`` entry of a circuit: ``evaluate_circuit``'s ``check`` as means
    with bootstrap CIs over prompts, the recovered fraction with its CI (per prompt, against
    the mean clean - ablated gap), and the circuit's size."""
    gap = check["clean"].mean() - check["ablated"].mean()
    normalized = (check["circuit"] - check["ablated"].mean()) / gap
    return {
        "metric": metric,
        "ablation": ablation,
        "recovered": check["recovered"],
        "recovered_ci": ci_dict(normalized),
        **{k: ci_dict(check[k]) for k in ("clean", "ablated", "circuit")},
        "n_edges": n_edges,
    }


# --- the circuit as a JSON-able dict -----------------------------------------------------


def circuit_dict(
    graph: Graph,
    scores: Tensor,
    keep: Tensor,
    faithfulness: dict[str, Any],
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """The saved format: ``nodes``, ``edges``, ``faithfulness``, ``metadata``.

    Node names follow EAP-IG (``input``, ``a{layer}.h{head}``, ``m{layer}``, ``logits``); a
    node's score is the sum of its outgoing edges' scores (about the effect of ablating its
    output everywhere). Edges into heads carry which input (``qkv``: q, k or v). Under
    grouped-query attention a k or v input is shared by a group of heads: its edges target
    the group's first head and list the group in ``heads``.
    """
    valid = graph.valid_edges()
    scores, keep = scores.cpu(), keep.cpu() & valid
    readers = graph.readers()
    in_circuit = {u for i, u in enumerate(graph.upstream) if keep[i].any()}
    for j, nodes in enumerate(readers):
        in_circuit |= {graph.downstream[j][0], *nodes} if keep[:, j].any() else set()
    nodes = []
    for i, name in enumerate([*graph.upstream, "logits"]):
        node: dict[str, Any] = {"name": name, "layer": _layer(name, graph.n_layers)}
        if name.startswith("a"):
            node["head"] = int(name.split(".h")[1])
        score = scores[i][valid[i]].sum().item() if name != "logits" else None
        nodes.append({**node, "score": score, "in_circuit": name in in_circuit})
    edges = [
        {
            "source": graph.upstream[i],
            "target": graph.downstream[j][0],
            "qkv": graph.downstream[j][1],
            "score": scores[i, j].item(),
            "in_circuit": bool(keep[i, j]),
            **({"heads": readers[j]} if len(readers[j]) > 1 else {}),
        }
        for i, j in valid.nonzero().tolist()
    ]
    return {"nodes": nodes, "edges": edges, "faithfulness": faithfulness, "metadata": metadata}


def _layer(name: str, n_layers: int) -> int:
    if name == "input":
        return -1
    if name == "logits":
        return n_layers
    return int(name[1:].split(".")[0])


def iter_circuit_edges(circuit: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The edges of a saved circuit that are in it."""
    return (edge for edge in circuit["edges"] if edge["in_circuit"])


def edge_name(edge: dict[str, Any]) -> str:
    """EAP-IG's edge name: ``a0.h2->a1.h0<k>``."""
    port = f"<{edge['qkv']}>" if edge["qkv"] else ""
    return f"{edge['source']}->{edge['target']}{port}"
