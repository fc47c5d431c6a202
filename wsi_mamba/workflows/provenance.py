"""What produced a result: the model's content hash and the slide file's identity (issue 25).

``predict`` records both in every result JSON (``model_sha256``, ``slide_file``) and ``cohort`` compares them on a
rerun, so a result of other weights (a model retrained in place, another folder of the same name) or of another
file (a manifest that now points the slide's name elsewhere, a replaced file) is redone instead of reused.
Both are cheap: the model's files are a few MB, hashed once per loaded model; a slide is identified by its
resolved path, size, modification time and the SHA-256 of its first 64 KiB (the TIFF header and first tiles).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["HEAD_BYTES", "MODEL_FILES", "bundle_sha256", "model_sha256", "provenance_change", "slide_identity"]

HEAD_BYTES = 64 * 1024
MODEL_FILES = (
    "model.json",
    "encoder.safetensors",
    "encoder.json",
    "slide_model.safetensors",
    "slide_model.json",
    "baseline.json",
)
"""The files of a model folder that decide its scores (weights, configs, threshold, baseline); the others
(training log, README) do not count."""

_CACHE_ATTRIBUTE = "_model_sha256"


def model_sha256(folder: str | os.PathLike[str]) -> str:
    """SHA-256 over the :data:`MODEL_FILES` of a model folder (name and content of each regular file present)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = folder / name
        if not path.is_file():  # baseline.json is optional; a missing weight file fails when the model loads
            continue
        digest.update(f"{name}:{path.stat().st_size}\0".encode())
        hash_file(digest, path)
    return digest.hexdigest()


def hash_file(digest: Any, path: str | os.PathLike[str]) -> None:
    """Feed the bytes of the file at ``path`` to ``digest`` (a hashlib object) in 1 MiB blocks."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def bundle_sha256(bundle: Any) -> str:
    """:func:`model_sha256` of a loaded model's folder (``bundle.path``), computed once per loaded model."""
    cached = getattr(bundle, _CACHE_ATTRIBUTE, None)
    if cached is None:
        cached = model_sha256(bundle.path)
        setattr(bundle, _CACHE_ATTRIBUTE, cached)
    return cached


def _head_sha256(path: Path, info: os.stat_result) -> str | None:
    """SHA-256 of a regular file's first :data:`HEAD_BYTES`, or of a folder's listing (a DICOM folder: names,
    sizes and times of its files); None for anything else (a FIFO is never read)."""
    digest = hashlib.sha256()
    if stat.S_ISREG(info.st_mode):
        with open(path, "rb") as handle:
            digest.update(handle.read(HEAD_BYTES))
    elif stat.S_ISDIR(info.st_mode):
        for item in sorted(path.iterdir()):
            entry = item.stat()
            digest.update(f"{item.name}:{entry.st_size}:{entry.st_mtime_ns}\0".encode())
    else:
        return None
    return digest.hexdigest()


def slide_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A slide file's identity: resolved ``path``, ``size``, ``mtime_ns`` and ``head_sha256``
    (:func:`_head_sha256`); the fields that cannot be read are None (never equal to a recorded one)."""
    resolved = Path(path).resolve()
    identity: dict[str, Any] = {"path": str(resolved), "size": None, "mtime_ns": None, "head_sha256": None}
    try:
        info = resolved.stat()
        identity.update(size=info.st_size, mtime_ns=info.st_mtime_ns, head_sha256=_head_sha256(resolved, info))
    except OSError:
        pass
    return identity


def provenance_change(result: dict, model: str, slide: dict[str, Any]) -> str | None:
    """Why a stored result no longer stands for this run: ``"model changed"`` (other weights or configs) or
    ``"slide file changed"`` (another file, or the file was replaced or modified); None when both match or
    when the result records neither (written before results recorded their provenance)."""
    recorded_model, recorded_slide = result.get("model_sha256"), result.get("slide_file")
    if recorded_model is not None and recorded_model != model:
        return "model changed"
    if recorded_slide is not None and (recorded_slide != slide or None in slide.values()):
        return "slide file changed"
    return None
