"""Shared data for the workflow tests: a tiny synthetic cohort, a tiny tile encoder, feature stores and a
trained model folder, built once per test session (import the helpers; no conftest needed).

The cohort is 8 slides of 1536 px (0.243 µm/px, ≈ 0.37 mm a side), seed 8: every slide has tissue, the
training split has 3 normal and 3 tumour slides (1-3 lesions each), testing one of each. The encoder is
``vmamba_pico`` with seeded random weights cutting 64 px tiles at 1 µm/px (≈ 10 tissue tiles a slide), so
the whole build takes 15-25 s on two busy cores.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from wsi_mamba.features.options import ReadOptions
from wsi_mamba.models.checkpoint import save_checkpoint
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.synth.cohort import write_cohort
from wsi_mamba.workflows.extract import extract_slides
from wsi_mamba.workflows.inputs import find_slides
from wsi_mamba.workflows.training.configs import SlideTrainingConfig
from wsi_mamba.workflows.training.slide_training import train_slide_model

COHORT_SEED = 8
COHORT_SIZE = 1536
TILE_PX = 64
TILE_MPP = 1.0
READ_OPTIONS = ReadOptions(batch_size=8, read_threads=2)
TRAINING = SlideTrainingConfig(epochs=2, dim=16, depth=1, d_state=2)
ENCODER_NAME = "test-encoder"
OTHER_ENCODER_NAME = "other-encoder"


@dataclass(frozen=True)
class WorkflowData:
    """Paths of the shared, read-only test data (copy before changing anything)."""

    root: Path
    training: Path  # slides: training/{normal,tumor}/*.tif
    testing: Path  # slides: testing/images/*.tif
    labels: Path  # training/labels.csv
    reference: Path  # testing/reference.csv
    annotations: Path  # training/lesion_annotations/*.xml
    encoder: Path  # encoder checkpoint (.safetensors + .json)
    other_encoder: Path  # same architecture and geometry, other weights
    features: Path  # stores of the training slides (the testing slides have none)
    model: Path  # model folder trained on ``features``

    def slides(self, split: str = "training") -> list[Path]:
        return find_slides([self.training if split == "training" else self.testing])

    def slide(self, name: str) -> Path:
        return next(p for p in self.slides() + self.slides("testing") if p.stem == name)


_cache: dict[str, WorkflowData] = {}


def write_encoder(path: Path, seed: int, name: str) -> Path:
    """A ``vmamba_pico`` checkpoint with seeded random weights and the tests' tile geometry."""
    encoder = load_encoder("vmamba_pico", seed=seed)
    return save_checkpoint(encoder.model, path, metadata={"name": name, "tile_px": TILE_PX, "mpp": TILE_MPP})


def workflow_data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    """The shared cohort, encoders, stores and model (built on first use in the session)."""
    if "data" in _cache:
        return _cache["data"]
    root = tmp_path_factory.mktemp("workflow")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: one thread is faster on a busy machine than OpenMP hand-offs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_cohort(root / "cohort", slides=8, seed=COHORT_SEED, size=COHORT_SIZE)
            encoder_path = write_encoder(root / "encoder.safetensors", 0, ENCODER_NAME)
            other_path = write_encoder(root / "other.safetensors", 1, OTHER_ENCODER_NAME)
            encoder = load_encoder(encoder_path)
            cohort = root / "cohort"
            results = extract_slides(
                find_slides([cohort / "training"]), root / "features", encoder, read=READ_OPTIONS, progress=False
            )
            assert set(results.values()) == {"done"}, results
            model = train_slide_model(
                root / "features", cohort / "training" / "labels.csv", root / "model", cfg=TRAINING, progress=False
            )
    finally:
        torch.set_num_threads(threads)
    _cache["data"] = WorkflowData(
        root=root,
        training=cohort / "training",
        testing=cohort / "testing",
        labels=cohort / "training" / "labels.csv",
        reference=cohort / "testing" / "reference.csv",
        annotations=cohort / "training" / "lesion_annotations",
        encoder=encoder_path,
        other_encoder=other_path,
        features=root / "features",
        model=model,
    )
    return _cache["data"]


def copy_tree(source: Path, target: Path) -> Path:
    """A private copy of a shared folder (stores, model) for a test that changes it."""
    shutil.copytree(source, target)
    return target


def write_blank_slide(path: Path, size: int = 1024) -> Path:
    """A pyramidal, tiled TIFF of bare glass (no tissue) with resolution tags (0.5 µm/px)."""
    image = np.full((size, size, 3), 242, np.uint8)
    options = dict(
        tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None
    )
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, subfiletype=0, **options)
        tw.write(image[::2, ::2], subfiletype=1, **options)
        tw.write(image[::4, ::4], subfiletype=1, **options)
    return path


def write_garbage_slide(path: Path, source: Path | None = None) -> Path:
    """A ``.tif`` that is not a readable slide: the first third of ``source`` (truncated), or plain bytes."""
    if source is None:
        path.write_bytes(b"this is not a TIFF file\n" * 64)
    else:
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    return path


class Booby:
    """Unpickling this creates ``marker``: proof that a loader unpickled what it was given."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def write_booby_pickle(path: Path, marker: Path) -> Path:
    """A pickle (as ``torch.save`` writes one) whose loading would create ``marker``."""
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": Booby(str(marker))}, path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the trap works: a plain unpickle springs it
    assert marker.exists()
    marker.unlink()
    return path


def copy_with_small_tiles(source: Path, path: Path, compression: str = "jpeg") -> Path:
    """The pixels of ``source`` (0.243 µm/px) as a pyramid of downsamples 1, 2, 4, 8 (``compression``) with 32 px
    file tiles on level 2: tissue is found on level 3, tiles of 64 px at 1 µm/px are read from level 2."""
    from wsi_mamba.slide import open_slide

    with open_slide(source) as slide:
        image, mpp = slide.read_level(0), slide.mpp
    options = dict(photometric="rgb", compression=compression, metadata=None, resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        for k, (step, tile) in enumerate(((1, 128), (2, 64), (4, 32), (8, 32))):
            res = 1e4 / (mpp * step)
            level = image[::step, ::step]
            tw.write(level, tile=(tile, tile), subfiletype=1 if k else 0, resolution=(res, res), **options)
    return path


def write_smooth_patches(root: Path, normal: int, tumour: int, seed: int, px: int = 96) -> Path:
    """A tiny labelled patch folder (``0/``, ``1/`` PNGs) of smooth random textures, pink normal and purple
    tumour (smooth, so an upsampled patch box-reduces back closely); returns ``root``."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for label, count, base in (("0", normal, (225, 150, 190)), ("1", tumour, (130, 70, 165))):
        (root / label).mkdir(parents=True)
        for i in range(count):
            texture = ndimage.gaussian_filter(rng.normal(0, 40, (px, px, 3)), (2, 2, 0))
            pixels = np.clip(np.asarray(base) + rng.integers(-25, 26, 3) + texture, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"p{i:03d}.png")
    return root
