"""The state of an encoder training between epochs, so an interrupted or time-limited run can continue.

After every epoch the training writes ``OUT.train-state/`` beside its output, atomically (the previous state
stays until the new one is complete): ``tensors.safetensors`` (weights, optimiser moments, the best epoch's
and the moving average's weights, torch RNG states) and ``state.json`` (the epoch, the optimiser's structure,
the LR schedule, numpy / Python RNG states, early-stopping state, the epoch log, and a fingerprint of the
options and the patch lists). Nothing is pickled. Resumed at the same thread count, the run reaches the same
weights bit for bit as one that was never interrupted. The folder is removed once the output is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ...data.patches import PatchSource
from ...models.checkpoint import read_safetensors
from ...outputs.atomic import atomic_folder, json_safe

STATE_SUFFIX = ".train-state"
FORMAT = "wsi-mamba/train-state"
VERSION = 1
Resume = bool | Literal["auto"]
"""``False``: start afresh (refused when a state exists); ``True``: continue (refused when none exists);
``"auto"``: continue when a state exists, else start afresh."""


class TrainingPaused(Exception):
    """Training stopped cleanly after an epoch (its time budget was spent); the state is kept for a resume."""


def state_folder(out: str | Path) -> Path:
    """Where the training state of output ``out`` (``NAME.safetensors``) lives: ``NAME.train-state/``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + STATE_SUFFIX)


def source_digest(source: PatchSource | None) -> str | None:
    """A SHA-256 of a patch source's identity: its kind and description (which names a stain normalisation),
    geometry, and every patch's location (absolute) and label."""
    if source is None:
        return None
    head = f"{type(source).__name__} {source.description}\n{source.geometry.px} {source.geometry.mpp!r} {len(source)}\n"
    digest = hashlib.sha256(head.encode())
    for index in range(len(source)):
        path, row = source.location(index)
        digest.update(f"{os.path.abspath(path)}#{row} {int(source.labels[index])}\n".encode())
    return digest.hexdigest()


def fingerprint(options: dict, *sources: PatchSource | None) -> dict:
    """What a state must match to be resumed: the training options and the patch lists. Without a teacher
    (``distill_from`` None) the distillation options are left out, so a state saved before they existed resumes."""
    if options.get("distill_from") is None:
        options = {k: v for k, v in options.items() if not k.startswith("distill_")}
    return {"options": json_safe(options), "patches": [source_digest(s) for s in sources]}


@dataclass
class Progress:
    """Where the epochs stand: the last completed epoch, early stopping's best so far, the epoch log."""

    epoch: int = 0
    best_auc: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Resumable:
    """The objects whose state carries from one epoch to the next."""

    model: nn.Module
    optimiser: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    averaged: nn.Module | None  # the moving average of the weights (``--ema``), or None
    numpy_rng: np.random.Generator  # class-balanced draws
    generator: torch.Generator  # augmentations
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # kept as they are (distillation targets)

    def save(self, folder: Path, identity: dict, progress: Progress) -> None:
        """Write the state after ``progress.epoch`` to ``folder`` atomically (``identity``: the fingerprint)."""
        tensors = _prefixed("model.", self.model.state_dict())
        if self.averaged is not None:
            tensors |= _prefixed("ema.", self.averaged.state_dict())
        if progress.best_state is not None:
            tensors |= _prefixed("best.", progress.best_state)
        tensors |= _prefixed("extra.", self.extra)
        optimiser, structure = _split_optimiser(self.optimiser.state_dict())
        tensors |= optimiser | {"rng.torch": torch.get_rng_state(), "rng.generator": self.generator.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        np_state = np.random.get_state()  # noqa: NPY002 (libraries may draw from the global state)
        record = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": identity,
            "threads": torch.get_num_threads(),
            "epoch": progress.epoch,
            "best": {"auc": progress.best_auc, "epoch": progress.best_epoch},
            "stopped_early": progress.stopped_early,
            "history": progress.history,
            "optimiser": structure,
            "schedule": self.schedule.state_dict(),
            "rng": {
                "numpy_generator": self.numpy_rng.bit_generator.state,
                "numpy_global": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                "python": random.getstate(),
            },
        }
        text = json.dumps(record, allow_nan=True)  # a NaN validation AUC (one class) comes back as NaN
        with atomic_folder(folder) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
            (tmp / "state.json").write_text(text, encoding="utf-8")

    def restore(self, saved: SavedState) -> Progress:
        """Load ``saved`` into these objects (in place); returns where the epochs stand."""
        record, tensors = saved.record, saved.tensors
        self.model.load_state_dict(_unprefixed("model.", tensors))
        if self.averaged is not None:
            self.averaged.load_state_dict(_unprefixed("ema.", tensors))
        self.optimiser.load_state_dict(_join_optimiser(tensors, record["optimiser"]))
        self.schedule.load_state_dict(record["schedule"])
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.generator"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        rng = record["rng"]
        self.numpy_rng.bit_generator.state = rng["numpy_generator"]
        kind, keys, *rest = rng["numpy_global"]
        np.random.set_state((kind, np.asarray(keys, np.uint32), *rest))  # noqa: NPY002 (as saved)
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        best = _unprefixed("best.", tensors)
        return Progress(
            epoch=record["epoch"],
            best_auc=record["best"]["auc"],
            best_epoch=record["best"]["epoch"],
            best_state=best or None,
            history=record["history"],
            stopped_early=record["stopped_early"],
        )


@dataclass
class SavedState:
    folder: Path
    record: dict
    tensors: dict[str, torch.Tensor]

    def extra(self, name: str) -> torch.Tensor | None:
        """A tensor saved in :attr:`Resumable.extra` under ``name``, or None."""
        return self.tensors.get("extra." + name)


def read_state(folder: Path, identity: dict, resume: Resume) -> SavedState | None:
    """The state to continue from, or None to start afresh. ``ValueError`` (one line, naming ``folder``) when
    ``resume`` is True and there is none, when it is False and there is one, or when the state belongs to
    other options or patches (``identity``: this run's fingerprint)."""
    exists = folder.exists()
    if not exists and resume is True:
        raise ValueError(f"{folder}: no training state to resume (none was saved, or the training finished)")
    if not exists:
        return None
    if resume is False:
        raise ValueError(
            f"{folder}: an interrupted training of this output left its state here: continue it with --resume, "
            "or delete the folder to start afresh"
        )
    try:
        record = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder}: damaged training state ({exc}); delete the folder to start afresh") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ValueError(f"{folder}: not a training state of this version; delete the folder to start afresh")
    if record.get("fingerprint") != json.loads(json.dumps(identity)):
        raise ValueError(f"{folder}: this training state belongs to {_difference(record.get('fingerprint'), identity)}")
    tensors = read_safetensors(folder / "tensors.safetensors")
    if record.get("threads") != torch.get_num_threads():
        warnings.warn(
            f"{folder}: the interrupted run used {record.get('threads')} torch threads, this one "
            f"{torch.get_num_threads()}: the weights may differ in their last bits (--threads "
            f"{record.get('threads')} keeps them equal)",
            stacklevel=2,
        )
    return SavedState(folder, record, tensors)


def remove_state(folder: Path) -> None:
    """Delete a finished training's state folder (nothing when there is none)."""
    shutil.rmtree(folder, ignore_errors=True)


def _difference(saved: Any, current: dict) -> str:
    """What differs between a saved fingerprint and this run's, in words."""
    if not isinstance(saved, dict):
        return "another run (no fingerprint)"
    before, now = saved.get("options") or {}, json_safe(current["options"])
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if changed:
        shown = ", ".join(f"{k} {before.get(k)!r} there, {now.get(k)!r} here" for k in changed[:3])
        return f"other options ({shown}): resume with the same options, or delete the folder to start afresh"
    return "other patches (the training or validation patch list differs): delete the folder to start afresh"


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _split_optimiser(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state dict as tensors (``optimiser.<param>.<name>``) and a JSON structure of the rest."""
    tensors, per_param = {}, {}
    for param, values in state["state"].items():
        entry = per_param[str(param)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimiser.{param}.{name}"] = value
                entry[name] = None  # stored as a tensor
            else:
                entry[name] = value
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def _join_optimiser(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    """The inverse of :func:`_split_optimiser` (JSON lists back to tuples where torch keeps tuples)."""
    state = {
        int(param): {
            name: tensors[f"optimiser.{param}.{name}"] if value is None else value for name, value in values.items()
        }
        for param, values in structure["state"].items()
    }
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in structure["param_groups"]]
    return {"state": state, "param_groups": groups}
