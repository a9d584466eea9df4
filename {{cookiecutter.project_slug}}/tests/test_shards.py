"""Sharded activation caching: the split, shards that merge into the one-process cache (same
values, same metadata), a merge that refuses missing or inconsistent shards, killed shards
that resume, and the cache_activations.py flags."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.data.activation_cache import CacheError, cache_activations, open_cache
from src.data.induction import make_induction_dataset
from src.data.shards import cache_shard, merge_shards, shard_files
from src.models.toy import TOY_BOS_TOKEN_ID

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import cache_activations as cli  # noqa: E402

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"]
N_SEQ, SHARD_TOKENS, BATCH = 12, 4 * 32, 3  # one-process files of 4 sequences: 4, 4, 4
META = {"model": "toy-induction", "dataset": "induction", "seed": 3, "command": "made by a test"}
VOLATILE = {"command", "created", "git_commit", "git_dirty"}


@pytest.fixture(scope="module")
def tokens():
    return make_induction_dataset(N_SEQ, 32, 64, TOY_BOS_TOKEN_ID, seed=3).clean_tokens


def shard(model, tokens, out_dir, index, n_shards, **kwargs):
    options = dict(batch_size=BATCH, shard_tokens=SHARD_TOKENS, metadata=META) | kwargs
    return cache_shard(model, tokens, HOOKS, out_dir, index, n_shards, **options)


def sharded(model, tokens, out_dir, n_shards, **kwargs):
    for index in range(n_shards):
        shard(model, tokens, out_dir, index, n_shards, **kwargs)
    return out_dir


@pytest.fixture(scope="module")
def one_process(toy_model, tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "cache"
    options = dict(batch_size=BATCH, shard_tokens=SHARD_TOKENS, metadata=META)
    return cache_activations(toy_model, tokens, HOOKS, out, **options)


@pytest.fixture(scope="module")
def three_shards(toy_model, tokens, tmp_path_factory):
    """Shards of the tokens in 3 (4 sequences each) that are not merged; tests copy it."""
    return sharded(toy_model, tokens, tmp_path_factory.mktemp("three") / "cache", 3)


@pytest.fixture
def unmerged(three_shards, tmp_path):
    return Path(shutil.copytree(three_shards, tmp_path / "copy"))


def test_shard_files_split_sequences_evenly_on_the_one_process_files():
    # 10 sequences in files of 4, 3 shards starting at 0, 3, 6: files end at 3, 4, 6, 8, 10
    assert shard_files(10, 4, 3) == [
        [(0, 0, 3)],
        [(1, 3, 4), (2, 4, 6)],
        [(3, 6, 8), (4, 8, 10)],
    ]
    # shards on file boundaries: the one-process files exactly
    assert shard_files(8, 2, 2) == [[(0, 0, 2), (1, 2, 4)], [(2, 4, 6), (3, 6, 8)]]
    assert shard_files(5, 100, 5) == [[(i, i, i + 1)] for i in range(5)]


def test_more_shards_than_sequences_is_one_line_naming_the_maximum(toy_model, tokens, tmp_path):
    with pytest.raises(
        ValueError, match=r"^--n-shards 13 is more than the 12 sequences .*at most 12"
    ):
        shard(toy_model, tokens, tmp_path / "c", 0, 13)
    with pytest.raises(ValueError, match="--n-shards must be >= 1"):
        shard_files(12, 4, 0)
    with pytest.raises(ValueError, match="--shard 3 is out of range: 0-2"):
        shard(toy_model, tokens, tmp_path / "c", 3, 3)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("n_shards", [2, 3, 5])
def test_merged_shards_equal_the_one_process_cache(
    toy_model, tokens, one_process, tmp_path, n_shards
):
    out = merge_shards(sharded(toy_model, tokens, tmp_path / "c", n_shards), command="merged")
    merged, single = open_cache(out), open_cache(one_process)
    for name in HOOKS:
        assert torch.equal(merged.load(name), single.load(name))
    assert torch.equal(merged.tokens(), single.tokens())
    a, b = merged.metadata, single.metadata
    assert list(a) == list(b)  # the same fields, in the same order
    differ = {k for k in a if a[k] != b[k]} - VOLATILE
    # 3 shards of 4 sequences fall on the files of 4: the same files; 2 and 5 split some
    assert differ == (set() if n_shards == 3 else {"shards"})
    assert a["command"] == "merged" and a["complete"] and a["tokens_done"] == N_SEQ * 32
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json"] + [
        entry["file"] for entry in a["shards"]
    ]  # the shard records are gone
    if n_shards == 3:
        for x, y in zip(merged.shard_paths, single.shard_paths, strict=True):
            assert x.read_bytes() == y.read_bytes()


def test_merge_refuses_a_missing_shard_and_writes_nothing(unmerged):
    (unmerged / "task_00001.json").unlink()
    before = sorted(p.name for p in unmerged.iterdir())
    with pytest.raises(CacheError, match=r"shard 1 of 3 \(task_00001.json\) is missing; run it"):
        merge_shards(unmerged)
    assert sorted(p.name for p in unmerged.iterdir()) == before  # no metadata.json


def edit_record(folder: Path, index: int, **changes) -> None:
    path = folder / f"task_{index:05d}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(record | changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "gpt2-small"}, "different model: 'gpt2-small', shard 0 has 'toy-induction'"),
        ({"dtype": "bfloat16"}, "different dtype"),
        ({"dataset": "ioi"}, "different dataset"),
        ({"hook_names": HOOKS[:1]}, "different hook_names"),
        ({"tokens_sha256": "0" * 64}, "different tokens_sha256"),
        ({"shapes": {HOOKS[0]: [N_SEQ, 32, 8], HOOKS[1]: [N_SEQ, 32, 4, 16]}}, "of shapes"),
        ({"complete": False, "tokens_done": 0}, r"incomplete \(0 of 128 tokens\)"),
        ({"shards": []}, r"lists files \[\], not \['shard_00002.safetensors'\]"),
    ],
)
def test_merge_refuses_an_inconsistent_shard_naming_it(unmerged, changes, message):
    edit_record(unmerged, 2, **changes)
    with pytest.raises(CacheError, match=rf"shard 2 of 3 \(task_00002.json\).*{message}"):
        merge_shards(unmerged)
    assert not (unmerged / "metadata.json").exists()


def test_merge_refuses_a_missing_damaged_or_stray_file(unmerged):
    (unmerged / "shard_00001.safetensors").unlink()
    with pytest.raises(CacheError, match=r"shard 1 of 3 .*missing shard shard_00001"):
        merge_shards(unmerged)
    (unmerged / "shard_00001.safetensors").write_bytes(b"\x10" + bytes(7) + b"{}")
    with pytest.raises(CacheError, match=r"shard 1 of 3 .*corrupt shard shard_00001"):
        merge_shards(unmerged)  # truncated: a header that does not match
    edit_record(unmerged, 0, task={"index": 0, "n_shards": 2})
    with pytest.raises(CacheError, match="split into 3, task_00000.json of one into 2"):
        merge_shards(unmerged)
    assert not (unmerged / "metadata.json").exists()


def test_a_stray_file_is_refused(unmerged):
    shutil.copy(unmerged / "shard_00000.safetensors", unmerged / "shard_00007.safetensors")
    with pytest.raises(CacheError, match="file shard_00007.safetensors belongs to no shard"):
        merge_shards(unmerged)


def test_killed_shard_resumes_from_its_last_complete_file(toy_model, tokens, one_process, tmp_path):
    out = tmp_path / "c"
    shard(toy_model, tokens, out, 0, 2)  # 6 sequences: files of 4 and 2
    first = (out / "shard_00000.safetensors").stat().st_mtime_ns
    # killed while writing its last file: that file missing, a temp file left
    (out / "shard_00001.safetensors").rename(out / ".shard_00001.safetensors.x1y2.tmp")
    shard(toy_model, tokens, out, 0, 2)
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first  # kept, not redone
    assert not list(out.glob(".*.tmp"))
    record = json.loads((out / "task_00000.json").read_text())
    assert record["complete"] and [e["n_sequences"] for e in record["shards"]] == [4, 2]
    # killed between a file's rename and its record: the unrecorded file is computed again
    record["shards"], record["tokens_done"], record["complete"] = record["shards"][:1], 128, False
    (out / "task_00000.json").write_text(json.dumps(record))
    shard(toy_model, tokens, out, 0, 2)
    shard(toy_model, tokens, out, 1, 2)
    merged = open_cache(merge_shards(out))
    assert torch.equal(merged.load(HOOKS[1]), open_cache(one_process).load(HOOKS[1]))


def test_interrupted_shard_keeps_its_complete_files(toy_model, tokens, tmp_path):
    out = tmp_path / "c"
    calls = []

    def interrupt(act, hook):
        calls.append(1)
        if len(calls) == 3:  # files of 4 sequences in batches of 3: the 3rd is file 1's
            raise KeyboardInterrupt

    toy_model.add_hook("hook_embed", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            shard(toy_model, tokens, out, 0, 1)
    finally:
        toy_model.reset_hooks()
    record = json.loads((out / "task_00000.json").read_text())
    assert not record["complete"] and [e["file"] for e in record["shards"]] == [
        "shard_00000.safetensors"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["shard_00000.safetensors", "task_00000.json"]
    shard(toy_model, tokens, out, 0, 1)
    assert open_cache(merge_shards(out)).n_tokens == N_SEQ * 32


def test_shards_of_other_settings_or_split_are_refused(toy_model, tokens, unmerged):
    with pytest.raises(CacheError, match="split into 3 .*use --n-shards 3"):
        shard(toy_model, tokens, unmerged, 0, 2)
    with pytest.raises(CacheError, match=r"a different seed \(3, now 4\)"):
        shard(toy_model, tokens, unmerged, 0, 3, metadata=META | {"seed": 4})
    with pytest.raises(CacheError, match="holds the shards of a sharded cache.*--merge"):
        cache_activations(toy_model, tokens, HOOKS, unmerged, metadata=META)


def test_merge_and_shards_after_the_merge_change_nothing(toy_model, tokens, unmerged):
    merge_shards(unmerged)
    files = {p.name: p.stat().st_mtime_ns for p in unmerged.iterdir()}
    assert merge_shards(unmerged) == unmerged  # checked, left as it is
    shard(toy_model, tokens, unmerged, 1, 3)  # a task run again after the merge
    assert {p.name: p.stat().st_mtime_ns for p in unmerged.iterdir()} == files


# --- scripts/cache_activations.py ------------------------------------------------------------

TOY = ["--model", "toy-induction", "--layer", "1", "--hook-point", "resid_pre,z", "--device", "cpu"]
SIZES = ["--n-tokens", "384", "--shard-tokens", "128", "--batch-size", "3"]  # 12 sequences


def test_cli_shards_on_the_debug_launcher_merge_into_the_one_process_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*TOY, *SIZES, "--out-dir", "one"]) == 0
    sharded_args = ["--n-shards", "5", "--launcher", "debug", "--out-dir", "five"]
    assert cli.main([*TOY, *SIZES, *sharded_args]) == 0
    one, five = open_cache("one"), open_cache("five")
    for name in ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"]:
        assert torch.equal(five.load(name), one.load(name))
    assert five.metadata["command"].endswith("--launcher debug --out-dir five")
    assert len(five.shard_paths) == 6 and not list(Path("five").glob("task_*"))


def test_cli_one_shard_at_a_time_then_merge(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = ["--out-dir", "c"]
    assert cli.main([*TOY, *SIZES, *out, "--n-shards", "2", "--shard", "1"]) == 0
    assert cli.main([*TOY, *SIZES, *out, "--merge"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "error: c: shard 0 of 2 (task_00000.json) is missing; run it again: " + (
        "--shard 0 --n-shards 2"
    )
    assert not Path("c/metadata.json").exists()
    assert cli.main([*TOY, *SIZES, *out, "--n-shards", "2", "--shard", "0"]) == 0
    assert cli.main(["--merge", *out, *TOY, *SIZES]) == 0
    assert open_cache("c").n_tokens == 384


def test_cli_on_modal_caches_and_merges_on_the_volume(tmp_path, monkeypatch, capsys):
    """Modal's tasks (faked: run here, in a folder standing for the container's project,
    whose data/ is the Volume) get the cache folder relative to the project, and the merge
    runs there too."""
    from src.scale import launchers

    volume_side, calls = tmp_path / "container", []

    def map_tasks(fn, items, launcher, name, progress=True):
        calls.append((launcher.name, fn.__name__, [item["out_dir"] for item in items]))
        with monkeypatch.context() as m:
            m.chdir(volume_side)
            return [launchers.TaskOutcome(item, True, fn(item)) for item in items]

    volume_side.mkdir()
    monkeypatch.setattr(launchers, "map_tasks", map_tasks)
    monkeypatch.chdir(PROJECT_ROOT)
    out = "data/activations/modal-test"
    args = [*TOY, *SIZES, "--n-shards", "2", "--launcher", "modal", "--out-dir", out]
    assert cli.main(args) == 0
    assert calls == [("modal", "run_shard", [out, out]), ("modal", "merge_task", [out])]
    assert open_cache(volume_side / out).n_tokens == 384
    assert "modal volume get" in capsys.readouterr().err
    assert not (PROJECT_ROOT / out).exists()
    assert cli.main([*args[:-1], str(tmp_path / "elsewhere")]) == 2
    assert "--out-dir must lie in this project's data/" in capsys.readouterr().err


def test_cli_takes_the_launcher_from_the_config(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "toy_sae_training.yaml").read_text())
    config["launcher"] = {"name": "debug", "folder": "logs"}
    Path("sharded.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", "sharded.yaml", "--n-tokens", "128", "--n-shards", "2", "--device", "cpu"]
    assert cli.main([*args, "--out-dir", "c"]) == 0
    assert "shards on launcher debug into c" in capsys.readouterr().err
    assert open_cache("c").metadata["hook_names"] == ["blocks.0.hook_resid_pre"]
    assert cli.main([*args, "--launcher", "lsf"]) == 2  # the flag overrides it
    assert "unknown launcher 'lsf'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-shards", "13"], "--n-shards 13 is more than the 12 sequences to cache: at most 12"),
        (["--n-shards", "13", "--shard", "0"], "--n-shards 13 is more than the 12 sequences"),
        (["--shard", "0"], "--shard needs --n-shards"),
        (["--n-shards", "2", "--shard", "2"], "--shard 2 is out of range: 0-1"),
        (["--launcher", "debug"], "--launcher runs the N tasks of --n-shards N"),
        (["--n-shards", "2", "--launcher", "lsf"], "unknown launcher 'lsf'; known: local"),
        (["--merge"], "no shards to merge"),
    ],
)
def test_cli_bad_shard_flags_are_one_line_and_write_nothing(
    tmp_path, monkeypatch, capsys, args, message
):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*TOY, *SIZES, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not Path("data").exists()


@pytest.fixture
def project(tmp_path):
    """A project's docs (this one's AGENTS.md and CLAUDE.md) in a git repository."""
    root = tmp_path / "project"
    (root / "data" / "activations").mkdir(parents=True)
    for doc in ("AGENTS.md", "CLAUDE.md"):
        shutil.copy(PROJECT_ROOT / doc, root / doc)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "docs"], check=True)
    return root


def git_status(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True
    ).stdout


def test_caching_touches_only_the_cache_list_and_only_when_it_changes(
    toy_model, tokens, project, three_shards
):
    claude = project / "CLAUDE.md"
    stale = claude.read_text().replace(
        "<!-- /generated:commands -->", "stale\n<!-- /generated:commands -->"
    )
    claude.write_text(stale)  # another generated section out of date: not the cache's business
    subprocess.run(["git", "-C", str(project), "commit", "-qam", "stale"], check=True)
    elsewhere = cache_activations(
        toy_model, tokens, HOOKS, project / "scratch" / "c", metadata=META
    )
    assert cli.refresh_cache_docs(elsewhere, project) == []  # not where the docs look
    shards = shutil.copytree(three_shards, project / "data/activations/shards")
    assert cli.refresh_cache_docs(shards, project) == []  # not merged yet: no cache
    shutil.rmtree(shards)

    cache = cache_activations(
        toy_model, tokens, HOOKS, project / "data/activations/c", metadata=META
    )
    changed = cli.refresh_cache_docs(cache, project)
    assert changed and claude.read_text().count("stale\n") == 1
    listed = [doc for doc in changed if "`data/activations/c/` - toy-induction" in doc.read_text()]
    assert listed == changed
    subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(project), "commit", "-qm", "cache"], check=True)
    times = {doc: doc.stat().st_mtime_ns for doc in changed}
    assert cli.refresh_cache_docs(cache, project) == []  # the same cache again: nothing
    assert {doc: doc.stat().st_mtime_ns for doc in changed} == times
    assert git_status(project) == ""
