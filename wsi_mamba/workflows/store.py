"""Per-slide feature stores: one zarr group per slide with the tile features and where the tiles are.

Layout of ``NAME.zarr``: arrays ``features`` (n, D) float16, ``coords`` (n, 2) level-0 x, y, ``grid`` (n, 2)
row, col, ``colour`` (n, K) float32 tile colour statistics (the baseline's input), ``tissue_mask`` (h, w)
bool; attrs: encoder, encoder_hash, tile_px, mpp, size0, grid_shape, slide, dimensions, version, complete.
A store is written as ``NAME.zarr.partial`` and renamed when complete, so a store under its final name is
always whole; a left-over ``.partial`` is redone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

FORMAT = "wsi-mamba/features"
FORMAT_VERSION = 1
SUFFIX = ".zarr"
PARTIAL = ".partial"


def store_path(out_dir: str | Path, name: str) -> Path:
    """Where the features of slide ``name`` live under ``out_dir``."""
    return Path(out_dir) / f"{name}{SUFFIX}"


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


def write_store(path: Path, data: SlideFeatures) -> Path:
    """Write ``data`` to ``path`` atomically (``.partial`` first, renamed when complete)."""
    partial = path.with_name(path.name + PARTIAL)
    if partial.exists():
        shutil.rmtree(partial)
    group = zarr.open_group(str(partial), mode="w")
    n = len(data.features)
    chunk = (max(1, min(n, 4096)),)
    group.create_array("features", data=data.features.astype(np.float16), chunks=chunk + data.features.shape[1:])
    group.create_array("coords", data=data.coords.astype(np.int64), chunks=(*chunk, 2))
    group.create_array("grid", data=data.grid.astype(np.int32), chunks=(*chunk, 2))
    group.create_array("colour", data=data.colour.astype(np.float32), chunks=chunk + data.colour.shape[1:])
    group.create_array("tissue_mask", data=data.tissue_mask.astype(bool))
    group.attrs.update({**data.attrs, "format": FORMAT, "format_version": FORMAT_VERSION, "n_tiles": n})
    group.attrs["complete"] = True
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
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
    if attrs.get("format") != FORMAT or not attrs.get("complete"):
        raise ValueError(f"{path}: not a complete {FORMAT} store (re-run extract)")
    return attrs


def read_store(path: str | Path) -> SlideFeatures:
    """Load a complete store."""
    path = Path(path)
    attrs = read_attrs(path)
    group = zarr.open_group(str(path), mode="r")
    return SlideFeatures(
        name=path.name[: -len(SUFFIX)],
        features=np.asarray(group["features"][:], np.float32),
        coords=np.asarray(group["coords"][:]),
        grid=np.asarray(group["grid"][:]),
        colour=np.asarray(group["colour"][:]),
        tissue_mask=np.asarray(group["tissue_mask"][:]),
        attrs=attrs,
    )


def list_stores(features_dir: str | Path) -> dict[str, Path]:
    """Complete stores under ``features_dir`` by slide name; ``ValueError`` when the folder is missing."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise ValueError(f"{features_dir}: features folder not found")
    return {p.name[: -len(SUFFIX)]: p for p in sorted(features_dir.glob(f"*{SUFFIX}")) if is_complete(p)}


def check_same_encoder(
    stores: dict[str, dict], expected: tuple[str, str] | None = None, expected_by: str = "the model"
) -> tuple[str, str]:
    """The (encoder, hash) shared by all ``stores`` (name → attrs); ``ValueError`` naming both when two differ
    or when they differ from ``expected`` (the encoder of ``expected_by``, e.g. the model)."""
    seen: tuple[str, str] | None = expected
    first = expected_by if expected else None
    for name, attrs in stores.items():
        ident = (str(attrs.get("encoder")), str(attrs.get("encoder_hash")))
        if seen is None:
            seen, first = ident, name
        elif ident != seen:
            raise ValueError(
                f"features of {name} come from encoder {ident[0]} ({ident[1]}), but {first} uses "
                f"{seen[0]} ({seen[1]}): extract them again with the same encoder"
            )
    if seen is None:
        raise ValueError("no feature stores given")
    return seen
