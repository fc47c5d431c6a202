"""Training the tile encoder, supervised on annotated tumour and normal tiles (as the CAMELYON16 winners did).

Tumour tiles lie mostly inside lesion annotations of tumour slides; normal tiles come from normal slides
and from the lesion-free parts of tumour slides; tiles on a lesion's edge are left out. The backbone is
trained as a tumour-vs-normal tile classifier with stain and geometry augmentation; its pre-logits are
the features the slide model sees.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...devices import DEFAULT_DEVICE, autocast, resolve_device
from ...evaluation.metrics import slide_auc
from ...models.checkpoint import save_checkpoint
from ...models.encoder import TileEncoder, load_encoder
from ...outputs.names import slide_name
from ...slide import open_slide
from ...slide.annotations import lesion_fractions
from ...slide.tiling import make_tile_grid, read_tile
from ..inputs import find_annotations
from .configs import EncoderTrainingConfig
from .optimisation import optimiser_step


@dataclass
class TileSet:
    tiles: np.ndarray  # (n, px, px, 3) uint8
    labels: np.ndarray  # (n,) 0/1
    slides: list[str]


def sample_tiles(
    slides: Sequence[Path], labels: dict[str, int], annotations_dir: Path, cfg: EncoderTrainingConfig
) -> TileSet:
    """Labelled tiles from the slides: every tumour tile (≥ tumor_min_fraction lesion) up to the cap,
    and as many lesion-free tiles spread over the slides."""
    rng = np.random.default_rng(cfg.seed)
    picks: list[tuple[Path, int, np.ndarray]] = []  # (slide, label, tile indices)
    tumor_total = 0
    grids = {}
    for path in tqdm(slides, desc="scan slides", unit="slide", file=sys.stderr):
        name = slide_name(path)
        if name not in labels:
            continue
        with open_slide(path) as slide:
            grid = make_tile_grid(slide, cfg.tile_px, cfg.mpp)
            dims = slide.dimensions
        if not len(grid):
            continue
        grids[path] = grid
        annotations = find_annotations(annotations_dir, name)
        fraction = lesion_fractions(annotations, grid, dims) if annotations else np.zeros(len(grid))
        if labels[name] == 1 and annotations is None:
            continue  # a tumour slide without annotations gives no trustworthy tile labels
        tumor = np.flatnonzero(fraction >= cfg.tumor_min_fraction)
        normal = np.flatnonzero(fraction == 0)
        tumor_total += len(tumor)
        picks.append((path, 1, tumor))
        picks.append((path, 0, rng.permutation(normal)[: cfg.max_normal_per_slide]))
    # balance: cap tumour tiles, then take as many normal tiles
    tumor_keep = min(tumor_total, cfg.max_tiles_per_class)
    normal_pool = sum(len(idx) for _, label, idx in picks if label == 0)
    normal_keep = min(normal_pool, max(tumor_keep, 1))
    chosen: list[tuple[Path, int, np.ndarray]] = []
    for path, label, idx in picks:
        pool = tumor_total if label == 1 else normal_pool
        keep = tumor_keep if label == 1 else normal_keep
        share = math.ceil(len(idx) * keep / max(pool, 1))
        chosen.append((path, label, rng.permutation(idx)[:share]))
    tiles, tile_labels, names = [], [], []
    total = sum(len(idx) for _, _, idx in chosen)
    with tqdm(total=total, desc="read tiles", unit="tile", file=sys.stderr) as bar:
        for path, label, idx in chosen:
            if not len(idx):
                continue
            with open_slide(path) as slide:
                for i in idx:
                    tiles.append(read_tile(slide, grids[path], int(i)))
                    tile_labels.append(label)
                    names.append(slide_name(path))
                    bar.update()
    if not tiles or len(set(tile_labels)) < 2:
        raise ValueError("encoder training needs annotated tumour tiles and normal tiles; found too few")
    return TileSet(np.stack(tiles), np.asarray(tile_labels, np.int64), names)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips / 90° rotations and per-tile stain jitter (scale and shift per channel, brightness) on a
    uint8 NHWC batch; returns uint8 NHWC."""
    n = x.shape[0]
    x = x.float()
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(2)
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(1)
    x = torch.rot90(x, int(torch.randint(4, (), generator=generator)), dims=(1, 2))
    scale = 1 + 0.12 * (torch.rand((n, 1, 1, 3), generator=generator) * 2 - 1)
    shift = 12 * (torch.rand((n, 1, 1, 3), generator=generator) * 2 - 1)
    bright = 1 + 0.08 * (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1)
    x = (x - 255) * scale * bright + 255 + shift  # stain varies with density: scale around white
    return x.clamp_(0, 255).to(torch.uint8)


def _tile_auc(encoder: TileEncoder, head: torch.nn.Module, data: TileSet, batch: int) -> float:
    if len(set(data.labels.tolist())) < 2:
        return float("nan")
    scores = []
    encoder.model.eval()
    with torch.inference_mode(), autocast(encoder.device):
        for start in range(0, len(data.tiles), batch):
            x = encoder.preprocess(data.tiles[start : start + batch])
            scores.append(head(encoder.features(x)).squeeze(1).float().cpu())
    return slide_auc(data.labels, torch.cat(scores).numpy())


def train_encoder(
    slides: Sequence[Path],
    labels: dict[str, int],
    annotations_dir: str | Path,
    out: str | Path,
    cfg: EncoderTrainingConfig = EncoderTrainingConfig(),  # noqa: B008 (frozen dataclass)
    device: str | torch.device = DEFAULT_DEVICE,
) -> Path:
    """Train the tile encoder on ``device`` (bf16 autocast on CUDA, fp32 weights) and write it as ``out``
    (.safetensors + JSON with the tile geometry)."""
    device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    names = sorted({slide_name(p) for p in slides if slide_name(p) in labels})
    rng = np.random.default_rng(cfg.seed)
    val_names = (
        set(rng.permutation(names)[: max(1, round(len(names) * cfg.val_fraction))]) if cfg.val_fraction else set()
    )
    data = sample_tiles(slides, labels, Path(annotations_dir), cfg)
    in_val = np.array([n in val_names for n in data.slides])
    train = TileSet(data.tiles[~in_val], data.labels[~in_val], [])
    val = TileSet(data.tiles[in_val], data.labels[in_val], [])
    encoder = load_encoder(cfg.model, seed=cfg.seed, scan_backend="auto").to(device)
    encoder.tile_px, encoder.mpp = cfg.tile_px, cfg.mpp
    model = encoder.model
    head = model.classifier.head  # 1 output: the tumour logit of a tile
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train.tiles) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = []
    with tqdm(total=steps, desc="train encoder", unit="step", file=sys.stderr) as bar:
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(len(train.tiles), generator=generator)
            losses = []
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                tiles = augment(torch.from_numpy(train.tiles[idx.numpy()]), generator)
                target = torch.from_numpy(train.labels[idx.numpy()]).float().to(device)
                with autocast(device):
                    logit = head(encoder.features(encoder.preprocess(tiles))).squeeze(1)
                loss = F.binary_cross_entropy_with_logits(logit.float(), target)
                optimiser_step(loss, model, optimiser, schedule, clip_norm=1.0)
                losses.append(float(loss))
                bar.update()
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            val_auc = _tile_auc(encoder, head, val, cfg.batch_size) if len(val.tiles) else float("nan")
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_tile_auc": val_auc})
            print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, validation tile AUC {val_auc:.4f}", file=sys.stderr)
    model.eval()
    metadata = {
        "name": Path(out).name.removesuffix(".safetensors"),
        "tile_px": cfg.tile_px,
        "mpp": cfg.mpp,
        "training": {
            "config": asdict(cfg),
            "tiles": {"tumor": int(train.labels.sum()), "normal": int((1 - train.labels).sum())},
            "validation_tiles": {"tumor": int(val.labels.sum()), "normal": int((1 - val.labels).sum())},
            "validation_slides": sorted(val_names),
            "history": history,
        },
    }
    return save_checkpoint(model, out, metadata=metadata)
