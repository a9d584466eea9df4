"""Text for real models: sources (local .txt, .jsonl, save_to_disk directories, Hub ids),
packing into context-length rows as SAELens packs them, each model's default dataset, the
offline error, and train_sae.py / cache_activations.py on a tiny local checkpoint."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from src.data.text import make_text_dataset, pack_rows, text_rows
from src.data.text_sources import (
    TextSourceError,
    dataset_short_name,
    in_datasets_cache,
    iter_documents,
    resolve_text_source,
    source_short_name,
)
from src.models.families import family

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import cache_activations as cache_cli  # noqa: E402
import train_sae as train_cli  # noqa: E402

BOS = 0  # the tiny checkpoints' BOS (= EOS = pad)
CONTEXT = 32


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoints):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoints["gpt2"])


@pytest.fixture(scope="module")
def lines(tiny_corpus) -> list[str]:
    return tiny_corpus.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def sources(tiny_corpus, lines, tmp_path_factory) -> dict[str, Path]:
    """The tiny corpus as each local format: .txt, .jsonl, a saved Dataset and DatasetDict."""
    from datasets import Dataset, DatasetDict

    root = tmp_path_factory.mktemp("sources")
    jsonl = root / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    dataset = Dataset.from_dict({"text": lines, "id": list(range(len(lines)))})
    dataset.save_to_disk(str(root / "saved"))
    DatasetDict({"train": dataset}).save_to_disk(str(root / "saved_dict"))
    return {
        "txt": tiny_corpus,
        "jsonl": jsonl,
        "saved": root / "saved",
        "saved_dict": root / "saved_dict",
    }


# --- packing ------------------------------------------------------------------------------


def test_pack_rows_known_answer() -> None:
    docs = [[5, 6, 7], [8, 9], [BOS, 3], [4, 4, 4, 4, 4], []]
    # BOS starts every row and separates documents; a document that starts with BOS needs
    # no separator; a document that does not fit continues after the next row's BOS.
    assert list(pack_rows(docs, 4, BOS)) == [
        [BOS, 5, 6, 7],
        [BOS, 8, 9, BOS],
        [BOS, 3, BOS, 4],
        [BOS, 4, 4, 4],
    ]  # the last partial row, [BOS, 4], is dropped
    assert list(pack_rows(docs, 4, None)) == [[5, 6, 7, 8], [9, BOS, 3, 4], [4, 4, 4, 4]]
    with pytest.raises(ValueError, match="context_size 1 leaves no room for text"):
        list(pack_rows(docs, 1, BOS))


@pytest.mark.parametrize("bos", [BOS, None])
def test_pack_rows_equals_saelens(bos: int | None) -> None:
    """Random documents (some empty, some starting with BOS) packed as SAELens's
    ``concat_and_batch_sequences`` packs them with ActivationsStore's defaults."""
    sae_lens_packing = pytest.importorskip("sae_lens.tokenization_and_batching")
    rng = random.Random(0)
    docs = [[rng.randrange(6) for _ in range(rng.choice([0, 1, 2, 5, 9, 30]))] for _ in range(300)]
    for context_size in (2, 3, 8, 17):
        reference = sae_lens_packing.concat_and_batch_sequences(
            iter(torch.tensor(doc, dtype=torch.long) for doc in docs),
            context_size,
            begin_batch_token_id=bos,
            begin_sequence_token_id=None,
            sequence_separator_token_id=bos,
        )
        expected = [row.tolist() for row in reference]
        assert len(expected) > 10
        assert list(pack_rows(docs, context_size, bos)) == expected


def test_rows_are_the_tokenizers_encoding(tiny_corpus, lines, tokenizer) -> None:
    """Every row has CONTEXT tokens and starts with BOS; without the BOS tokens, the rows
    are the tokenizer's encodings of the lines, one after the other."""
    rows = list(text_rows(tiny_corpus, tokenizer, CONTEXT, BOS))
    encoded = [tokenizer.encode(line, add_special_tokens=False) for line in lines]
    assert all(BOS not in ids for ids in encoded) and len(rows) > 500
    assert all(len(row) == CONTEXT and row[0] == BOS for row in rows)
    stream = [BOS]
    for ids in encoded:
        stream += ids + [BOS]
    assert rows[0] == stream[:CONTEXT]
    text = [token for row in rows for token in row if token != BOS]
    assert text == [token for ids in encoded for token in ids][: len(text)]
    n_bos = sum(row.count(BOS) for row in rows)  # row starts + document boundaries in rows
    assert n_bos == len(rows) * CONTEXT - len(text)


@pytest.mark.parametrize("kind", ["jsonl", "saved", "saved_dict"])
def test_local_formats_give_identical_rows(sources, tokenizer, kind: str) -> None:
    txt = make_text_dataset(sources["txt"], tokenizer, 50, CONTEXT, bos_token_id=BOS)
    other = make_text_dataset(sources[kind], tokenizer, 50, CONTEXT, bos_token_id=BOS)
    assert txt.tokens.shape == (50, CONTEXT) and torch.equal(txt.tokens, other.tokens)
    later = make_text_dataset(sources[kind], tokenizer, 20, CONTEXT, bos_token_id=BOS, skip=30)
    assert torch.equal(later.tokens, txt.tokens[30:])


def test_too_little_text_says_how_much(sources, tokenizer) -> None:
    n_rows = len(list(text_rows(sources["txt"], tokenizer, CONTEXT, BOS)))
    with pytest.raises(TextSourceError, match=f"has {n_rows} rows of {CONTEXT} tokens; 2 rows"):
        make_text_dataset(sources["txt"], tokenizer, 2, CONTEXT, bos_token_id=BOS, skip=n_rows - 1)


def test_bad_local_sources_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(TextSourceError, match="'data/nope.txt': no such file or directory"):
        iter_documents("data/nope.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(TextSourceError, match=r'bad.jsonl:2: expected an object with a "text"'):
        list(iter_documents(bad))
    (tmp_path / "folder").mkdir()
    with pytest.raises(TextSourceError, match="a directory, but not one saved by save_to_disk"):
        iter_documents(tmp_path / "folder")


# --- the Hub, offline ---------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_hub_id_is_one_clear_line(monkeypatch, tmp_path: Path, variable: str) -> None:
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # an empty cache
    start = time.perf_counter()
    with pytest.raises(TextSourceError) as error:
        iter_documents("Skylion007/openwebtext")
    assert time.perf_counter() - start < 1  # no retries
    assert str(error.value) == (
        "Hugging Face dataset 'Skylion007/openwebtext' is not in the local datasets cache and "
        f"downloads are off ({variable}=1): unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE to "
        "stream it, or give a local .txt or .jsonl file or a datasets save_to_disk directory "
        "with --dataset-path or data.path in the config"
    )


@pytest.mark.parametrize("online", [True, False])
def test_hub_id_streams_online_and_reads_the_cache_offline(
    monkeypatch, tmp_path: Path, lines, online: bool
) -> None:
    """A Hub id goes to ``datasets.load_dataset`` (replaced here: no network): streamed
    online, the cached copy offline; its "text" column is the documents."""
    import datasets

    calls = []

    def load_dataset(path: str, **kwargs):
        calls.append((path, kwargs))
        return [{"text": line, "id": i} for i, line in enumerate(lines[:3])]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    if online:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        (tmp_path / "org___corpus" / "default" / "0.0.0" / "hash").mkdir(parents=True)
    assert list(iter_documents("org/corpus")) == lines[:3]
    assert calls == [("org/corpus", {"split": "train", "streaming": online})]


def test_in_datasets_cache_reads_the_datasets_layout(monkeypatch, tmp_path: Path) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    assert not in_datasets_cache("Skylion007/openwebtext")
    (tmp_path / "Skylion007___openwebtext" / "plain_text" / "1.0.0" / "abc123").mkdir(parents=True)
    assert in_datasets_cache("Skylion007/openwebtext")
    assert not in_datasets_cache("monology/pile-uncopyrighted")


# --- defaults and names -------------------------------------------------------------------


def test_default_dataset_comes_from_the_family_table(tiny_checkpoints) -> None:
    assert resolve_text_source(None, "gpt2-small") == "Skylion007/openwebtext"
    assert resolve_text_source(None, "gpt2") == family("gpt2-small").dataset  # by hf_id
    pile = "monology/pile-uncopyrighted"
    assert resolve_text_source(None, "pythia-70m-deduped") == pile == family("gemma-2-2b").dataset
    assert resolve_text_source("corpus.txt", "gpt2-small") == "corpus.txt"
    checkpoint = str(tiny_checkpoints["gpt2"])
    with pytest.raises(TextSourceError) as error:
        resolve_text_source(None, checkpoint)
    message = str(error.value)
    assert message.startswith(f"model {checkpoint!r} is a local checkpoint, so it has no default")
    assert "--dataset-path or data.path" in message and "\n" not in message
    with pytest.raises(TextSourceError, match="toy model has no tokenizer.*'induction'"):
        resolve_text_source(None, "toy-induction")


def test_short_names_are_never_paths() -> None:
    assert source_short_name("Skylion007/openwebtext") == "openwebtext"
    assert source_short_name("/data/corpora/train.txt") == "train"
    assert source_short_name("./saved/") == "saved"
    assert dataset_short_name("text", "monology/pile-uncopyrighted") == "pile-uncopyrighted"
    assert dataset_short_name("induction", None) == "induction"


def test_the_seed_command_resolves_to_the_models_dataset(tmp_path: Path) -> None:
    """``train_sae.py --model gpt2-small --layer 8`` and ``cache_activations.py --model
    gpt2-small --layer 8 --dataset text`` read gpt2-small's dataset, and cache it in the
    same folder (nothing downloaded here: no model is loaded)."""
    from src.experiments.registry import load_config
    from src.experiments.sae_training import with_text_source

    args = train_cli.parse_args(["--model", "gpt2-small", "--layer", "8"])
    cfg = load_config(PROJECT_ROOT / train_cli.config_path(args))
    cfg = with_text_source(train_cli.apply_overrides(cfg, args))
    assert cfg.data.path == "Skylion007/openwebtext"
    settings = cache_cli.resolve_settings(
        cache_cli.parse_args(["--model", "gpt2-small", "--layer", "8", "--dataset", "text"])
    )
    assert settings["path"] == "Skylion007/openwebtext"
    given = train_cli.parse_args(["--model", "gpt2-small", "--dataset-path", "x.jsonl"])
    assert with_text_source(train_cli.apply_overrides(cfg, given)).data.path == "x.jsonl"


def test_local_checkpoint_without_dataset_fails_before_loading(tiny_checkpoints, capsys):
    checkpoint = str(tiny_checkpoints["gpt2"])
    argv = ["--model", checkpoint, "--layer", "1", "--device", "cpu"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model {checkpoint!r} is a local checkpoint")
    assert "--dataset-path" in err and err.count("\n") == 1
    assert cache_cli.main([*argv, "--dataset", "text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model {checkpoint!r} is a local checkpoint")
    assert err.count("\n") == 1


# --- end to end on a tiny checkpoint ------------------------------------------------------


@pytest.mark.slow
def test_train_sae_cli_on_a_local_checkpoint_and_file(
    tiny_checkpoints, sources, tokenizer, tmp_path: Path, monkeypatch, capsys
) -> None:
    """train_sae.py on a local checkpoint with a local .txt: the cache is named by the
    checkpoint's folder and the file's stem, holds the packed rows (held-out: the rows
    after them), and the SAE loads in SAELens."""
    SAE = pytest.importorskip("sae_lens", reason="needs SAELens").SAE

    from src.data.activation_cache import open_cache

    monkeypatch.chdir(tmp_path)
    config = {
        "model": {"name": str(tiny_checkpoints["gpt2"]), "device": "cpu"},
        "hook": {"layer": 1, "hook_point": "resid_pre"},
        "data": {"dataset": "text", "context_size": CONTEXT, "n_tokens": 2048},
        "sae": {"architecture": "topk", "expansion_factor": 2, "k": 4},
        "training": {"n_tokens": 4096, "batch_size": 512, "lr": 0.002},
        "output": {"results_dir": "results"},
    }
    config["data"]["n_eval_tokens"] = 512
    Path("sae.yaml").write_text(yaml.safe_dump(config))
    argv = ["--config", "sae.yaml", "--dataset-path", str(sources["txt"])]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    (log_path,) = Path("results").glob("sae_tiny-gpt2_*.json")
    results = json.loads(log_path.read_text())["results"]
    assert Path(results["cache_dir"]).name == "tiny-gpt2_1_corpus_2048"
    rows = make_text_dataset(sources["txt"], tokenizer, 80, CONTEXT, bos_token_id=BOS).tokens
    train = open_cache(Path(results["cache_dir"]), expect={"path": str(sources["txt"])})
    assert torch.equal(train.tokens(), rows[:64])
    assert torch.equal(open_cache(Path(results["eval_cache_dir"])).tokens(), rows[64:80])
    sae = SAE.load_from_disk(results["sae_path"])
    assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 128
    assert sae.cfg.metadata.dataset_path == str(sources["txt"])
    assert 0 < results["l0"] <= 4


def test_cache_activations_cli_on_a_local_checkpoint_and_jsonl(
    tiny_checkpoints, pretrained_model, sources, tokenizer, tmp_path: Path, monkeypatch, capsys
) -> None:
    from src.data.activation_cache import open_cache

    monkeypatch.chdir(tmp_path)
    checkpoint = str(tiny_checkpoints["gpt2"])
    argv = ["--model", checkpoint, "--layer", "0", "--dataset", "text", "--device", "cpu"]
    argv += ["--dataset-path", str(sources["jsonl"]), "--n-tokens", "640", "--context-size", "32"]
    assert cache_cli.main(argv) == 0, capsys.readouterr().err
    out = Path("data/activations/tiny-gpt2_0_corpus_640")
    assert capsys.readouterr().out.strip() == str(out)
    store = open_cache(out, expect={"dataset": "text", "path": str(sources["jsonl"])})
    rows = make_text_dataset(sources["txt"], tokenizer, 20, CONTEXT, bos_token_id=BOS).tokens
    assert torch.equal(store.tokens(), rows)
    with torch.no_grad():
        _, reference = pretrained_model("gpt2").run_with_cache(rows)
    name = "blocks.0.hook_resid_pre"
    torch.testing.assert_close(store.load(name), reference[name], rtol=0, atol=1e-5)
