"""The computational graph of circuit discovery (EAP-IG's, Hanna et al. 2024).

Upstream nodes ``input`` (the embeddings), attention heads ``a{layer}.h{head}`` and MLPs
``m{layer}`` write into the residual stream; downstream, each head reads it through its
``q``, ``k`` and ``v`` inputs, each MLP and the ``logits`` read it whole. An edge u -> v is
u's output as it enters v's input. Ablated outputs are the corrupted run's
(``ablation="corrupted"``) or the mean over the clean prompts (``"mean"``).

The graph follows the model: under grouped-query attention (Gemma-2, Qwen2, Llama) the
``k`` and ``v`` inputs are one per key/value head, shared by the query heads of its group
(named by the group's first head; ``Graph.readers`` lists them all); with parallel attention
and MLP (GPT-NeoX / Pythia) an MLP reads its block's input, so no head of its own layer feeds
it; a head's output is ``z_h @ W_O[h]``, through the block's post-attention norm (Gemma-2's
``ln1_post``) with that norm's scale frozen at its value in the run, so a layer's heads sum to
its ``hook_attn_out``. ``check_graph`` checks at run time that q/k/v are
``ln1(resid_pre) @ W_{Q,K,V} + b`` and that every node's input is the sum of the outputs
feeding it (plus constant biases): a model the graph does not describe fails with one line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import einops
import torch
from torch import Tensor

from src.analysis.norms import norm_linear
from src.data.dataset import ContrastDataset, batches
from src.models.hooks import (
    LN_FINAL_IN,
    POST_NORMS,
    hook_name,
    n_heads_of,
    parallel_attn_mlp,
    post_norm,
)

QKV = ("q", "k", "v")
ABLATIONS = ("corrupted", "mean")


@dataclass(frozen=True)
class Graph:
    """Nodes and valid edges of a model's computational graph, in forward order.

    ``upstream[i]`` writes node i's output; ``downstream[j]`` is (node, input) with input in
    q/k/v for heads and None for MLPs and logits. Per layer the inputs are the ``n_heads``
    queries, the ``n_kv_heads`` keys, the ``n_kv_heads`` values (fewer than the queries under
    grouped-query attention: each is named by the first head of its group) and the MLP.
    ``stage`` orders them: an edge u -> v is valid when u's stage is lower than v's.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool
    n_kv_heads: int | None = None  # None: one key/value per head
    parallel: bool = False  # the MLP reads the block's input, as its attention does

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def n_inputs(self, qkv: str) -> int:
        """How many ``qkv`` inputs a layer has: one per head (q) or per key/value head."""
        return self.n_heads if qkv == "q" else self.kv_heads

    def group(self, layer: int, kv_head: int) -> list[str]:
        """The query heads of ``layer`` that read key/value head ``kv_head``."""
        size = self.n_heads // self.kv_heads
        return [f"a{layer}.h{h}" for h in range(kv_head * size, (kv_head + 1) * size)]

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
            for x in QKV:
                names += [(self._reader(layer, x, i)[0], x) for i in range(self.n_inputs(x))]
            names += [(f"m{layer}", None)] if self.has_mlp else []
        return names + [("logits", None)]

    def _reader(self, layer: int, qkv: str, index: int) -> list[str]:
        return [f"a{layer}.h{index}"] if qkv == "q" else self.group(layer, index)

    def readers(self) -> list[list[str]]:
        """For each downstream input, the nodes that read it: its head (q), the heads of its
        key/value group (k, v), its MLP, or nothing (logits)."""
        names: list[list[str]] = []
        for layer in range(self.n_layers):
            for x in QKV:
                names += [self._reader(layer, x, i) for i in range(self.n_inputs(x))]
            names += [[f"m{layer}"]] if self.has_mlp else []
        return names + [[]]

    def upstream_index(self, layer: int, head: int | None = None) -> int:
        """Index of head ``head`` of ``layer`` (or its MLP when head is None) in upstream."""
        per_layer = self.n_heads + self.has_mlp
        return 1 + layer * per_layer + (self.n_heads if head is None else head)

    def downstream_index(self, layer: int, qkv: str | None = None) -> int:
        """First index of ``layer``'s q, k or v inputs (heads in order), or of its MLP."""
        per_layer = self.n_heads + 2 * self.kv_heads + self.has_mlp
        offsets = {"q": 0, "k": self.n_heads, "v": self.n_heads + self.kv_heads}
        return layer * per_layer + offsets.get(qkv, self.n_heads + 2 * self.kv_heads)

    def stage(self, name: str) -> int:
        """0 for input, 2l+1 for layer l's heads, 2l+2 for its MLP (2l+1 when it runs in
        parallel with the heads), a large number for logits."""
        if name == "input":
            return 0
        if name == "logits":
            return 10**9
        layer = int(name[1:].split(".")[0])
        return 2 * layer + (1 if name.startswith("a") or self.parallel else 2)

    def valid_edges(self) -> Tensor:
        """[n_upstream, n_downstream] bool: u is computed before v reads the stream."""
        up = torch.tensor([self.stage(u) for u in self.upstream])
        down = torch.tensor([self.stage(v) for v, _ in self.downstream])
        return up[:, None] < down[None, :]


def model_graph(model: Any) -> Graph:
    cfg = model.cfg
    return Graph(
        cfg.n_layers,
        cfg.n_heads,
        not getattr(cfg, "attn_only", False),
        n_kv_heads=n_heads_of(model, "k"),
        parallel=parallel_attn_mlp(model),
    )


def head_outputs(model: Any, layer: int, z: Tensor, scale: Tensor | None = None) -> Tensor:
    """What each head of ``layer`` writes into the residual stream, from its ``hook_z``
    ``[..., n_heads, d_head]``: ``z_h @ W_O[h]`` as ``[..., n_heads, d_model]``, through the
    block's post-attention norm (if any) with its scale frozen at ``scale`` (that norm's
    ``hook_scale`` in the same run, ``[..., 1]``), so the heads of a layer sum to its
    ``hook_attn_out`` (less the output bias, ``output_bias``)."""
    w_o = model.blocks[layer].attn.W_O.detach().to(z.dtype)
    out = einops.einsum(z, w_o, "... h e, h e d -> ... h d")
    return _post_attention(model, layer, scale)(out, heads=True)


def output_bias(model: Any, layer: int, scale: Tensor | None = None) -> Tensor | None:
    """The attention output bias ``b_O`` of ``layer`` as it reaches the residual stream
    (through the post-attention norm, if any, at ``scale``); None if it has none."""
    b_o = getattr(model.blocks[layer].attn, "b_O", None)
    if b_o is None:
        return None
    b_o = b_o.detach() if scale is None else b_o.detach().to(scale.dtype)
    return _post_attention(model, layer, scale)(b_o)


def _post_attention(model: Any, layer: int, scale: Tensor | None) -> Callable[..., Tensor]:
    """The linear part of block ``layer``'s post-attention norm at ``scale`` (identity
    without one); ``heads=True`` for inputs with a head axis before the features."""
    if post_norm(model, "attn_out", layer) is None:
        return lambda x, heads=False: x
    if scale is None:
        raise ValueError(f"block {layer} normalizes its attention output: give its scale")
    norm = getattr(model.blocks[layer], POST_NORMS["attn_out"])

    def apply(x: Tensor, heads: bool = False) -> Tensor:
        frozen = scale.unsqueeze(-2) if heads else scale
        return norm_linear(model, norm, frozen.to(x.dtype))(x)

    return apply


# --- upstream outputs -------------------------------------------------------------------


def upstream_hooks(
    model: Any, graph: Graph, store: Tensor, detach: bool = True
) -> list[tuple[str, Callable]]:
    """Hooks that write every upstream node's output into ``store`` [b, p, n_upstream, d]."""

    def put(index: slice | int, value: Tensor) -> None:
        store[:, :, index] = value.detach() if detach else value

    hooks = [(hook_name("resid_pre", 0), lambda x, hook: put(0, x))]
    z_of: dict[int, Tensor] = {}

    def from_z(z: Tensor, hook: Any, layer: int, heads: slice) -> None:
        put(heads, head_outputs(model, layer, z))

    def from_scale(scale: Tensor, hook: Any, layer: int, heads: slice) -> None:
        put(heads, head_outputs(model, layer, z_of[layer], scale))

    for layer in range(graph.n_layers):
        first = graph.upstream_index(layer, 0)
        where = {"layer": layer, "heads": slice(first, first + graph.n_heads)}
        norm = post_norm(model, "attn_out", layer)
        if norm is None:
            hooks.append((hook_name("z", layer), functools.partial(from_z, **where)))
        else:  # the heads' outputs need the post-attention norm's scale, which comes later
            hooks.append((hook_name("z", layer), lambda z, hook, i=layer: z_of.__setitem__(i, z)))
            hooks.append((f"{norm}.hook_scale", functools.partial(from_scale, **where)))
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


@torch.no_grad()
def check_graph(model: Any, tokens: Tensor) -> None:
    """Raise NotImplementedError, in one line, where the graph does not describe the model:
    hook_q/k/v must be ``ln1(resid_pre) @ W + b`` (checked in block 0), and the input of
    every layer's heads (``resid_pre``), of every MLP (``ln2``'s input) and of the logits
    (``ln_final``'s) the sum of the outputs of the nodes that feed it plus constant output
    biases. One forward on the first prompt."""
    graph = model_graph(model)
    layers = range(graph.n_layers)
    inputs = {hook_name("resid_pre", i): graph.downstream_index(i, "q") for i in layers}
    if graph.has_mlp:
        inputs |= {hook_name("ln2_in", i): graph.downstream_index(i) for i in layers}
    inputs[LN_FINAL_IN] = len(graph.downstream) - 1
    tokens = tokens[:1]
    store = torch.zeros(*tokens.shape, len(graph.upstream), model.cfg.d_model, device=tokens.device)
    names = [*inputs, *(hook_name(x, 0) for x in QKV)]
    with model.hooks(fwd_hooks=upstream_hooks(model, graph, store)):
        _, cache = model.run_with_cache(tokens, names_filter=names)
    _check_linear_qkv(model, cache)
    valid = graph.valid_edges().to(tokens.device)
    for name, column in inputs.items():
        expected = einops.einsum(store, valid[:, column].to(store.dtype), "b p u d, u -> b p d")
        for layer in layers:
            bias = getattr(model.blocks[layer].attn, "b_O", None)
            if bias is not None and valid[graph.upstream_index(layer, 0), column]:
                if post_norm(model, "attn_out", layer) is not None and bias.abs().max() > 0:
                    raise NotImplementedError(
                        "circuit discovery needs constant attention output biases; this model "
                        "normalizes b_O with each head's output (post-attention norm)"
                    )
                expected = expected + bias.detach()
        actual = cache[name].to(expected.dtype)
        if not _close(expected, actual, cache[name].dtype):
            error = (expected - actual).abs().max().item()
            raise NotImplementedError(
                f"circuit discovery needs {name} = the sum of the graph's node outputs that "
                f"feed it; on this model they differ by up to {error:.3g}"
            )


def _check_linear_qkv(model: Any, cache: Any) -> None:
    """Raise if block 0's hook_q/k/v in ``cache`` are not ln1(resid_pre) @ W + b."""
    normed = model.blocks[0].ln1(cache[hook_name("resid_pre", 0)])
    for x in QKV:
        weight, bias = qkv_weights(model, 0, x)
        actual = cache[hook_name(x, 0)]
        if weight.shape[0] != actual.shape[2]:
            raise NotImplementedError(
                f"edge attribution needs one {x} per head or key/value head; this model has "
                f"{actual.shape[2]} at hook_{x} for {weight.shape[0]} in W_{x.upper()}"
            )
        expected = einops.einsum(normed, weight, "b p d, h d e -> b p h e") + bias
        if not _close(expected, actual, actual.dtype):
            raise NotImplementedError(
                f"edge attribution needs hook_{x} = ln1(resid_pre) @ W_{x.upper()} + "
                f"b_{x.upper()}; this model's attention computes it differently"
            )


def _close(expected: Tensor, actual: Tensor, dtype: torch.dtype) -> bool:
    """Equal up to the rounding of the model's ``dtype`` (1e-4 in float32 or float64)."""
    tolerance = max(1e-4, 16 * torch.finfo(dtype).eps)
    return torch.allclose(expected, actual, atol=tolerance, rtol=10 * tolerance)


def qkv_weights(model: Any, layer: int, qkv: str) -> tuple[Tensor, Tensor | float]:
    """``W_{Q,K,V}`` of ``layer`` ([heads, d_model, d_head]; key/value heads for k and v)
    and its bias (0.0 for a model without one, e.g. Gemma-2)."""
    attn = model.blocks[layer].attn
    bias = getattr(attn, f"b_{qkv.upper()}", None)
    return getattr(attn, f"W_{qkv.upper()}"), 0.0 if bias is None else bias


def check_args(ablation: str, ig_steps: int) -> None:
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}; got {ablation!r}")
    if ig_steps < 0:
        raise ValueError(f"ig_steps must be >= 0, got {ig_steps}")
