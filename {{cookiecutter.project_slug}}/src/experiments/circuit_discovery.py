"""Circuit discovery by edge attribution patching, with a faithfulness check.

The graph is EAP-IG's (Hanna et al. 2024): upstream nodes ``input`` (the embeddings),
attention heads ``a{layer}.h{head}`` and MLPs ``m{layer}`` write into the residual stream;
downstream, each head reads it through its ``q``, ``k`` and ``v`` inputs, each MLP and the
``logits`` read it whole. An edge u -> v is u's output as it enters v's input.

Scores (EAP, Syed et al. 2023): ablating edge u -> v in the clean run changes the metric
by about ``(a_u_ablated - a_u_clean) . dMetric/d(input_v)``, summed over positions and
averaged over prompts; two forwards and one backward score every edge. ``ig_steps > 0``
averages the gradient over inputs interpolated from clean to ablated (EAP-IG), which
corrects EAP where the metric saturates. Ablated values are the corrupted run's
(``ablation="corrupted"``) or the mean over the clean prompts (``"mean"``).

``evaluate_circuit`` then really ablates every edge outside the circuit: each downstream
input is recomputed from the current run's upstream outputs with the non-circuit edges'
outputs swapped for their ablated values (one forward). With all edges kept it gives the
clean run and with none the fully ablated one, exactly (the tests check both).

Works on any model whose q/k/v are ``ln1(resid_pre) @ W_{Q,K,V} + b`` (what TransformerLens
writes for standard attention; checked at run time).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.analysis.metrics import bind_metric
from src.data.dataset import ContrastDataset
from src.experiments.results import batches, ci_dict
from src.utils.files import write_text_atomic

QKV = ("q", "k", "v")
ABLATIONS = ("corrupted", "mean")


@dataclass(frozen=True)
class Graph:
    """Nodes and valid edges of a model's computational graph, in forward order.

    ``upstream[i]`` writes node i's output; ``downstream[j]`` is (node, input) with input in
    q/k/v for heads and None for MLPs and logits. ``stage`` orders them: an edge u -> v is
    valid when u's stage is lower than v's.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool

    @property
    def upstream(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            names += [f"m{layer}"] if self.has_mlp else []
        return names

    @property
    def downstream(self) -> list[tuple[str, str | None]]:
        names: list[tuple[str, str | None]] = []
        for layer in range(self.n_layers):
            names += [(f"a{layer}.h{h}", x) for x in QKV for h in range(self.n_heads)]
            names += [(f"m{layer}", None)] if self.has_mlp else []
        return names + [("logits", None)]

    def upstream_index(self, layer: int, head: int | None = None) -> int:
        """Index of head ``head`` of ``layer`` (or its MLP when head is None) in upstream."""
        per_layer = self.n_heads + self.has_mlp
        return 1 + layer * per_layer + (self.n_heads if head is None else head)

    def downstream_index(self, layer: int, qkv: str | None = None) -> int:
        """First index of ``layer``'s q, k or v inputs (heads in order), or of its MLP."""
        per_layer = 3 * self.n_heads + self.has_mlp
        offset = 3 * self.n_heads if qkv is None else QKV.index(qkv) * self.n_heads
        return layer * per_layer + offset

    @staticmethod
    def stage(name: str) -> int:
        """0 for input, 2l+1 for layer l's heads, 2l+2 for its MLP, a large number for logits."""
        if name == "input":
            return 0
        if name == "logits":
            return 10**9
        layer = int(name[1:].split(".")[0])
        return 2 * layer + (1 if name.startswith("a") else 2)

    def valid_edges(self) -> Tensor:
        """[n_upstream, n_downstream] bool: u is computed before v reads the stream."""
        up = torch.tensor([self.stage(u) for u in self.upstream])
        down = torch.tensor([self.stage(v) for v, _ in self.downstream])
        return up[:, None] < down[None, :]


def model_graph(model: Any) -> Graph:
    cfg = model.cfg
    return Graph(cfg.n_layers, cfg.n_heads, not getattr(cfg, "attn_only", False))


# --- activations -------------------------------------------------------------------------


def _upstream_hooks(
    model: Any, graph: Graph, store: Tensor, detach: bool = True
) -> list[tuple[str, Callable]]:
    """Hooks that write every upstream node's output into ``store`` [b, p, n_upstream, d]."""

    def put(index: slice | int, value: Tensor) -> None:
        store[:, :, index] = value.detach() if detach else value

    hooks = [("blocks.0.hook_resid_pre", lambda x, hook: put(0, x))]
    for layer in range(graph.n_layers):
        first = graph.upstream_index(layer, 0)
        heads = slice(first, first + graph.n_heads)
        w_o = model.blocks[layer].attn.W_O

        def head_out(z: Tensor, hook: Any, heads: slice = heads, w_o: Tensor = w_o) -> None:
            put(heads, einops.einsum(z, w_o, "b p h e, h e d -> b p h d"))

        hooks.append((f"blocks.{layer}.attn.hook_z", head_out))
        if graph.has_mlp:
            mlp = graph.upstream_index(layer)
            hooks.append(
                (f"blocks.{layer}.hook_mlp_out", lambda x, hook, i=mlp: put(i, x)),
            )
    return hooks


@torch.no_grad()
def upstream_activations(model: Any, tokens: Tensor, graph: Graph) -> Tensor:
    """Every upstream node's output on ``tokens``: [batch, pos, n_upstream, d_model]."""
    b, p = tokens.shape
    store = torch.zeros(b, p, len(graph.upstream), model.cfg.d_model, device=tokens.device)
    with model.hooks(fwd_hooks=_upstream_hooks(model, graph, store)):
        model(tokens)
    return store


def _check_linear_qkv(model: Any, tokens: Tensor) -> None:
    """Raise if hook_q/k/v are not ln1(resid_pre) @ W + b (the graph's assumption)."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.0.attn.hook_{x}" for x in QKV]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[:1], names_filter=names)
    block = model.blocks[0]
    normed = block.ln1(cache["blocks.0.hook_resid_pre"])
    for x in QKV:
        weight, bias = getattr(block.attn, f"W_{x.upper()}"), getattr(block.attn, f"b_{x.upper()}")
        actual = cache[f"blocks.0.attn.hook_{x}"]
        if weight.shape[0] != actual.shape[2]:
            raise NotImplementedError(
                f"edge attribution needs one {x} per head; this model shares them "
                f"({weight.shape[0]} for {actual.shape[2]} heads)"
            )
        expected = einops.einsum(normed, weight, "b p d, h d e -> b p h e") + bias
        if not torch.allclose(expected, actual, atol=1e-4, rtol=1e-3):
            raise NotImplementedError(
                f"edge attribution needs hook_{x} = ln1(resid_pre) @ W_{x.upper()} + "
                f"b_{x.upper()}; this model's attention computes it differently"
            )


# --- scoring -----------------------------------------------------------------------------


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

    def keep(name: str) -> Callable:
        def hook(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()  # a node of its own, so its gradient is this consumer's alone
            captured[name] = x
            return x

        return hook

    hooks: list[tuple[str, Callable]] = []
    if input_shift is not None:
        hooks.append(("blocks.0.hook_resid_pre", lambda x, hook: x + input_shift))
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", _record(captured, f"resid{layer}")))
        hooks += [(f"blocks.{layer}.attn.hook_{x}", keep(f"{x}{layer}")) for x in QKV]
        if graph.has_mlp:
            hooks.append((f"blocks.{layer}.ln2.hook_in", keep(f"mlp{layer}")))
    hooks.append(("ln_final.hook_in", keep("logits")))

    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(tokens)).sum()
        wanted = [k for k in captured if not k.startswith("resid")]
        grads = dict(
            zip(wanted, torch.autograd.grad(value, [captured[k] for k in wanted]), strict=True)
        )

    b, p = tokens.shape
    out = torch.zeros(b, p, len(graph.downstream), model.cfg.d_model, device=tokens.device)
    for layer in range(graph.n_layers):
        attn = model.blocks[layer].attn
        # gradient w.r.t. ln1's output, per (q/k/v, head): [b, p, 3 * n_heads, d]
        per_input = torch.cat(
            [
                einops.einsum(
                    grads[f"{x}{layer}"],
                    getattr(attn, f"W_{x.upper()}").detach(),
                    "b p h e, h d e -> b p h d",
                )
                for x in QKV
            ],
            dim=2,
        )
        resid = captured[f"resid{layer}"].detach()
        with torch.enable_grad():
            stacked = resid[:, :, None].expand_as(per_input).clone().requires_grad_(True)
            (vjp,) = torch.autograd.grad(model.blocks[layer].ln1(stacked), stacked, per_input)
        start = graph.downstream_index(layer, "q")
        out[:, :, start : start + 3 * graph.n_heads] = vjp
        if graph.has_mlp:
            out[:, :, graph.downstream_index(layer)] = grads[f"mlp{layer}"]
    out[:, :, -1] = grads["logits"]
    return out


def _record(store: dict[str, Tensor], name: str) -> Callable:
    def hook(x: Tensor, hook: Any) -> None:
        store[name] = x

    return hook


def _mean_upstream(model: Any, dataset: ContrastDataset, graph: Graph, batch_size: int) -> Tensor:
    """Mean over clean prompts of every upstream output, per position: [p, n_upstream, d]."""
    device = next(model.parameters()).device
    total = None
    for batch in batches(dataset, batch_size):
        acts = upstream_activations(model, batch.clean_tokens.to(device), graph).sum(0)
        total = acts if total is None else total + acts
    return total / len(dataset)


def _ablated_upstream(
    model: Any, batch: ContrastDataset, graph: Graph, ablation: str, mean: Tensor | None
) -> Tensor:
    if ablation == "corrupted":
        return upstream_activations(model, batch.corrupted_tokens, graph)
    return mean.expand(len(batch), *mean.shape)


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
    _check_args(ablation, ig_steps)
    graph = model_graph(model)
    device = next(model.parameters()).device
    _check_linear_qkv(model, dataset.clean_tokens[:1].to(device))
    mean = _mean_upstream(model, dataset, graph, batch_size) if ablation == "mean" else None
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
        delta = _ablated_upstream(model, batch, graph, ablation, mean) - clean
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


# --- circuits ----------------------------------------------------------------------------


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
    down_nodes = [name for name, _ in graph.downstream]
    # downstream columns of each upstream node (its q/k/v or its whole input)
    columns = {u: [j for j, v in enumerate(down_nodes) if v == u] for u in up_names}
    rows = {v: up_names.index(v) for v in set(down_nodes) if v in up_names}
    while True:
        before = int(keep.sum())
        for i, u in enumerate(up_names):
            if u != "input" and not keep[:, columns[u]].any():
                keep[i] = False  # receives nothing: its output is the ablated one anyway
        for j, v in enumerate(down_nodes):
            if v != "logits" and not keep[rows[v]].any():
                keep[:, j] = False  # feeds nothing kept
        if int(keep.sum()) == before:
            return keep


def _correction(current: Tensor, ablated: Tensor, missing: Tensor, columns: slice | int) -> Tensor:
    """Sum over ablated edges into ``columns`` of (current - ablated) upstream output."""
    weights = missing[:, columns]
    if weights.ndim == 1:
        return einops.einsum(current - ablated, weights, "b p u d, u -> b p d")
    return einops.einsum(current - ablated, weights, "b p u d, u v -> b p v d")


def _ablation_hooks(
    model: Any, graph: Graph, ablated: Tensor, missing: Tensor, current: Tensor
) -> list[tuple[str, Callable]]:
    """Hooks that rebuild each downstream input with the ``missing`` edges' upstream outputs
    (weight 1 = fully ablated) replaced by ``ablated``; ``current`` collects this run's."""
    hooks = _upstream_hooks(model, graph, current, detach=False)
    resid: dict[int, Tensor] = {}
    for layer in range(graph.n_layers):
        block = model.blocks[layer]
        hooks.append(
            (f"blocks.{layer}.hook_resid_pre", lambda x, hook, i=layer: resid.__setitem__(i, x))
        )
        for x in QKV:
            start = graph.downstream_index(layer, x)
            cols = slice(start, start + graph.n_heads)
            if not missing[:, cols].any():
                continue

            def rebuild(act: Tensor, hook: Any, i=layer, cols=cols, x=x, block=block) -> Tensor:
                inputs = resid[i][:, :, None] - _correction(current, ablated, missing, cols)
                weight = getattr(block.attn, f"W_{x.upper()}")
                bias = getattr(block.attn, f"b_{x.upper()}")
                return einops.einsum(block.ln1(inputs), weight, "b p h d, h d e -> b p h e") + bias

            hooks.append((f"blocks.{layer}.attn.hook_{x}", rebuild))
        if graph.has_mlp:
            col = graph.downstream_index(layer)
            if missing[:, col].any():
                hooks.append(
                    (
                        f"blocks.{layer}.ln2.hook_in",
                        lambda x, hook, col=col: x - _correction(current, ablated, missing, col),
                    )
                )
    if missing[:, -1].any():
        hooks.append(
            ("ln_final.hook_in", lambda x, hook: x - _correction(current, ablated, missing, -1))
        )
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
    ablated = _ablated_upstream(model, batch, graph, ablation, mean)
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
    _check_args(ablation, 0)
    graph = model_graph(model)
    device = next(model.parameters()).device
    keep = keep.to(device)
    mean = _mean_upstream(model, dataset, graph, batch_size) if ablation == "mean" else None
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


def _check_args(ablation: str, ig_steps: int) -> None:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}; got {ablation!r}")
    if ig_steps < 0:
        raise ValueError(f"ig_steps must be >= 0, got {ig_steps}")


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
    output everywhere). Edges into heads carry which input (``qkv``: q, k or v).
    """
    valid = graph.valid_edges()
    scores, keep = scores.cpu(), keep.cpu() & valid
    in_circuit = {u for i, u in enumerate(graph.upstream) if keep[i].any()}
    in_circuit |= {v for j, (v, _) in enumerate(graph.downstream) if keep[:, j].any()}
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


def save_circuit(circuit: dict[str, Any], path: str | Path) -> Path:
    """Write the circuit JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(circuit, indent=1))
    return path


def iter_circuit_edges(circuit: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The edges of a saved circuit that are in it."""
    return (edge for edge in circuit["edges"] if edge["in_circuit"])


# --- experiment --------------------------------------------------------------------------


def discover_circuit(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Score every edge, keep the config's top_n (or threshold), prune, and measure
    faithfulness with everything outside the circuit ablated. Returns the circuit dict
    (``nodes``, ``edges``, ``faithfulness``, ``metadata``; see ``circuit_dict``)."""
    section = config.circuit_discovery
    graph = model_graph(model)
    scores = edge_scores(
        model, dataset, section.metric, ablation=section.ablation, ig_steps=section.ig_steps,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    valid = graph.valid_edges().to(scores.device)
    keep = prune(
        select_edges(scores, valid, top_n=section.top_n, threshold=section.threshold), graph
    )
    check = evaluate_circuit(
        model, dataset, keep, section.metric, ablation=section.ablation, batch_size=batch_size
    )
    gap = check["clean"].mean() - check["ablated"].mean()
    normalized = (check["circuit"] - check["ablated"].mean()) / gap
    faithfulness = {
        "metric": section.metric,
        "ablation": section.ablation,
        "recovered": check["recovered"],
        "recovered_ci": ci_dict(normalized),
        **{k: ci_dict(check[k]) for k in ("clean", "ablated", "circuit")},
        "n_edges": int(keep.sum()),
    }
    metadata = {
        "model": config.model.name,
        "method": "EAP-IG" if section.ig_steps else "EAP",
        "ig_steps": section.ig_steps,
        "top_n": section.top_n,
        "threshold": section.threshold,
        "n_prompts": len(dataset),
        "dataset": dataset.name,
    }
    return circuit_dict(graph, scores, keep, faithfulness, metadata)


def run_circuit_discovery(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """``discover_circuit``, saved as JSON in ``output.results_dir`` (and drawn, when
    ``output.figures``); returns the summary that goes into the experiment log."""
    circuit = discover_circuit(model, dataset, config, batch_size=batch_size, progress=progress)
    name = config.experiment.name
    path = save_circuit(circuit, Path(config.output.results_dir) / f"{name}_circuit.json")
    figures: list[str] = []
    if config.output.figures:
        from src.visualization.circuit import plot_circuit, save_circuit_html

        stem = Path(config.output.figures_dir) / f"{name}_circuit"
        title = f"{name}: {circuit['metadata']['method']} circuit"
        figures = [
            str(plot_circuit(circuit, f"{stem}.png", title=title)),
            str(save_circuit_html(circuit, f"{stem}.html", title=title)),
        ]
    faith = circuit["faithfulness"]
    edges = sorted(iter_circuit_edges(circuit), key=lambda e: -abs(e["score"]))
    return {
        "n_samples": len(dataset),
        "n_edges": faith["n_edges"],
        "n_nodes": sum(n["in_circuit"] for n in circuit["nodes"]),
        "recovered": faith["recovered"],
        "recovered_low": faith["recovered_ci"]["low"],
        "recovered_high": faith["recovered_ci"]["high"],
        "clean_metric": faith["clean"]["mean"],
        "ablated_metric": faith["ablated"]["mean"],
        "circuit_metric": faith["circuit"]["mean"],
        "nodes": [n["name"] for n in circuit["nodes"] if n["in_circuit"]],
        "edges": [_edge_name(e) for e in edges],
        "circuit_file": str(path),
        "figures": figures,
    }


def _edge_name(edge: dict[str, Any]) -> str:
    """EAP-IG's edge name: ``a0.h2->a1.h0<k>``."""
    port = f"<{edge['qkv']}>" if edge["qkv"] else ""
    return f"{edge['source']}->{edge['target']}{port}"
