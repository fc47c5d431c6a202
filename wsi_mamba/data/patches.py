"""Labelled patch datasets: image folders (ImageFolder layout), PatchCamelyon HDF5 files, CSV lists.

Every source gives the same small interface (:class:`PatchSource`): a length, labels (1 tumour, 0 normal,
-1 unknown), an id per patch (its file path, or ``file.h5#index``) and ``read(indices)`` returning
``(n, px, px, 3)`` uint8 RGB at the source's patch size. Patches are read lazily: a user with the full
262,144-patch PCam HDF5 set trains on it without loading it into memory. Patches of another size are
resized (bilinear) to the geometry's size; an unreadable image raises :class:`PatchReadError` naming it.
This module knows nothing of slides.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..outputs.capped import read_csv_records
from .labels import parse_label

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
UNKNOWN = -1


@dataclass(frozen=True)
class PatchGeometry:
    """Patch side in pixels and resolution in µm/px (PCam's: 96 px at about 0.97 µm/px, i.e. 10x)."""

    px: int = 96
    mpp: float = 0.972

    def __post_init__(self) -> None:
        if not 8 <= self.px <= 4096:
            raise ValueError(f"patch size must be 8-4096 px, got {self.px}")
        if not (0.05 <= self.mpp <= 20):
            raise ValueError(f"patch resolution must be 0.05-20 µm/px, got {self.mpp}")


PCAM_GEOMETRY = PatchGeometry()


class PatchReadError(ValueError):
    """A patch that cannot be decoded; the message names it."""


def _to_rgb_array(image, px: int) -> np.ndarray:
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (px, px):
        image = image.resize((px, px), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_image_patch(path: str | Path, px: int) -> np.ndarray:
    """One image file as (px, px, 3) uint8 RGB (resized when needed); :class:`PatchReadError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb_array(image, px)
    except FileNotFoundError:
        raise PatchReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PatchReadError(f"{path}: not a readable image ({str(exc).splitlines()[0][:100]})") from None


class PatchSource:
    """A labelled (or unlabelled) set of patches read on demand."""

    geometry: PatchGeometry
    labels: np.ndarray  # (n,) int64: 1 tumour, 0 normal, -1 unknown
    description: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        """Every patch has a known label."""
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def location(self, index: int) -> tuple[str, int | None]:
        """Where patch ``index`` lives: (file, None) for an image file, (HDF5 file, row) for HDF5."""
        raise NotImplementedError

    def patch_id(self, index: int) -> str:
        """A name for patch ``index`` that a user can find (file path, or ``file.h5#row``)."""
        path, row = self.location(index)
        return path if row is None else f"{path}#{row}"

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patches ``indices`` as (n, px, px, 3) uint8 RGB, in the order given."""
        raise NotImplementedError

    def read_one(self, index: int) -> np.ndarray:
        return self.read([index])[0]

    def counts(self) -> dict[str, int]:
        """Patches per label (``tumor``, ``normal``, ``unknown``)."""
        return {
            "tumor": int((self.labels == 1).sum()),
            "normal": int((self.labels == 0).sum()),
            "unknown": int((self.labels < 0).sum()),
        }


class FilePatches(PatchSource):
    """Patches stored one image per file (folders and CSV lists)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], geometry: PatchGeometry, description: str):
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.geometry = geometry
        self.description = description
        self._pool: ThreadPoolExecutor | None = None

    def location(self, index: int) -> tuple[str, int | None]:
        return str(self.paths[index]), None

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        px = self.geometry.px
        if len(indices) < 16:
            arrays = [read_image_patch(self.paths[i], px) for i in indices]
        else:  # PIL releases the GIL while decoding
            if self._pool is None:
                self._pool = ThreadPoolExecutor(4)
            arrays = list(self._pool.map(lambda i: read_image_patch(self.paths[i], px), indices))
        return np.stack(arrays) if arrays else np.zeros((0, px, px, 3), np.uint8)



def folder_label(relative: Path) -> int:
    """The label named by the nearest enclosing folder (``0|1``, ``normal|tumor``, …), else unknown."""
    for part in reversed(relative.parts[:-1]):
        label = parse_label(part)
        if label is not None:
            return label
    return UNKNOWN


def probe_geometry(paths: Sequence[Path]) -> PatchGeometry:
    """The first readable image's side (its longer one) at PCam's resolution: the size the others are
    resized to."""
    from PIL import Image

    for path in paths[:20]:
        try:
            with Image.open(path) as image:
                return PatchGeometry(max(image.size), PCAM_GEOMETRY.mpp)
        except (OSError, ValueError, SyntaxError):
            continue
    return PCAM_GEOMETRY


def folder_patches(root: str | Path, geometry: PatchGeometry | None = None) -> FilePatches:
    """Every image under ``root`` (recursively, sorted), labelled by folder name (``ROOT/0|1/…`` or
    ``ROOT/normal|tumor/…``; unknown elsewhere); ``ValueError`` for a folder without images. ``geometry``
    defaults to the first image's size at PCam's resolution."""
    root = Path(root)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    labels = [folder_label(Path(root.resolve().name) / p.relative_to(root)) for p in paths]  # ROOT may be 0/ or 1/
    return FilePatches(paths, labels, geometry or probe_geometry(paths), str(root))


def csv_patches(csv_file: str | Path, geometry: PatchGeometry | None = None) -> FilePatches:
    """Patches listed in a CSV with a header holding ``path`` and ``label`` columns (relative paths are
    relative to the CSV's folder; label 0/1 or normal/tumor)."""
    csv_file = Path(csv_file)
    rows = _read_csv_rows(csv_file)
    paths, labels = [], []
    for line, row in rows:
        raw_path, raw_label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not raw_path:
            raise ValueError(f"{csv_file}: line {line}: empty path")
        label = parse_label(raw_label) if raw_label else UNKNOWN
        if label is None:
            raise ValueError(f"{csv_file}: line {line}: label {raw_label!r} is neither 0/1 nor normal/tumor")
        path = Path(raw_path)
        paths.append(path if path.is_absolute() else csv_file.parent / path)
        labels.append(label)
    if not paths:
        raise ValueError(f"{csv_file}: no patches listed")
    return FilePatches(paths, labels, geometry or probe_geometry(paths), str(csv_file))


def _read_csv_rows(csv_file: Path) -> list[tuple[int, dict[str, str]]]:
    try:
        header, rows = read_csv_records(csv_file)  # capped, regular files only, CSV errors named
    except FileNotFoundError:
        raise ValueError(f"{csv_file}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{csv_file}: not a UTF-8 text file") from None
    if "path" not in {f.strip().lower() for f in header}:
        raise ValueError(f"{csv_file}: expected a header with 'path' and 'label' columns")
    return [(line, {k.strip().lower(): v for k, v in row.items() if k is not None}) for line, row in rows]


def read_label_csv(csv_file: str | Path) -> dict[str, int]:
    """``path,label`` rows as {path or file name: label}, to label images given on the command line."""
    labels: dict[str, int] = {}
    for line, row in _read_csv_rows(Path(csv_file)):
        label = parse_label((row.get("label") or "").strip())
        if label is None:
            raise ValueError(f"{csv_file}: line {line}: label {row.get('label')!r} is neither 0/1 nor normal/tumor")
        labels[(row.get("path") or "").strip()] = label
    return labels


class H5Patches(PatchSource):
    """PatchCamelyon's HDF5 files: ``*_x.h5`` with ``x`` (N, px, px, 3) uint8 and, when present beside it,
    ``*_y.h5`` with ``y`` (N, 1, 1, 1). Opened lazily (h5py), so only the patches asked for are read."""

    def __init__(self, x_file: str | Path, y_file: str | Path | None = None, geometry: PatchGeometry | None = None):
        import h5py

        self.x_file = Path(x_file)
        try:
            self._x_handle = h5py.File(self.x_file, "r")
        except FileNotFoundError:
            raise ValueError(f"{self.x_file}: no such file") from None
        except OSError as exc:
            raise ValueError(f"{self.x_file}: not an HDF5 file ({str(exc).splitlines()[0][:100]})") from None
        if "x" not in self._x_handle:
            raise ValueError(f"{self.x_file}: no dataset 'x' (expected PCam's schema: x (N, 96, 96, 3) uint8)")
        self._x = self._x_handle["x"]
        if self._x.ndim != 4 or self._x.shape[-1] != 3 or self._x.shape[1] != self._x.shape[2]:
            raise ValueError(f"{self.x_file}: dataset 'x' has shape {self._x.shape}, expected (N, px, px, 3)")
        px = int(self._x.shape[1])
        self.geometry = geometry or PatchGeometry(px, PCAM_GEOMETRY.mpp)
        self.description = str(self.x_file)
        y_file = Path(y_file) if y_file else self.sibling_labels(self.x_file)
        self.y_file = y_file if y_file is not None and y_file.exists() else None
        self.labels = self._read_labels() if self.y_file else np.full(len(self._x), UNKNOWN, np.int64)

    @staticmethod
    def sibling_labels(x_file: Path) -> Path | None:
        """``..._x.h5`` → ``..._y.h5`` (PCam's naming), or None for another name."""
        stem = x_file.name
        return x_file.with_name(stem.replace("_x.h5", "_y.h5")) if stem.endswith("_x.h5") else None

    def _read_labels(self) -> np.ndarray:
        import h5py

        try:
            with h5py.File(self.y_file, "r") as handle:
                if "y" not in handle:
                    raise ValueError(f"{self.y_file}: no dataset 'y' (expected PCam's schema: y (N, 1, 1, 1))")
                y = np.asarray(handle["y"]).reshape(len(handle["y"]), -1)
        except OSError as exc:
            raise ValueError(f"{self.y_file}: not an HDF5 file ({str(exc).splitlines()[0][:100]})") from None
        if len(y) != len(self._x) or y.shape[1] != 1:
            raise ValueError(
                f"{self.y_file}: 'y' holds {len(y)} labels of shape {y.shape[1:]} but {self.x_file.name} holds "
                f"{len(self._x)} patches"
            )
        labels = y[:, 0].astype(np.int64)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{self.y_file}: labels must be 0 or 1")
        return labels

    def location(self, index: int) -> tuple[str, int | None]:
        return str(self.x_file), int(index)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(idx):
            return np.zeros((0, self.geometry.px, self.geometry.px, 3), np.uint8)
        order = np.argsort(idx, kind="stable")
        unique, inverse = np.unique(idx[order], return_inverse=True)
        block = np.asarray(self._x[unique.tolist()], dtype=np.uint8)  # h5py wants increasing indices
        out = np.empty((len(idx), *block.shape[1:]), np.uint8)
        out[order] = block[inverse]
        if out.shape[1] != self.geometry.px:
            from PIL import Image

            out = np.stack([_to_rgb_array(Image.fromarray(p), self.geometry.px) for p in out])
        return out

    def close(self) -> None:
        self._x_handle.close()


class ConcatPatches(PatchSource):
    """Several sources read as one (their geometries must agree)."""

    def __init__(self, sources: Sequence[PatchSource]):
        if not sources:
            raise ValueError("no patch sources given")
        self.sources = list(sources)
        self.geometry = sources[0].geometry
        for source in sources[1:]:
            if source.geometry.px != self.geometry.px:
                raise ValueError(
                    f"{source.description}: patches of {source.geometry.px} px, but "
                    f"{sources[0].description} has {self.geometry.px} px"
                )
        self.labels = np.concatenate([s.labels for s in sources])
        self.offsets = np.cumsum([0] + [len(s) for s in sources])
        self.description = ", ".join(s.description for s in sources)

    def _locate(self, index: int) -> tuple[PatchSource, int]:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.sources[k], index - int(self.offsets[k])

    def location(self, index: int) -> tuple[str, int | None]:
        source, local = self._locate(index)
        return source.location(local)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        px = self.geometry.px
        out = np.empty((len(idx), px, px, 3), np.uint8)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            out[sel] = self.sources[int(k)].read(idx[sel] - self.offsets[k])
        return out


def open_patches(
    paths: str | Path | Sequence[str | Path],
    labels_csv: str | Path | None = None,
    geometry: PatchGeometry | None = None,
) -> PatchSource:
    """A patch source from one or more of: an image folder, a PCam ``_x.h5`` file (labels from the ``_y.h5``
    beside it), a CSV (``path,label``; ``.csv``), or single image files. ``labels_csv`` (``path,label``) labels
    images by path or file name. ``geometry`` defaults to PCam's mpp at the patches' own size."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ValueError("no patch paths given")
    sources: list[PatchSource] = []
    loose: list[Path] = []
    for item in items:
        path = Path(item)
        suffix = path.suffix.lower()
        if path.is_dir():
            sources.append(folder_patches(path, geometry))
        elif suffix in (".h5", ".hdf5"):
            sources.append(H5Patches(path, geometry=geometry))
        elif not path.exists():
            raise ValueError(f"{path}: no such file or folder")
        elif suffix == ".csv":
            sources.append(csv_patches(path, geometry))
        elif suffix in IMAGE_SUFFIXES:
            loose.append(path)
        else:
            raise ValueError(f"{path}: not an image, folder, PCam .h5 file or CSV of patches")
    if loose:
        sources.append(
            FilePatches(loose, [folder_label(Path(p.parent.name) / p.name) for p in loose],
                        geometry or probe_geometry(loose), "images")
        )
    source = sources[0] if len(sources) == 1 else ConcatPatches(sources)
    if labels_csv is not None:
        apply_label_csv(source, labels_csv)
    return source


def apply_label_csv(source: PatchSource, labels_csv: str | Path) -> None:
    """Set labels of ``source``'s patches from a ``path,label`` CSV (matched by full id, then file name)."""
    table = read_label_csv(labels_csv)
    by_name = {Path(k).name: v for k, v in table.items()}
    labels = source.labels.copy()
    matched = 0
    for i in range(len(source)):
        pid = source.patch_id(i)
        label = table.get(pid, by_name.get(Path(pid).name))
        if label is not None:
            labels[i] = label
            matched += 1
    if not matched:
        raise ValueError(f"{labels_csv}: names none of the {len(source)} patches given")
    source.labels = labels


def require_labelled(source: PatchSource, role: str = "training") -> None:
    """``ValueError`` unless every patch is labelled and both classes are present."""
    counts = source.counts()
    if counts["unknown"] == len(source):
        raise ValueError(
            f"{source.description}: no labelled images (expected folders named 0/1 or normal/tumor, a PCam _y.h5 "
            "beside the _x.h5, or a CSV with path,label)"
        )
    if counts["unknown"]:
        raise ValueError(f"{source.description}: {counts['unknown']} patches have no label ({role} needs all)")
    if not counts["tumor"] or not counts["normal"]:
        raise ValueError(f"{source.description}: {role} needs tumour and normal patches, found {counts}")
