"""Training a slide model (any registered aggregator: ss2d, abmil, clam-sb, transmil, mean, max) on feature
stores: slide-label BCE (+ optional tile supervision from lesion annotations, + the aggregator's own
``aux_loss``, e.g. CLAM's instance loss), AdamW with warm-up and cosine decay, gradient clipping, early
stopping on validation AUC, fixed seeds, a progress bar and a metrics log. Writes a model folder (see
``bundle.py``); with ``folds`` K ≥ 2, K-fold cross-validation (see :func:`.slide_examples.fold_splits`)."""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ... import __version__
from ...devices import DEFAULT_DEVICE, autocast, resolve_device
from ...evaluation.colour import baseline_to_json, fit_colour_baseline, slide_colour_vector
from ...evaluation.metrics import slide_auc
from ...features.modes import mode_from_attrs
from ...features.store import check_same_encoder, list_stores, read_attrs
from ...models.aggregators import Aggregator, aggregator_spec, create_aggregator
from ...models.encoders import encoder_from_record
from ...outputs.atomic import json_safe, write_csv_atomic, write_json_atomic
from ...outputs.lock import output_lock
from ..bundle import check_model_output, save_bundle
from ..domain import domain_statistics
from ..inputs import read_labels
from .composed_slides import ExampleChain, with_composed
from .configs import SlideTrainingConfig
from .operating_point import choose_operating_point
from .optimisation import optimiser_step
from .region_fitting import region_calling_entry
from .slide_examples import (
    Example,
    SlideSet,
    fold_splits,
    model_inputs,
    read_examples,
    split_validation,
    validation_examples,
)

CPU = torch.device("cpu")


def build_aggregator(cfg: SlideTrainingConfig, in_dim: int) -> Aggregator:
    """The registry's ``cfg.aggregator`` for ``in_dim``-wide features, with the config's common widths."""
    common = {"dim": cfg.dim, "depth": cfg.depth, "d_state": cfg.d_state, "dropout": cfg.dropout, "topk": cfg.topk}
    return create_aggregator(cfg.aggregator, in_dim, ignore_unknown=True, **common)


def _loss(
    model: Aggregator, example: Example, tile_weight: float, device: torch.device = CPU
) -> tuple[torch.Tensor, float]:
    """The example's loss (fp32; the forward under bf16 autocast on CUDA) and its slide probability; in
    training mode the aggregator's ``aux_loss`` is added."""
    mask = example.mask.to(device, non_blocking=True)
    with autocast(device):
        out = model(example.features.to(device, non_blocking=True), mask)
    logit, tile_logits = out.logit.float(), out.tile_logits.float()
    label = torch.tensor([float(example.label)], device=device)
    loss = F.binary_cross_entropy_with_logits(logit, label)
    if model.training:
        loss = loss + model.aux_loss(out, label).float()
    if tile_weight > 0 and example.tile_target is not None:
        target = example.tile_target.to(device, non_blocking=True)
        known = mask & (target >= 0)
        if known.any():
            tile_loss = F.binary_cross_entropy_with_logits(tile_logits[known], target[known])
            loss = loss + tile_weight * tile_loss
    return loss, float(torch.sigmoid(logit).item())


def _evaluate(model: Aggregator, examples: Sequence[Example], device: torch.device = CPU) -> tuple[float, float]:
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
    validation: SlideSet | None = None,
) -> Path:
    """Train ``cfg.aggregator`` on the labelled stores of ``features_dir`` and write the model folder ``out``
    (the model is called ``name``, by default the folder's name). Early stopping and the best epoch are chosen on
    ``validation`` (other slides: features of the same encoder and mode) when given, the model then training on
    every slide of ``features_dir``; else on a part split off them (``cfg.val_fraction``). With ``cfg.folds`` =
    K ≥ 2: K fold models (``out/fold-1`` …, each selected on its own fold), ``folds.json`` / ``folds.csv``
    (per-fold and mean ± sd validation AUC), and as ``out`` itself a final model trained on all slides for the
    folds' mean best epoch count. ``out`` is checked before training (see ``check_model_output``: an existing
    model folder is replaced only with ``overwrite``) and locked meanwhile. The model trains on ``device`` (bf16
    autocast on CUDA, fp32 weights)."""
    target = resolve_device(device)
    spec = aggregator_spec(cfg.aggregator)  # an unknown name fails before anything is read
    if cfg.topk and "topk" not in spec.field_names():
        raise ValueError(f"--topk is an option of the ss2d aggregator; {cfg.aggregator} has no top-k branch")
    if cfg.folds == 1 or cfg.folds < 0:
        raise ValueError(f"--folds must be at least 2 (or 0 for one validation split), got {cfg.folds}")
    if validation is not None and cfg.folds:
        raise ValueError("--val-features and --folds are two ways of validating: choose one")
    if cfg.compose_sections == 1 or cfg.compose_sections < 0:
        raise ValueError(f"--compose-sections must be at least 2 (or 0: off), got {cfg.compose_sections}")
    if cfg.compose_sections and cfg.folds:
        raise ValueError("--compose-sections trains with one validation split, not --folds")
    check_model_output(out, model_inputs(features_dir, labels_csv, annotations_dir, validation), overwrite)
    with output_lock(out):
        return _train(
            features_dir,
            labels_csv,
            out,
            encoder_path,
            annotations_dir,
            cfg,
            progress,
            name,
            overwrite,
            target,
            validation,
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
    validation: SlideSet | None = None,
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
    encoder_id = check_same_encoder(attrs)  # one encoder and one feature mode
    feature_mode = mode_from_attrs(attrs[names[0]]).attrs()  # tile or region mode: predict / evaluate use the same
    source = encoder_path or attrs[names[0]].get("encoder_source")
    encoder = encoder_from_record(attrs[names[0]], encoder_path)  # ValueError when the stores do not say where
    if encoder.hash != encoder_id[1]:
        raise ValueError(
            f"{source}: encoder weights {encoder.hash} are not those of the features ({encoder_id[0]} {encoder_id[1]})"
        )
    encoder.name = encoder_id[0]
    data, examples = read_examples(stores, names, labels, annotations_dir)
    names = list(examples)
    in_dim = data[names[0]].features.shape[1]
    inputs = model_inputs(features_dir, labels_csv, annotations_dir, validation)
    sources = {"features": str(features_dir), "labels": str(labels_csv)}
    sources["annotations"] = str(annotations_dir) if annotations_dir else None
    model_name = name or Path(out).name

    def meta_of(fit: Fit, train_names: list[str], val_names: list[str], title: str, seen: list[str]) -> dict:
        """model.json of one model; ``seen``: the slides its domain statistics (and baseline) come from."""
        return {
            "name": title,
            **choose_operating_point(fit.val_scores, fit.val_labels, cfg.target_specificity, fit.val_source).to_meta(),
            "version": __version__,
            "aggregator": cfg.aggregator,
            "feature_mode": feature_mode,
            "domain": domain_statistics([data[n].features for n in seen], [data[n].colour for n in seen]),
            "training": {
                "config": asdict(cfg),
                **sources,
                "slides": {"train": sorted(train_names), "validation": sorted(val_names)},
                "best_epoch": fit.best_epoch,
                "best_val_auc": fit.best_val_auc,
                "epochs_run": len(fit.log),
                "seconds": fit.seconds,
            },
        }

    def baseline_of(train_names: list[str]) -> dict:
        colour_X = np.stack([slide_colour_vector(data[n].colour) for n in train_names])
        return baseline_to_json(fit_colour_baseline(colour_X, np.array([labels[n] for n in train_names])))

    def write_log(folder: Path, log: list[dict]) -> None:
        write_csv_atomic(folder / "metrics.csv", list(log[0]), [list(r.values()) for r in log])

    if validation is not None or not cfg.folds:
        if validation is not None:  # other slides validate; all of these train
            train_names = names
            val_set: Sequence[Example] = validation_examples(validation, encoder_id, feature_mode)
            sources["validation"] = {key: str(v) if v else None for key, v in asdict(validation).items()}
        else:
            val_names = split_validation(names, labels, cfg.val_fraction, cfg.seed)
            train_names = [n for n in names if n not in val_names]
            val_set = [examples[n] for n in sorted(val_names)]
        train_examples = [examples[n] for n in train_names]
        train_set: Sequence[Example] = train_examples
        if cfg.compose_sections:
            train_set, val_set = with_composed(
                train_examples,
                list(val_set),
                cfg.compose_sections,
                cfg.compose_slides,
                cfg.compose_val_slides,
                cfg.seed,
            )
        fit = _fit(train_set, val_set, in_dim, cfg, device, progress)
        if cfg.compose_sections:  # the threshold for slides of real size: chosen on the composed ones only
            count = cfg.compose_val_slides
            fit.val_scores, fit.val_labels = fit.val_scores[-count:], fit.val_labels[-count:]
            sections = cfg.compose_sections
            fit.val_source = f"validation slides of real size, each composed of {sections} validation slides"
        val_names_out = val_set.names() if isinstance(val_set, ExampleChain) else [e.name for e in val_set]
        return save_bundle(
            out,
            encoder,
            fit.model,
            meta_of(fit, train_names, val_names_out, model_name, names)
            | region_calling_entry([(fit.model, val_set)], encoder),  # fitted on the validation slides
            baseline_of(names),
            overwrite=overwrite,
            inputs=inputs,
            write_extra=lambda folder: write_log(folder, fit.log),
        )

    splits = fold_splits(names, labels, cfg.folds, cfg.seed)
    fold_fits: list[Fit] = []
    for index, val_names in enumerate(splits, 1):
        train_names = [n for n in names if n not in set(val_names)]
        fold_fits.append(
            _fit(
                [examples[n] for n in train_names],
                [examples[n] for n in val_names],
                in_dim,
                cfg,
                device,
                progress,
                desc=f"fold {index}/{cfg.folds}",
            )
        )
    final_epochs = max(1, round(float(np.mean([f.best_epoch for f in fold_fits]))))
    final = _fit(
        [examples[n] for n in names], [], in_dim, cfg, device, progress, desc="all slides", epochs=final_epochs
    )
    aucs = [f.best_val_auc for f in fold_fits]
    final.val_scores = [s for f in fold_fits for s in f.val_scores]  # its threshold: the out-of-fold scores
    final.val_labels = [y for f in fold_fits for y in f.val_labels]
    final.val_source = f"out-of-fold validation slides of the {cfg.folds} fold models"
    summary = {
        "folds": cfg.folds,
        "seed": cfg.seed,
        "aggregator": cfg.aggregator,
        "mean_val_auc": float(np.mean(aucs)),
        "sd_val_auc": float(np.std(aucs, ddof=1)),
        "per_fold": [
            {
                "fold": i,
                "model": f"fold-{i}",
                "validation": val_names,
                "train_slides": len(names) - len(val_names),
                "validation_slides": len(val_names),
                "best_epoch": fit.best_epoch,
                "epochs_run": len(fit.log),
                "val_auc": fit.best_val_auc,
            }
            for i, (val_names, fit) in enumerate(zip(splits, fold_fits, strict=True), 1)
        ],
        "final": {"slides": len(names), "epochs": final_epochs, "rule": "mean best epoch of the folds, rounded"},
    }

    def write_folds(folder: Path) -> None:
        write_log(folder, final.log)
        write_json_atomic(folder / "folds.json", json_safe(summary))
        header = ["fold", "train_slides", "validation_slides", "best_epoch", "epochs_run", "val_auc"]
        rows = [[r[k] for k in header] for r in summary["per_fold"]]
        rows += [["mean", "", "", "", "", summary["mean_val_auc"]], ["sd", "", "", "", "", summary["sd_val_auc"]]]
        write_csv_atomic(folder / "folds.csv", header, rows)
        for i, (val_names, fit) in enumerate(zip(splits, fold_fits, strict=True), 1):
            train_names = [n for n in names if n not in set(val_names)]
            save_bundle(
                folder / f"fold-{i}",
                encoder,
                fit.model,
                meta_of(fit, train_names, val_names, f"{model_name}-fold-{i}", train_names),
                baseline_of(train_names),
                write_extra=lambda sub, log=fit.log: write_log(sub, log),
            )

    meta = meta_of(final, names, [], model_name, names)
    out_of_fold = [(f.model, [examples[n] for n in v]) for f, v in zip(fold_fits, splits, strict=True)]
    meta |= region_calling_entry(out_of_fold, encoder)  # each validation fold scored by its own fold's model
    meta["training"]["cross_validation"] = summary
    return save_bundle(
        out, encoder, final.model, meta, baseline_of(names), overwrite=overwrite, inputs=inputs, write_extra=write_folds
    )


@dataclass
class Fit:
    """One training run: the model at its selected epoch, the per-epoch log, the selected epoch and its
    validation AUC (None without validation slides: then the last epoch is kept); the selected model's slide
    probabilities and labels of the validation slides (``val_source`` says which), for the threshold."""

    model: Aggregator
    log: list[dict]
    best_epoch: int
    best_val_auc: float | None
    seconds: float
    val_scores: list[float] = field(default_factory=list)
    val_labels: list[int] = field(default_factory=list)
    val_source: str = "validation slides"


def _fit(
    train_set: Sequence[Example],
    val_set: Sequence[Example],
    in_dim: int,
    cfg: SlideTrainingConfig,
    device: torch.device,
    progress: bool,
    desc: str = "train",
    epochs: int | None = None,
) -> Fit:
    """Train a fresh ``cfg.aggregator`` (seeded) on ``train_set`` for ``epochs`` (default ``cfg.epochs``),
    early-stopping and selecting on ``val_set`` only; without validation slides all epochs run."""
    torch.manual_seed(cfg.seed)
    epochs = epochs or cfg.epochs
    model = build_aggregator(cfg, in_dim).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = epochs * len(train_set)
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
    with tqdm(total=epochs, desc=desc, unit="epoch", disable=not progress, file=sys.stderr) as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            losses = []
            for i in torch.randperm(len(train_set), generator=generator).tolist():
                loss, _ = _loss(model, train_set[i], cfg.tile_loss_weight, device)
                optimiser_step(loss, model, optimiser, schedule, cfg.clip_norm)
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
            if best is None or key > best or not val_set:  # without validation: the last epoch
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
    best_auc = best[0] if best is not None and val_set else None
    val_scores, labels = [], []
    with torch.no_grad():
        for example in val_set:  # composed slides are built when read: once
            val_scores.append(_loss(model, example, 0.0, device)[1])
            labels.append(int(example.label))
    return Fit(model, log, best_epoch, best_auc, round(time.time() - started, 1), val_scores, labels)
