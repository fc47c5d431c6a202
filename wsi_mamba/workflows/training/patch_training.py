"""Training the tile encoder on labelled patches (PCam HDF5, image folders, CSV lists).

A backbone (VMamba by default, or any ``timm:NAME``, from scratch or from local weights) is trained as a
tumour-vs-normal patch classifier: class-balanced draws each epoch,
histology augmentations (:mod:`wsi_mamba.data.augment`), AdamW with a one-cycle schedule, and early stopping
on the patch AUC of a validation part carved out of the *training* source (stratified, byte-identical
duplicates kept on one side) or of ``val_source`` when one is given. Held-out evaluation data (PCam's
``valid`` split) is never seen here. The best epoch's weights are written, with the patch geometry, so
slides are later tiled at the patches' resolution.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ...data.augment import augment_patches
from ...data.patches import FilePatches, PatchSource, require_labelled
from ...devices import DEFAULT_DEVICE, autocast, resolve_device
from ...evaluation.metrics import slide_auc
from ...models.encoder import TileEncoder, load_encoder
from ...models.encoders import save_encoder
from ...outputs.atomic import check_not_inputs, write_csv_atomic
from ..reports.score_patches import classify
from .configs import PatchTrainingConfig
from .distillation import distillation_loss, file_sha256, load_teacher, targets_key, teacher_targets
from .optimisation import optimiser_step
from .training_state import (
    Progress,
    Resumable,
    Resume,
    TrainingPaused,
    fingerprint,
    read_state,
    remove_state,
    state_folder,
)


def duplicate_groups(source: PatchSource) -> np.ndarray:
    """A group id per patch: byte-identical image files share one (PCam repeats some patches), so a split
    by group never puts a patch on both sides. Sources not stored as files get one group per patch."""
    if not isinstance(source, FilePatches):
        return np.arange(len(source))
    ids: dict[bytes, int] = {}
    groups = np.empty(len(source), np.int64)
    for i, path in enumerate(source.paths):
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
        groups[i] = ids.setdefault(digest, len(ids))
    return groups


def carve_validation(
    labels: np.ndarray, groups: np.ndarray, fraction: float, cap: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of patch indices into (train, validation) by duplicate group; the validation part
    holds about ``fraction`` of each class, at most ``cap`` patches in all."""
    rng = np.random.default_rng(seed)
    val = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        label_groups = rng.permutation(np.unique(groups[members]))
        want = min(round(len(members) * fraction), cap // 2)
        chosen = set(label_groups[:want].tolist())
        val.append(members[np.isin(groups[members], list(chosen))])
    val_idx = np.sort(np.concatenate(val))
    in_val = np.zeros(len(labels), bool)
    in_val[val_idx] = True
    in_val |= np.isin(groups, groups[val_idx])  # a duplicate of a validation patch never trains
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def write_patch_split(
    source: PatchSource, out: str | Path, cfg: PatchTrainingConfig, inputs: Sequence[str | Path] = ()
) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``validation.csv`` (``path,label``, paths relative to ``out``) in ``out``: the
    split of ``source`` that ``train-encoder`` makes with ``cfg`` (its fraction, cap and seed), so the validation
    patches are those no encoder trained on ``source`` with ``cfg`` has learnt from. Image-file sources only.
    ``inputs``: the files ``source`` was read from (CSVs); one of them as an output is refused (one line)."""
    check_not_inputs([Path(out) / "train.csv", Path(out) / "validation.csv"], inputs)
    if not isinstance(source, FilePatches):
        raise ValueError(f"{source.description}: a split is written as file paths: give image folders or a CSV")
    require_labelled(source, "split")
    train_idx, val_idx = carve_validation(
        source.labels, duplicate_groups(source), cfg.val_fraction, cfg.max_val_patches, cfg.seed
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, indices in (("train.csv", train_idx), ("validation.csv", val_idx)):
        rows = [(os.path.relpath(source.paths[i].resolve(), out.resolve()), int(source.labels[i])) for i in indices]
        write_csv_atomic(out / name, ["path", "label"], rows)
        written.append(out / name)
    return written[0], written[1]


def balanced_epoch(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices, half of each class (without replacement while a class has enough), shuffled."""
    picks = []
    for label, count in ((0, size // 2), (1, size - size // 2)):
        members = np.flatnonzero(labels == label)
        picks.append(rng.choice(members, count, replace=count > len(members)))
    return rng.permutation(np.concatenate(picks))


def patch_scores(encoder: TileEncoder, patches: np.ndarray, batch_size: int = 128, views: int = 1) -> np.ndarray:
    """Tumour probabilities of (n, px, px, 3) uint8 patches from the encoder's classifier head in ``views``
    dihedral views (:func:`~wsi_mamba.workflows.reports.score_patches.classify`), a batch at a time."""
    parts = [
        classify(encoder, patches[start : start + batch_size], views) for start in range(0, len(patches), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _with_teacher_hash(cfg: PatchTrainingConfig) -> PatchTrainingConfig:
    """``cfg`` with the distillation teacher's SHA-256 filled in (``ValueError`` when a given one differs)."""
    if cfg.distill_from is None:
        return cfg
    sha256 = file_sha256(cfg.distill_from)
    if cfg.distill_sha256 not in (None, sha256):
        raise ValueError(f"{cfg.distill_from}: the teacher's SHA-256 is {sha256}, not {cfg.distill_sha256}")
    return dataclasses.replace(cfg, distill_sha256=sha256)


def weight_average(model: torch.nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (and buffers) with ``decay`` per step, or None."""
    if not decay:
        return None
    if not 0 < decay < 1:
        raise ValueError(f"weight-average decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_encoder_on_patches(
    source: PatchSource,
    out: str | Path,
    cfg: PatchTrainingConfig = PatchTrainingConfig(),  # noqa: B008 (frozen dataclass)
    val_source: PatchSource | None = None,
    metrics_path: str | Path | None = None,
    device: str | torch.device = DEFAULT_DEVICE,
    resume: Resume = False,
    max_minutes: float | None = None,
) -> Path:
    """Train a tile encoder on ``source`` on ``device`` (bf16 autocast on CUDA, and on the CPU with
    ``cfg.precision`` bf16; fp32 weights) and write it to
    ``out`` (.safetensors + JSON); returns the path. A per-epoch log goes to ``metrics_path`` (default:
    ``OUT.metrics.csv`` beside the checkpoint). The state after each epoch is kept in ``OUT.train-state/``
    (:mod:`.training_state`) until the output is written; ``resume`` continues from it. With ``max_minutes``,
    the run stops after the epoch that spends the budget and raises :class:`TrainingPaused`."""
    started_at = time.monotonic()
    device = resolve_device(device)
    require_labelled(source, "training")
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    state_dir = state_folder(out)
    cfg = _with_teacher_hash(cfg)
    identity = fingerprint(asdict(cfg), source, val_source)
    saved = read_state(state_dir, identity, resume)
    metrics_path = Path(metrics_path) if metrics_path else out.with_name(out.stem + ".metrics.csv")
    metrics_path.parent.mkdir(parents=True, exist_ok=True)  # the per-epoch log is written before the checkpoint
    state_dir.parent.mkdir(parents=True, exist_ok=True)  # and so is the state
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if val_source is not None:
        require_labelled(val_source, "validation")
        train_idx = np.arange(len(source))
        val_pick = np.sort(rng.permutation(len(val_source))[: cfg.max_val_patches])
        val_patches, val_labels = val_source.read(val_pick), val_source.labels[val_pick]
        val_description = f"{val_source.description} ({len(val_pick)} patches)"
    else:
        train_idx, val_idx = carve_validation(
            source.labels, duplicate_groups(source), cfg.val_fraction, cfg.max_val_patches, cfg.seed
        )
        val_patches, val_labels = source.read(val_idx), source.labels[val_idx]
        val_description = f"{len(val_idx)} patches carved from {source.description} (seed {cfg.seed})"
    train_labels = source.labels[train_idx]
    if len(set(train_labels.tolist())) < 2:
        raise ValueError(f"{source.description}: too few patches to train on after carving validation")
    geometry = source.geometry
    reserved = sorted({"num_classes", "drop_path_rate"} & set(cfg.model_args))
    if reserved:
        raise ValueError(f"model_args: {', '.join(reserved)} are set by the training itself, not as model arguments")
    teacher = None
    if cfg.distill_from is not None:
        key = targets_key(cfg.distill_sha256, cfg.distill_views)
        cached = saved.extra(key) if saved is not None else None
        if cached is not None:
            teacher = cached.numpy()
        else:
            teacher_encoder = load_teacher(cfg.distill_from, geometry.px, geometry.mpp).to(device)
            teacher = teacher_targets(teacher_encoder, source, train_idx, cfg.distill_views)
            del teacher_encoder
    encoder = load_encoder(
        cfg.model,
        seed=cfg.seed,
        weights=cfg.weights,
        drop_path_rate=cfg.drop_path_rate,
        num_classes=1,
        **cfg.model_args,
    ).to(device)
    encoder.tile_px, encoder.mpp = geometry.px, geometry.mpp
    model = encoder.model
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch_size = cfg.epoch_patches or len(train_idx)
    steps_per_epoch = math.ceil(epoch_size / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    averaged = weight_average(model, cfg.ema_decay)
    validated = dataclasses.replace(encoder, model=averaged.module) if averaged is not None else encoder
    generator = torch.Generator().manual_seed(cfg.seed)
    resumable = Resumable(model, optimiser, schedule, averaged, rng, generator)
    if teacher is not None:
        resumable.extra[key] = torch.from_numpy(teacher)
    progress = resumable.restore(saved) if saved is not None else Progress()
    history = progress.history
    best = {"auc": progress.best_auc, "epoch": progress.best_epoch, "state": progress.best_state}
    if saved is not None:
        print(f"resuming after epoch {progress.epoch} of {cfg.epochs} from {state_dir}", file=sys.stderr)
    reader = ThreadPoolExecutor(1)  # the next batch is read while this one trains
    print(
        f"training {cfg.model} on {len(train_idx)} patches ({int(train_labels.sum())} tumour) of {source.description};"
        f" validation: {val_description}",
        file=sys.stderr,
    )
    last_epoch = progress.epoch if progress.stopped_early else cfg.epochs  # early-stopped: only the output is left
    for epoch in range(progress.epoch + 1, last_epoch + 1):
        started = time.perf_counter()
        model.train()
        order = train_idx[balanced_epoch(train_labels, epoch_size, rng)]
        batches = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
        pending = reader.submit(source.read, batches[0])
        losses = []
        with tqdm(total=len(batches), desc=f"epoch {epoch}/{cfg.epochs}", unit="step", file=sys.stderr) as bar:
            for k, idx in enumerate(batches):
                patches = pending.result()
                if k + 1 < len(batches):
                    pending = reader.submit(source.read, batches[k + 1])
                x = augment_patches(torch.from_numpy(patches), generator, cfg.augment)
                target = torch.from_numpy(source.labels[idx]).float().to(device)
                with autocast(device, cfg.precision):
                    logit = model(encoder.preprocess(x)).squeeze(1)
                soft = torch.from_numpy(teacher[idx]).to(device) if teacher is not None else None
                loss = distillation_loss(logit.float(), target, soft, cfg.distill_weight)
                optimiser_step(loss, model, optimiser, schedule, clip_norm=1.0)
                if averaged is not None:
                    averaged.update_parameters(model)
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        scores = patch_scores(validated, val_patches)
        val_auc = slide_auc(val_labels, scores)
        val_acc = float(((scores >= 0.5) == (val_labels == 1)).mean())
        row = {
            "epoch": epoch,
            "train_loss": round(float(np.mean(losses)), 5),
            "val_auc": round(val_auc, 5),
            "val_accuracy": round(val_acc, 5),
            "lr": float(schedule.get_last_lr()[0]),
            "seconds": round(time.perf_counter() - started, 1),
        }
        history.append(row)
        write_csv_atomic(metrics_path, list(row), [list(r.values()) for r in history])
        improved = val_auc > best["auc"]
        if improved:
            best = {"auc": val_auc, "epoch": epoch, "state": copy.deepcopy(validated.model.state_dict())}
        print(
            f"epoch {epoch}: loss {row['train_loss']:.4f}, validation AUC {val_auc:.4f}, accuracy {val_acc:.3f}"
            f"{' (best)' if improved else ''}, {row['seconds']:.0f} s",
            file=sys.stderr,
        )
        stop = epoch - best["epoch"] >= cfg.patience
        resumable.save(state_dir, identity, Progress(epoch, best["auc"], best["epoch"], best["state"], history, stop))
        if stop:
            print(f"early stop: no better validation AUC for {cfg.patience} epochs", file=sys.stderr)
            break
        if max_minutes is not None and epoch < cfg.epochs and time.monotonic() - started_at >= 60 * max_minutes:
            reader.shutdown()
            raise TrainingPaused(
                f"stopped after epoch {epoch} of {cfg.epochs}: the {max_minutes:g}-minute budget is spent; "
                f"the state is in {state_dir}: run again with --resume to continue"
            )
    reader.shutdown()
    model.load_state_dict(best["state"])
    model.eval()
    metadata = {
        "name": out.name.removesuffix(".safetensors"),
        "tile_px": geometry.px,
        "mpp": geometry.mpp,
        "training": {
            "kind": "patches",
            "source": source.description,
            "config": asdict(cfg),
            "patches": {"tumor": int(train_labels.sum()), "normal": int((1 - train_labels).sum())},
            "validation": val_description,
            "best_epoch": best["epoch"],
            "best_val_auc": round(best["auc"], 5),
            "history": history,
        },
    }
    path = save_encoder(encoder, out, metadata=metadata)
    remove_state(state_dir)
    return path
