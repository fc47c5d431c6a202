"""The model folder that ``train`` writes and ``evaluate`` / ``predict`` read, and the shipped default model.

Layout of a model folder::

    model.json                       format, tile geometry, encoder identity, training metadata
    encoder.safetensors + .json      the tile encoder (our checkpoint: VMamba, or a timm model)
    slide_model.safetensors + .json  the slide model (any registered aggregator; its name in both JSONs)
    baseline.json                    colour-statistics baseline fitted on the same training slides (numbers only)

Only safetensors and JSON are read: nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.stain_norm import StainNorm
from ..devices import resolve_device
from ..features.modes import TileMode
from ..models.aggregators import Aggregator
from ..models.encoder import TileEncoder, load_encoder
from ..models.encoders import export_encoder
from ..models.encoders.base import check_views
from ..models.slide_model_io import load_slide_model, save_slide_model
from ..models.validation import check_float, check_int
from ..outputs.artefact import ArtefactFormat, read_json_object
from ..outputs.atomic import atomic_folder, json_safe, remove_stale_temporaries, write_json_atomic
from ..outputs.lock import output_lock
from ..outputs.region_calling import RegionCalling

if TYPE_CHECKING:
    import torch

FORMAT = ArtefactFormat("wsi-mamba/model", 1, kind="manifest")
FORMAT_VERSION = FORMAT.version
MANIFEST = "model.json"
SHIPPED_MODELS = "shipped_models"  # package folder of the model folders that ship with wsi-mamba
DEFAULT_MODEL = "pcam-camelyon"


@dataclass
class ModelBundle:
    """A loaded model folder."""

    path: Path
    encoder: TileEncoder
    slide_model: Aggregator  # any registered aggregator (ss2d, abmil, ...)
    meta: dict
    baseline: dict | None

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def threshold(self) -> float:
        """Decision threshold on the probability (0.5 unless the model folder sets another)."""
        return float(self.meta.get("threshold", 0.5))

    @property
    def feature_mode(self) -> dict:
        """How the model's training features were made: ``{"mode": "tile"}`` (also for models that do not say)
        or region mode's ``region_px`` / ``region_overlap_px`` (:mod:`~wsi_mamba.features.modes`)."""
        return dict(self.meta.get("feature_mode") or {"mode": "tile"})


def region_calling_of(bundle: ModelBundle) -> RegionCalling:
    """The model's calibrated region calling (``model.json``'s ``region_calling``, written by ``train`` or
    ``calibrate-regions``), else every group of tiles at or above its threshold."""
    record = bundle.meta.get("region_calling")
    return RegionCalling.uncalibrated(bundle.threshold) if record is None else RegionCalling.from_json(record)


def shipped_models() -> dict[str, Path]:
    """The model folders inside the package, by name (``pcam-camelyon``, ``synthetic-camelyon``)."""
    root = Path(str(resources.files("wsi_mamba") / SHIPPED_MODELS))
    return {p.name: p for p in sorted(root.iterdir()) if (p / MANIFEST).is_file()} if root.is_dir() else {}


def default_model_path() -> Path:
    """The shipped default model folder (see ``pipelines/`` for the recipe of each shipped model)."""
    return Path(str(resources.files("wsi_mamba") / SHIPPED_MODELS / DEFAULT_MODEL))


def model_path(spec: str | Path | None) -> Path:
    """A model folder from ``--model``: None is the default model; the name of a shipped model (when no file or
    folder of that name exists here) is that model; anything else is a path."""
    if spec is None:
        return default_model_path()
    path = Path(spec)
    if not path.exists() and str(spec) in shipped_models():
        return shipped_models()[str(spec)]
    return path


def model_files(spec: str | Path | None) -> list[Path]:
    """The files ``--model`` ``spec`` reads (:func:`model_path`): a folder's own files, or the file itself; for
    checking that no output is written over them."""
    path = model_path(spec)
    return sorted(path.glob("*")) if path.is_dir() else [path]


def is_model_folder(path: str | Path) -> bool:
    """True for a folder whose ``model.json`` is a manifest of our format (what ``train`` writes)."""
    try:
        return FORMAT.matches(read_json_object(Path(path) / MANIFEST))
    except ValueError:
        return False


def check_model_output(out: str | Path, inputs: Sequence[str | Path | None] = (), overwrite: bool = False) -> Path:
    """Refuse (``ValueError``, one line) a model-folder destination that would destroy what ``train`` did not
    create: something that exists and is not a model folder, a folder that is or holds one of ``inputs``, or an
    existing model folder unless ``overwrite``."""
    out = Path(out)
    target = out.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if source == target or target in source.parents:
            raise ValueError(f"--out {out} is or contains an input of this command ({item}): choose another folder")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or not is_model_folder(out):
            raise ValueError(
                f"--out {out} exists and is not a wsi-mamba model folder: choose a new folder (nothing was changed)"
            )
        if not overwrite:
            raise ValueError(f"--out {out} already holds a model: pass --overwrite to replace it")
    return out


def save_bundle(
    out: str | Path,
    encoder: TileEncoder,
    slide_model: Aggregator,
    meta: dict,
    baseline: dict | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a model folder: built whole in a temporary sibling (``write_extra(folder)`` adds files to it), then
    swapped in, the previous model kept until the new one is complete. Holds the folder's lock; refuses a
    destination :func:`check_model_output` refuses (an existing model folder is replaced only with
    ``overwrite``)."""
    if encoder.source is None:
        raise ValueError("the encoder has no checkpoint file: train or load one before saving a model")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        check_model_output(out, inputs, overwrite)
        # what killed runs left beside it (MODEL.tmp-PID-*, MODEL.old.tmp-PID-*): only lock holders write those
        remove_stale_temporaries(out.parent, lambda final: final in (out.name, f"{out.name}.old"), locked=True)
        with atomic_folder(out) as partial:
            export_encoder(encoder, partial / "encoder.safetensors")  # ours as a copy; timm weights converted
            save_slide_model(slide_model, partial / "slide_model.safetensors", metadata={"encoder_hash": encoder.hash})
            if baseline is not None:
                write_json_atomic(partial / "baseline.json", json_safe(baseline))
            if write_extra is not None:
                write_extra(partial)
            FORMAT.write(partial / MANIFEST, json_safe({**encoder.identity(), **meta}))
    return out


MAX_BASELINE_FEATURES = 10_000


def check_manifest(meta: dict) -> None:
    """Types and ranges of the ``model.json`` fields the readers use; ``ValueError`` (one line) otherwise."""
    threshold = meta.get("threshold", 0.5)
    check_float("model", "threshold", threshold, 0.0, 1.0)
    for key in ("name", "encoder", "encoder_hash", "aggregator"):
        if key in meta and not isinstance(meta[key], str):
            raise ValueError(f"{key} must be a string, got {meta[key]!r}")
    mode = meta.get("feature_mode", {"mode": "tile"})
    if not isinstance(mode, dict) or mode.get("mode") not in ("tile", "region"):
        raise ValueError(f"feature_mode must be {{'mode': 'tile' | 'region', ...}}, got {mode!r}")
    if mode["mode"] == "region":
        check_int("model feature_mode", "region_px", mode.get("region_px"), 1, 1_000_000)
        check_int("model feature_mode", "region_overlap_px", mode.get("region_overlap_px"), 0, 1_000_000)
    else:
        check_views(mode.get("views", 1))
        TileMode.from_attrs(mode)  # views on demand: a band of probabilities, with 4 or 8 views
    StainNorm.from_attrs(mode)  # a stain normalisation's method and target numbers
    if meta.get("region_calling") is not None:
        RegionCalling.from_json(meta["region_calling"])


def check_baseline(baseline: object) -> None:
    """A colour baseline as :func:`baseline_to_json` writes it: equal-length lists of finite numbers and a
    finite intercept, nonzero scales; ``ValueError`` (one line) otherwise."""
    if not isinstance(baseline, dict):
        raise ValueError(f"expected a JSON object, got {type(baseline).__name__}")
    lengths = set()
    for key in ("mean", "scale", "coef"):
        values = baseline.get(key)
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_BASELINE_FEATURES:
            raise ValueError(f"{key} must be a list of 1-{MAX_BASELINE_FEATURES} numbers")
        for value in values:
            check_float("baseline", key, value, -1e12, 1e12)
        lengths.add(len(values))
    if len(lengths) != 1:
        raise ValueError("mean, scale and coef must have the same length")
    if any(v == 0 for v in baseline["scale"]):
        raise ValueError("scale must not hold zeros")
    check_float("baseline", "intercept", baseline.get("intercept"), -1e12, 1e12)


def read_manifest(folder: Path) -> dict:
    """A model folder's checked ``model.json``; ``ValueError`` naming the file when a field is wrong."""
    manifest = folder / MANIFEST
    meta = FORMAT.read(manifest)
    try:
        check_manifest(meta)
    except ValueError as exc:
        raise ValueError(f"{manifest}: {exc}") from None
    return meta


def model_tile_mode(folder: Path) -> TileMode:
    """The tile mode a model folder's tiles are scored in, read once from its ``model.json``: its views (1 before
    views existed), views on demand and stain normalisation; a region-mode model: one view, its stain."""
    mode = read_manifest(folder).get("feature_mode") or {}
    if mode.get("mode", "tile") == "tile":
        return TileMode.from_attrs(mode)
    return TileMode(stain=StainNorm.from_attrs(mode))


def load_bundle(
    path: str | Path | None = None, scan_backend: str = "auto", device: str | torch.device | None = None
) -> ModelBundle:
    """Load a model folder (or its ``model.json``); None loads the shipped default model. ``ValueError``
    naming the path for anything that is not a complete model folder (pickles included: never unpickled).
    ``device`` (``auto``, ``cpu``, ``cuda[:N]``, see :mod:`wsi_mamba.devices`) moves both models there; None
    leaves them on the CPU."""
    path = model_path(path)
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if not path.exists():
        raise ValueError(f"{path}: model not found")
    if not path.is_dir():
        raise ValueError(f"{path}: not a wsi-mamba model folder (expected a folder with {MANIFEST}, as train writes)")
    if not (path / MANIFEST).exists():
        raise ValueError(f"{path}: not a wsi-mamba model folder (no {MANIFEST})")
    meta = read_manifest(path)
    baseline_file = path / "baseline.json"
    baseline = read_json_object(baseline_file) if baseline_file.exists() else None
    if baseline is not None:
        try:
            check_baseline(baseline)
        except ValueError as exc:
            raise ValueError(f"{baseline_file}: {exc}") from None
    encoder = load_encoder(path / "encoder.safetensors", scan_backend=scan_backend)
    if encoder.hash != meta.get("encoder_hash"):
        raise ValueError(
            f"{path}: encoder weights ({encoder.hash}) differ from those the model was trained on "
            f"({meta.get('encoder_hash')})"
        )
    encoder.name = str(meta.get("encoder", encoder.name))
    slide_model, _ = load_slide_model(path / "slide_model.safetensors", scan_backend=scan_backend)
    if device is not None:
        target = resolve_device(device)
        encoder.to(target)
        slide_model.to(target)
    return ModelBundle(path, encoder, slide_model.eval(), meta, baseline)
