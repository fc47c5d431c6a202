"""The names a batch of slides writes under: a slide's name, output stems that fit a file name, and the checks
that two slides' outputs never collide nor land on an input (shared by ``extract``, ``predict`` and ``cohort``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from .atomic import check_not_inputs, remove_stale_temporaries

MAX_STEM_BYTES = 200
"""Longest output stem (UTF-8 bytes): file names are at most 255 bytes on common file systems, and a stem gets
a suffix (``.regions.geojson``) and, while written, a temporary marker (``.tmp-PID-RANDOM``)."""
RESULT_SUFFIXES = (".json", ".heatmap.png", ".tiles.geojson", ".regions.geojson")  # what predict_slide writes


def slide_name(path: str | Path) -> str:
    """The name a slide goes by in stores, labels and outputs: its file name without the extension."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def output_stem(name: str) -> str:
    """The stem of a slide's output files: ``name`` itself, or for a name too long for a file name once suffixes
    are added (over :data:`MAX_STEM_BYTES`), its start, ``~`` and a hash of the whole name (stable, unique)."""
    encoded = name.encode("utf-8", errors="surrogateescape")
    if len(encoded) <= MAX_STEM_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    head = encoded[: MAX_STEM_BYTES - len(digest) - 1].decode("utf-8", errors="ignore")
    return f"{head}~{digest}"


def check_unique_names(paths: Sequence[str | Path], what: str = "outputs") -> None:
    """``ValueError`` (one line) when two slides share a name (``a/x.tif`` and ``b/x.tif``): their ``what``
    would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in paths:
        name = slide_name(path)
        if name in seen:
            raise ValueError(
                f"{seen[name]} and {path} share the name {name!r}: their {what} would overwrite each other "
                "(rename one, or run them separately with different --out folders)"
            )
        seen[name] = Path(path)


def prepare_output_folder(
    out: str | Path, slides: Sequence[str | Path], suffixes: Sequence[str], inputs: Iterable[str | Path] = ()
) -> None:
    """Before a batch writes ``NAME + suffix`` for each slide into ``out``: refuse (one line) when one of those
    files is one of the slides or ``inputs`` (:func:`check_not_inputs`), then remove the temporaries our killed
    processes left there for such names or their ``.old`` (:func:`remove_stale_temporaries`)."""
    out = Path(out)
    outputs = [out / f"{output_stem(slide_name(path))}{suffix}" for path in slides for suffix in suffixes]
    check_not_inputs(outputs, [*slides, *inputs])
    remove_stale_temporaries(out, lambda final: final.removesuffix(".old").endswith(tuple(suffixes)))
