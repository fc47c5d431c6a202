"""Our checkpoint format: ``NAME.safetensors`` (tensors) + ``NAME.json`` (the model configuration) beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..outputs.artefact import ArtefactFormat
from ..outputs.atomic import json_safe
from .state import load_into_new_model
from .validation import check_float, check_int
from .vmamba import VSSM, VMambaConfig

FORMAT = ArtefactFormat("wsi-mamba/vmamba", 1)
FORMAT_VERSION = FORMAT.version


def config_path(path: str | Path) -> Path:
    """The JSON file that goes with a ``.safetensors`` checkpoint."""
    return Path(path).with_suffix(".json")


def tensor_writer(model: nn.Module, fmt: ArtefactFormat) -> Callable[[Path], None]:
    """A function that writes ``model``'s state dict (on the CPU, contiguous) as safetensors to a given path,
    tagged with ``fmt``'s name (for :meth:`ArtefactFormat.write_pair`)."""
    state: dict[str, torch.Tensor] = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return lambda tmp: save_file(state, str(tmp), metadata={"format": fmt.name})


def save_checkpoint(model: VSSM, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``path`` (``.safetensors`` appended if missing) and its JSON config (plus ``metadata``, free-form
    JSON, e.g. how the weights were trained); returns the tensor file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"model": "VSSM", "config": model.config.to_dict()}
    if metadata:
        body["metadata"] = json_safe(metadata)  # a NaN (e.g. an undefined validation AUC) is stored as null
    return FORMAT.write_pair(path, config_path(path), body, tensor_writer(model, FORMAT))


def read_checkpoint_metadata(path: str | Path) -> dict:
    """The JSON beside a checkpoint, checked for our format; ``ValueError`` naming the file otherwise."""
    path = Path(path)
    meta_file = config_path(path)
    if not meta_file.exists():
        raise ValueError(f"{path}: no model config {meta_file.name} beside the checkpoint")
    meta = FORMAT.read(meta_file)
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("metadata", {}), dict):
        raise ValueError(f"{meta_file}: 'config' and 'metadata' must be JSON objects")
    try:
        check_encoder_metadata(meta.get("metadata", {}))
    except ValueError as exc:
        raise ValueError(f"{meta_file}: {exc}") from None
    return meta


def check_encoder_metadata(extra: dict) -> None:
    """``ValueError`` unless the tile geometry and name an encoder checkpoint's metadata may set are in range."""
    if "tile_px" in extra:
        check_int("metadata", "tile_px", extra["tile_px"], 8, 8192)
    if "mpp" in extra:
        check_float("metadata", "mpp", extra["mpp"], 0.05, 100)
    if "name" in extra and not isinstance(extra["name"], str):
        raise ValueError(f"metadata: name must be a string, got {extra['name']!r}")


def load_checkpoint(path: str | Path, **overrides) -> VSSM:
    """Rebuild the model from the JSON beside ``path`` (fields overridable, e.g. ``scan_backend``) and load it;
    the config is checked (types, bounds) before anything is built."""
    meta = read_checkpoint_metadata(path)
    try:
        config = VMambaConfig.from_dict({**meta["config"], **overrides})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_path(path)}: {exc}") from None
    return load_into_new_model(lambda: VSSM(config), read_safetensors(path))


def read_safetensors(path: str | Path) -> dict:
    """Tensors of a ``.safetensors`` file (never unpickles); ``ValueError`` naming the file otherwise."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except Exception as exc:  # safetensors raises its own error types for foreign or damaged files
        raise ValueError(f"{path}: not a safetensors file ({str(exc).splitlines()[0][:120]})") from None
