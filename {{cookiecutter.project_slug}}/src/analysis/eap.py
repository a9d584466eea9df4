"""Edge attribution patching (EAP) and EAP-IG: a score for every edge of the graph.

Ablating edge u -> v in the clean run changes the metric by about
``(a_u_ablated - a_u_clean) . dMetric/d(input_v)``, summed over positions and averaged over
prompts (Syed et al. 2023); two forwards and one backward score every edge. ``ig_steps > 0``
averages the gradient over inputs interpolated from clean to ablated (EAP-IG, Hanna et al.
2024), which corrects EAP where the metric saturates. The graph and the ablated values are
``src.analysis.circuit_graph``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops
import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.analysis.circuit_graph import (
    QKV,
    Graph,
    ablated_upstream,
    check_args,
    check_graph,
    mean_upstream,
    model_graph,
    qkv_weights,
    upstream_activations,
)
from src.analysis.metrics import bind_metric
from src.data.dataset import ContrastDataset, batches
from src.models.hooks import LN_FINAL_IN, hook_name


def _gradient_hooks(
    graph: Graph, captured: dict[str, Tensor], input_shift: Tensor | None
) -> list[tuple[str, Callable]]:
    """Hooks that keep each layer's ``resid_pre`` and a node of its own for every
    downstream input (q/k/v, the MLPs' and the final norm's inputs) in ``captured``, and
    add ``input_shift`` to the embeddings."""

    def keep(name: str) -> Callable:
        def hook(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()  # a node of its own, so its gradient is this consumer's alone
            captured[name] = x
            return x

        return hook

    def record(name: str) -> Callable:
        def hook(x: Tensor, hook: Any) -> None:
            captured[name] = x

        return hook

    hooks: list[tuple[str, Callable]] = []
    if input_shift is not None:
        hooks.append((hook_name("resid_pre", 0), lambda x, hook: x + input_shift.to(x.dtype)))
    for layer in range(graph.n_layers):
        hooks.append((hook_name("resid_pre", layer), record(f"resid{layer}")))
        hooks += [(hook_name(x, layer), keep(f"{x}{layer}")) for x in QKV]
        if graph.has_mlp:
            hooks.append((hook_name("ln2_in", layer), keep(f"mlp{layer}")))
    hooks.append((LN_FINAL_IN, keep("logits")))
    return hooks


def _input_gradients(
    model: Any,
    tokens: Tensor,
    graph: Graph,
    metric: Callable[[Tensor], Tensor],
    input_shift: Tensor | None,
) -> Tensor:
    """dMetric/d(input of each downstream node) on ``tokens``: [b, p, n_downstream, d].

    Heads: the gradient at hook_q/k/v of head h, mapped back through W_{Q,K,V}[h] and ln1 at
    the current residual stream (one batched vector-Jacobian product per layer). MLPs and
    logits: the gradient at their norm's input (which feeds nothing else).
    ``input_shift`` is added to the embeddings (integrated-gradient steps).
    """
    captured: dict[str, Tensor] = {}
    hooks = _gradient_hooks(graph, captured, input_shift)
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(tokens)).sum()
        wanted = [k for k in captured if not k.startswith("resid")]
        grads = dict(
            zip(wanted, torch.autograd.grad(value, [captured[k] for k in wanted]), strict=True)
        )

    b, p = tokens.shape
    out = torch.zeros(b, p, len(graph.downstream), model.cfg.d_model, device=tokens.device)
    n_qkv = graph.n_heads + 2 * graph.kv_heads
    for layer in range(graph.n_layers):
        start = graph.downstream_index(layer, "q")
        out[:, :, start : start + n_qkv] = _through_ln1(
            model, layer, grads, captured[f"resid{layer}"].detach()
        )
        if graph.has_mlp:
            out[:, :, graph.downstream_index(layer)] = grads[f"mlp{layer}"]
    out[:, :, -1] = grads["logits"]
    return out


def _through_ln1(model: Any, layer: int, grads: dict[str, Tensor], resid: Tensor) -> Tensor:
    """The gradients at ``layer``'s q/k/v mapped back through ``W_{Q,K,V}`` and ln1 at the
    residual stream ``resid``: [b, p, n_heads + 2 * n_kv_heads, d], q heads first, then the
    k and the v of each key/value head."""
    # gradient w.r.t. ln1's output, per (q/k/v, head): [b, p, n_heads + 2 * n_kv_heads, d]
    per_input = torch.cat(
        [
            einops.einsum(
                grads[f"{x}{layer}"],
                qkv_weights(model, layer, x)[0].detach(),
                "b p h e, h d e -> b p h d",
            )
            for x in QKV
        ],
        dim=2,
    )
    with torch.enable_grad():
        stacked = resid[:, :, None].expand_as(per_input).clone().requires_grad_(True)
        (vjp,) = torch.autograd.grad(model.blocks[layer].ln1(stacked), stacked, per_input)
    return vjp


def edge_scores(
    model: Any,
    dataset: ContrastDataset,
    metric: str = "logit_diff",
    *,
    ablation: str = "corrupted",
    ig_steps: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> Tensor:
    """EAP (``ig_steps=0``) or EAP-IG score of every edge: [n_upstream, n_downstream].

    Each score estimates metric(clean run with that edge ablated) - metric(clean run),
    averaged over prompts; invalid edges (downstream before upstream) are 0.
    """
    check_args(ablation, ig_steps)
    graph = model_graph(model)
    device = next(model.parameters()).device
    check_graph(model, dataset.clean_tokens[:1].to(device))
    mean = mean_upstream(model, dataset, graph, batch_size) if ablation == "mean" else None
    scores = torch.zeros(len(graph.upstream), len(graph.downstream), device=device)
    steps = max(ig_steps, 1)
    bar = tqdm(
        total=len(batches(dataset, batch_size)) * steps,
        desc="edge attribution",
        disable=not progress,
        leave=False,
    )
    for batch in batches(dataset, batch_size):
        batch = batch.to(device)
        fn = bind_metric(metric, batch.answer_tokens, batch.wrong_tokens)
        clean = upstream_activations(model, batch.clean_tokens, graph)
        delta = ablated_upstream(model, batch, graph, ablation, mean) - clean
        grads = torch.zeros(*clean.shape[:2], len(graph.downstream), clean.shape[-1], device=device)
        for step in range(steps):
            # midpoints of ig_steps intervals on the path from clean to ablated inputs
            shift = None if ig_steps == 0 else delta[:, :, 0] * ((step + 0.5) / steps)
            grads += _input_gradients(model, batch.clean_tokens, graph, fn, shift) / steps
            bar.update()
        # fn averages over the batch: the gradient already carries 1/len(batch)
        scores += einops.einsum(delta, grads, "b p u d, b p v d -> u v") * (
            len(batch) / len(dataset)
        )
    bar.close()
    return scores * graph.valid_edges().to(device)
