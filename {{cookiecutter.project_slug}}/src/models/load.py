"""The one place models are made: `load_model(name, device, dtype)`.

Every model is a TransformerLens `TransformerBridge` with the standard hook names
(`blocks.0.attn.hook_pattern`, `blocks.0.hook_resid_pre`, ...), whether it is a pretrained
Hugging Face model (in HookedTransformer-compatible mode) or an offline toy model.
"""

from __future__ import annotations

from pathlib import Path

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


def _is_offline_error(error: BaseException | None) -> bool:
    """Whether `error` (or its cause) says the Hub was unreachable and the cache lacked files."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def load_pretrained(hf_id: str, device: torch.device, dtype: torch.dtype) -> TransformerBridge:
    """A Hugging Face model as a bridge with HookedTransformer numerics (folded LayerNorm)."""
    try:
        model = TransformerBridge.boot_transformers(hf_id, device=device, dtype=dtype)
    except OSError as error:
        if not _is_offline_error(error):
            raise
        raise ModelNotAvailableError(
            f"the weights of {hf_id!r} are not in the local Hugging Face cache and the Hub "
            f"cannot be reached (offline, or HF_HUB_OFFLINE=1). Fetch them once with network "
            f"access: run this again online, or `hf download {hf_id}` (older huggingface_hub: "
            f"`huggingface-cli download {hf_id}`). "
            f"Offline, use the toy model: load_model('toy-induction')."
        ) from error
    model.enable_compatibility_mode(disable_warnings=True)
    return model


def local_checkpoint(name: str) -> Path | None:
    """The directory `name` names, if it is one (a local Hugging Face checkpoint: the
    `save_pretrained` output of a model and its tokenizer); None for a model name."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return None
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model {name!r} is a directory but not a Hugging Face checkpoint (no config.json): "
            "point it at the save_pretrained output of a model and its tokenizer"
        )
    return path.resolve()


def load_model(
    name: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32"
) -> torch.nn.Module:
    """The model `name` in eval mode on `device`.

    `name` is a toy model (`toy-induction`, trained and cached on first use, offline), a short
    pretrained name (`gpt2-small`, ...), a Hugging Face id containing `/`, or the directory
    of a local checkpoint (`save_pretrained` output of the model and its tokenizer).
    """
    resolved_device = resolve_device(device)
    resolved_dtype = parse_dtype(dtype)
    if name in TOY_MODELS:
        return load_toy_model(name, device=resolved_device, dtype=resolved_dtype)
    local = local_checkpoint(name)
    if local is not None:
        return load_pretrained(str(local), resolved_device, resolved_dtype).eval()
    if name in PRETRAINED_MODELS or name in PRETRAINED_MODELS.values() or "/" in name:
        hf_id = PRETRAINED_MODELS.get(name, name)
        return load_pretrained(hf_id, resolved_device, resolved_dtype).eval()
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
