"""Time `ablate` against the same ablation sweep through transformer_lens hooks.

    python scripts/benchmark_ablation.py --model both --kind native --device auto [--threads 1]

The reference (``reference_ablate``) runs one ``run_with_hooks`` forward per ablated index,
its hook writing zeros, the reference mean or resampled activations into that index, as
one would by hand with TransformerLens; ours batches many ablations per forward and starts
at the ablated layer (``src.analysis.ablation``). Both get the same prompts, metric and
indices; the table prints seconds (best of --repeats), the speed-up and the largest
absolute difference. Models as ``benchmark_patching.py``: the trained toy (every index)
and a random-init model of GPT-2 small's shape (the first and last layers; per-position
rows at two positions), native bridges, or (``--kind pretrained``) local random-init GPT-2
checkpoints of both sizes loaded as downloaded models. The reference's own cache of the
reference activations (mean, resample) is in its time, as ours is in ours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
import common  # noqa: E402, F401  (puts the project root on sys.path)

# (component, per_position) rows of each sweep
ROWS = (("head_out", False), ("head_out", True), ("attn_out", True), ("resid_pre", True))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["toy", "gpt2-sized", "both"], default="both")
    parser.add_argument("--kind", choices=["native", "pretrained", "both"], default="native")
    parser.add_argument("--ablations", nargs="+", default=["zero", "mean", "resample"],
                        choices=["zero", "mean", "resample"])  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--n-prompts", type=int, help="prompts (default: toy 8, gpt2-sized 2)")
    parser.add_argument("--seq", type=int, help="tokens per prompt (default: toy 31, gpt2 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side (best kept)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def reference_ablate(
    model: Any,
    tokens: Any,
    metric: Callable,
    component: str,
    per_position: bool,
    *,
    ablation: str,
    reference: Any = None,
    draw: Any = None,
    layers: list[int] | None = None,
    positions: list[int] | None = None,
) -> Any:
    """The ablation sweep the plain TransformerLens way: one ``run_with_hooks`` forward per
    index, its hook setting that index to zeros, the mean of ``reference``'s activations over
    prompts, or the activations of ``reference[draw]`` (resample); layout as ``ablate``,
    NaN outside ``layers`` / ``positions``."""
    import itertools

    import torch

    from src.models.hooks import component as get_component
    from src.models.hooks import n_heads_of

    spec = get_component(component)
    axes = spec.axes(per_position)
    reference = tokens if reference is None else reference
    n_layers, n_pos, n_heads = model.cfg.n_layers, tokens.shape[1], n_heads_of(model, component)
    sizes = {"layer": n_layers, "pos": n_pos, "head": n_heads}
    chosen = {"layer": layers or range(n_layers), "pos": positions or range(n_pos)}
    values = [list(chosen.get(axis, range(sizes[axis]))) for axis in axes]
    with torch.no_grad():
        cache = None
        if ablation != "zero":
            _, cache = model.run_with_cache(reference, names_filter=lambda n: n.endswith(
                spec.hook(0).split(".", 2)[-1]))  # fmt: skip
        out = None
        for index in itertools.product(*values):
            where = dict(zip(axes, index, strict=True))
            name = spec.hook(where["layer"])
            if cache is None:
                target = None
            elif draw is None:
                target = cache[name].mean(0, keepdim=True)
            else:
                target = cache[name][draw]

            def hook(act: Any, hook: Any, where: dict = where, target: Any = target) -> Any:
                act = act.clone()
                pos = where.get("pos", slice(None))
                head = (where["head"],) if "head" in where else ()
                value = 0.0 if target is None else target[(slice(None), pos, *head)]
                act[(slice(None), pos, *head)] = value
                return act

            value = torch.as_tensor(metric(model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])))
            if out is None:
                out = torch.full((*[sizes[a] for a in axes], *value.shape), torch.nan)
            out[index] = value.float().cpu()
    return out


@dataclass(frozen=True)
class Row:
    ablation: str
    component: str
    layout: str
    n: int
    tl_s: float
    ours_s: float
    max_diff: float


def compare(inputs: tuple, ablation: str, component: str, per_position: bool,
            subset: dict[str, list[int]], repeats: int, device: Any) -> Row:  # fmt: skip
    """One row: the reference and ``ablate`` on the same indices (first resample only)."""
    import torch
    from benchmark_patching import best_time

    from src.analysis.ablation import _draw, ablate
    from src.models.hooks import result_axes

    model, tokens, _, metric = inputs
    layers = subset.get("layer")
    positions = subset.get("pos") if per_position and component == "head_out" else None
    draw = _draw(len(tokens), len(tokens), torch.Generator().manual_seed(0))
    reference = partial(
        reference_ablate, model, tokens, metric, component, per_position, ablation=ablation,
        draw=draw if ablation == "resample" else None, layers=layers, positions=positions,
    )  # fmt: skip
    ours = partial(
        ablate, model, tokens, metric, component, per_position, ablation=ablation,
        n_resamples=1, seed=0, layers=layers, positions=positions,
    )  # fmt: skip
    tl_s, ref = best_time(reference, repeats, device)
    ours_s, result = best_time(ours, repeats, device)
    mine = result.values[0] if ablation == "resample" else result.values
    done = ~torch.isnan(ref)
    assert torch.equal(done, ~torch.isnan(mine)), "ablated indices differ"
    layout = "[" + ", ".join(result_axes(component, per_position)) + "]"
    diff = (ref[done] - mine[done]).abs().max().item()
    return Row(ablation, component, layout, int(done.sum()), tl_s, ours_s, diff)


def benchmark_model(name: str, pretrained: bool, args: argparse.Namespace, device: Any,
                    folder: Path) -> list[Row]:  # fmt: skip
    """Every row of model ``name``, printed as they come; returns them."""
    import torch
    from benchmark_patching import gpt2_sized_inputs, pretrained_inputs, toy_inputs

    toy = name == "toy"
    n_prompts = args.n_prompts or (8 if toy else 2)
    seq = args.seq or (31 if toy else 32)
    if pretrained:
        inputs = pretrained_inputs(name, folder, device, n_prompts, seq)
    else:
        inputs = (toy_inputs if toy else gpt2_sized_inputs)(device, n_prompts, seq)
    model = inputs[0]
    n_layers = model.cfg.n_layers
    subset = {} if toy else {"layer": [0, n_layers - 1], "pos": [seq // 2, seq - 1]}
    what = ", ".join(f"{axis} {v}" for axis, v in subset.items()) or "every index"
    bridge = "pretrained (Hugging Face) bridge" if pretrained else "native bridge"
    print(f"\n## {name}, {bridge}: {n_layers} layers, d_model {model.cfg.d_model}, "
          f"{n_prompts} prompts x {seq} tokens, device {device}, threads "
          f"{torch.get_num_threads()}, best of {args.repeats}; ablated: {what}")  # fmt: skip
    print(f"{'ablation':<9} {'component':<10} {'layout':<17} {'n':>4} {'TL hooks s':>10} "
          f"{'ours s':>8} {'speed-up':>8} {'max |diff|':>10}")  # fmt: skip
    rows = []
    for ablation in args.ablations:
        for component, per_position in ROWS:
            row = compare(inputs, ablation, component, per_position, subset, args.repeats,
                          device)  # fmt: skip
            rows.append(row)
            print(f"{row.ablation:<9} {row.component:<10} {row.layout:<17} {row.n:>4} "
                  f"{row.tl_s:>10.3f} {row.ours_s:>8.3f} {row.tl_s / row.ours_s:>7.1f}x "
                  f"{row.max_diff:>10.2e}", flush=True)  # fmt: skip
    tl, ours = sum(r.tl_s for r in rows), sum(r.ours_s for r in rows)
    print(f"total: TL hooks {tl:.2f} s, ours {ours:.2f} s, {tl / ours:.1f}x; rows >= 3x: "
          f"{sum(r.tl_s / r.ours_s >= 3 for r in rows)} of {len(rows)}")  # fmt: skip
    return rows


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
            for pretrained in kinds:
                benchmark_model(name, pretrained, args, device, Path(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
