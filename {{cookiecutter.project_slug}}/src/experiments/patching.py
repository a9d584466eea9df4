"""Fast activation patching: clean activations into the corrupted run, many patches per forward.

Same results and layouts as ``transformer_lens.patching`` (which runs one full forward per
patched index), computed with far fewer and shorter forwards:

1. Batching. The corrupted prompts are repeated once per patch in a forward and each hook
   patches every slice at once (one ``torch.where``); ``memory_budget_mb`` bounds the number
   of patches per forward.
2. Layer skipping (native bridges; other bridges where it is checked to be exact). Nothing
   before the patched layer changes, so a patch at layer ``l`` starts from the cached
   corrupted ``resid_pre`` of layer ``l`` and runs ``blocks[l:]``, ``ln_final`` and
   ``unembed`` only; the patches of a forward join it at their own layer. Other bridges
   (pretrained ones) run full forwards, still batched. Activations come from one forward
   on clean + corrupted that keeps only what is patched and stops after the last of them.
3. Final-position logits. When the metric reads only the last position (checked once, on
   random logits), only that position is unembedded and the metric gets those logits
   broadcast to ``[batch, pos, d_vocab]`` (TL's metric contract). Then, on native bridges,
   per-position patches at the last layer that cannot reach the final position (head
   outputs, queries, attention or MLP outputs at an earlier position) are not run: their
   value is the corrupted run's.

Exact identity: patching the whole ``resid_pre`` of a layer gives the clean run.

Attention patterns are patched through the head outputs: ``z = clean pattern @ corrupted
values`` for the patched head (and destination position); the identity ``z = pattern @ v``
is checked on the clean run. On native bridges ``hook_pattern`` fires after the attention
output is computed, so editing it changes nothing, and
``transformer_lens.patching.get_act_patch_attn_head_pattern_*`` return the corrupted
baseline for every head there.
"""

from __future__ import annotations

import itertools
import math
import operator
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.data.dataset import ContrastDataset
from src.experiments.results import (
    baselines,
    batches,
    effect_summary,
    over_batches,
    per_prompt_metric,
    results_header,
    save_effect_figures,
    sweep_indices,
    token_labels,
)

COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head_out", "q", "k", "v", "pattern")
HEAD_COMPONENTS = ("head_out", "q", "k", "v", "pattern")

Metric = Callable[[Tensor], Tensor]

# The hook each component patches (TL's names); "pattern" goes through the head outputs.
_HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "head_out": "blocks.{}.attn.hook_z",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "pattern": "blocks.{}.attn.hook_z",
}
_RESID_PRE = "blocks.{}.hook_resid_pre"
_PATTERN = "blocks.{}.attn.hook_pattern"
_V = "blocks.{}.attn.hook_v"
_Z = "blocks.{}.attn.hook_z"


def result_axes(component: str, per_position: bool) -> tuple[str, ...]:
    """Axis names of the result of ``activation_patch`` (before any per-prompt axis), in the
    order of the matching ``transformer_lens.patching`` function."""
    if component not in COMPONENTS:
        raise ValueError(f"component={component!r} is unknown; allowed: {', '.join(COMPONENTS)}")
    if component in ("resid_pre", "attn_out", "mlp_out"):
        return ("layer", "pos") if per_position else ("layer",)
    if component == "pattern":
        return ("layer", "head", "pos") if per_position else ("layer", "head")
    return ("layer", "pos", "head") if per_position else ("layer", "head")


def n_heads_of(model: Any, component: str) -> int:
    """Heads indexed by ``component``: key/value heads for k and v (grouped-query attention)."""
    if component in ("k", "v") and model.cfg.n_key_value_heads:
        return int(model.cfg.n_key_value_heads)
    return int(model.cfg.n_heads)


def _subset(name: str, values: Sequence[int] | None, size: int, negative: bool) -> list[int]:
    """``values`` checked against ``[0, size)`` (``[-size, size)`` if ``negative``), as sorted
    non-negative ints; all of ``range(size)`` when None."""
    if values is None:
        return list(range(size))
    allowed = f"[{-size if negative else 0}, {size})"
    try:
        ints = [operator.index(v) for v in values]
    except TypeError as error:
        raise ValueError(f"{name} must be a list of ints in {allowed}, got {values!r}") from error
    if not ints:
        raise ValueError(f"{name} must not be empty; allowed values: {allowed}")
    bad = [v for v in ints if not (-size if negative else 0) <= v < size]
    if bad:
        raise ValueError(f"{name} {bad} out of range; allowed: {allowed}")
    return sorted({v % size for v in ints})


@dataclass(frozen=True)
class _Spec:
    """A validated request: what to patch, where, and the layout of the result."""

    component: str
    per_position: bool
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    values: dict[str, list[int]]  # axis -> indices patched along it

    def indices(self) -> list[tuple[int, ...]]:
        """Every patched index in layout order (layer first, so sorted by layer)."""
        return list(itertools.product(*(self.values[axis] for axis in self.axes)))


def _validate(
    model: Any,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    component: str,
    per_position: bool,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    positions: Sequence[int] | None,
) -> _Spec:
    """The request checked against the model's config (no forward needed)."""
    axes = result_axes(component, per_position)
    if tuple(clean_tokens.shape) != tuple(corrupted_tokens.shape) or clean_tokens.ndim != 2:
        raise ValueError(
            f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens "
            f"{tuple(corrupted_tokens.shape)} must have the same shape [batch, pos]"
        )
    cfg = model.cfg
    if component == "mlp_out" and cfg.attn_only:
        allowed = [c for c in COMPONENTS if c != "mlp_out"]
        raise ValueError(
            f"component='mlp_out' but the model is attention-only (cfg.attn_only); "
            f"allowed: {', '.join(allowed)}"
        )
    if heads is not None and component not in HEAD_COMPONENTS:
        raise ValueError(
            f"heads applies to the head components {HEAD_COMPONENTS}, not to {component!r}"
        )
    if positions is not None and not per_position:
        raise ValueError("positions needs per_position=True (otherwise all positions are patched)")
    n_pos, n_heads = clean_tokens.shape[1], n_heads_of(model, component)
    sizes = {"layer": cfg.n_layers, "pos": n_pos, "head": n_heads}
    values = {
        "layer": _subset("layers", layers, cfg.n_layers, negative=False),
        "pos": _subset("positions", positions, n_pos, negative=True),
        "head": _subset("heads", heads, n_heads, negative=False),
    }
    return _Spec(
        component=component,
        per_position=per_position,
        axes=axes,
        shape=tuple(sizes[axis] for axis in axes),
        values={axis: values[axis] for axis in axes},
    )


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


_HOOK_POINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hook_points(model: Any) -> dict[str, Any]:
    """``model.hook_dict``, resolved once per model: a bridge resolves its aliases again at
    every access (about 1 ms, as long as a whole toy forward)."""
    if model not in _HOOK_POINTS:
        _HOOK_POINTS[model] = model.hook_dict
    return _HOOK_POINTS[model]


_LEVELS = itertools.count(start=-(10**9), step=-1)


@contextmanager
def _hooked(hooks: list[tuple[Any, Callable[..., Any]]]) -> Iterator[None]:
    """Forward hooks ``(hook point, fn)`` for the duration of the block; only these are
    removed at the end (a level of their own). Cheaper than ``model.hooks``, which resolves
    every hook name at each entry."""
    level = next(_LEVELS)
    try:
        for point, fn in hooks:
            point.add_hook(fn, level=level)
        yield
    finally:
        for point, _ in hooks:
            point.remove_hooks("fwd", level=level)


class _CaptureDone(Exception):
    """Raised by the last capture hook: the rest of the forward is not needed."""


def _save_hook(
    act: Tensor, hook: Any, *, store: dict[str, Tensor], name: str, stop_after: int | None
) -> None:
    store[name] = act.detach()
    if stop_after is not None and len(store) == stop_after:
        raise _CaptureDone


def _capture(
    model: Any, points: dict[str, Any], tokens: Tensor, names: list[str], logits: bool
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The activations ``names`` of a forward on ``tokens`` (nothing else is kept), and its
    logits if ``logits``; otherwise the forward stops once all are captured."""
    store: dict[str, Tensor] = {}
    stop_after = None if logits else len(names)
    hooks = [
        (points[name], partial(_save_hook, store=store, name=name, stop_after=stop_after))
        for name in names
    ]
    with _hooked(hooks):
        try:
            return model(tokens), store
        except _CaptureDone:
            return None, store


def _is_native(model: Any) -> bool:
    """A bridge around TransformerLens' own native model (``boot_native``, the toy models)."""
    return getattr(model.cfg, "architecture", None) == "TransformerLensNative"


def _block_out(output: Any) -> Tensor:
    """A block's residual output (bridged blocks return a 1-tuple, as Hugging Face blocks)."""
    return output[0] if isinstance(output, tuple) else output


def _run_tail(model: Any, resid: Tensor, start: int, final_only: bool = False) -> Tensor:
    """Logits from ``resid`` entering block ``start``: blocks, final norm and unembedding
    (at the last position only if ``final_only``)."""
    for block in model.blocks[start:]:
        resid = _block_out(block(resid))
    if final_only:
        resid = resid[:, -1:]
    return model.unembed(model.ln_final(resid))


def _can_start_at_layer(
    model: Any, resid_pre: Tensor | None = None, start: int = 0, logits: Tensor | None = None
) -> bool:
    """Whether a forward can start at a layer: running ``blocks[start:]``, ``ln_final`` and
    ``unembed`` by hand from the ``resid_pre`` of layer ``start`` gives the model's logits.

    Native bridges (plain residual blocks) can. Other bridges may need more block arguments
    (attention masks, rotary positions): this runs that tail once on ``resid_pre`` and
    compares it with the final-position ``logits`` of the full forward (False without them).
    """
    if _is_native(model):
        return True
    if resid_pre is None or logits is None:
        return False
    try:
        tail = _run_tail(model, resid_pre, start, final_only=True)
    except Exception:  # any failure means "cannot run blocks by hand": use full forwards
        return False
    final = logits[:, -1:]
    tol = 1e-4 if final.element_size() >= 4 else 1e-2
    return tail.shape == final.shape and torch.allclose(tail, final, rtol=tol, atol=tol)


def _d_vocab_out(model: Any) -> int:
    cfg = model.cfg
    return cfg.d_vocab_out if cfg.d_vocab_out and cfg.d_vocab_out > 0 else cfg.d_vocab


def _reads_final_position_only(metric: Metric, model: Any, n_prompts: int, n_pos: int) -> bool:
    """Whether ``metric`` gives the same values on random logits [batch, pos, d_vocab] as on
    those logits with every position replaced by the final one, i.e. it reads only the
    final position (as ``logit_diff`` & co do)."""
    generator = torch.Generator(device=_device(model)).manual_seed(0)
    base = torch.randn(
        1, n_pos, _d_vocab_out(model), generator=generator, device=_device(model)
    ).to(model.cfg.dtype)
    full, final = base.expand(n_prompts, -1, -1), base[:, -1:].expand(n_prompts, n_pos, -1)
    try:
        a, b = torch.as_tensor(metric(full)), torch.as_tensor(metric(final))
    except Exception:  # the metric cannot take broadcast logits: give it full logits
        return False
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)


def _bytes_per_row(model: Any, n_pos: int, full_logits: bool) -> int:
    """Rough peak memory of one prompt row in a no-grad forward: the transient tensors of a
    block (residual copies, q/k/v/z, scores and pattern, MLP hidden) and the logits."""
    cfg = model.cfg
    d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model)
    d_vocab = _d_vocab_out(model)
    block = 10 * n_pos * cfg.d_model + 3 * cfg.n_heads * n_pos**2 + 2 * n_pos * d_mlp
    logits = 2 * (n_pos if full_logits else 1) * d_vocab
    return (block + logits) * torch.finfo(cfg.dtype).bits // 8


def patches_per_forward(
    model: Any, n_prompts: int, n_pos: int, memory_budget_mb: float, full_logits: bool = True
) -> int:
    """How many patches (slices of ``n_prompts`` prompts) one forward holds within
    ``memory_budget_mb`` (at least 1)."""
    row = _bytes_per_row(model, n_pos, full_logits)
    return max(1, int(memory_budget_mb * 2**20 // (n_prompts * row)))


def pattern_times_values(pattern: Tensor, v: Tensor) -> Tensor:
    """Head outputs z [batch, dest, head, d_head] of ``pattern`` [batch, head, dest, src]
    applied to values ``v`` [batch, src, kv_head, d_head] (kv heads shared as in GQA)."""
    v = v.repeat_interleave(pattern.shape[1] // v.shape[2], dim=2)
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


@dataclass
class _Inputs:
    """What the patched forwards need, from one capture forward on clean + corrupted."""

    targets: dict[int, Tensor]  # layer -> clean values patched in [batch, pos, ...]
    resid_pre: dict[int, Tensor]  # layer -> corrupted resid_pre [batch, pos, d_model]
    corrupted_logits: Tensor | None


def _inputs(
    model: Any, points: dict[str, Any], clean: Tensor, corrupted: Tensor, spec: _Spec, logits: bool
) -> _Inputs:
    """Capture the clean targets and corrupted residual streams in one forward (stopped
    after the last of them unless the corrupted ``logits`` are needed too)."""
    layers, component = spec.values["layer"], spec.component
    per_layer = [_PATTERN, _V, _Z] if component == "pattern" else [_HOOKS[component]]
    names = sorted({hook.format(layer) for layer in layers for hook in [*per_layer, _RESID_PRE]})
    n = clean.shape[0]
    both_logits, acts = _capture(model, points, torch.cat([clean, corrupted]), names, logits)
    corrupted_logits = None if both_logits is None else both_logits[n:]
    clean_acts = {name: act[:n] for name, act in acts.items()}
    corrupted_acts = {name: act[n:] for name, act in acts.items()}
    resid_pre = {layer: corrupted_acts[_RESID_PRE.format(layer)] for layer in layers}
    if component != "pattern":
        targets = {layer: clean_acts[_HOOKS[component].format(layer)] for layer in layers}
        return _Inputs(targets, resid_pre, corrupted_logits)
    targets = {}
    for layer in layers:
        pattern = clean_acts[_PATTERN.format(layer)]
        z = pattern_times_values(pattern, clean_acts[_V.format(layer)])
        expected = clean_acts[_Z.format(layer)]
        if z.shape != expected.shape or not torch.allclose(z, expected, rtol=1e-3, atol=1e-4):
            raise RuntimeError(
                f"layer {layer}: the head outputs are not pattern @ values, so the attention "
                "pattern cannot be patched through them for this model"
            )
        targets[layer] = pattern_times_values(pattern, corrupted_acts[_V.format(layer)])
    return _Inputs(targets, resid_pre, corrupted_logits)


def _patch_hook(act: Tensor, hook: Any, *, mask: Tensor, target: Tensor) -> Tensor:
    """Patch ``target`` [batch, ...] into the slices of ``act`` [slices * batch, ...] where
    ``mask`` [slices, 1, ...] is True: all slices in one ``torch.where``."""
    n_slices = mask.shape[0]
    act_slices = act.reshape(n_slices, -1, *act.shape[1:])
    return torch.where(mask, target, act_slices).reshape(act.shape)


def _layer_mask(
    spec: _Spec, index: list[tuple[int, ...]], lo: int, n_slices: int, n_pos: int, n_heads: int
) -> Tensor:
    """Boolean mask [n_slices, 1, pos, 1] (residual-like) or [n_slices, 1, pos, head, 1]
    (heads), True where slice ``lo + i`` patches ``index[i]``."""
    heads_axis = spec.component in HEAD_COMPONENTS
    mask = torch.zeros(n_slices, n_pos, n_heads if heads_axis else 1, dtype=torch.bool)
    rows = torch.arange(lo, lo + len(index))
    named = [dict(zip(spec.axes, ix, strict=True)) for ix in index]
    pos = torch.tensor([ix["pos"] for ix in named]) if spec.per_position else slice(None)
    head = torch.tensor([ix["head"] for ix in named]) if heads_axis else 0
    mask[rows, pos, head] = True
    if heads_axis:
        return mask[:, None, :, :, None]
    return mask[:, None, :, :]


@dataclass
class _Patcher:
    """Runs the patched forwards of one ``activation_patch`` call."""

    model: Any
    spec: _Spec
    metric: Metric
    points: dict[str, Any]
    corrupted: Tensor
    inputs: _Inputs
    start_at_layer: bool
    final_only: bool

    def logits(self, chunk: list[tuple[int, ...]]) -> Tensor:
        """Logits of the corrupted run with one patch per slice of prompts, for the indices
        of ``chunk`` (sorted by layer): [slices * batch, pos (1 if final_only), d_vocab]."""
        n_pos = self.corrupted.shape[1]
        n_heads = n_heads_of(self.model, self.spec.component)
        layer_of = [ix[0] for ix in chunk]
        counts = {layer: layer_of.count(layer) for layer in sorted(set(layer_of))}
        hooks, lo = [], 0
        for layer, n in counts.items():
            # from the cache, rows join at their own layer, so this layer's slices come last
            present = lo + n if self.start_at_layer else len(chunk)
            mask = _layer_mask(self.spec, chunk[lo : lo + n], lo, present, n_pos, n_heads)
            target = self.inputs.targets[layer]
            hook = partial(_patch_hook, mask=mask.to(target.device), target=target)
            hooks.append((self.points[_HOOKS[self.spec.component].format(layer)], hook))
            lo += n
        with _hooked(hooks):
            if not self.start_at_layer:
                return self.model(self.corrupted.repeat(len(chunk), 1))
            resid = None
            first = layer_of[0]
            for layer, block in enumerate(self.model.blocks[first:], start=first):
                if layer in counts:
                    new = self.inputs.resid_pre[layer].repeat(counts[layer], 1, 1)
                    resid = new if resid is None else torch.cat([resid, new])
                resid = _block_out(block(resid))
            if self.final_only:
                resid = resid[:, -1:]
            return self.model.unembed(self.model.ln_final(resid))

    def run(self, chunk: list[tuple[int, ...]]) -> list[Tensor]:
        """The metric of each patch of ``chunk``."""
        return self.evaluate(self.logits(chunk), len(chunk))

    def evaluate(self, logits: Tensor, n_slices: int) -> list[Tensor]:
        """The metric of each slice of prompts of ``logits`` (one position: broadcast)."""
        n_prompts, n_pos = self.corrupted.shape
        logits = logits.expand(-1, n_pos, -1)
        return [
            torch.as_tensor(self.metric(logits[s * n_prompts : (s + 1) * n_prompts]))
            for s in range(n_slices)
        ]


def _patch_all(
    model: Any,
    spec: _Spec,
    metric: Metric,
    points: dict[str, Any],
    corrupted: Tensor,
    inputs: _Inputs,
    indices: list[tuple[int, ...]],
    memory_budget_mb: float,
    progress: bool,
) -> list[Tensor]:
    """Metric values of every index, in forwards of as many patches as the budget allows."""
    start = spec.values["layer"][0]
    start_at_layer = _can_start_at_layer(
        model, inputs.resid_pre[start], start, inputs.corrupted_logits
    )
    n_prompts, n_pos = corrupted.shape
    final_only = start_at_layer and _reads_final_position_only(metric, model, n_prompts, n_pos)
    patcher = _Patcher(model, spec, metric, points, corrupted, inputs, start_at_layer, final_only)
    bar = tqdm(
        total=len(indices), desc=f"patch {spec.component}", unit="patch", disable=not progress
    )
    values: dict[tuple[int, ...], Tensor] = {}
    if final_only and _is_native(model):
        values = _unreachable(patcher, indices)
        bar.update(len(values))
    todo = [index for index in indices if index not in values]
    k = patches_per_forward(model, n_prompts, n_pos, memory_budget_mb, not final_only)
    if corrupted.device.type == "cpu":
        k = min(k, max(1, _CPU_TOKENS_PER_FORWARD // (n_prompts * n_pos)))
    for lo in range(0, len(todo), k):
        chunk = todo[lo : lo + k]
        values.update(zip(chunk, patcher.run(chunk), strict=True))
        bar.update(len(chunk))
    bar.close()
    return [values[index] for index in indices]


# On a CPU, forwards on more tokens than this cost more per token (activations spill out
# of the caches): about 1.8x on the toy model here; no loss on GPT-2-sized blocks.
_CPU_TOKENS_PER_FORWARD = 2048

# Components whose patch at the last layer changes the output of its own position only
# (o projection, MLP, norms and unembedding act position by position).
_LOCAL_AT_LAST_LAYER = ("head_out", "q", "attn_out", "mlp_out", "pattern")


def _unreachable(patcher: _Patcher, indices: list[tuple[int, ...]]) -> dict[tuple, Tensor]:
    """Indices whose patch cannot reach the final position, with their value: the corrupted
    run's metric. These are per-position patches at the last layer, before the final
    position, of a component in ``_LOCAL_AT_LAST_LAYER``; only for a metric that reads the
    final position alone."""
    spec, model = patcher.spec, patcher.model
    last_layer, last_pos = model.cfg.n_layers - 1, patcher.corrupted.shape[1] - 1
    if not spec.per_position or spec.component not in _LOCAL_AT_LAST_LAYER:
        return {}
    pos_axis = spec.axes.index("pos")
    skipped = [ix for ix in indices if ix[0] == last_layer and ix[pos_axis] != last_pos]
    if not skipped:
        return {}
    logits = _run_tail(model, patcher.inputs.resid_pre[last_layer], last_layer, final_only=True)
    baseline = patcher.evaluate(logits, n_slices=1)[0]
    return dict.fromkeys(skipped, baseline)


def _clean_metric(model: Any, points: dict[str, Any], clean: Tensor, metric: Metric) -> Tensor:
    """``metric`` of the clean run; on a native bridge with a final-position metric, only the
    final position is unembedded."""
    n_prompts, n_pos = clean.shape
    if not (_is_native(model) and _reads_final_position_only(metric, model, n_prompts, n_pos)):
        return torch.as_tensor(metric(model(clean)))
    last = model.cfg.n_layers - 1
    _, acts = _capture(model, points, clean, [_RESID_PRE.format(last)], logits=False)
    logits = _run_tail(model, acts[_RESID_PRE.format(last)], last, final_only=True)
    return torch.as_tensor(metric(logits.expand(-1, n_pos, -1)))


def activation_patch(
    model: Any,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    metric: Metric,
    component: str,
    per_position: bool = False,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    memory_budget_mb: float = 1024,
    progress: bool = False,
) -> Tensor:
    """``metric`` of the corrupted run with one activation of the clean run patched in, for
    every index of ``component``; layout as ``transformer_lens.patching``:

    - resid_pre / attn_out / mlp_out: [n_layers, pos] (per_position) or [n_layers] (the
      whole layer, all positions, patched at once);
    - head_out (hook_z) / q / k / v: [n_layers, pos, n_heads] or [n_layers, n_heads];
    - pattern: [n_layers, n_heads, dest_pos] or [n_layers, n_heads].

    ``layers`` / ``heads`` / ``positions`` (negative = from the end; needs per_position)
    restrict the indices patched; the others are NaN. ``metric`` maps logits
    [batch, pos, d_vocab] to a scalar, or to one value per prompt [batch], which adds a
    trailing axis to the result. Many patches share a forward, as many as fit
    ``memory_budget_mb`` (on a CPU, also at most about 2048 tokens, which runs faster).
    Returns a float32 tensor on the CPU.
    """
    spec = _validate(
        model, clean_tokens, corrupted_tokens, component, per_position, layers, heads, positions
    )
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
    device = _device(model)
    clean, corrupted = clean_tokens.to(device), corrupted_tokens.to(device)
    indices = spec.indices()
    with torch.no_grad():
        points = _hook_points(model)
        if component == "resid_pre" and not per_position:
            # the whole residual stream patched: the rest of the run is the clean run
            values = [_clean_metric(model, points, clean, metric)] * len(indices)
        else:
            # the corrupted logits are needed to check a non-native bridge's tail only
            inputs = _inputs(model, points, clean, corrupted, spec, logits=not _is_native(model))
            values = _patch_all(
                model, spec, metric, points, corrupted, inputs, indices, memory_budget_mb, progress
            )
    # one transfer: the values stay on the model's device until here
    stacked = torch.stack([torch.as_tensor(v, device=device) for v in values]).float().cpu()
    result = torch.full(spec.shape + stacked.shape[1:], math.nan)
    result[tuple(torch.tensor(indices).T)] = stacked
    return result


def activation_patch_all(
    model: Any,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    metric: Metric,
    per_position: bool = False,
    **kwargs: Any,
) -> dict[str, Tensor]:
    """``activation_patch`` for every component the model has (no mlp_out on attention-only
    models); ``heads`` is passed to the head components only."""
    results = {}
    for component in COMPONENTS:
        if component == "mlp_out" and model.cfg.attn_only:
            continue
        kw = dict(kwargs)
        if component not in HEAD_COMPONENTS:
            kw.pop("heads", None)
        results[component] = activation_patch(
            model, clean_tokens, corrupted_tokens, metric, component, per_position, **kw
        )
    return results


# --- experiment --------------------------------------------------------------------------


def run_patching_experiment(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Activation patching of each configured component, over the dataset in batches of
    prompts: the normalized effect of every patch (0 = corrupted, 1 = clean) with a
    bootstrap CI over prompts, the top entries, and heatmaps when ``output.figures``."""
    section = config.patching
    device = _device(model)
    clean, corrupted = baselines(model, dataset, section.metric, batch_size)
    results = results_header(clean, corrupted, section.metric)
    labels = token_labels(model, dataset.clean_tokens)
    results["token_labels"] = labels  # generate_all redraws the heatmaps from the log
    steps = [b.to(device) for b in batches(dataset, batch_size)]
    for component in section.components:
        where = sweep_indices(section, component in HEAD_COMPONENTS)

        def patch(b: ContrastDataset, component: str = component, where: dict = where) -> Tensor:
            metric = per_prompt_metric(b, section.metric)
            return activation_patch(
                model, b.clean_tokens, b.corrupted_tokens, metric, component,
                section.per_position, **where,
            )  # fmt: skip

        per_prompt = over_batches(patch, steps, f"patching {component}", progress)
        axes = result_axes(component, section.per_position)
        summary = effect_summary(per_prompt, axes, clean, corrupted)
        results["components"][component] = summary
        if summary["top"]:
            results[f"{component}_top_effect"] = summary["top"][0]["mean"]
        if config.output.figures:
            stem = Path(config.output.figures_dir) / f"{config.experiment.name}_{component}"
            title = f"{config.experiment.name}: activation patching, {component}"
            results["figures"] += save_effect_figures(
                summary, str(stem), title=title, xticklabels=labels
            )
    return results
