"""Per-slide feature stores: one zarr group per slide with the tile features and where the tiles are.

Layout of ``NAME.zarr``: arrays ``features`` (n, D) float16, ``coords`` (n, 2) level-0 x, y, ``grid`` (n, 2)
row, col, ``colour`` (n, K) float32 tile colour statistics (the baseline's input), ``tissue_mask`` (h, w)
bool, and in views on demand ``views`` (n,) uint8, the dihedral views each tile's features average; attrs:
encoder, encoder_hash, tile_px, mpp, size0, grid_shape, slide, dimensions, mode (and region sizes or views and
views_on_demand), version, complete,
and ``arrays``: each array's shape, dtype and SHA-256 of its content, checked on every read (a missing chunk,
which zarr would read as zeros, or a damaged one is an error naming the slide).
A store is written as ``NAME.zarr.partial`` under the lock ``NAME.zarr.lock`` and swapped in when complete
(a previous store stays until then), so a store under its final name is always whole; a left-over
``.partial`` is redone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..devices import CPU_PRECISIONS
from ..outputs.artefact import ArtefactFormat
from ..outputs.atomic import atomic_folder
from ..outputs.lock import output_lock
from ..outputs.names import output_stem
from .modes import mode_from_attrs

FORMAT = ArtefactFormat("wsi-mamba/features", 1, kind="store")
FORMAT_VERSION = FORMAT.version
SUFFIX = ".zarr"
PARTIAL = ".partial"
MAX_GRID_CELLS = 10_000_000
"""The most cells a store's grid may have: the most ``extract`` makes (``slide.tiling``: the default
``--max-pixels`` / 50). A 250k x 250k px slide at 0.25 µm/px in 96 px tiles at 0.972 µm/px is ~700 x 700."""
MAX_SLIDE_SIDE = 10_000_000
"""The widest a store's slide may be, in level-0 px (50 times the widest real slide)."""
VIEW_COUNTS = (1, 4, 8)  # as wsi_mamba.data.augment_config (not imported: this module stays light)


def store_path(out_dir: str | Path, name: str) -> Path:
    """Where the features of slide ``name`` live under ``out_dir`` (a name too long for a file name is clipped
    with a hash, :func:`~wsi_mamba.outputs.names.output_stem`; the store's ``slide_name`` attribute keeps it
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
    path: Path | None = None  # the store it was read from (named in errors)
    views: np.ndarray | None = None  # (n,) uint8 views per tile, stored in views on demand (None: not recorded)

    def _attr(self, key: str) -> Any:
        """A recorded attribute; ``ValueError`` naming the store when it is missing (a store older than it)."""
        if self.attrs.get(key) is None:
            raise ValueError(
                f"{self.path or self.name}: the feature store of slide {self.name} records no {key}: re-run extract"
            )
        return self.attrs[key]

    @property
    def slide_mpp(self) -> float:
        """The slide's level-0 µm/px when it was extracted."""
        return float(self._attr("slide_mpp"))

    @property
    def dimensions(self) -> tuple[int, int]:
        """The slide's level-0 (width, height)."""
        width, height = self._attr("dimensions")
        return int(width), int(height)

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
OPTIONAL_ARRAYS = ("views",)  # per tile, written when there is one (views on demand); older stores have none


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
        **({"views": data.views.astype(np.uint8)} if data.views is not None else {}),
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
    check_attrs(attrs, path)
    return attrs


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _positive(value: object, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= high


def _band(value: object) -> bool:
    """A views-on-demand band: [lo, hi], probabilities with lo ≤ hi."""
    if not (isinstance(value, list) and len(value) == 2):
        return False
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value)
    return numbers and value[0] <= value[1]


def _pair(value: object, high: int) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_whole(v, 1, high) for v in value)


def check_attrs(attrs: dict, path: str | Path) -> None:
    """The types and ranges of the attributes readers use (each when present): ``ValueError`` naming the store
    and the attribute, so a hand-edited store is one line, not a traceback deep inside a command."""
    rules: dict[str, tuple[Any, str]] = {
        "mode": (lambda v: v in ("tile", "region"), "'tile' or 'region'"),
        "views": (lambda v: _whole(v, 1, 8) and v in VIEW_COUNTS, f"one of {', '.join(map(str, VIEW_COUNTS))}"),
        "views_on_demand": (_band, "[lo, hi], two probabilities with lo <= hi"),
        "encoder_precision": (lambda v: v in CPU_PRECISIONS, f"one of {', '.join(CPU_PRECISIONS)}"),
        "region_px": (lambda v: _whole(v, 1, 1_000_000), "a whole number in [1, 1000000]"),
        "region_overlap_px": (lambda v: _whole(v, 0, 1_000_000), "a whole number in [0, 1000000]"),
        "grid_shape": (lambda v: _pair(v, MAX_GRID_CELLS), "[rows, cols], two whole numbers >= 1"),
        "dimensions": (lambda v: _pair(v, MAX_SLIDE_SIDE), f"[width, height] in px, at most {MAX_SLIDE_SIDE:,}"),
        "size0": (lambda v: _positive(v, MAX_SLIDE_SIDE), "a positive number of level-0 px"),
        "slide_mpp": (lambda v: _positive(v, 1000.0), "a positive number of µm/px"),
    }
    for key, (valid, expected) in rules.items():
        if key in attrs and not valid(attrs[key]):
            raise ValueError(f"{path}: feature store attribute {key} must be {expected}, got {attrs[key]!r:.80}")


def _check_grid(path: Path, attrs: dict, group: zarr.Group) -> tuple[int, int]:
    """The store's grid shape, checked before any array is read: its cells within :data:`MAX_GRID_CELLS` and
    within what the slide's ``dimensions`` hold in tiles of ``size0`` px, and the per-tile arrays of one length
    that fits. ``ValueError`` naming the store otherwise (a hand-edited 200,000 x 200,000 grid asked 61 TB)."""
    name = path.name[: -len(SUFFIX)]
    damaged = f"{path}: feature store of slide {name} is damaged:"
    for key in ("grid_shape", "size0"):
        if key not in attrs:
            raise ValueError(f"{damaged} no {key} attribute; re-run extract")
    rows, cols = attrs["grid_shape"]
    if rows * cols > MAX_GRID_CELLS:
        raise ValueError(f"{damaged} a grid of {rows} x {cols} cells is over the limit of {MAX_GRID_CELLS:,}")
    if "dimensions" in attrs:
        width, height = attrs["dimensions"]
        fits = math.ceil(height / attrs["size0"]), math.ceil(width / attrs["size0"])
        if rows > fits[0] + 1 or cols > fits[1] + 1:
            raise ValueError(
                f"{damaged} a grid of {rows} x {cols} cells does not fit its slide ({width} x {height} px in tiles "
                f"of {attrs['size0']:g} px: at most {fits[0]} x {fits[1]}); re-run extract"
            )
    try:
        lengths = {key: group[key].shape[0] for key in ARRAYS if key != "tissue_mask"}
        lengths.update({key: group[key].shape[0] for key in OPTIONAL_ARRAYS if key in group})
    except Exception:  # a missing array: reported by name when it is read
        return rows, cols
    if len(set(lengths.values())) != 1 or lengths["features"] > rows * cols:
        raise ValueError(f"{damaged} {lengths} rows for a grid of {rows} x {cols} cells; re-run extract")
    return rows, cols


def _check_cells(path: Path, grid: np.ndarray, shape: tuple[int, int]) -> None:
    """Every tile's (row, col) inside the grid and no cell twice; ``ValueError`` naming the store otherwise."""
    name = path.name[: -len(SUFFIX)]
    rows, cols = shape
    if grid.ndim != 2 or grid.shape[1] != 2:
        raise ValueError(f"{path}: feature store of slide {name} is damaged: grid has shape {grid.shape}")
    if len(grid) == 0:
        return
    cells = grid.astype(np.int64)
    if cells.min() < 0 or cells[:, 0].max() >= rows or cells[:, 1].max() >= cols:
        raise ValueError(
            f"{path}: feature store of slide {name} is damaged: tile cells outside its {rows} x {cols} grid"
        )
    if len(np.unique(cells[:, 0] * cols + cells[:, 1])) != len(cells):
        raise ValueError(f"{path}: feature store of slide {name} is damaged: two tiles on one grid cell")


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
    shape = _check_grid(path, attrs, group)
    digests = attrs.get("arrays") if isinstance(attrs.get("arrays"), dict) else {}
    arrays = {key: _read_array(group, key, path, digests.get(key)) for key in ARRAYS}
    for key in OPTIONAL_ARRAYS:  # recorded in the digests when written: a deleted one is damage, not absence
        if key in digests or key in group:
            arrays[key] = _read_array(group, key, path, digests.get(key))
    _check_cells(path, arrays["grid"], shape)
    return SlideFeatures(
        name=store_slide_name(path),
        features=arrays["features"].astype(np.float32),
        coords=arrays["coords"],
        grid=arrays["grid"],
        colour=arrays["colour"],
        tissue_mask=arrays["tissue_mask"],
        attrs=attrs,
        path=path,
        views=arrays.get("views"),
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


def check_same_encoder(
    stores: dict[str, dict],
    expected: tuple[str, str] | None = None,
    expected_by: str = "the model",
    expected_mode: dict | None = None,
) -> tuple[str, str]:
    """The (encoder, hash) shared by all ``stores`` (name → attrs); ``ValueError`` naming both when two differ
    or when they differ from ``expected`` (the encoder of ``expected_by``, e.g. the model). The feature mode
    (:func:`~.modes.mode_from_attrs`: tile or region mode and its sizes) is part of the identity: stores of two
    modes, or of another mode than ``expected_mode``, are refused the same way."""
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
    modes = {name: mode_from_attrs(attrs) for name, attrs in stores.items()}
    expected_feature_mode = mode_from_attrs(expected_mode) if expected_mode is not None else None
    mode_seen, mode_first, name = _first_difference(modes, expected_feature_mode, expected_by)
    if name is not None:
        raise ValueError(
            f"features of {name} were extracted in {modes[name].describe()}, but {mode_first} uses "
            f"{mode_seen.describe()}: extract them again in one mode"
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
