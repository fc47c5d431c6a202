"""Inputs of the workflows: finding slides in folders, reading slide labels and lesion annotations."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..data.labels import parse_label
from ..outputs.capped import read_csv_records, read_csv_rows
from ..slide.annotations import Annotations, read_annotations

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")


def find_slides(items: Iterable[str | Path]) -> list[Path]:
    """Slide files named directly, plus those under named folders (recursively, by suffix), sorted within
    each folder; ``ValueError`` for a path that does not exist or a folder without slides."""
    found: list[Path] = []
    for item in items:
        if isinstance(item, str) and not item.strip():  # Path("") is the current folder: never searched by mistake
            raise ValueError(f"an empty path ({item!r}) names no file or folder")
        path = Path(item)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
            if not inside:
                raise ValueError(f"{path}: no slide files ({', '.join(SLIDE_SUFFIXES[:5])}, …) in this folder")
            found.extend(inside)
        else:
            raise ValueError(f"{path}: no such file or folder")
    return found


def labels_from_folders(folder: Path) -> dict[str, int]:
    """Labels from the layout CAMELYON16's training set uses: slides under a ``tumor/`` folder are 1, under
    ``normal/`` 0 (others are left out)."""
    labels = {}
    for slide in find_slides([folder]):
        label = parse_label(slide.parent.name)
        if label is not None:
            labels[slide.stem] = label
    if not labels:
        raise ValueError(f"{folder}: no slides under folders named tumor/ or normal/")
    return labels


def read_labels(path: str | Path) -> dict[str, int]:
    """Slide labels from a CSV: a header with ``image`` (or ``slide``/``name``) and ``label`` columns, or
    CAMELYON16's headerless ``reference.csv`` (name, Tumor|Normal, …). Names lose any file extension.
    A folder gives labels by folder name (``tumor/``, ``normal/``), as in CAMELYON16's training set."""
    path = Path(path)
    if path.is_dir():
        return labels_from_folders(path)
    try:
        rows = [row for _, row in read_csv_rows(path) if row and any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise ValueError(f"{path}: labels file not found") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = [cell.strip().lower() for cell in rows[0]]
    name_col = next((header.index(k) for k in ("image", "slide", "name") if k in header), None)
    if name_col is not None and "label" in header:
        label_col, body, first_line = header.index("label"), rows[1:], 2
    elif len(rows[0]) >= 2 and parse_label(rows[0][1]) is not None:
        name_col, label_col, body, first_line = 0, 1, rows, 1
    else:
        raise ValueError(f"{path}: expected an 'image' and a 'label' column (or name, Tumor|Normal rows)")
    labels: dict[str, int] = {}
    for line, row in enumerate(body, start=first_line):
        if len(row) <= max(name_col, label_col):
            raise ValueError(f"{path}:{line}: too few columns")
        name = Path(row[name_col].strip()).stem
        label = parse_label(row[label_col])
        if label is None:
            raise ValueError(f"{path}:{line}: label {row[label_col]!r} is not Tumor/Normal or 1/0")
        if name in labels and labels[name] != label:
            raise ValueError(f"{path}:{line}: {name} listed twice with different labels")
        labels[name] = label
    return labels


def read_label_column(path: str | Path, column: str) -> dict[str, str]:
    """Another column of a labels CSV with a header (e.g. ``lesion_class`` of a ``synth --from-patches``
    cohort) as {slide name: value}; {} when the file has no such column or is a folder."""
    path = Path(path)
    if not path.is_file():
        return {}
    header, rows = read_csv_records(path, errors="replace")
    fields = {(f or "").strip().lower(): f for f in header}
    name_field = next((fields[k] for k in ("image", "slide", "name") if k in fields), None)
    if column not in fields or name_field is None:
        return {}
    return {Path((row[name_field] or "").strip()).stem: (row[fields[column]] or "").strip() for _, row in rows}


def find_annotations(folder: str | Path | None, name: str) -> Annotations | None:
    """The lesion annotations of slide ``name`` in ``folder`` (``NAME.xml`` ASAP or ``NAME.geojson``/``.json``),
    or None when there are none."""
    if folder is None:
        return None
    for suffix in (".xml", ".geojson", ".json"):
        candidate = Path(folder) / f"{name}{suffix}"
        if candidate.exists():
            return read_annotations(candidate)
    return None
