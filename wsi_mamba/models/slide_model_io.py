"""Slide-model checkpoints: ``NAME.safetensors`` (tensors) + ``NAME.json`` (format, aggregator name, config,
metadata), written and read through :class:`~wsi_mamba.outputs.artefact.ArtefactFormat` (atomic pair, checked
header). Any registered aggregator (``aggregators/``) is saved the same way; loading picks its class from the
registry by the recorded name (a file without one, as written before the registry, is ``ss2d``)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from ..outputs.artefact import ArtefactFormat
from .aggregators import Aggregator, aggregator_spec
from .checkpoint import tensor_writer
from .state import load_into_new_model

__all__ = ["FORMAT", "load_slide_model", "save_slide_model"]

FORMAT = ArtefactFormat("wsi-mamba/slide-model", 1)
FORMAT_VERSION = FORMAT.version


def _tensor_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".safetensors")
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def save_slide_model(model: Aggregator, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``NAME.safetensors`` (``.safetensors`` appended if missing) and ``NAME.json`` (format, the
    aggregator's registry name, its config and the JSON-serialisable ``metadata``); returns the tensor file."""
    path = _tensor_path(path)
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    name = getattr(model, "aggregator_name", "") or "ss2d"  # a bare SlideMamba is the ss2d aggregator
    aggregator_spec(name)
    body = {"aggregator": name, "config": model.config.to_dict(), "metadata": dict(metadata or {})}
    try:
        FORMAT.dumps(body)
    except ValueError as exc:
        raise ValueError(f"metadata is not JSON-serialisable: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    return FORMAT.write_pair(path, path.with_suffix(".json"), body, tensor_writer(model, FORMAT))


def load_slide_model(path: str | Path, **overrides) -> tuple[Aggregator, dict]:
    """Rebuild the aggregator named in the JSON beside ``path`` (config fields overridable, e.g.
    ``scan_backend``, which is dropped for aggregators without a scan), load its tensors strictly; returns
    (model in eval mode, metadata). Problems → ``ValueError``."""
    path = _tensor_path(path)
    meta_file = path.with_suffix(".json")
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    if not meta_file.exists():  # a FIFO or device is refused by the capped reader, in one line naming it
        raise ValueError(f"{path}: no model config {meta_file.name} beside the checkpoint")
    meta = FORMAT.read(meta_file)
    config_data, metadata = meta.get("config"), meta.get("metadata", {})
    if not isinstance(config_data, dict) or not isinstance(metadata, dict):
        raise ValueError(f"{meta_file}: 'config' and 'metadata' must be JSON objects")
    try:
        spec = aggregator_spec(meta.get("aggregator", "ss2d"))
        if "scan_backend" not in spec.field_names():
            overrides = {k: v for k, v in overrides.items() if k != "scan_backend"}
        config = spec.config_cls.from_dict({**config_data, **overrides})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{meta_file}: {exc}") from exc
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type for a bad header
        raise ValueError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    try:
        model = load_into_new_model(lambda: spec.cls(config), state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return model.eval(), metadata
