"""The one place models are made: `load_model(name, device, dtype)`.

Every model is a TransformerLens `TransformerBridge` with the standard hook names
(`blocks.0.attn.hook_pattern`, `blocks.0.hook_resid_pre`, ...), whether it is a pretrained
Hugging Face model (in HookedTransformer-compatible mode) or an offline toy model.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformer_lens.model_bridge import TransformerBridge

from src.models.families import family, load_families
from src.models.toy import TOY_BOS_TOKEN_ID, TOY_MODELS, load_toy_model

# Short pretrained name -> Hugging Face id, from the family table (src/models/families.yaml).
PRETRAINED_MODELS: dict[str, str] = {
    name: row.hf_id for name, row in load_families().items() if row.hf_id is not None
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


class ModelNotAvailableError(RuntimeError):
    """The weights of a pretrained model are not on this machine and cannot be downloaded."""


def available_devices() -> list[str]:
    """Names of the devices torch can use here, e.g. `["cpu", "cuda:0"]`."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> cuda, else mps, else cpu; an explicit device is checked to exist."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a valid torch device ({error})") from error
    available = available_devices()
    if resolved.type == "cuda":
        ok = torch.cuda.is_available() and (resolved.index or 0) < torch.cuda.device_count()
    elif resolved.type == "mps":
        ok = torch.backends.mps.is_available()
    else:
        ok = resolved.type == "cpu"
    if not ok:
        raise ValueError(f"device={device!r} is not available here; available: {available}")
    return resolved


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"float32"`, `"fp16"`, `"bf16"`, `torch.bfloat16`, ... -> the torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPES)}")
    return DTYPES[key]


# Architectures (Hugging Face model classes) whose tiny checkpoints the tests run every
# method on; others that TransformerLens's bridge supports load, with a warning.
TESTED_ARCHITECTURES = (
    "GPT2LMHeadModel",
    "GPTNeoXForCausalLM",
    "Gemma2ForCausalLM",
    "Qwen2ForCausalLM",
)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _hub_error(error: BaseException | None, *names: str) -> BaseException | None:
    """The first error in `error`'s chain (causes and contexts) whose class is one of
    huggingface_hub's `names` (offline, gated, not found, ...), else None."""
    import huggingface_hub.errors as hub_errors

    types = tuple(getattr(hub_errors, n) for n in names)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, types):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


HUB_PROBE_TIMEOUT_S = 3.0  # a TCP connection to the Hub's host within this: online


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub's host (``HF_ENDPOINT``) takes a TCP connection within
    ``timeout`` seconds (its name resolved first): a quick check, before huggingface_hub
    spends half a minute retrying each request with backoff."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def offline_unless_reachable() -> Iterator[None]:
    """Hub downloads inside the block: as usual when the Hub answers (or HF_HUB_OFFLINE is
    already set); else offline mode for the block, so a model or SAE in the local cache
    loads at once and one that is not fails at once, with no retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True  # what huggingface_hub (and transformers) read
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


OFFLINE_HINT = (
    "When working offline, set HF_HUB_OFFLINE=1 (then nothing tries the network; unset, "
    "each load first checks whether the Hub answers)."
)


def _hub_message(hf_id: str, error: BaseException) -> str | None:
    """One line for a Hugging Face Hub failure of `hf_id`, or None if `error` is not one."""
    if _hub_error(error, "LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return (
            f"the weights of {hf_id!r} are not in the local Hugging Face cache and the Hub "
            f"cannot be reached (offline, or HF_HUB_OFFLINE=1). Fetch them once with network "
            f"access: run this again online, or `hf download {hf_id}` (older huggingface_hub: "
            f"`huggingface-cli download {hf_id}`). "
            f"Offline, use the toy model: load_model('toy-induction'). {OFFLINE_HINT}"
        )
    if _hub_error(error, "GatedRepoError"):
        return (
            f"{hf_id!r} is a gated model: accept its licence at https://huggingface.co/{hf_id} "
            "while logged in, then set HF_TOKEN (in the environment or the project's .env, "
            "which git ignores) or run `hf auth login`"
        )
    if _hub_error(error, "RepositoryNotFoundError"):
        return (
            f"no Hugging Face model {hf_id!r} (check the id; a private model needs HF_TOKEN); "
            f"known names: {sorted(PRETRAINED_MODELS)}"
        )
    return None


def _unsupported(source: str, architectures: list[str]) -> str:
    return (
        f"model {source!r} is a {'/'.join(architectures) or 'model of unknown'} architecture, "
        "which TransformerLens's bridge does not support; tested here: "
        + ", ".join(TESTED_ARCHITECTURES)
    )


def _check_architecture(source: str, architectures: list[str]) -> None:
    """A one-line error when TransformerLens's bridge supports none of `architectures`; a
    warning when it does but this project does not test them."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    if not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise ValueError(_unsupported(source, architectures))
    if not any(a in TESTED_ARCHITECTURES for a in architectures):
        warnings.warn(
            f"{source}: {'/'.join(architectures)} loads through TransformerLens's bridge but "
            "this project's methods are tested on " + ", ".join(TESTED_ARCHITECTURES),
            stacklevel=3,
        )


def load_pretrained(
    hf_id: str, device: torch.device, dtype: torch.dtype, n_devices: int = 1
) -> TransformerBridge:
    """A Hugging Face model (id or local checkpoint directory) as a bridge with
    HookedTransformer numerics (folded LayerNorm); `n_devices` > 1 splits its layers over
    that many GPUs (TransformerLens's `n_devices`)."""
    split = {"n_devices": n_devices} if n_devices > 1 else {"device": device}
    if n_devices > 1 and torch.cuda.device_count() < n_devices:
        raise ValueError(
            f"model.n_devices={n_devices} needs {n_devices} CUDA GPUs; "
            f"this machine has {torch.cuda.device_count()}"
        )
    local = Path(hf_id).is_dir()
    try:
        with nullcontext() if local else offline_unless_reachable():
            model = TransformerBridge.boot_transformers(hf_id, dtype=dtype, **split)
    except OSError as error:
        message = _hub_message(hf_id, error)
        if message is None:
            raise
        raise ModelNotAvailableError(message) from error
    except ValueError as error:
        if "Could not determine supported architecture" not in str(error):
            raise
        raise ValueError(_unsupported(hf_id, [])) from error
    model.enable_compatibility_mode(disable_warnings=True)
    if any(p.dtype != dtype for p in model.parameters()):  # Qwen2's folded q/k/v: float32
        model.to(dtype)
    return model


def local_checkpoint(name: str) -> Path | None:
    """The directory `name` names, if it is one (a local Hugging Face checkpoint: the
    `save_pretrained` output of a model and its tokenizer); None for a model name."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return None
    missing = [
        what
        for what, patterns in (
            ("config.json", ("config.json",)),
            ("weights", WEIGHT_FILES),
            ("tokenizer", TOKENIZER_FILES),
        )
        if not any(any(path.glob(p)) for p in patterns)
    ]
    if missing:
        raise ValueError(
            f"model {name!r} is a directory but not a Hugging Face checkpoint (no "
            f"{', '.join(missing)}): point it at the save_pretrained output of a model and "
            "its tokenizer"
        )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    _check_architecture(name, list(config.get("architectures") or []))
    return path.resolve()


def load_model(
    name: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    n_devices: int = 1,
) -> torch.nn.Module:
    """The model `name` in eval mode on `device`.

    `name` is a toy model (`toy-induction`, trained and cached on first use, offline), a short
    pretrained name (`gpt2-small`, ...), a Hugging Face id containing `/`, or the directory
    of a local checkpoint (`save_pretrained` output of the model and its tokenizer).
    `n_devices` > 1 splits a pretrained model's layers over that many GPUs.
    """
    resolved_device = resolve_device(device)
    resolved_dtype = parse_dtype(dtype)
    if name in TOY_MODELS:
        return load_toy_model(name, device=resolved_device, dtype=resolved_dtype)
    local = local_checkpoint(name)
    if local is not None:
        return load_pretrained(str(local), resolved_device, resolved_dtype, n_devices).eval()
    if name in PRETRAINED_MODELS or name in PRETRAINED_MODELS.values() or "/" in name:
        hf_id = PRETRAINED_MODELS.get(name, name)
        return load_pretrained(hf_id, resolved_device, resolved_dtype, n_devices).eval()
    known = sorted(TOY_MODELS) + sorted(PRETRAINED_MODELS)
    raise ValueError(
        f"unknown model {name!r}; known: {known}, a Hugging Face id such as 'org/model', or "
        "the directory of a local checkpoint (add a name to src/models/families.yaml)"
    )


def gpt2_shaped_model(
    device: str | torch.device = "auto", n_ctx: int | None = None
) -> TransformerBridge:
    """A random-init native bridge of GPT-2 small's shape (its row of the family table; context
    `n_ctx`, default its own), seeded: for benchmarks at a realistic size with no download."""
    from transformer_lens.config import TransformerBridgeConfig

    kwargs = family("gpt2-small").bridge_config_kwargs()
    if n_ctx is not None:
        kwargs["n_ctx"] = n_ctx
    cfg = TransformerBridgeConfig(**kwargs, seed=0)
    return TransformerBridge.boot_native(cfg, device=resolve_device(device)).eval()


def bos_token_id(model: torch.nn.Module) -> int | None:
    """The model's BOS token id: its tokenizer's, or the toy models' convention (no tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    return TOY_BOS_TOKEN_ID if tokenizer is None else tokenizer.bos_token_id
