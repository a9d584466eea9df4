"""Benchmark activation caching: throughput against a bare forward, and peak memory.

    python scripts/benchmark_caching.py --model both --device auto [--threads 2]
    python scripts/benchmark_caching.py --model toy --sharded --no-throughput --no-rss

Throughput (one process, the same token batches, best of --repeats, run in turn):
- bare: ``model(tokens)``, the full forward with logits, no hooks;
- to hook: the forward stopped after the hook, nothing stored (what caching must compute);
- caching: ``cache_activations`` into a temporary folder (shards written and fsynced).
'x bare' is caching tokens/s over bare tokens/s (goal >= 0.8); 'x to hook' shows the cost of
storing alone. Caching stops at the hook, so it can beat the full forward.

Peak RSS: ``cache_activations`` at two cache sizes 10x apart, each in a fresh subprocess that
reports its own peak resident memory (ru_maxrss); goal: within 10%.

Sharded (--sharded; src/data/shards.py): the same cache written by one task
(``cache_activations``; torch's default threads, then 1 thread for reference) and by
--n-shards tasks (``cache_shard``, then ``merge_shards``), each task a process of the local
launcher (``src.scale.launchers``) using its share of the cores (1 thread each for 2 tasks
on 2 cores). 'wall' runs from
submitting to the merged cache, process start, imports and model load included; 'caching'
counts the slowest task's caching alone. Goal: 2 shards over 2 tasks >= 1.5x one process on
a 2-core machine.

Models: the trained toy (``toy-induction``) and a random-init model of GPT-2 small's shape
(12 layers, d_model 768; no download), with random tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
import common  # noqa: E402, F401  (puts the project root on sys.path)

# per model: hooks timed ((point, layer): src.models.hooks), context, tokens timed, batch
# size, RSS sizes (small; large = 10x)
PER_MODEL = ("hooks", "n_tokens", "batch_size", "rss_tokens", "shard_tokens", "sharded_tokens")
DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": {
        "hooks": [("resid_post", 1)],  # the last block: no early stop to gain from
        "context": 32,
        "n_tokens": 2**16,
        "batch_size": 64,
        "rss_tokens": 2**17,
        "shard_tokens": 2**16,
        "sharded_tokens": 2**22,
    },
    "gpt2-sized": {
        "hooks": [("resid_pre", 8), ("resid_post", 11)],
        "context": 128,
        "n_tokens": 2**13,
        "batch_size": 16,
        "rss_tokens": 2**12,
        "shard_tokens": 2**11,
        "sharded_tokens": 2**15,
    },
}


def default(kind: str, key: str) -> Any:
    """The default of setting ``key`` for model ``kind`` (hooks as TransformerLens names)."""
    from src.models.hooks import hook_name

    value = DEFAULTS[kind][key]
    return [hook_name(point, layer) for point, layer in value] if key == "hooks" else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["toy", "gpt2-sized", "both"], default="toy")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--hooks", nargs="+", help="hook names timed (default: per model)")
    parser.add_argument("--n-tokens", type=int, help="tokens per timed run (default: per model)")
    parser.add_argument("--batch-size", type=int, help="sequences per forward (default: per model)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (best kept)")
    parser.add_argument(
        "--rss-tokens", type=int, help="smaller cache size for peak RSS (default: per model)"
    )
    parser.add_argument("--shard-tokens", type=int, help="tokens per shard (default: per model)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS table")
    parser.add_argument("--n-shards", type=int, default=2, help="tasks of the sharded table")
    parser.add_argument(
        "--sharded-tokens", type=int, help="tokens of the sharded table (default: per model)"
    )
    parser.add_argument(
        "--sharded", action="store_true", help="add the sharded table (minutes: processes)"
    )
    parser.add_argument("--no-throughput", action="store_true", help="skip the first table")
    parser.add_argument("--tmp-dir", type=Path, help="where caches are written (default: /tmp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_model(kind: str, device: str) -> Any:
    """The toy model, or a random-init bridge of GPT-2 small's shape (as benchmark_patching)."""
    from src.models.load import gpt2_shaped_model, load_model

    if kind == "toy":
        return load_model("toy-induction", device=device)
    return gpt2_shaped_model(device)


def random_tokens(model: Any, n_tokens: int, context: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (n_tokens // context, context), generator=generator)


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stop(Exception):
    pass


def bare_forward(model: Any, tokens: Any, batch_size: int, hook: str | None = None) -> None:
    """Forwards over ``tokens`` in batches; stopped after ``hook`` when given, nothing kept."""
    import torch

    device = next(model.parameters()).device
    point = model.hook_dict[hook] if hook else None

    def stop(act: Any, hook: Any) -> None:
        raise _Stop

    if point is not None:
        point.add_hook(stop, level=-7)
    try:
        with torch.no_grad():
            for start in range(0, len(tokens), batch_size):
                with contextlib.suppress(_Stop):
                    model(tokens[start : start + batch_size].to(device))
        sync(device)
    finally:
        if point is not None:
            point.remove_hooks("fwd", level=-7)


def cache_once(model: Any, tokens: Any, hooks: list[str], args: argparse.Namespace) -> None:
    from src.data.activation_cache import cache_activations

    out = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=args.tmp_dir))
    try:
        cache_activations(
            model, tokens, hooks, out, batch_size=args.batch_size, shard_tokens=args.shard_tokens
        )
        sync(next(model.parameters()).device)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput_rows(kind: str, args: argparse.Namespace) -> list[str]:
    model = make_model(kind, args.device)
    tokens = random_tokens(model, args.n_tokens, args.context)
    n = tokens.numel()
    bare_forward(model, tokens[: args.batch_size], args.batch_size)  # warm-up
    rows = []
    for hook in args.hooks:
        cache_once(model, tokens[: args.batch_size], [hook], args)  # warm-up
        times: dict[str, list[float]] = {"bare": [], "hook": [], "cache": []}
        for _ in range(args.repeats):  # in turn, so that load on the machine hits all alike
            times["bare"].append(timed(lambda: bare_forward(model, tokens, args.batch_size)))
            times["hook"].append(
                timed(lambda h=hook: bare_forward(model, tokens, args.batch_size, h))
            )
            times["cache"].append(timed(lambda h=hook: cache_once(model, tokens, [h], args)))
        bare, to_hook, cache = (n / min(times[k]) for k in ("bare", "hook", "cache"))
        rows.append(
            f"| {kind} | {hook} | {n} | {bare:,.0f} | {to_hook:,.0f} | {cache:,.0f} "
            f"| {cache / bare:.2f} | {cache / to_hook:.2f} |"
        )
    return rows


def child(kind: str, args: argparse.Namespace) -> None:
    """Cache ``args.n_tokens`` tokens and print this process's peak RSS (MiB) as JSON."""
    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(kind, args.device)
    tokens = random_tokens(model, args.n_tokens, args.context)
    cache_once(model, tokens[:1], args.hooks[:1], args)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    cache_once(model, tokens, args.hooks[:1], args)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mib": before, "peak_mib": peak, "seconds": seconds}))


def rss_rows(kind: str, args: argparse.Namespace) -> list[str]:
    results = []
    for n_tokens in (args.rss_tokens, 10 * args.rss_tokens):
        command = [
            sys.executable,
            __file__,
            "--child",
            "--model",
            kind,
            "--device",
            args.device,
            "--n-tokens",
            str(n_tokens),
            "--batch-size",
            str(args.batch_size),
            "--shard-tokens",
            str(args.shard_tokens),
            "--hooks",
            args.hooks[0],
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.tmp_dir:
            command += ["--tmp-dir", str(args.tmp_dir)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"child run failed:\n{done.stderr[-2000:]}")
        results.append((n_tokens, json.loads(done.stdout.strip().splitlines()[-1])))
    (small, a), (large, b) = results
    return [
        f"| {kind} | {args.hooks[0]} | {n} | {r['before_mib']:,.0f} | {r['peak_mib']:,.0f} "
        f"| {n / r['seconds']:,.0f} |"
        for n, r in results
    ] + [f"| {kind} | large / small peak | | | {b['peak_mib'] / a['peak_mib']:.3f} | |"]


def shard_task(task: dict) -> dict:
    """One task of the sharded table (module-level: the local launcher pickles it): make the
    model and tokens, then cache shard ``index`` of ``n_shards`` (``n_shards`` 1: the
    one-process ``cache_activations``); return its threads and its seconds."""
    import torch

    from src.data.activation_cache import cache_activations
    from src.data.shards import cache_shard

    if task["threads"]:
        torch.set_num_threads(task["threads"])
    model = make_model(task["kind"], task["device"])
    tokens = random_tokens(model, task["n_tokens"], task["context"])
    hooks, out = task["hooks"], task["out_dir"]
    options = {"batch_size": task["batch_size"], "shard_tokens": task["shard_tokens"]}
    start = time.perf_counter()
    if task["n_shards"] == 1:
        cache_activations(model, tokens, hooks, out, **options)
    else:
        cache_shard(model, tokens, hooks, out, task["index"], task["n_shards"], **options)
    sync(next(model.parameters()).device)
    return {"threads": torch.get_num_threads(), "cache_s": time.perf_counter() - start}


def sharded_rows(kind: str, args: argparse.Namespace) -> list[str]:
    """One process (torch's default threads, then 1 thread) against ``args.n_shards`` tasks
    on the local launcher, best of repeats; ratios against the first."""
    import os

    from src.data.shards import merge_shards
    from src.scale.launchers import LauncherConfig, map_tasks

    n_shards = args.n_shards
    root = Path(tempfile.mkdtemp(prefix="bench-sharded-", dir=args.tmp_dir))
    launcher = LauncherConfig(name="local", array_parallelism=n_shards, folder=str(root / "logs"))
    base = {
        "kind": kind,
        "device": args.device,
        "n_tokens": args.sharded_tokens,
        "context": args.context,
        "hooks": args.hooks[:1],
        "batch_size": args.batch_size,
        "shard_tokens": args.shard_tokens,
    }
    threads = max(1, (os.cpu_count() or 1) // n_shards)  # what cache_activations.py gives
    runs = {  # label: (tasks, torch threads per task; None: torch's default)
        "one process": (1, None),
        "one process, 1 thread": (1, 1),
        f"{n_shards} shards": (n_shards, threads),
    }
    best: dict[str, tuple[float, float, int]] = {}
    try:
        for repeat in range(args.repeats):
            for label, (n, n_threads) in runs.items():  # in turn: load hits all alike
                out = root / f"cache_{repeat}"
                tasks = [
                    base | {"out_dir": str(out), "index": i, "n_shards": n, "threads": n_threads}
                    for i in range(n)
                ]
                start = time.perf_counter()
                outcomes = map_tasks(shard_task, tasks, launcher, f"bench_{n}", progress=False)
                failed = [o for o in outcomes if not o.ok]
                if failed:
                    raise RuntimeError(f"a task failed: {failed[0].error} ({failed[0].log_path})")
                if n > 1:
                    merge_shards(out)
                wall = time.perf_counter() - start
                cache = max(o.result["cache_s"] for o in outcomes)
                shutil.rmtree(out, ignore_errors=True)
                old = best.get(label, (float("inf"), float("inf"), 0))
                best[label] = (min(old[0], wall), min(old[1], cache), outcomes[0].result["threads"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n_tok = args.sharded_tokens // args.context * args.context
    one_wall, one_cache, _ = best["one process"]
    return [
        f"| {kind} | {label} | {runs[label][0]} x {task_threads} | {n_tok} | {n_tok / wall:,.0f} "
        f"| {n_tok / cache:,.0f} | {one_wall / wall:.2f} | {one_cache / cache:.2f} |"
        for label, (wall, cache, task_threads) in best.items()
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from src.models.load import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = ["toy", "gpt2-sized"] if args.model == "both" else [args.model]
    if args.child:  # every setting is passed by rss_rows
        args.context = DEFAULTS[kinds[0]]["context"]
        child(kinds[0], args)
        return 0
    device = resolve_device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    table = [
        "| model | hook | tokens | bare tok/s | to hook tok/s | caching tok/s | x bare "
        "| x to hook |",
        "|---|---|---|---|---|---|---|---|",
    ]
    memory = [
        "| model | hook | cache tokens | RSS before MiB | peak RSS MiB | caching tok/s |",
        "|---|---|---|---|---|---|",
    ]
    sharded = [
        "| model | run | tasks x threads | tokens | wall tok/s | caching tok/s | x one (wall) "
        "| x one (caching) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    given = {k: getattr(args, k) for k in PER_MODEL}
    for kind in kinds:
        for key, value in given.items():
            setattr(args, key, value or default(kind, key))
        args.context = DEFAULTS[kind]["context"]
        if not args.no_throughput:
            table += throughput_rows(kind, args)
        if not args.no_rss:
            memory += rss_rows(kind, args)
        if args.sharded:
            sharded += sharded_rows(kind, args)
    for done, rows in (
        (args.no_throughput, table),
        (args.no_rss, memory),
        (not args.sharded, sharded),
    ):
        if not done:
            print("\n".join(rows), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
