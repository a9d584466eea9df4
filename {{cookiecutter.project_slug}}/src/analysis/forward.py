"""Forward-pass plumbing of fast activation patching (``src.analysis.patching``).

Hook points resolved once per model, temporary hooks cheaper than ``model.hooks``, capture
forwards that stop after the last activation wanted, forwards that start at a layer (by
hand on native bridges, inside the model's own forward elsewhere) and the check that this
reproduces the model, whether a metric reads the final position only, and how many
patched prompts fit a memory budget.
"""

from __future__ import annotations

import inspect
import itertools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor

Metric = Callable[[Tensor], Tensor]


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


_HOOK_POINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hook_points(model: Any) -> dict[str, Any]:
    """``model.hook_dict``, resolved once per model: a bridge resolves its aliases again at
    every access (about 1 ms, as long as a whole toy forward)."""
    if model not in _HOOK_POINTS:
        _HOOK_POINTS[model] = model.hook_dict
    return _HOOK_POINTS[model]


_LEVELS = itertools.count(start=-(10**9), step=-1)


@contextmanager
def hooked(hooks: list[tuple[Any, Callable[..., Any]]]) -> Iterator[None]:
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


def capture(
    model: Any,
    points: dict[str, Any],
    tokens: Tensor,
    names: list[str],
    logits: bool,
    final_only: bool = False,
    cache: Any = None,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The activations ``names`` of a forward on ``tokens`` (nothing else is kept), and its
    logits if ``logits`` (``final_only``: see ``model_logits``); otherwise the forward stops
    once all are captured. A ``cache`` (``new_cache``) gets the keys and values."""
    store: dict[str, Tensor] = {}
    stop_after = None if logits else len(names)
    hooks = [
        (points[name], partial(_save_hook, store=store, name=name, stop_after=stop_after))
        for name in names
    ]
    with hooked(hooks):
        try:
            if cache is None:
                return model_logits(model, tokens, final_only), store
            return forward_from_layer(model, tokens, None, 0, final_only, prefix=cache), store
        except _CaptureDone:
            return None, store


def is_native(model: Any) -> bool:
    """A bridge around TransformerLens' own native model (``boot_native``, the toy models)."""
    return getattr(model.cfg, "architecture", None) == "TransformerLensNative"


def keeps_final_logits(model: Any) -> bool:
    """Whether the forward of a (Hugging Face) bridge can unembed the final position only:
    its model takes ``logits_to_keep``, after which its head runs as usual (softcapping)."""
    forward = getattr(getattr(model, "original_model", None), "forward", None)
    return forward is not None and "logits_to_keep" in inspect.signature(forward).parameters


def model_logits(model: Any, tokens: Tensor, final_only: bool = False) -> Tensor:
    """The model's logits on ``tokens``; only the final position's if ``final_only`` (needs
    ``keeps_final_logits``)."""
    return model(tokens, logits_to_keep=1) if final_only else model(tokens)


def block_out(output: Any) -> Tensor:
    """A block's residual output (bridged blocks return a 1-tuple, as Hugging Face blocks)."""
    return output[0] if isinstance(output, tuple) else output


def run_tail(model: Any, resid: Tensor, start: int, final_only: bool = False) -> Tensor:
    """Logits from ``resid`` entering block ``start``: blocks, final norm and unembedding run
    by hand (at the last position only if ``final_only``). Exact on native bridges."""
    for block in model.blocks[start:]:
        resid = block_out(block(resid))
    if final_only:
        resid = resid[:, -1:]
    return model.unembed(model.ln_final(resid))


@contextmanager
def blocks_return(blocks: Any, resid: Tensor) -> Iterator[None]:
    """Inside, each of ``blocks`` returns ``resid`` without running: a Hugging Face parent's
    loop (``hidden_states = layer(hidden_states, ...)``) hands ``resid`` to the next block."""

    def skip(*args: Any, **kwargs: Any) -> Tensor:
        return resid

    try:
        for block in blocks:
            # on the instance: a bridge passes attribute writes on to its Hugging Face module
            object.__setattr__(block, "forward", skip)
        yield
    finally:
        for block in blocks:
            vars(block).pop("forward", None)


def forward_from_layer(
    model: Any,
    tokens: Tensor,
    resid_pre: Tensor | None,
    start: int,
    final_only: bool = False,
    prefix: Any = None,
) -> Tensor:
    """Logits of the model's own forward on ``tokens`` [batch, pos] whose block ``start`` gets
    ``resid_pre`` [batch, pos, d_model] and whose earlier blocks do not run. The parent model
    still computes what its blocks need (rotary positions, causal and sliding-window masks),
    so this works where ``run_tail`` does not; ``final_only``: see ``model_logits``.

    With a ``prefix`` (``prefix_cache``: keys and values of the positions before
    ``tokens``), ``tokens`` and ``resid_pre`` hold the later positions only, which attend to
    the prefix as if it had been computed with them."""
    with blocks_return(model.blocks[:start], resid_pre):
        if prefix is None:
            return model_logits(model, tokens, final_only)
        with attention_reads_cache(model):
            kwargs = {_cache_argument(model): prefix, "use_cache": True}
            if final_only:
                kwargs["logits_to_keep"] = 1
            return model(tokens, **kwargs)


# --- a key/value prefix: patched forwards that start at the patched position -------------
#
# A patch at position p changes nothing before p (attention is causal), so a forward may
# run positions p.. only, their attention reading the corrupted run's keys and values of
# positions < p from a Hugging Face cache. Bridged attention reads the cache under the
# name ``past_key_values``; transformers 5 passes it as ``cache``: ``attention_reads_cache``
# hands it over. ``can_start_at_position`` checks the result once against the full forward.


def _cache_argument(model: Any) -> str:
    """The name under which the Hugging Face model's forward takes a key/value cache."""
    params = inspect.signature(model.original_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def takes_kv_cache(model: Any) -> bool:
    """Whether the (Hugging Face) bridge's model takes a key/value cache, with which patched
    forwards can start at the patched position (``forward_from_layer``'s prefix)."""
    forward = getattr(getattr(model, "original_model", None), "forward", None)
    if forward is None or is_native(model):
        return False
    params = inspect.signature(forward).parameters
    return ("cache" in params or "past_key_values" in params) and "use_cache" in params


@contextmanager
def attention_reads_cache(model: Any) -> Iterator[None]:
    """Inside, bridged attention that updates a cache named ``past_key_values`` also finds
    one passed as ``cache`` (transformers 5's name)."""
    patched = []
    for block in model.blocks:
        attn = getattr(block, "attn", None)
        update = getattr(attn, "_update_kv_cache", None)
        if update is None:
            continue

        def read_cache(k: Tensor, v: Tensor, _update: Any = update, **kwargs: Any) -> Any:
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return _update(k, v, **kwargs)

        object.__setattr__(attn, "_update_kv_cache", read_cache)
        patched.append(attn)
    try:
        yield
    finally:
        for attn in patched:
            vars(attn).pop("_update_kv_cache", None)


def _cache_layers(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """(keys, values) [batch, kv_head, pos, d_head] per layer of a Hugging Face cache."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def new_cache() -> Any:
    """An empty Hugging Face key/value cache, for ``capture`` to fill."""
    from transformers import DynamicCache

    return DynamicCache()


def cached_kv(cache: Any, rows: slice) -> list[tuple[Tensor, Tensor]]:
    """The keys and values of each layer of a filled ``cache``, of the prompts ``rows``
    (none where the model's attention filled no cache)."""
    return [(k[rows].detach(), v[rows].detach()) for k, v in _cache_layers(cache)]


def prefix_cache(kv: list[tuple[Tensor, Tensor]], n_pos: int, repeats: int) -> Any:
    """A fresh cache of the first ``n_pos`` positions of ``kv`` (``cached_kv``), its batch
    repeated ``repeats`` times (one copy per slice of patched prompts)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        shape = (repeats, 1, 1, 1)
        cache.update(k[:, :, :n_pos].repeat(shape), v[:, :, :n_pos].repeat(shape), layer)
    return cache


def can_start_at_position(
    model: Any,
    tokens: Tensor,
    resid_pre: Tensor,
    start: int,
    kv: list[tuple[Tensor, Tensor]],
    logits: Tensor,
) -> bool:
    """Whether forwards from layer ``start`` that run the second half of the positions
    only, reading the first half from ``kv``, give the final logits ``logits``."""
    n_pos = tokens.shape[1]
    if len(kv) != model.cfg.n_layers or n_pos < 2:
        return False
    half = n_pos // 2
    try:
        cache = prefix_cache(kv, half, 1)
        tail = forward_from_layer(
            model, tokens[:, half:], resid_pre[:, half:], start, True, prefix=cache
        )
    except Exception:  # any failure means "cannot": run every position
        return False
    expected = logits[:, -1:]
    tol = 1e-4 if expected.element_size() >= 4 else 1e-2
    tail = tail[:, -1:]
    return tail.shape == expected.shape and torch.allclose(tail, expected, rtol=tol, atol=tol)


def can_start_at_layer(
    model: Any,
    tokens: Tensor,
    resid_pre: Tensor,
    start: int,
    logits: Tensor | None,
    final_only: bool = False,
) -> bool:
    """Whether patched forwards on ``tokens`` can start at layer ``start`` and give the
    model's logits.

    Native bridges (plain residual blocks, run by hand: ``run_tail``) can. On others, this
    runs ``forward_from_layer`` once from the ``resid_pre`` of layer ``start`` and compares
    it with the full forward's ``logits`` (False without them), at the final position only
    if ``final_only``.
    """
    if is_native(model):
        return True
    if logits is None:
        return False
    try:
        tail = forward_from_layer(model, tokens, resid_pre, start, final_only)
        expected = logits[:, -tail.shape[1] :]
    except Exception:  # any failure means "cannot start at a layer": use full forwards
        return False
    tol = 1e-4 if expected.element_size() >= 4 else 1e-2
    return tail.shape == expected.shape and torch.allclose(tail, expected, rtol=tol, atol=tol)


def _d_vocab_out(model: Any) -> int:
    cfg = model.cfg
    return cfg.d_vocab_out if cfg.d_vocab_out and cfg.d_vocab_out > 0 else cfg.d_vocab


def reads_final_position_only(metric: Metric, model: Any, n_prompts: int, n_pos: int) -> bool:
    """Whether ``metric`` gives the same values on random logits [batch, pos, d_vocab] as on
    those logits with every position replaced by the final one, i.e. it reads only the
    final position (as ``logit_diff`` & co do)."""
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(0)
    base = torch.randn(1, n_pos, _d_vocab_out(model), generator=generator, device=device)
    base = base.to(model.cfg.dtype)
    full, final = base.expand(n_prompts, -1, -1), base[:, -1:].expand(n_prompts, n_pos, -1)
    try:
        a, b = torch.as_tensor(metric(full)), torch.as_tensor(metric(final))
    except Exception:  # the metric cannot take broadcast logits: give it full logits
        return False
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)


def final_position_suffices(model: Any, metric: Metric, n_prompts: int, n_pos: int) -> bool:
    """Whether forwards may unembed the final position only: ``metric`` reads no other and
    the model can (native bridges by hand, others with ``keeps_final_logits``)."""
    can = is_native(model) or keeps_final_logits(model)
    return can and reads_final_position_only(metric, model, n_prompts, n_pos)


def bytes_per_row(model: Any, n_pos: int, full_logits: bool) -> int:
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
    row = bytes_per_row(model, n_pos, full_logits)
    return max(1, int(memory_budget_mb * 2**20 // (n_prompts * row)))
