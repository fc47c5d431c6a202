"""The encoder registry itself (see the package docstring); family modules register here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...outputs.artefact import read_json_object
from ...outputs.atomic import copy_file
from .base import TileEncoder

DEFAULT_FAMILY = "vmamba"


@dataclass(frozen=True)
class EncoderFamily:
    """How one family builds, loads and saves encoders.

    ``create(name, weights, tile_px, mpp, seed, **overrides)``: ``name`` of the family's architecture (None: take
    it from ``weights``, a folder with a config); ``load(path, meta, tile_px, mpp, **overrides)``: our checkpoint
    ``path`` whose JSON is ``meta``; ``save(encoder, path, metadata)``: write our checkpoint, return the tensor
    file. ``checkpoint_format``: the ``format`` of the JSON the family writes. ``claims_folder`` / ``claims_name``:
    whether a bare folder or name (``uni``: a preset) is the family's."""

    name: str
    checkpoint_format: str
    create: Callable[..., TileEncoder]
    load: Callable[..., TileEncoder]
    save: Callable[..., Path]
    claims_folder: Callable[[Path], bool] = lambda path: False
    claims_name: Callable[[str], bool] = lambda name: False


_FAMILIES: dict[str, EncoderFamily] = {}


def register_encoder_family(family: EncoderFamily) -> None:
    """Add ``family`` to the registry (a name may be registered once)."""
    if family.name in _FAMILIES:
        raise ValueError(f"encoder family {family.name!r} is already registered")
    _FAMILIES[family.name] = family


def list_encoder_families() -> list[str]:
    """The registered family names, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> EncoderFamily:
    """The family ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown encoder family {name!r}; available: {', '.join(list_encoder_families())}") from None


def _family_of_checkpoint(path: Path) -> tuple[EncoderFamily, dict]:
    """The family whose checkpoint format the JSON beside ``path`` names, and that JSON."""
    meta_file = path.with_suffix(".json")
    if not meta_file.exists():
        raise ValueError(f"{path}: no model config {meta_file.name} beside the checkpoint")
    meta = read_json_object(meta_file)
    for family in _FAMILIES.values():
        if meta.get("format") == family.checkpoint_format:
            return family, meta
    known = ", ".join(f.checkpoint_format for f in _FAMILIES.values())
    raise ValueError(f"{meta_file}: not an encoder checkpoint (format {meta.get('format')!r}, expected one of {known})")


def is_checkpoint(path: str | Path) -> bool:
    """True for a ``.safetensors`` file with a JSON beside it naming a registered family's format."""
    path = Path(path)
    try:
        return path.suffix == ".safetensors" and path.is_file() and bool(_family_of_checkpoint(path))
    except ValueError:
        return False


def create_encoder(
    spec: str | Path,
    weights: str | Path | None = None,
    tile_px: int | None = None,
    mpp: float | None = None,
    seed: int = 0,
    **overrides,
) -> TileEncoder:
    """The encoder ``spec`` names (see the module docstring). ``weights``: a local weights file or folder for a
    ``FAMILY:NAME`` spec. ``tile_px``/``mpp`` override the tile geometry the checkpoint or the model's own
    config gives. ``overrides``: the family's build options (``num_classes``, ``drop_path_rate``; VMamba config
    fields such as ``scan_backend``). A missing file is a one-line ``ValueError`` naming it."""
    text = str(spec)
    prefix, sep, name = text.partition(":")
    if sep and prefix in _FAMILIES and not Path(text).exists():
        if not name:
            raise ValueError(f"{text}: no architecture after '{prefix}:' (e.g. {prefix}:resnet18)")
        return _FAMILIES[prefix].create(name, weights, tile_px, mpp, seed, **overrides)
    path = Path(text)
    claimant = next((f for f in _FAMILIES.values() if f.claims_name(text)), None)
    if claimant is not None and (weights is not None or not path.exists()):  # `--encoder uni --encoder-weights uni`
        return claimant.create(text, weights, tile_px, mpp, seed, **overrides)
    if weights is not None:
        raise ValueError(f"{text}: weights are given with a FAMILY:NAME spec (e.g. timm:resnet18), not with a file")
    if path.is_dir():
        for family in _FAMILIES.values():
            if family.claims_folder(path):
                return family.create(None, path, tile_px, mpp, seed, **overrides)
        raise ValueError(f"{path}: not a model folder with config.json and weights")
    if path.suffix or len(path.parts) > 1 or path.exists():  # a path, not a registry name
        if not path.exists():
            raise ValueError(f"{path}: encoder checkpoint not found")
        family, meta = _family_of_checkpoint(path)
        return family.load(path, meta, tile_px, mpp, **overrides)
    return get_family(DEFAULT_FAMILY).create(text, None, tile_px, mpp, seed, **overrides)


def save_encoder(encoder: TileEncoder, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``encoder`` as our checkpoint (``.safetensors`` + JSON, its family's format) with ``metadata``
    (name, tile geometry, training record); returns the tensor file."""
    return get_family(encoder.family).save(encoder, path, metadata)


def export_encoder(encoder: TileEncoder, path: str | Path) -> Path:
    """``encoder`` as our checkpoint at ``path``: its source copied when it is one of ours already (its JSON kept
    whole; an error of writing names ``path``), written from the loaded weights otherwise (a timm model from a
    ``.pth`` or a folder)."""
    path = Path(path)
    if encoder.source is not None and is_checkpoint(encoder.source):
        copy_file(encoder.source, path)
        copy_file(Path(encoder.source).with_suffix(".json"), path.with_suffix(".json"))
        return path
    return save_encoder(encoder, path, {"name": encoder.name, "tile_px": encoder.tile_px, "mpp": encoder.mpp})


def encoder_from_record(record: dict, source: str | Path | None = None) -> TileEncoder:
    """The encoder a feature store's attributes describe (:meth:`TileEncoder.source_record` plus the tile
    geometry), from ``source`` when given (``--encoder``) or the recorded ``encoder_source``."""
    spec = record.get("encoder_spec")
    where = source or record.get("encoder_source")
    if spec and not (where and is_checkpoint(where)):
        if where and not Path(where).exists():
            raise ValueError(f"{where}: encoder weights not found (pass --encoder)")
        return create_encoder(spec, weights=where, tile_px=record.get("tile_px"), mpp=record.get("mpp"))
    if not where or not Path(where).exists():
        raise ValueError("the stores do not say where their encoder checkpoint is: pass --encoder")
    return create_encoder(where, tile_px=record.get("tile_px"), mpp=record.get("mpp"))
