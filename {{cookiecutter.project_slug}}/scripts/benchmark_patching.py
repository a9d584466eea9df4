"""Time `activation_patch` against `transformer_lens.patching` on the same inputs.

    python scripts/benchmark_patching.py --model both --kind both --device auto [--threads 1]

For every component and layout, runs the matching TransformerLens function (one full
forward per patched index) and ours on the same model, prompts and metric, and prints a
table: seconds of each (best of --repeats), the speed-up and the largest absolute
difference. Models: the trained toy (everything patched) and a random-init model of GPT-2
small's shape (a subset, below), native bridges. `--kind pretrained` (or `both`, then with
the native speed-ups side by side) times pretrained bridges of each size instead: a local
random-init GPT-2 checkpoint (`src.models.checkpoints`; tiny for the toy, of GPT-2 small's
shape for gpt2-sized), loaded through `load_model(dir)` as a downloaded model, on random
tokens (corrupted = clean with the middle token changed).

- TL is given the clean cache its API takes; building it is not in 'TL s' (it is added in
  'TL+cache x'). Ours starts from the tokens: its own caching is in its time.
- GPT-2-sized: only --layers are patched (default: the first and the last, whose mean
  cost for ours is that of all layers) and, in the per-position head rows, only
  --positions (default: the corrupted one and the last). TL then runs
  `generic_activation_patch` with its patch setter over exactly the same indices.
- pattern: TL's own functions return the corrupted baseline on native bridges (the toy run
  prints this); the TL side patches `hook_z` instead (see scripts/tl_reference.py).

A second table sums each component's two layouts (its whole sweep). Rows with only a few
whole-layer patches ([layer] with 2 layers) cannot reach the per-position speed-ups on a
CPU: TL runs one forward per patch, and ours must still run its own clean forward (TL is
handed the cache) and, for a patch at layer 0, a whole forward too; batching, not layer
skipping, is what pays there, and a CPU gains little from bigger batches. On a GPU it does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
import common  # noqa: E402, F401  (puts the project root on sys.path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["toy", "gpt2-sized", "both"], default="both")
    parser.add_argument(
        "--kind",
        choices=["native", "pretrained", "both"],
        default="native",
        help="native bridges, pretrained (Hugging Face) bridges of the same sizes, or both",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--n-prompts", type=int, help="prompts (default: toy 8, gpt2-sized 2)")
    parser.add_argument("--seq", type=int, help="tokens per prompt (default: toy 31, gpt2 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side (best kept)")
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        help="layers patched on the GPT-2-sized model (default: the first and the last)",
    )
    parser.add_argument(
        "--positions",
        type=int,
        nargs="+",
        help="positions of the GPT-2-sized per-position head rows (default: the corrupted "
        "one and the last; residual rows patch every position)",
    )
    parser.add_argument("--memory-budget-mb", type=float, default=1024, help="for ours")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--components", nargs="+", help="only these components")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Row:
    component: str
    layout: str
    n_patches: int
    tl_s: float
    cache_s: float
    ours_s: float
    max_diff: float


def sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], Any], repeats: int, device: Any) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs of ``fn`` (seconds), and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def toy_inputs(device: Any, n_prompts: int, seq: int) -> tuple[Any, Any, Any, Callable]:
    from src.analysis.metrics import bind_metric
    from src.data.induction import make_induction_dataset
    from src.models.load import load_model
    from src.models.toy import TOY_BOS_TOKEN_ID

    model = load_model("toy-induction", device=device)
    data = make_induction_dataset(n_prompts, seq, model.cfg.d_vocab, TOY_BOS_TOKEN_ID, seed=0)
    data = data.to(model.cfg.device)
    metric = bind_metric("logit_diff", data.answer_tokens, data.wrong_tokens)
    return model, data.clean_tokens, data.corrupted_tokens, metric


def gpt2_sized_inputs(device: Any, n_prompts: int, seq: int) -> tuple[Any, Any, Any, Callable]:
    """A random-init native model of GPT-2 small's shape, on ``random_inputs``."""
    from src.models.load import gpt2_shaped_model

    return random_inputs(gpt2_shaped_model(device, n_ctx=max(64, seq)), n_prompts, seq)


def pretrained_inputs(
    size: str, folder: Path, device: Any, n_prompts: int, seq: int
) -> tuple[Any, Any, Any, Callable]:
    """A random-init GPT-2 checkpoint saved in ``folder`` (tiny for ``size`` "toy", else of
    GPT-2 small's shape) with the tiny tokenizer, loaded through ``load_model(dir)`` as a
    downloaded model is, on ``random_inputs``."""
    from src.models.checkpoints import sample_corpus, save_checkpoint, train_tokenizer
    from src.models.load import load_model

    gpt2_small = dict(n_layers=12, d_model=768, n_heads=12, n_ctx=1024, vocab_size=50257)
    shape = {} if size == "toy" else gpt2_small
    tokenizer = train_tokenizer(sample_corpus())
    path = save_checkpoint("gpt2", folder / size, tokenizer, **shape)
    return random_inputs(load_model(str(path), device=device), n_prompts, seq)


def random_inputs(model: Any, n_prompts: int, seq: int) -> tuple[Any, Any, Any, Callable]:
    """``model`` on random prompts; corrupted = clean with the middle token changed; metric
    = final logit difference of two random tokens."""
    import torch

    from src.analysis.metrics import bind_metric

    cfg = model.cfg
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (n_prompts, seq), generator=generator)
    corrupted = clean.clone()
    corrupted[:, seq // 2] = torch.randint(0, cfg.d_vocab, (n_prompts,), generator=generator)
    answer, wrong = torch.randint(0, cfg.d_vocab, (2, n_prompts), generator=generator)
    device = next(model.parameters()).device
    metric = bind_metric("logit_diff", answer.to(device), wrong.to(device))
    return model, clean.to(device), corrupted.to(device), metric


def clean_caches(model: Any, clean: Any, corrupted: Any, device: Any) -> tuple[float, Any, Any]:
    """TL's clean cache (and the seconds it took), and the cache it patches ``pattern`` from
    (``tl_reference.pattern_z_cache``)."""
    import torch

    from scripts.tl_reference import pattern_z_cache

    with torch.no_grad():
        cache_s, (_, cache) = best_time(lambda: model.run_with_cache(clean), 1, device)
        _, corrupted_cache = model.run_with_cache(corrupted)
    return cache_s, cache, pattern_z_cache(model, cache, corrupted_cache)


def benchmark_model(
    name: str, pretrained: bool, args: argparse.Namespace, device: Any, folder: Path
) -> list[Row]:
    """Both tables of model ``name`` (native, or its ``pretrained`` counterpart, saved in
    ``folder``); returns the rows."""
    import torch

    from src.models.hooks import available_components

    toy = name == "toy"
    n_prompts = args.n_prompts or (8 if toy else 2)
    seq = args.seq or (31 if toy else 32)
    if pretrained:
        model, clean, corrupted, metric = pretrained_inputs(name, folder, device, n_prompts, seq)
    else:
        make = toy_inputs if toy else gpt2_sized_inputs
        model, clean, corrupted, metric = make(device, n_prompts, seq)
    n_layers = model.cfg.n_layers
    subset: dict[str, list[int]] = {}  # the toy: everything
    if not toy:
        subset["layer"] = sorted(args.layers or [0, n_layers - 1])
        subset["pos"] = sorted(args.positions or [seq // 2, seq - 1])
    cache_s, cache, z_cache = clean_caches(model, clean, corrupted, device)
    with torch.no_grad():
        baseline = metric(model(corrupted)).item()
    what = ", ".join(f"{axis} {v}" for axis, v in subset.items()) or "every index"
    kind = "pretrained (Hugging Face) bridge" if pretrained else "native bridge"
    print(
        f"\n## {name}, {kind}: {n_layers} layers, d_model {model.cfg.d_model}, d_vocab "
        f"{model.cfg.d_vocab}, {n_prompts} prompts x {seq} tokens, device {device}, "
        f"threads {torch.get_num_threads()}, best of {args.repeats}, memory budget "
        f"{args.memory_budget_mb:g} MB\npatched, the same on both sides: {what} (positions: "
        f"per-position head rows only); TL's clean cache took {cache_s:.3f} s: not in "
        f"'TL s', added in 'TL+cache x'"
    )
    inputs = (model, clean, corrupted, metric)
    rows: list[Row] = []
    available = available_components(model)
    for component in args.components or available:
        if component == "mlp_out" and component not in available:
            continue
        caches = (cache_s, z_cache if component == "pattern" else cache)
        rows += compare_component(inputs, caches, component, subset, args, device, rows)
    if toy and not pretrained and (args.components is None or "pattern" in args.components):
        print_tl_pattern_note(model, corrupted, cache, metric, baseline)
    print_components(rows)
    tl_total, ours_total = sum(r.tl_s for r in rows), sum(r.ours_s for r in rows)
    print(
        f"total: TL {tl_total:.2f} s, ours {ours_total:.2f} s, {tl_total / ours_total:.1f}x; "
        f"rows >= 3x: {sum(r.tl_s / r.ours_s >= 3 for r in rows)} of {len(rows)} "
        f"({sum((r.tl_s + r.cache_s) / r.ours_s >= 3 for r in rows)} with TL's cache)"
    )
    return rows


def compare_component(
    inputs: tuple, caches: tuple[float, Any], component: str, subset: dict[str, list[int]],
    args: argparse.Namespace, device: Any, done: list[Row],
) -> list[Row]:  # fmt: skip
    """Both layouts of ``component``, TL's and ours, timed on ``inputs`` (model, clean,
    corrupted, metric); ``caches``: TL's cache time and the cache it patches from. Each row
    is printed as it comes (a header before the first of ``done``)."""
    import torch

    from scripts.tl_reference import run_tl
    from src.analysis.patching import activation_patch
    from src.models.hooks import HEAD_COMPONENTS, result_axes

    model, clean, corrupted, metric = inputs
    cache_s, tl_cache = caches
    rows = []
    for per_position in (False, True):
        heads_row = component in HEAD_COMPONENTS and per_position
        kept = {k: v for k, v in subset.items() if k != "pos" or heads_row}
        tl = partial(run_tl, model, corrupted, tl_cache, metric, component, per_position, kept)
        ours_fn = partial(
            activation_patch, model, clean, corrupted, metric, component, per_position,
            layers=kept.get("layer"), positions=kept.get("pos"),
            memory_budget_mb=args.memory_budget_mb,
        )  # fmt: skip
        with torch.no_grad():
            tl_s, ref = best_time(tl, args.repeats, device)
        ours_s, ours = best_time(ours_fn, args.repeats, device)
        patched = ~torch.isnan(ref)
        assert torch.equal(patched, ~torch.isnan(ours)), "patched indices differ"
        rows.append(
            Row(
                component=component,
                layout="[" + ", ".join(result_axes(component, per_position)) + "]",
                n_patches=int(patched.sum()),
                tl_s=tl_s,
                cache_s=cache_s,
                ours_s=ours_s,
                max_diff=(ref[patched] - ours[patched]).abs().max().item(),
            )
        )
        print_row(rows[-1], header=not done and len(rows) == 1)
    return rows


def print_tl_pattern_note(
    model: Any, corrupted: Any, cache: Any, metric: Callable, baseline: float
) -> None:
    """TL's own pattern patching on a native bridge returns the corrupted baseline."""
    import torch
    import transformer_lens.patching as tlp

    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        tl_pattern = tlp.get_act_patch_attn_head_pattern_all_pos(model, corrupted, cache, metric)
    print(
        f"note: TL's own get_act_patch_attn_head_pattern_all_pos here: max |value - "
        f"corrupted baseline| = {(tl_pattern - baseline).abs().max().item():.2e}"
    )


def component_sums(rows: list[Row]) -> dict[str, tuple[int, float, float]]:
    """Per component, both layouts together (its whole sweep): patches, TL s, ours s."""
    sums = {}
    for component in dict.fromkeys(row.component for row in rows):
        mine = [row for row in rows if row.component == component]
        sums[component] = (
            sum(r.n_patches for r in mine),
            sum(r.tl_s for r in mine),
            sum(r.ours_s for r in mine),
        )
    return sums


def print_side_by_side(name: str, native: list[Row], pretrained: list[Row]) -> None:
    """Per component, the whole sweep on the native and the pretrained bridge of ``name``
    (the toy, attention-only, has no mlp_out)."""
    print(f"\n## {name}: native vs pretrained bridge, per component (both layouts)")
    print(
        f"{'component':<10} {'native TL s':>11} {'ours s':>8} {'speed-up':>8}   "
        f"{'pretrained TL s':>15} {'ours s':>8} {'speed-up':>8} {'max |diff|':>10}"
    )
    sums = component_sums(native), component_sums(pretrained)
    for component in dict.fromkeys([*sums[0], *sums[1]]):
        cells = []
        for kind_sums, width in zip(sums, (11, 15), strict=True):
            if component not in kind_sums:
                cells.append(f"{'-':>{width}} {'-':>8} {'-':>8}")
                continue
            _, tl_s, ours_s = kind_sums[component]
            cells.append(f"{tl_s:>{width}.3f} {ours_s:>8.3f} {tl_s / ours_s:>7.1f}x")
        diff = max(r.max_diff for r in native + pretrained if r.component == component)
        print(f"{component:<10} {cells[0]}   {cells[1]} {diff:>10.2e}")


def print_components(rows: list[Row]) -> None:
    """Per component, both layouts together: the component's whole sweep."""
    print(f"\n{'component':<10} {'patches':>7} {'TL s':>8} {'ours s':>8} {'speed-up':>8}")
    sums = component_sums(rows)
    for component, (n_patches, tl_s, ours_s) in sums.items():
        print(f"{component:<10} {n_patches:>7} {tl_s:>8.3f} {ours_s:>8.3f} {tl_s / ours_s:>7.1f}x")
    fast = sum(tl_s / ours_s >= 3 for _, tl_s, ours_s in sums.values())
    print(f"components >= 3x: {fast} of {len(sums)}")


def print_row(row: Row, header: bool = False) -> None:
    if header:
        print(
            f"{'component':<10} {'layout':<19} {'patches':>7} {'TL s':>8} {'ours s':>8} "
            f"{'speed-up':>8} {'TL+cache x':>10} {'max |diff|':>10}"
        )
    print(
        f"{row.component:<10} {row.layout:<19} {row.n_patches:>7} {row.tl_s:>8.3f} "
        f"{row.ours_s:>8.3f} {row.tl_s / row.ours_s:>7.1f}x "
        f"{(row.tl_s + row.cache_s) / row.ours_s:>9.1f}x {row.max_diff:>10.2e}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from src.models.load import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = ["toy", "gpt2-sized"] if args.model == "both" else [args.model]
    kinds = {"native": [False], "pretrained": [True], "both": [False, True]}[args.kind]
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            rows = [
                benchmark_model(name, pretrained, args, device, Path(folder))
                for pretrained in kinds
            ]
            if len(rows) == 2:
                print_side_by_side(name, *rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
