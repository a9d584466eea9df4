"""Sparse autoencoders to analyse: SAELens's pretrained releases and SAEs saved on disk, and
the Neuronpedia page of each latent.

`load_sae(source, layer=..., model_name=...)` takes

- ``"release/sae_id"``: an SAE of SAELens's registry (``gpt2-small-res-jb/blocks.8.hook_resid_pre``),
  downloaded once into the Hugging Face cache by ``SAE.from_pretrained``;
- ``"release"`` with a ``layer``: that release's SAE at the layer, by the id pattern of the
  model family whose ``sae_release`` it is (``src/models/families.yaml``);
- None with a ``model_name`` and a ``layer``: the family's default release at that layer;
- a directory: an SAE saved with SAELens (``SAE.save_model``, or ``src.analysis.sae.save_sae``
  for the SAEs trained here), read by ``SAE.load_from_disk``.

SAELens's registry (its ``pretrained_saes.yaml``, read offline) maps each release and id to
a Hugging Face repository and folder, the model it was trained on and, where Neuronpedia
hosts it, a Neuronpedia id: latent ``i``'s page is ``https://www.neuronpedia.org/<id>/<i>``.
``SAE.from_pretrained`` stores that id in the SAE's metadata (``sae.cfg.metadata.neuronpedia_id``),
and saving the SAE keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.models.families import Family, load_families
from src.models.load import (
    OFFLINE_HINT,
    ModelNotAvailableError,
    _hub_error,
    offline_unless_reachable,
    parse_dtype,
    resolve_device,
)

if TYPE_CHECKING:
    import torch

NEURONPEDIA = "https://www.neuronpedia.org"
SAE_CONFIG_FILE = "cfg.json"  # what SAE.save_model writes beside the weights


class SAENotAvailableError(ModelNotAvailableError):
    """A pretrained SAE is not in the local Hugging Face cache and cannot be downloaded."""


@dataclass(frozen=True)
class SAESource:
    """Where an SAE comes from: a registry ``release`` and ``sae_id``, or a ``path``."""

    release: str | None = None
    sae_id: str | None = None
    path: Path | None = None

    @property
    def name(self) -> str:
        """``release/sae_id``, or the directory's name: for run and file names."""
        return f"{self.release}/{self.sae_id}" if self.path is None else self.path.name


def registry() -> dict[str, Any]:
    """SAELens's pretrained SAEs by release (``PretrainedSAELookup``: repo_id, model,
    saes_map id -> folder, neuronpedia_id id -> id). Read from the installed package, no
    network; cached after the first call (a few seconds)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def neuronpedia_id(release: str, sae_id: str) -> str | None:
    """The Neuronpedia id of a registry SAE (``gemma-2-2b/12-gemmascope-res-16k``); None
    where Neuronpedia does not host it."""
    lookup = _release(release)
    _check_id(release, sae_id)
    return lookup.neuronpedia_id.get(sae_id)


def neuronpedia_url(neuronpedia: str, feature: int) -> str:
    """The Neuronpedia page of latent ``feature`` of the SAE with Neuronpedia id
    ``neuronpedia`` (``neuronpedia_id``, or ``sae_neuronpedia_id`` of a loaded SAE)."""
    if int(feature) < 0:
        raise ValueError(f"feature must be >= 0, got {feature}")
    return f"{NEURONPEDIA}/{neuronpedia.strip('/')}/{int(feature)}"


def sae_neuronpedia_id(sae: Any) -> str | None:
    """The Neuronpedia id a loaded SAE carries in its metadata (set by ``SAE.from_pretrained``
    from the registry, kept by saving); None for an SAE trained here."""
    value = getattr(sae.cfg.metadata, "neuronpedia_id", None)
    return str(value) if value else None


def _family_of(model_name: str) -> Family | None:
    """The family row of a short name or Hugging Face id; None for anything else."""
    for row in load_families().values():
        if model_name in (row.name, row.hf_id):
            return row
    return None


def default_sae(model_name: str, layer: int | None) -> tuple[str, str]:
    """The family table's SAE of ``model_name`` at ``layer``: ``(release, sae_id)``."""
    row = _family_of(model_name)
    if row is None or row.sae_release is None or row.sae_id is None:
        raise ValueError(
            f"model {model_name!r} has no default SAE release in src/models/families.yaml "
            "(sae_release, sae_id): name one, 'release/sae_id', or an SAE directory"
        )
    return row.sae_release, _layer_id(row, layer)


def _layer_id(row: Family, layer: int | None) -> str:
    if layer is None:
        raise ValueError(
            f"the SAE release {row.sae_release!r} needs a layer for its id {row.sae_id!r}"
        )
    if not 0 <= layer < row.n_layers:
        raise ValueError(f"layer {layer} is out of range for {row.name} (0..{row.n_layers - 1})")
    return str(row.sae_id).format(layer=layer)


def _release(release: str, source: str | None = None) -> Any:
    """The registry's entry of ``release`` (named by ``source``, when one was given)."""
    known = registry()
    if release not in known:
        examples = ", ".join(sorted({r.sae_release for r in load_families().values()} - {None}))
        where = f"SAE {source!r} is no directory, and " if source else ""
        raise ValueError(
            f"{where}unknown SAE release {release!r}: not in SAELens's registry (e.g. "
            f"{examples}; all: sae_lens.loading.pretrained_saes_directory), nor a saved SAE folder"
        )
    return known[release]


def _check_id(release: str, sae_id: str) -> None:
    ids = list(_release(release).saes_map)
    if sae_id not in ids:
        shown = ", ".join(ids[:4]) + (", ..." if len(ids) > 4 else "")
        raise ValueError(f"SAE release {release!r} has no id {sae_id!r}; its ids: {shown}")


def resolve_sae(
    source: str | Path | None, *, layer: int | None = None, model_name: str | None = None
) -> SAESource:
    """Which SAE ``source`` names (see the module docstring), checked against the registry
    offline: a one-line ValueError for an unknown release or id, or a missing layer."""
    if source is None:
        if model_name is None:
            raise ValueError("name an SAE (a release, 'release/sae_id' or a directory) or a model")
        release, sae_id = default_sae(model_name, layer)
        return SAESource(release=release, sae_id=sae_id)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / SAE_CONFIG_FILE).is_file():
            raise ValueError(
                f"SAE {str(source)!r} is a directory but not a saved SAE (no {SAE_CONFIG_FILE}): "
                "point it at the folder SAE.save_model wrote"
            )
        return SAESource(path=path.resolve())
    release, _, sae_id = str(source).partition("/")
    lookup = _release(release, str(source) if sae_id else None)
    if not sae_id:
        rows = [r for r in load_families().values() if r.sae_release == release]
        if model_name is not None:
            rows = [r for r in rows if r.name == model_name or r.hf_id == model_name] or rows
        if not rows:
            raise ValueError(
                f"SAE release {release!r} has no id pattern in src/models/families.yaml: "
                f"give its id, '{release}/<sae_id>' (e.g. {next(iter(lookup.saes_map))!r})"
            )
        sae_id = _layer_id(rows[0], layer)
    _check_id(release, sae_id)
    return SAESource(release=release, sae_id=sae_id)


def load_sae(
    source: str | Path | SAESource | None,
    layer: int | None = None,
    model_name: str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
) -> Any:
    """The SAELens ``SAE`` that ``source`` names (`resolve_sae`), in eval mode on ``device``
    ("auto": cuda, mps or cpu).

    A pretrained SAE missing from the Hugging Face cache while the Hub is unreachable raises
    SAENotAvailableError, one line naming the repository and folder to fetch.
    """
    from sae_lens import SAE

    where = source if isinstance(source, SAESource) else resolve_sae(
        source, layer=layer, model_name=model_name
    )  # fmt: skip
    device = str(resolve_device(device))
    dtype = str(parse_dtype(dtype)).removeprefix("torch.")
    if where.path is not None:
        return SAE.load_from_disk(where.path, device=device, dtype=dtype).eval()
    assert where.release is not None and where.sae_id is not None
    try:
        with offline_unless_reachable():
            sae = SAE.from_pretrained(where.release, where.sae_id, device=device, dtype=dtype)
    except OSError as error:
        if not _hub_error(error, "LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            raise
        lookup = registry()[where.release]
        folder = lookup.saes_map[where.sae_id]
        raise SAENotAvailableError(
            f"the SAE {where.name} (Hugging Face repo {lookup.repo_id!r}, folder {folder!r}) "
            f"is not in the local Hugging Face cache and the Hub cannot be reached (offline, "
            f"or HF_HUB_OFFLINE=1). Fetch it once with network access: run this again online "
            f"without HF_HUB_OFFLINE=1, or `hf download {lookup.repo_id} --include '{folder}/*'`. "
            f"{OFFLINE_HINT}"
        ) from error
    return sae.eval()
