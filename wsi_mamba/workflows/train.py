"""Training the slide model on feature stores: slide-label BCE (+ optional tile supervision from lesion
annotations), AdamW with warm-up and cosine decay, gradient clipping, early stopping on validation AUC,
fixed seeds, a progress bar and a metrics log. Writes a model folder (see ``bundle.py``)."""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import __version__
from ..devices import DEFAULT_DEVICE, autocast, resolve_device
from ..evaluation.colour import fit_colour_baseline, slide_colour_vector
from ..evaluation.metrics import slide_auc
from ..models.encoder import load_encoder
from ..models.grid import grid_tensors
from ..models.slide_model import SlideMamba
from ..models.slide_model_config import SlideModelConfig
from ..outputs.atomic import write_csv_atomic
from ..outputs.lock import output_lock
from ..slide.annotations import lesion_fractions_at
from .bundle import baseline_to_json, check_model_output, save_bundle
from .configs import SlideTrainingConfig
from .domain import domain_statistics
from .inputs import find_annotations, read_labels
from .store import SlideFeatures, check_same_encoder, list_stores, read_attrs, read_store

CPU = torch.device("cpu")


@dataclass
class Example:
    name: str
    label: int
    features: torch.Tensor  # (1, D, R, C)
    mask: torch.Tensor  # (1, R, C)
    tile_target: torch.Tensor | None  # (1, R, C), -1 where unknown


def tile_targets(data: SlideFeatures, label: int, annotations_dir: str | Path | None) -> np.ndarray | None:
    """Per-tile targets: 1 inside lesions (≥ half the tile), 0 outside (no lesion at all), -1 on edges;
    all 0 on normal slides; None for tumour slides without annotations."""
    if label == 0:
        return np.zeros(len(data), np.float32)
    annotations = find_annotations(annotations_dir, data.name) if annotations_dir else None
    if annotations is None:
        return None
    dims = tuple(data.attrs["dimensions"])
    fraction = lesion_fractions_at(
        annotations, dims, data.coords[:, 0], data.coords[:, 1], data.size0, cells_per_tile=16  # type: ignore[arg-type]
    )
    return np.where(fraction >= 0.5, 1.0, np.where(fraction == 0, 0.0, -1.0)).astype(np.float32)


def to_example(data: SlideFeatures, label: int, targets: np.ndarray | None) -> Example:
    """Place a store's tiles on its grid (cropped to the tissue's bounding box)."""
    features, mask, offset = grid_tensors(data.features, data.rows, data.cols, data.grid_shape)
    tile_target = None
    if targets is not None:
        tile_target = torch.full(mask.shape, -1.0)
        tile_target[0, data.rows - offset[0], data.cols - offset[1]] = torch.from_numpy(targets)
    return Example(data.name, label, features, mask, tile_target)


def split_validation(names: list[str], labels: dict[str, int], fraction: float, seed: int) -> set[str]:
    """A stratified validation subset (at least one slide of each class when there are two or more)."""
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for cls in (0, 1):
        group = sorted(n for n in names if labels[n] == cls)
        count = min(len(group) - 1, max(1, round(len(group) * fraction))) if fraction > 0 else 0
        chosen.update(rng.permutation(group)[:count].tolist())
    return chosen


def _loss(
    model: SlideMamba, example: Example, tile_weight: float, device: torch.device = CPU
) -> tuple[torch.Tensor, float]:
    """The example's loss (fp32; the forward under bf16 autocast on CUDA) and its slide probability."""
    mask = example.mask.to(device, non_blocking=True)
    with autocast(device):
        out = model(example.features.to(device, non_blocking=True), mask)
    logit, tile_logits = out.logit.float(), out.tile_logits.float()
    loss = F.binary_cross_entropy_with_logits(logit, torch.tensor([float(example.label)], device=device))
    if tile_weight > 0 and example.tile_target is not None:
        target = example.tile_target.to(device, non_blocking=True)
        known = mask & (target >= 0)
        if known.any():
            tile_loss = F.binary_cross_entropy_with_logits(tile_logits[known], target[known])
            loss = loss + tile_weight * tile_loss
    return loss, float(torch.sigmoid(logit).item())


def _evaluate(model: SlideMamba, examples: list[Example], device: torch.device = CPU) -> tuple[float, float]:
    model.eval()
    losses, scores = [], []
    with torch.no_grad():
        for example in examples:
            loss, score = _loss(model, example, 0.0, device)
            losses.append(float(loss))
            scores.append(score)
    labels = [e.label for e in examples]
    auc = slide_auc(labels, scores) if len(set(labels)) == 2 else float("nan")
    return float(np.mean(losses)), auc


def train_slide_model(
    features_dir: str | Path,
    labels_csv: str | Path,
    out: str | Path,
    encoder_path: str | Path | None = None,
    annotations_dir: str | Path | None = None,
    cfg: SlideTrainingConfig = SlideTrainingConfig(),
    progress: bool = True,
    name: str | None = None,
    overwrite: bool = False,
    device: str | torch.device = DEFAULT_DEVICE,
) -> Path:
    """Train on the labelled stores of ``features_dir`` and write the model folder ``out`` (the model is
    called ``name``, by default the folder's name). ``out`` is checked before training (see
    ``check_model_output``: an existing model folder is replaced only with ``overwrite``) and locked meanwhile.
    The model trains on ``device`` (bf16 autocast on CUDA, fp32 weights)."""
    target = resolve_device(device)
    check_model_output(out, (features_dir, labels_csv, annotations_dir), overwrite)
    with output_lock(out):
        return _train(
            features_dir, labels_csv, out, encoder_path, annotations_dir, cfg, progress, name, overwrite, target
        )


def _train(
    features_dir: str | Path,
    labels_csv: str | Path,
    out: str | Path,
    encoder_path: str | Path | None,
    annotations_dir: str | Path | None,
    cfg: SlideTrainingConfig,
    progress: bool,
    name: str | None,
    overwrite: bool,
    device: torch.device,
) -> Path:
    torch.manual_seed(cfg.seed)
    labels = read_labels(labels_csv)
    stores = list_stores(features_dir)
    names = sorted(n for n in stores if n in labels)
    unlabelled = sorted(set(stores) - set(labels))
    if unlabelled:
        warnings.warn(
            f"{len(unlabelled)} feature stores have no label and are left out: {unlabelled[:5]}", stacklevel=2
        )
    if len({labels[n] for n in names}) < 2 or len(names) < 4:
        raise ValueError(f"{labels_csv}: training needs at least 4 labelled slides of both classes in {features_dir}")
    attrs = {n: read_attrs(stores[n]) for n in names}
    encoder_id = check_same_encoder(attrs)
    source = encoder_path or attrs[names[0]].get("encoder_source")
    if not source or not Path(source).exists():
        raise ValueError("the stores do not say where their encoder checkpoint is: pass --encoder")
    encoder = load_encoder(source)
    if encoder.hash != encoder_id[1]:
        raise ValueError(
            f"{source}: encoder weights {encoder.hash} are not those of the features ({encoder_id[0]} {encoder_id[1]})"
        )
    encoder.name = encoder_id[0]
    data = {n: read_store(stores[n]) for n in names}
    empty = [n for n in names if len(data[n]) == 0]
    names = [n for n in names if len(data[n])]
    if empty:
        warnings.warn(f"{len(empty)} slides have no tissue tiles and are left out: {empty[:5]}", stacklevel=2)
    examples = {n: to_example(data[n], labels[n], tile_targets(data[n], labels[n], annotations_dir)) for n in names}
    val_names = split_validation(names, labels, cfg.val_fraction, cfg.seed)
    train_set = [examples[n] for n in names if n not in val_names]
    val_set = [examples[n] for n in names if n in val_names]

    in_dim = data[names[0]].features.shape[1]
    model = SlideMamba(SlideModelConfig(in_dim, cfg.dim, cfg.depth, cfg.d_state, dropout=cfg.dropout)).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(train_set)
    warmup = cfg.warmup_epochs * len(train_set)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    generator = torch.Generator().manual_seed(cfg.seed)
    log: list[dict] = []
    best: tuple[float, float] | None = None  # (val AUC, -val loss)
    best_state, best_epoch, stale = None, 0, 0
    started = time.time()
    with tqdm(total=cfg.epochs, desc="train", unit="epoch", disable=not progress, file=sys.stderr) as bar:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            losses = []
            for i in torch.randperm(len(train_set), generator=generator).tolist():
                loss, _ = _loss(model, train_set[i], cfg.tile_loss_weight, device)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                optimiser.step()
                schedule.step()
                losses.append(float(loss.detach()))
            val_loss, val_auc = _evaluate(model, val_set, device) if val_set else (float("nan"), float("nan"))
            row = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_auc": val_auc,
                "lr": optimiser.param_groups[0]["lr"],
            }
            log.append(row)
            key = (0.0 if math.isnan(val_auc) else val_auc, 0.0 if math.isnan(val_loss) else -val_loss)
            if best is None or key > best:
                best, best_epoch, stale = key, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            bar.update()
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{val_auc:.3f}")
            if val_set and stale >= cfg.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()

    colour_X = np.stack([slide_colour_vector(data[n].colour) for n in names])
    baseline = fit_colour_baseline(colour_X, np.array([labels[n] for n in names]))
    meta = {
        "name": name or Path(out).name,
        "threshold": 0.5,
        "version": __version__,
        "domain": domain_statistics([data[n].features for n in names], [data[n].colour for n in names]),
        "training": {
            "config": asdict(cfg),
            "features": str(features_dir),
            "labels": str(labels_csv),
            "annotations": str(annotations_dir) if annotations_dir else None,
            "slides": {"train": sorted(e.name for e in train_set), "validation": sorted(val_names)},
            "best_epoch": best_epoch,
            "best_val_auc": best[0] if best else None,
            "epochs_run": len(log),
            "seconds": round(time.time() - started, 1),
        },
    }
    return save_bundle(
        out,
        encoder,
        model,
        meta,
        baseline_to_json(baseline),
        overwrite=overwrite,
        inputs=(features_dir, labels_csv, annotations_dir),
        write_extra=lambda folder: write_csv_atomic(
            folder / "metrics.csv", list(log[0]), [list(r.values()) for r in log]
        ),
    )
