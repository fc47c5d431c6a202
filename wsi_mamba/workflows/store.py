"""Per-slide feature stores: one zarr group per slide with the tile features and where the tiles are.

Layout of ``NAME.zarr``: arrays ``features`` (n, D) float16, ``coords`` (n, 2) level-0 x, y, ``grid`` (n, 2)
row, col, ``colour`` (n, K) float32 tile colour statistics (the baseline's input), ``tissue_mask`` (h, w)
bool; attrs: encoder, encoder_hash, tile_px, mpp, size0, grid_shape, slide, dimensions, mode (and region sizes
or views), version, complete,
and ``arrays``: each array's shape, dtype and SHA-256 of its content, checked on every read (a missing chunk,
which zarr would read as zeros, or a damaged one is an error naming the slide).
A store is written as ``NAME.zarr.partial`` under the lock ``NAME.zarr.lock`` and swapped in when complete
(a previous store stays until then), so a store under its final name is always whole; a left-over
``.partial`` is redone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..outputs.artefact import ArtefactFormat
from ..outputs.atomic import atomic_folder
from ..outputs.lock import output_lock
from .batch import output_stem

FORMAT = ArtefactFormat("wsi-mamba/features", 1, kind="store")
FORMAT_VERSION = FORMAT.version
SUFFIX = ".zarr"
PARTIAL = ".partial"


def store_path(out_dir: str | Path, name: str) -> Path:
    """Where the features of slide ``name`` live under ``out_dir`` (a name too long for a file name is clipped
    with a hash, :func:`~wsi_mamba.workflows.batch.output_stem`; the store's ``slide_name`` attribute keeps it
    whole)."""
    return Path(out_dir) / f"{output_stem(name)}{SUFFIX}"


def store_slide_name(path: Path) -> str:
    """The slide a store belongs to: its ``slide_name`` attribute, or (older or unreadable stores) its folder stem."""
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name.split(SUFFIX)[0]
    try:
        name = zarr.open_group(str(path), mode="r").attrs.get("slide_name")
    except Exception:  # damaged or partial: the stem names it
        return stem
    return name if isinstance(name, str) and name and output_stem(name) == stem else stem


@dataclass
class SlideFeatures:
    """Everything a store holds, in memory (features as float32)."""

    name: str
    features: np.ndarray
    coords: np.ndarray
    grid: np.ndarray
    colour: np.ndarray
    tissue_mask: np.ndarray
    attrs: dict

    @property
    def rows(self) -> np.ndarray:
        return self.grid[:, 0]

    @property
    def cols(self) -> np.ndarray:
        return self.grid[:, 1]

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.attrs["grid_shape"])  # type: ignore[return-value]

    @property
    def size0(self) -> float:
        return float(self.attrs["size0"])

    @property
    def encoder_id(self) -> tuple[str, str]:
        return str(self.attrs["encoder"]), str(self.attrs["encoder_hash"])

    def __len__(self) -> int:
        return len(self.features)


ARRAYS = ("features", "coords", "grid", "colour", "tissue_mask")


def _digest(array: np.ndarray) -> dict:
    """Shape, dtype and SHA-256 of an array's content (what a read must give back)."""
    array = np.ascontiguousarray(array)
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": hashlib.sha256(array.data).hexdigest()}


def write_store(path: Path, data: SlideFeatures) -> Path:
    """Write ``data`` to ``path`` atomically: under the store's lock, built as ``.partial`` and swapped in
    when complete (never delete-then-rename: the previous store stays until the new one is in place)."""
    partial = path.with_name(path.name + PARTIAL)
    arrays = {
        "features": data.features.astype(np.float16),
        "coords": data.coords.astype(np.int64),
        "grid": data.grid.astype(np.int32),
        "colour": data.colour.astype(np.float32),
        "tissue_mask": data.tissue_mask.astype(bool),
    }
    n = len(data.features)
    chunk = (max(1, min(n, 4096)),)
    # The lock says no one else writes this store now: a left-over ``.partial`` is a crashed writer's, and
    # atomic_folder clears it before building the new store there.
    with output_lock(path), atomic_folder(path, temp=partial) as folder:
        group = zarr.open_group(str(folder), mode="w")
        for key, array in arrays.items():
            chunks = None if key == "tissue_mask" else chunk + array.shape[1:]
            if chunks is None:
                group.create_array(key, data=array)
            else:
                group.create_array(key, data=array, chunks=chunks)
        group.attrs.update(
            {
                **data.attrs,
                **FORMAT.header(),
                "slide_name": data.name,
                "n_tiles": n,
                "arrays": {key: _digest(array) for key, array in arrays.items()},
            }
        )
        group.attrs["complete"] = True
    return path


def is_complete(path: Path) -> bool:
    """True for a whole store under its final name (a crash before the rename leaves only ``.partial``)."""
    if not path.is_dir():
        return False
    try:
        return bool(zarr.open_group(str(path), mode="r").attrs.get("complete", False))
    except Exception:  # a damaged folder is not complete: it will be redone
        return False


def read_attrs(path: Path) -> dict:
    """A store's attributes; ``ValueError`` naming the folder when it is not a complete feature store."""
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as exc:
        raise ValueError(f"{path}: not a feature store ({type(exc).__name__})") from None
    if not FORMAT.matches(attrs) or not attrs.get("complete"):
        raise ValueError(f"{path}: not a complete {FORMAT.name} store (re-run extract)")
    FORMAT.check(attrs, path)
    return attrs


def _read_array(group: zarr.Group, key: str, path: Path, expected: dict | None) -> np.ndarray:
    """One array of a store, checked against its recorded digest; ``ValueError`` naming the slide otherwise."""
    name = path.name[: -len(SUFFIX)]
    try:
        array = np.asarray(group[key][:])
    except Exception as exc:  # a missing array, an undecodable chunk
        raise ValueError(
            f"{path}: feature store of slide {name} is damaged: {key} cannot be read "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); re-run extract"
        ) from None
    if expected is not None and _digest(array) != expected:
        raise ValueError(
            f"{path}: feature store of slide {name} is damaged: {key} differs from what was written "
            "(a missing or altered chunk); re-run extract"
        )
    return array


def read_store(path: str | Path) -> SlideFeatures:
    """Load a complete store, every array checked against the digest recorded when it was written (stores
    written before digests existed are read unchecked)."""
    path = Path(path)
    attrs = read_attrs(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: not a feature store ({type(exc).__name__})") from None
    digests = attrs.get("arrays") if isinstance(attrs.get("arrays"), dict) else {}
    arrays = {key: _read_array(group, key, path, digests.get(key)) for key in ARRAYS}
    return SlideFeatures(
        name=store_slide_name(path),
        features=arrays["features"].astype(np.float32),
        coords=arrays["coords"],
        grid=arrays["grid"],
        colour=arrays["colour"],
        tissue_mask=arrays["tissue_mask"],
        attrs=attrs,
    )


def verify_store(path: str | Path) -> str | None:
    """None for a complete store whose arrays match their digests, else why not (one line)."""
    try:
        read_store(path)
    except ValueError as exc:
        return str(exc)
    return None


def incomplete_stores(features_dir: str | Path) -> dict[str, Path]:
    """Stores under ``features_dir`` that are not complete (damaged, unmarked, or an interrupted ``.partial``)
    by slide name."""
    features_dir = Path(features_dir)
    found = {}
    for p in sorted(features_dir.glob(f"*{SUFFIX}{PARTIAL}")):
        found[p.name[: -len(SUFFIX + PARTIAL)]] = p
    for p in sorted(features_dir.glob(f"*{SUFFIX}")):
        if not is_complete(p):
            found[store_slide_name(p)] = p
    return found


def list_stores(features_dir: str | Path, strict: bool = True) -> dict[str, Path]:
    """Complete stores under ``features_dir`` by slide name; ``ValueError`` when the folder is missing and,
    when ``strict``, when it holds incomplete or damaged stores (listed: nothing is silently left out)."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise ValueError(f"{features_dir}: features folder not found")
    if strict:
        bad = incomplete_stores(features_dir)
        if bad:
            shown = ", ".join(p.name for p in list(bad.values())[:5]) + (", ..." if len(bad) > 5 else "")
            raise ValueError(
                f"{features_dir}: {len(bad)} incomplete or damaged feature store(s) ({shown}): re-run extract "
                "to finish them, or delete them"
            )
    return {store_slide_name(p): p for p in sorted(features_dir.glob(f"*{SUFFIX}")) if is_complete(p)}


MODE_KEYS = ("mode", "region_px", "region_overlap_px")


def feature_mode(attrs: dict) -> dict:
    """How a store's (or a model's) features were made: ``{"mode": "tile"}`` (also for stores written before
    modes existed), ``{"mode": "tile", "views": 4}`` (features averaged over dihedral views) or
    ``{"mode": "region", "region_px": …, "region_overlap_px": …}``."""
    if attrs.get("mode", "tile") == "tile":
        views = int(attrs.get("views", 1))
        return {"mode": "tile", "views": views} if views > 1 else {"mode": "tile"}
    return {key: attrs.get(key) for key in MODE_KEYS}


def describe_mode(mode: dict) -> str:
    """``tile mode``, ``tile mode (4 views)`` or ``region mode (1024 px, overlap 256 px)``."""
    mode = feature_mode(mode)
    if mode["mode"] == "tile":
        return f"tile mode ({mode['views']} views)" if "views" in mode else "tile mode"
    return f"{mode['mode']} mode ({mode['region_px']} px, overlap {mode['region_overlap_px']} px)"


def check_same_encoder(
    stores: dict[str, dict],
    expected: tuple[str, str] | None = None,
    expected_by: str = "the model",
    expected_mode: dict | None = None,
) -> tuple[str, str]:
    """The (encoder, hash) shared by all ``stores`` (name → attrs); ``ValueError`` naming both when two differ
    or when they differ from ``expected`` (the encoder of ``expected_by``, e.g. the model). The feature mode
    (:func:`feature_mode`: tile or region mode and its sizes) is part of the identity: stores of two modes, or of
    another mode than ``expected_mode``, are refused the same way."""
    if not stores and expected is None:
        raise ValueError("no feature stores given")
    idents = {name: (str(attrs.get("encoder")), str(attrs.get("encoder_hash"))) for name, attrs in stores.items()}
    seen, first, name = _first_difference(idents, expected, expected_by)
    if name is not None:
        ident = idents[name]
        raise ValueError(
            f"features of {name} come from encoder {ident[0]} ({ident[1]}), but {first} uses "
            f"{seen[0]} ({seen[1]}): extract them again with the same encoder"
        )
    modes = {name: feature_mode(attrs) for name, attrs in stores.items()}
    expected_feature_mode = feature_mode(expected_mode) if expected_mode is not None else None
    mode_seen, mode_first, name = _first_difference(modes, expected_feature_mode, expected_by)
    if name is not None:
        raise ValueError(
            f"features of {name} were extracted in {describe_mode(modes[name])}, but {mode_first} uses "
            f"{describe_mode(mode_seen)}: extract them again in one mode"
        )
    return seen


def _first_difference(values: dict[str, Any], expected: Any, expected_by: str | None) -> tuple[Any, Any, str | None]:
    """(reference value, whose it is, first name whose value differs or None): the reference is ``expected``
    (``expected_by``'s) when given, else the first value."""
    seen, first = (expected, expected_by) if expected is not None else (None, None)
    for name, value in values.items():
        if seen is None:
            seen, first = value, name
        elif value != seen:
            return seen, first, name
    return seen, first, None
