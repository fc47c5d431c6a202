"""Versioned artefacts: the files and folders wsi-mamba writes and reads back, each naming its format.

Every such artefact (VMamba/encoder checkpoint, slide model, model folder, feature store) carries a JSON header
``{"format": NAME, "format_version": N, ...}``. An :class:`ArtefactFormat` writes that header, reads and checks
it (one-line ``ValueError`` naming the file: missing, not JSON, not an object, another format or version), and
writes atomically by construction:

* a JSON file: :meth:`ArtefactFormat.write` (temporary file + rename, :func:`~.atomic.atomic_path`);
* a tensor file with its JSON config beside it: :meth:`ArtefactFormat.write_pair` (both to temporary names, the
  config renamed first and the tensors last, so a tensor file under its final name always has its config;
  if the last rename fails the previous config is put back);
* a folder: :func:`~.atomic.atomic_folder` (built beside the target, swapped in when complete), with the
  header from :meth:`ArtefactFormat.header` in its manifest or attributes.

Nothing here imports torch: the caller passes the function that writes its tensors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from .atomic import atomic_path, write_json_atomic, write_text_atomic
from .capped import MAX_METADATA_BYTES, InputFileError, load_json, read_capped_text

__all__ = ["ArtefactFormat", "read_json_object"]


def read_json_object(path: str | PathLike[str], limit: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """The JSON object in ``path``; ``ValueError`` (:class:`~.capped.InputFileError`) naming the file when it is
    missing, not a regular file, over ``limit`` bytes (16 MiB), unreadable, not JSON (or nested too deeply for
    the parser) or not a JSON object. Only JSON is parsed (nothing is ever unpickled)."""
    try:
        text = read_capped_text(path, limit)
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from None
    data = load_json(text, path)
    if not isinstance(data, dict):
        raise InputFileError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ArtefactFormat:
    """A versioned format: ``name`` (``"wsi-mamba/model"``), ``version`` (the one this code reads and writes)
    and ``kind``, what its JSON is called in messages (``"config"``, ``"manifest"``, ``"store"``)."""

    name: str
    version: int
    kind: str = "config"

    def header(self) -> dict[str, Any]:
        """``{"format": name, "format_version": version}``: the first keys of every artefact's JSON."""
        return {"format": self.name, "format_version": self.version}

    def wrap(self, body: dict[str, Any]) -> dict[str, Any]:
        """The header followed by ``body``'s keys (the header wins a clash)."""
        return {**self.header(), **{k: v for k, v in body.items() if k not in ("format", "format_version")}}

    def dumps(self, body: dict[str, Any]) -> str:
        """The JSON text of :meth:`wrap` (indent 2, trailing newline, strict: NaN or a non-JSON value raise
        ``ValueError``)."""
        try:
            return json.dumps(self.wrap(body), indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.name}: not JSON-serialisable: {exc}") from None

    def matches(self, meta: object) -> bool:
        """True when ``meta`` is a JSON object of this format (any version)."""
        return isinstance(meta, dict) and meta.get("format") == self.name

    def check(self, meta: object, source: str | PathLike[str]) -> dict[str, Any]:
        """``meta`` when it is an object of this format and version; ``ValueError`` naming ``source`` otherwise."""
        if not isinstance(meta, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(meta).__name__}")
        if meta.get("format") != self.name:
            raise ValueError(f"{source}: not a {self.name} {self.kind} (format: {meta.get('format')!r})")
        if meta.get("format_version") != self.version:
            raise ValueError(
                f"{source}: unsupported format_version {meta.get('format_version')!r} of {self.name} "
                f"(this version of wsi-mamba reads {self.version})"
            )
        return meta

    def read(self, path: str | PathLike[str]) -> dict[str, Any]:
        """Read the JSON file ``path`` and :meth:`check` it."""
        return self.check(read_json_object(path), path)

    def write(self, path: str | PathLike[str], body: dict[str, Any]) -> Path:
        """Write ``header + body`` as JSON to ``path`` atomically; returns ``path``."""
        self.dumps(body)  # the same checks as a pair's config (strict JSON), before anything is written
        write_json_atomic(path, self.wrap(body))
        return Path(path)

    def write_pair(
        self,
        tensors: str | PathLike[str],
        config: str | PathLike[str],
        body: dict[str, Any],
        write_tensors: Callable[[Path], None],
    ) -> Path:
        """Write a tensor file and its JSON config (``header + body``) so that neither is ever partial.

        ``write_tensors(tmp)`` writes the tensors to a temporary path beside ``tensors``; then the config is
        renamed into place, then the tensors. An exception anywhere leaves both files as they were (a previous
        config replaced just before a failing last rename is put back) and no temporary files. Returns
        ``tensors``."""
        tensors, config = Path(tensors), Path(config)
        text = self.dumps(body)
        previous = config.read_bytes() if config.is_file() else None
        config_replaced = False
        try:
            with atomic_path(tensors) as tmp:  # renamed onto ``tensors`` when the block exits cleanly
                write_tensors(tmp)
                if not tmp.exists():
                    raise FileNotFoundError(f"{tensors}: the tensor writer wrote nothing")
                write_text_atomic(config, text)
                config_replaced = True
        except BaseException:
            if config_replaced:  # the tensors did not arrive: the config goes back to what it was
                with contextlib.suppress(OSError):
                    if previous is None:
                        config.unlink()
                    else:
                        with atomic_path(config) as back:
                            back.write_bytes(previous)
            raise
        return tensors
