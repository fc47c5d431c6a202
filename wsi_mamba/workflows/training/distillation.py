"""Distilling a multi-view teacher into a one-view student (``train-encoder --distill-from``).

The teacher's tumour probability of every training patch in ``views`` dihedral views (features averaged, as the
product's views are: :func:`~..reports.score_patches.classify`) becomes a soft target; each batch's loss mixes it with
the hard label: ``(1 - w) * BCE(logit, label) + w * BCE(logit, teacher)``. With ``w`` 0 the loss is the plain BCE,
bit for bit. The targets are kept in the training state (:mod:`.training_state`), so a resume does not recompute
them.
"""

from __future__ import annotations

import hashlib
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...data.patches import PatchSource
from ...models.encoder import TileEncoder, load_encoder
from ..provenance import hash_file
from ..reports.score_patches import classify

TEACHER_BATCH = 256


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the teacher's weights); ``ValueError`` naming the file when it cannot be read."""
    digest = hashlib.sha256()
    try:
        hash_file(digest, path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the distillation teacher ({exc.strerror or exc})") from None
    return digest.hexdigest()


def targets_key(sha256: str, views: int) -> str:
    """The name of a teacher's targets in the training state: the teacher's hash and its views."""
    return f"teacher.{sha256[:16]}.views{views}"


def distillation_loss(
    logit: torch.Tensor, label: torch.Tensor, teacher: torch.Tensor | None, weight: float
) -> torch.Tensor:
    """``(1 - weight) * BCE(logit, label) + weight * BCE(logit, teacher)`` (means over the batch); the plain
    ``BCE(logit, label)`` when ``teacher`` is None or ``weight`` is 0."""
    hard = F.binary_cross_entropy_with_logits(logit, label)
    if teacher is None or weight == 0:
        return hard
    soft = F.binary_cross_entropy_with_logits(logit, teacher)
    return (1 - weight) * hard + weight * soft


def load_teacher(path: str | Path, px: int, mpp: float) -> TileEncoder:
    """The teacher encoder at ``path``, in eval mode; ``ValueError`` (one line naming the file) when it is not an
    encoder checkpoint with one tumour logit for patches of ``px`` pixels at ``mpp`` µm/px."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such distillation teacher (an encoder .safetensors checkpoint)")
    with torch.random.fork_rng(devices=[]):  # building the model draws random weights: keep the run's RNG as it was
        teacher = load_encoder(path)
    if teacher.tile_px != px or not math.isclose(teacher.mpp, mpp, rel_tol=1e-3):
        raise ValueError(
            f"{path}: the teacher sees {teacher.tile_px} px tiles at {teacher.mpp:g} µm/px, the patches are "
            f"{px} px at {mpp:g} µm/px"
        )
    teacher.model.eval()
    with torch.inference_mode():
        out = teacher.model(teacher.preprocess(np.zeros((1, px, px, 3), np.uint8)))
    if out.ndim != 2 or out.shape[1] != 1:
        raise ValueError(f"{path}: the teacher has no one-logit tumour head (output shape {tuple(out.shape)})")
    return teacher


def teacher_targets(
    teacher: TileEncoder, source: PatchSource, indices: np.ndarray, views: int, batch_size: int = TEACHER_BATCH
) -> np.ndarray:
    """The teacher's tumour probability of each patch of ``source`` in ``views`` views: an array over the whole
    source, NaN outside ``indices`` (the carved validation part is never scored). A progress bar on stderr."""
    targets = np.full(len(source), np.nan, np.float32)
    batches = [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
    if not batches:
        return targets
    with (
        ThreadPoolExecutor(1) as reader,
        tqdm(total=len(indices), desc=f"teacher ({views} views)", unit="patch", file=sys.stderr) as bar,
    ):
        pending = reader.submit(source.read, batches[0])
        for k, idx in enumerate(batches):
            patches = pending.result()
            if k + 1 < len(batches):
                pending = reader.submit(source.read, batches[k + 1])
            with torch.inference_mode():
                targets[idx] = classify(teacher, patches, views)
            bar.update(len(idx))
    return targets
