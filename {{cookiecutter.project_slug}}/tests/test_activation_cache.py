"""Activation caching: stored values equal run_with_cache, atomic and resumable writes,
validated reads, shuffled batches, and the cache_activations.py CLI."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from src.data.activation_cache import CacheError, cache_activations, cache_name, open_cache
from src.data.induction import make_induction_dataset
from src.models.toy import TOY_BOS_TOKEN_ID

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import cache_activations as cli  # noqa: E402

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]
N_SEQ, SHARD_TOKENS, BATCH = 20, 6 * 32, 3  # shards of 6 sequences: 6, 6, 6, 2
META = {"model": "toy-induction", "dataset": "induction", "seed": 3, "command": "made by a test"}


@pytest.fixture(scope="module")
def tokens():
    return make_induction_dataset(N_SEQ, 32, 64, TOY_BOS_TOKEN_ID, seed=3).clean_tokens


def make_cache(model, tokens, out_dir, **kwargs):
    options = dict(batch_size=BATCH, shard_tokens=SHARD_TOKENS, metadata=META) | kwargs
    return cache_activations(model, tokens, HOOKS, out_dir, **options)


@pytest.fixture(scope="module")
def cache_dir(toy_model, tokens, tmp_path_factory):
    """A complete cache; tests that damage it work on a copy (`damaged`)."""
    return make_cache(toy_model, tokens, tmp_path_factory.mktemp("cache") / "toy")


@pytest.fixture
def damaged(cache_dir, tmp_path):
    return Path(shutil.copytree(cache_dir, tmp_path / "copy"))


class CountForwards:
    """A hook on the embedding that counts forwards and raises KeyboardInterrupt at one."""

    def __init__(self, model, interrupt_at: int | None = None) -> None:
        self.model, self.interrupt_at, self.n = model, interrupt_at, 0

    def __call__(self, act, hook):
        self.n += 1
        if self.n == self.interrupt_at:
            raise KeyboardInterrupt

    def __enter__(self):
        self.model.add_hook("hook_embed", self)
        return self

    def __exit__(self, *exc):
        self.model.reset_hooks()


def test_cache_name_is_the_seed_scheme_and_file_safe():
    assert cache_name("gpt2-small", 8, "text", 1000) == "gpt2-small_8_text_1000"
    assert cache_name("org/model x", 0, "induction", 5) == "org-model-x_0_induction_5"


def test_cache_name_of_a_text_source_is_its_short_name():
    assert (
        cache_name("gpt2-small", 8, "Skylion007/openwebtext", 10) == "gpt2-small_8_openwebtext_10"
    )
    assert cache_name("gpt2-small", 8, "/corpora/train.txt", 10) == "gpt2-small_8_train_10"


def test_cache_name_of_a_local_checkpoint_is_its_folder(tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpts" / "tiny-gpt2"
    checkpoint.mkdir(parents=True)
    assert cache_name(str(checkpoint), 1, "text", 64) == "tiny-gpt2_1_text_64"
    monkeypatch.chdir(tmp_path)
    assert cache_name("ckpts/tiny-gpt2", 1, "text", 64) == "tiny-gpt2_1_text_64"
    assert cache_name("./ckpts/tiny-gpt2/", 1, "text", 64) == "tiny-gpt2_1_text_64"


def test_cached_activations_equal_run_with_cache(toy_model, tokens, cache_dir):
    store = open_cache(cache_dir, expect={"model": "toy-induction", "hook_names": HOOKS[:1]})
    with torch.no_grad():
        _, reference = toy_model.run_with_cache(tokens)
    for name in HOOKS:
        torch.testing.assert_close(store.load(name), reference[name], rtol=0, atol=1e-6)
    assert store.load(HOOKS[1]).shape == (N_SEQ, 32, 4, 16)  # hook_z keeps its head axis
    assert torch.equal(store.tokens(), tokens)
    assert len(store.shard_paths) == 4 and store.n_tokens == N_SEQ * 32


def test_stored_dtype_is_the_requested_one(toy_model, tokens, tmp_path):
    store = open_cache(make_cache(toy_model, tokens[:4], tmp_path, dtype=torch.bfloat16))
    with torch.no_grad():
        _, reference = toy_model.run_with_cache(tokens[:4])
    assert store.metadata["dtype"] == "bfloat16"
    assert torch.equal(store.load(HOOKS[0]), reference[HOOKS[0]].to(torch.bfloat16))


def test_metadata_records_what_made_the_cache(cache_dir):
    meta = json.loads((cache_dir / "metadata.json").read_text())
    assert meta["model"] == "toy-induction" and meta["dataset"] == "induction"
    assert meta["hook_names"] == HOOKS and meta["seed"] == 3
    assert meta["n_tokens"] == N_SEQ * 32 and meta["context_size"] == 32
    assert meta["dtype"] == "float32" and meta["shape"] == [N_SEQ, 32, 64] and meta["d"] == 64
    assert meta["shapes"][HOOKS[1]] == [N_SEQ, 32, 4, 16]
    assert meta["command"] == "made by a test" and "git_commit" in meta
    assert datetime.fromisoformat(meta["created"]) <= datetime.now()
    assert meta["complete"] and meta["tokens_done"] == N_SEQ * 32
    assert [s["n_sequences"] for s in meta["shards"]] == [6, 6, 6, 2]
    files = sorted(p.name for p in cache_dir.iterdir())
    assert files == ["metadata.json"] + [f"shard_0000{i}.safetensors" for i in range(4)]


def test_interrupted_run_keeps_complete_shards_and_resumes(toy_model, tokens, cache_dir, tmp_path):
    out = tmp_path / "run"
    # 2 forwards per shard: the 5th is the first of shard 2
    with CountForwards(toy_model, interrupt_at=5), pytest.raises(KeyboardInterrupt):
        make_cache(toy_model, tokens, out)
    meta = json.loads((out / "metadata.json").read_text())
    assert not meta["complete"] and meta["tokens_done"] == 12 * 32
    assert sorted(p.name for p in out.iterdir()) == [
        "metadata.json",
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]
    with pytest.raises(CacheError, match="incomplete.*384 of 640 tokens"):
        open_cache(out)
    # what a kill -9 can leave: a temp file, and a shard renamed before the metadata said so
    (out / ".shard_00002.safetensors.x1.tmp").write_bytes(b"partial")
    shutil.copy(out / "shard_00001.safetensors", out / "shard_00002.safetensors")

    with CountForwards(toy_model) as count:
        make_cache(toy_model, tokens, out)
    assert count.n == 3  # shards 2 and 3 only
    resumed, full = open_cache(out), open_cache(cache_dir)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    for name in HOOKS:
        assert torch.equal(resumed.load(name), full.load(name))
    with CountForwards(toy_model) as count:
        make_cache(toy_model, tokens, out)  # complete: nothing to do
    assert count.n == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dtype": torch.float16}, "dtype"),
        ({"metadata": META | {"model": "other"}}, "model"),
        ({"shard_tokens": 64}, "shard_sequences"),
    ],
)
def test_resume_refuses_a_cache_made_with_other_settings(toy_model, tokens, damaged, change, field):
    with pytest.raises(CacheError, match=f"different {field}"):
        make_cache(toy_model, tokens, damaged, **change)


def test_resume_refuses_other_tokens_or_hooks(toy_model, tokens, damaged):
    with pytest.raises(CacheError, match="different token ids"):
        make_cache(toy_model, tokens.flip(0), damaged)
    with pytest.raises(CacheError, match="different hook_names"):
        cache_activations(toy_model, tokens, HOOKS[:1], damaged, metadata=META)


def test_open_cache_names_the_field_that_differs(cache_dir):
    with pytest.raises(CacheError, match="model differs.*'toy-induction', wanted 'gpt2-small'"):
        open_cache(cache_dir, expect={"model": "gpt2-small"})
    with pytest.raises(CacheError, match="hook_names differ.*blocks.1.hook_mlp_out"):
        open_cache(cache_dir, expect={"hook_names": ["blocks.1.hook_mlp_out"]})
    with pytest.raises(CacheError, match="dtype differs"):
        open_cache(cache_dir, expect={"dtype": torch.bfloat16})
    with pytest.raises(CacheError, match="no activation cache"):
        open_cache(cache_dir / "nothing")


def test_open_cache_names_a_missing_shard(damaged):
    (damaged / "shard_00002.safetensors").unlink()
    with pytest.raises(CacheError, match="missing shard shard_00002.safetensors"):
        open_cache(damaged)


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_open_cache_names_a_corrupt_shard(damaged, damage):
    path = damaged / "shard_00001.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"\x10" * 16 + data[16:] if damage == "header" else data[:-100])
    with pytest.raises(CacheError, match="corrupt shard shard_00001.safetensors"):
        open_cache(damaged)


def test_open_cache_checks_metadata_against_the_shard_files(damaged):
    meta_path = damaged / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["shards"] = meta["shards"][:3]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="lists 3 shards with 18 sequences.*4 shard files"):
        open_cache(damaged)


def rows(batches):
    return sorted(map(tuple, torch.cat(batches).tolist()))


def test_iter_batches_yields_each_token_once_per_epoch(cache_dir):
    store = open_cache(cache_dir)
    flat = store.load(HOOKS[0]).flatten(0, 1)
    batches = list(store.iter_batches(HOOKS[0], 7, seed=1))
    assert [len(b) for b in batches] == [7] * 91 + [3]  # 640 tokens
    assert rows(batches) == rows([flat])
    assert not torch.equal(torch.cat(batches), flat)  # shuffled ...
    assert torch.equal(torch.cat(list(store.iter_batches(HOOKS[0], 7, seed=1))), torch.cat(batches))
    ordered = torch.cat(list(store.iter_batches(HOOKS[0], 7, shuffle=False)))
    assert torch.equal(ordered, flat)  # ... and in order without shuffle
    z = next(store.iter_batches(HOOKS[1], 5, dtype=torch.float64))
    assert z.shape == (5, 64) and z.dtype == torch.float64  # heads x d_head flattened
    with pytest.raises(CacheError, match="not cached"):
        next(store.iter_batches("blocks.0.hook_mlp_out", 5))


def test_iter_batches_loop_reshuffles_every_epoch(cache_dir):
    store = open_cache(cache_dir)
    flat = store.load(HOOKS[0]).flatten(0, 1)
    batches = list(itertools.islice(store.iter_batches(HOOKS[0], 64, loop=True), 25))
    assert all(len(b) == 64 for b in batches)  # 1600 tokens: 2.5 epochs, every batch full
    stream = torch.cat(batches)
    first, second = stream[:640], stream[640:1280]
    assert rows([first]) == rows([second]) == rows([flat])
    assert not torch.equal(first, second)


def test_cli_caches_the_toy_model_into_the_seed_folder(toy_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "toy-induction", "--layer", "1", "--n-tokens", "640", "--device", "cpu"]
    assert cli.main([*argv, "--hook-point", "resid_post,z", "--seed", "2"]) == 0
    out = Path("data/activations/toy-induction_1_induction_640")
    assert capsys.readouterr().out.strip() == str(out)
    names = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]
    store = open_cache(out, expect={"model": "toy-induction", "hook_names": names, "seed": 2})
    with torch.no_grad():
        _, reference = toy_model.run_with_cache(store.tokens())
    torch.testing.assert_close(store.load(names[1]), reference[names[1]], rtol=0, atol=1e-6)
    assert store.metadata["dataset"] == "induction" and store.n_tokens == 640
    assert "--layer 1" in store.metadata["command"]


def test_cli_takes_settings_from_an_sae_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("sae.yaml").write_text(
        "model: {name: toy-induction, device: cpu}\n"
        "hook: {layer: 0, hook_point: resid_post}\n"
        "data: {dataset: induction, context_size: 16, seed: 1}\n"
        "sae: {architecture: standard}\n"
        "training: {n_tokens: 320, batch_size: 32}\n"
        "output: {results_dir: data/results/sae}\n"
    )
    assert cli.main(["--config", "sae.yaml", "--dtype", "bf16"]) == 0
    store = open_cache("data/activations/toy-induction_0_induction_320")
    assert store.hook_names == ["blocks.0.hook_resid_post"]
    assert store.metadata["shape"] == [20, 16, 64] and store.metadata["dtype"] == "bfloat16"
    assert store.metadata["seed"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "2"], "--layer 2 is out of range: the model has layers 0-1"),
        (["--layer", "0", "--dataset", "wiki"], "unknown dataset 'wiki'; known: induction"),
        (["--layer", "0", "--hook-point", "mlp_out"], "--hook-point 'mlp_out'"),
        (["--layer", "0", "--context-size", "64"], "--context-size 64 exceeds"),
        (["--layer", "0", "--n-tokens", "0"], "--n-tokens must be >= 1"),
        (["--config", "nope.yaml"], "config file not found"),
        ([], "--model and --layer are required"),
    ],
)
def test_cli_bad_input_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    model = [] if args == [] or args[0] == "--config" else ["--model", "toy-induction"]
    assert cli.main([*model, *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not Path("data").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_killed_keeps_complete_shards_and_the_same_command_resumes(tmp_path, sig):
    """A real process stopped by Ctrl-C or kill, then the same command run again."""
    out = tmp_path / "cache"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "scripts" / "cache_activations.py"),
        *("--model", "toy-induction", "--layer", "1", "--device", "cpu"),
        *("--n-tokens", str(2**17), "--shard-tokens", str(2**12), "--out-dir", str(out)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "shard_00000.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()[-2000:]
    meta = json.loads((out / "metadata.json").read_text())
    assert 0 < meta["tokens_done"] < 2**17 and not meta["complete"]
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json"] + [
        s["file"] for s in meta["shards"]
    ]  # complete shards only: no temp files
    first = (out / "shard_00000.safetensors").stat().st_mtime_ns

    subprocess.run(command, check=True, capture_output=True, timeout=120)
    store = open_cache(out)
    assert store.n_tokens == 2**17
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first  # kept, not redone
