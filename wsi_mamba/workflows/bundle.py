"""The model folder that ``train`` writes and ``evaluate`` / ``predict`` read, and the shipped default model.

Layout of a model folder::

    model.json                       format, tile geometry, encoder identity, training metadata
    encoder.safetensors + .json      the tile encoder (a VMamba checkpoint)
    slide_model.safetensors + .json  the slide model
    baseline.json                    colour-statistics baseline fitted on the same training slides (numbers only)

Only safetensors and JSON are read: nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..models.checkpoint import config_path
from ..models.encoder import TileEncoder, load_encoder
from ..models.slide_model import SlideMamba, load_slide_model, save_slide_model
from ..outputs.atomic import json_safe, write_json_atomic

FORMAT = "wsi-mamba/model"
FORMAT_VERSION = 1
MANIFEST = "model.json"
DEFAULT_MODEL = "default_model"


@dataclass
class ModelBundle:
    """A loaded model folder."""

    path: Path
    encoder: TileEncoder
    slide_model: SlideMamba
    meta: dict
    baseline: dict | None

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def threshold(self) -> float:
        """Decision threshold on the probability (0.5 unless the model folder sets another)."""
        return float(self.meta.get("threshold", 0.5))


def default_model_path() -> Path:
    """The model folder shipped inside the package (trained by pipelines/synthetic-camelyon.yaml)."""
    return Path(str(resources.files("wsi_mamba") / DEFAULT_MODEL))


def save_bundle(
    out: str | Path,
    encoder: TileEncoder,
    slide_model: SlideMamba,
    meta: dict,
    baseline: dict | None = None,
) -> Path:
    """Write a model folder (built under ``out.partial`` and renamed, so ``out`` is always whole)."""
    if encoder.source is None:
        raise ValueError("the encoder has no checkpoint file: train or load one before saving a model")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shutil.copyfile(encoder.source, partial / "encoder.safetensors")
    shutil.copyfile(config_path(encoder.source), partial / "encoder.json")
    save_slide_model(slide_model, partial / "slide_model.safetensors", metadata={"encoder_hash": encoder.hash})
    if baseline is not None:
        write_json_atomic(partial / "baseline.json", json_safe(baseline))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **encoder.identity(),
        **meta,
    }
    write_json_atomic(partial / MANIFEST, json_safe(manifest))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def load_bundle(path: str | Path | None = None, scan_backend: str = "auto") -> ModelBundle:
    """Load a model folder (or its ``model.json``); None loads the shipped default model. ``ValueError``
    naming the path for anything that is not a complete model folder (pickles included: never unpickled)."""
    path = default_model_path() if path is None else Path(path)
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if not path.exists():
        raise ValueError(f"{path}: model not found")
    if not path.is_dir():
        raise ValueError(f"{path}: not a wsi-mamba model folder (expected a folder with {MANIFEST}, as train writes)")
    manifest = path / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not a wsi-mamba model folder (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{manifest}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{manifest}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    encoder = load_encoder(path / "encoder.safetensors", scan_backend=scan_backend)
    if encoder.hash != meta.get("encoder_hash"):
        raise ValueError(
            f"{path}: encoder weights ({encoder.hash}) differ from those the model was trained on "
            f"({meta.get('encoder_hash')})"
        )
    encoder.name = str(meta.get("encoder", encoder.name))
    slide_model, _ = load_slide_model(path / "slide_model.safetensors", scan_backend=scan_backend)
    baseline_file = path / "baseline.json"
    try:
        baseline = json.loads(baseline_file.read_text()) if baseline_file.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{baseline_file}: not valid JSON ({exc})") from None
    return ModelBundle(path, encoder, slide_model.eval(), meta, baseline)


def baseline_to_json(pipeline) -> dict:
    """A fitted StandardScaler + LogisticRegression pipeline as plain numbers (no pickle)."""
    scaler, logistic = pipeline[0], pipeline[-1]
    return {
        "kind": "colour-statistics logistic regression",
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": logistic.coef_.ravel().tolist(),
        "intercept": float(logistic.intercept_[0]),
    }


def baseline_predict(baseline: dict, X: np.ndarray) -> np.ndarray:
    """Probabilities of the baseline stored by :func:`baseline_to_json` for slide vectors ``X`` (m, K)."""
    z = (np.asarray(X, np.float64) - np.asarray(baseline["mean"])) / np.asarray(baseline["scale"])
    logit = z @ np.asarray(baseline["coef"]) + float(baseline["intercept"])
    return 1.0 / (1.0 + np.exp(-logit))
