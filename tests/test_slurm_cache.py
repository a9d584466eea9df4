"""Sharded activation caching of a generated project on a real SLURM cluster: the shards run
as one submitit job array, are merged, and the merged cache equals the one-process cache of
the same flags (same values, same metadata). Skips where SLURM cannot run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

CACHE = "scripts/cache_activations.py"
FLAGS = (
    *("--model", "toy-induction", "--layer", "1", "--hook-point", "resid_pre,z"),
    *("--n-tokens", "2048", "--shard-tokens", "512", "--device", "cpu"),
)  # 64 sequences of 32 in files of 16: two shards of two files each
COMPARE = """
import json, sys, torch
from src.data.activation_cache import open_cache
one, sharded = open_cache(sys.argv[1]), open_cache(sys.argv[2])
print(json.dumps({
    "equal": all(torch.equal(one.load(h), sharded.load(h)) for h in one.hook_names)
    and torch.equal(one.tokens(), sharded.tokens()),
    "hooks": sharded.hook_names,
    "files": [p.name for p in sharded.shard_paths],
    "differ": sorted(k for k in one.metadata if one.metadata[k] != sharded.metadata.get(k)),
    "keys": list(one.metadata) == list(sharded.metadata),
}))
"""


def test_sharded_cache_on_slurm_equals_the_one_process_cache(bake, slurm_cluster, tmp_path):
    project = bake()
    project.run(sys.executable, CACHE, *FLAGS, "--out-dir", "data/activations/one", timeout=600)
    logs = tmp_path / "logs"
    sharded = project.run(
        sys.executable,
        CACHE,
        *FLAGS,
        *("--n-shards", "2", "--launcher", "slurm", "--launcher-folder", str(logs)),
        env=slurm_cluster,
        timeout=600,
    )
    out = sharded.stdout.strip().splitlines()[-1]
    assert out == "data/activations/toy-induction_1_induction_2048", sharded.stderr
    assert "2/2 tasks ok" in sharded.stderr
    tasks = [p.name for p in (logs / f"cache_{Path(out).name}").glob("[0-9]*_[0-9]*")]
    assert len(tasks) == 2 and len({name.split("_")[0] for name in tasks}) == 1  # one array
    compared = json.loads(
        project.run(sys.executable, "-c", COMPARE, "data/activations/one", out).stdout
    )
    assert compared == {
        "equal": True,
        "hooks": ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"],
        "files": [f"shard_0000{i}.safetensors" for i in range(4)],
        "differ": compared["differ"],
        "keys": True,
    }
    # made by other commands, at other times, maybe from another git state: nothing else
    assert set(compared["differ"]) <= {"command", "created", "git_commit", "git_dirty"}
    assert not list((project.path / out).glob("task_*.json"))  # the records are merged away
    # the docs list the merged cache like any other
    listed = f"`{out}/` - toy-induction, `blocks.1.hook_resid_pre`, `blocks.1.attn.hook_z`"
    assert listed in project.read("AGENTS.md")
