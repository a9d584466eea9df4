"""The computational graph of circuit discovery (EAP-IG's, Hanna et al. 2024).

Upstream nodes ``input`` (the embeddings), attention heads ``a{layer}.h{head}`` and MLPs
``m{layer}`` write into the residual stream; downstream, each head reads it through its
``q``, ``k`` and ``v`` inputs, each MLP and the ``logits`` read it whole. An edge u -> v is
u's output as it enters v's input. Ablated outputs are the corrupted run's
(``ablation="corrupted"``) or the mean over the clean prompts (``"mean"``).

Works on any model whose q/k/v are ``ln1(resid_pre) @ W_{Q,K,V} + b`` (what TransformerLens
writes for standard attention; ``check_linear_qkv`` checks it at run time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import einops
import torch
from torch import Tensor

from src.data.dataset import ContrastDataset, batches
from src.models.hooks import hook_name

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


# --- upstream outputs -------------------------------------------------------------------


def upstream_hooks(
    model: Any, graph: Graph, store: Tensor, detach: bool = True
) -> list[tuple[str, Callable]]:
    """Hooks that write every upstream node's output into ``store`` [b, p, n_upstream, d]."""

    def put(index: slice | int, value: Tensor) -> None:
        store[:, :, index] = value.detach() if detach else value

    hooks = [(hook_name("resid_pre", 0), lambda x, hook: put(0, x))]
    for layer in range(graph.n_layers):
        first = graph.upstream_index(layer, 0)
        heads = slice(first, first + graph.n_heads)
        w_o = model.blocks[layer].attn.W_O

        def head_out(z: Tensor, hook: Any, heads: slice = heads, w_o: Tensor = w_o) -> None:
            put(heads, einops.einsum(z, w_o, "b p h e, h e d -> b p h d"))

        hooks.append((hook_name("z", layer), head_out))
        if graph.has_mlp:
            mlp = graph.upstream_index(layer)
            hooks.append((hook_name("mlp_out", layer), lambda x, hook, i=mlp: put(i, x)))
    return hooks


@torch.no_grad()
def upstream_activations(model: Any, tokens: Tensor, graph: Graph) -> Tensor:
    """Every upstream node's output on ``tokens``: [batch, pos, n_upstream, d_model]."""
    b, p = tokens.shape
    store = torch.zeros(b, p, len(graph.upstream), model.cfg.d_model, device=tokens.device)
    with model.hooks(fwd_hooks=upstream_hooks(model, graph, store)):
        model(tokens)
    return store


def mean_upstream(model: Any, dataset: ContrastDataset, graph: Graph, batch_size: int) -> Tensor:
    """Mean over clean prompts of every upstream output, per position: [p, n_upstream, d]."""
    device = next(model.parameters()).device
    total = None
    for batch in batches(dataset, batch_size):
        acts = upstream_activations(model, batch.clean_tokens.to(device), graph).sum(0)
        total = acts if total is None else total + acts
    return total / len(dataset)


def ablated_upstream(
    model: Any, batch: ContrastDataset, graph: Graph, ablation: str, mean: Tensor | None
) -> Tensor:
    """The ablated upstream outputs of ``batch``: its corrupted run's, or ``mean``."""
    if ablation == "corrupted":
        return upstream_activations(model, batch.corrupted_tokens, graph)
    return mean.expand(len(batch), *mean.shape)


def check_linear_qkv(model: Any, tokens: Tensor) -> None:
    """Raise if hook_q/k/v are not ln1(resid_pre) @ W + b (the graph's assumption)."""
    names = [hook_name(point, 0) for point in ("resid_pre", *QKV)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[:1], names_filter=names)
    block = model.blocks[0]
    normed = block.ln1(cache[hook_name("resid_pre", 0)])
    for x in QKV:
        weight, bias = getattr(block.attn, f"W_{x.upper()}"), getattr(block.attn, f"b_{x.upper()}")
        actual = cache[hook_name(x, 0)]
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


def check_args(ablation: str, ig_steps: int) -> None:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}; got {ablation!r}")
    if ig_steps < 0:
        raise ValueError(f"ig_steps must be >= 0, got {ig_steps}")
