"""The ``timm`` encoder family: any timm architecture (``timm:NAME``) built offline and loaded from local weights.

Models are always built with ``pretrained=False`` (nothing is downloaded); weights come from a safetensors file,
a weights-only ``.pth``/``.bin`` (``torch.load(weights_only=True)``: a pickle that would run code is refused),
or a Hugging Face-style folder as timm's ``save_for_hf``/``push_to_hf_hub`` write it and UNI/CONCH-style models
are distributed (``config.json`` with ``architecture``, optional ``model_args``, ``pretrained_cfg``, ``num_classes``;
``model.safetensors`` or ``pytorch_model.bin``). Input size, mean/std and pooling come from the model's own
pretrained config; tile size and µm/px may be overridden. Our checkpoints of timm encoders (``train-encoder
--model timm:NAME``) are safetensors + JSON (format ``wsi-mamba/timm-encoder``, ``family: timm``).
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ...outputs.artefact import ArtefactFormat, read_json_object
from ...outputs.atomic import json_safe
from ..checkpoint import check_encoder_metadata, read_safetensors, tensor_writer
from ..state import check_state_dict
from ..validation import check_float, check_int
from .base import MEAN, STD, TileEncoder
from .registry import EncoderFamily, register_encoder_family

FORMAT = ArtefactFormat("wsi-mamba/timm-encoder", 1)
PREFIX = "timm:"
DEFAULT_MPP = 0.5  # µm/px (20x), what pathology foundation models (UNI, CONCH, Virchow) are trained at
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# pretrained_cfg fields that point at remote weights: never passed on (nothing is downloaded anyway)
REMOTE_KEYS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source"}
SAVED_CFG_KEYS = (
    "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "num_classes",
    "pool_size", "first_conv", "classifier", "tag", "license",
)
IGNORED_OVERRIDES = ("scan_backend",)  # VMamba-only options other code paths pass to every encoder

_torchvision_ops: torch.library.Library | None = None


def _declare_torchvision_ops() -> None:
    """Let a torchvision whose compiled ops do not load beside this torch (a CUDA build of torchvision with a CPU
    build of torch) be imported: its import registers fake kernels for ``nms``/``qnms`` unconditionally, which
    fails unless the ops exist. timm needs none of torchvision's compiled ops."""
    global _torchvision_ops
    if _torchvision_ops is None:
        _torchvision_ops = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _torchvision_ops.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_timm() -> ModuleType:
    """The ``timm`` module; one-line ``ValueError`` when it is not installed."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm encoders need the timm package: pip install 'wsi-mamba[timm]'") from None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] in ("timm", "torchvision")]:
            del sys.modules[name]
        _declare_torchvision_ops()
        import timm
    return timm


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a state dict, or one under ``state_dict``/``model``; a ``module.``
    prefix (DataParallel) removed."""
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping) and not isinstance(state.get(key), torch.Tensor):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    if all(str(k).startswith("module.") for k in state):
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict in ``path`` (safetensors; weights-only ``.pth``/``.bin``; a Hugging Face-style folder's
    weights file) and the file read. Never unpickles arbitrary objects: ``ValueError`` naming the file for a
    missing file, a pickle that is not weights-only, or anything else that is not a state dict."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: encoder weights not found")
    if path.is_dir():
        found = [path / name for name in HF_WEIGHTS if (path / name).is_file()]
        if not found:
            raise ValueError(f"{path}: no weights file in the folder (expected {' or '.join(HF_WEIGHTS)})")
        path = found[0]
    if path.suffix == ".safetensors":
        return read_safetensors(path), path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: refused: not a weights-only checkpoint ({first})") from None
    except Exception as exc:  # not a torch file at all (zip, pickle or legacy format errors)
        raise ValueError(f"{path}: not a PyTorch weights file ({str(exc).splitlines()[0][:120]})") from None
    return _unwrap(state, path), path


def claims_folder(path: Path) -> bool:
    """A Hugging Face-style folder: ``config.json`` naming a timm ``architecture``."""
    config = path / HF_CONFIG
    if not config.is_file():
        return False
    try:
        return "architecture" in read_json_object(config)
    except ValueError:
        return False


def read_hf_config(folder: Path) -> tuple[str, dict, dict]:
    """(architecture, model_args, pretrained_cfg) of a folder's ``config.json``, parsed as timm's
    ``load_model_config_from_hf`` does (the legacy single-dict layout included)."""
    config_file = folder / HF_CONFIG
    cfg = read_json_object(config_file)
    if "pretrained_cfg" in cfg:
        pretrained = dict(cfg["pretrained_cfg"]) if isinstance(cfg["pretrained_cfg"], dict) else None
    else:
        pretrained = {k: v for k, v in cfg.items() if k not in ("architecture", "num_features")}
    architecture, model_args = cfg.get("architecture"), cfg.get("model_args", {})
    if not isinstance(architecture, str) or pretrained is None or not isinstance(model_args, dict):
        raise ValueError(f"{config_file}: 'architecture' must be a string, 'pretrained_cfg' and 'model_args' objects")
    if "num_classes" in cfg:
        pretrained["num_classes"] = cfg["num_classes"]
    return architecture, dict(model_args), pretrained


def _overlay(timm: ModuleType, pretrained: Mapping) -> dict:
    """The fields of ``pretrained`` timm's ``PretrainedCfg`` knows, minus remote locations; lists as tuples."""
    known = {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)} - REMOTE_KEYS - {"architecture"}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in pretrained.items() if k in known}


def _seeded(seed: int, build):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def _head_classes(timm: ModuleType, architecture: str, overlay: dict, state: Mapping[str, torch.Tensor]) -> int:
    """Classes of the classifier head in ``state`` (0 when the weights have none)."""
    classifier = overlay.get("classifier")
    if classifier is None:
        default = timm.models.get_pretrained_cfg(architecture)
        classifier = getattr(default, "classifier", None) or "head"
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0]
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else 0


def build_encoder(
    architecture: str,
    state: Mapping[str, torch.Tensor] | None,
    model_args: dict,
    pretrained: Mapping,
    *,
    name: str,
    source: str | None,
    spec: str | None,
    tile_px: int | None,
    mpp: float | None,
    seed: int = 0,
    num_classes: int | None = None,
    preprocessing: Mapping | None = None,
    **overrides,
) -> TileEncoder:
    """A :class:`TileEncoder` of timm ``architecture`` (``pretrained=False``) with ``state`` loaded strictly
    (None: weights seeded by ``seed``). The head is built as the weights have it, then replaced (seeded) by a
    ``num_classes`` one when that differs. ``preprocessing``: saved ``input_px``/``mean``/``std`` (ours)."""
    timm = import_timm()
    if not timm.is_model(architecture):
        raise ValueError(f"{PREFIX}{architecture}: unknown timm architecture (see timm.list_models())")
    for key in IGNORED_OVERRIDES:
        overrides.pop(key, None)
    overlay = _overlay(timm, pretrained)
    args = {**model_args, **{k: v for k, v in overrides.items() if k != "drop_path_rate"}}
    args.pop("num_classes", None)
    build_args = {**args, **({"drop_path_rate": overrides["drop_path_rate"]} if "drop_path_rate" in overrides else {})}
    head = _head_classes(timm, architecture, overlay, state) if state is not None else (num_classes or 0)

    def create() -> torch.nn.Module:
        return timm.create_model(
            architecture, pretrained=False, num_classes=head, pretrained_cfg_overlay=overlay, **build_args
        )

    try:
        model = _seeded(seed, create)
    except TypeError as exc:
        raise ValueError(f"{PREFIX}{architecture}: cannot build with {sorted(build_args)} ({exc})") from None
    if state is not None:
        try:
            check_state_dict(model, state)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc} ({PREFIX}{architecture})") from None
        model.load_state_dict(state, strict=True)
    if num_classes is not None and num_classes != model.num_classes:
        _seeded(seed, lambda: model.reset_classifier(num_classes))
    cfg = dict(model.pretrained_cfg)
    head_now = int(model.num_classes)
    native = int(cfg.get("input_size", (3, 224, 224))[-1])
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # a model built at another img_size
    if built:
        native = int(built[-1] if isinstance(built, (tuple, list)) else built)
    fixed = bool(cfg.get("fixed_input_size", False)) and not getattr(model, "dynamic_img_size", False)
    saved = dict(preprocessing or {})
    mean = tuple(float(v) for v in saved.get("mean", cfg.get("mean", MEAN)))
    std = tuple(float(v) for v in saved.get("std", cfg.get("std", STD)))
    input_px = saved.get("input_px", native if fixed else None)
    config = {
        "architecture": architecture,
        "num_classes": int(model.num_classes),
        "model_args": args,
        "pretrained_cfg": {k: cfg[k] for k in SAVED_CFG_KEYS if cfg.get(k) is not None} | {"num_classes": head_now},
        "input_px": input_px,
        "mean": list(mean),
        "std": list(std),
    }
    return TileEncoder(
        model, name=name, tile_px=int(tile_px or native), mpp=float(mpp or DEFAULT_MPP), source=source,
        family="timm", spec=spec, mean=mean, std=std, input_px=input_px, config=json_safe(config),
    )


def create(
    name: str | None, weights: str | Path | None, tile_px: int | None, mpp: float | None, seed: int, **overrides
) -> TileEncoder:
    """``timm:NAME`` with ``weights`` (a file, or a Hugging Face-style folder whose ``config.json`` sets the
    architecture when ``name`` is None) or seeded random weights (``num_classes`` 1 by default: for training)."""
    if weights is None:
        if name is None:
            raise ValueError("a timm encoder needs an architecture name or a folder with config.json")
        overrides.setdefault("num_classes", 1)
        return build_encoder(
            name, None, {}, {}, name=f"{PREFIX}{name}-random{seed}", source=None, spec=f"{PREFIX}{name}",
            tile_px=tile_px, mpp=mpp, seed=seed, **overrides,
        )
    weights = Path(weights)
    model_args: dict = {}
    pretrained: dict = {}
    if weights.is_dir():
        if not (weights / HF_CONFIG).is_file() and name is None:
            raise ValueError(f"{weights}: no {HF_CONFIG} in the folder (or give the architecture: timm:NAME)")
        if (weights / HF_CONFIG).is_file():
            architecture, model_args, pretrained = read_hf_config(weights)
            if name is not None and name != architecture:
                raise ValueError(f"{weights / HF_CONFIG}: architecture {architecture!r}, not {name!r}")
            name = architecture
    if not import_timm().is_model(str(name)):  # before reading (maybe large) weights
        raise ValueError(f"{PREFIX}{name}: unknown timm architecture (see timm.list_models())")
    state, _ = read_weights(weights)
    is_folder = weights.is_dir() and (weights / HF_CONFIG).is_file()
    return build_encoder(
        str(name), state, model_args, pretrained, name=f"{PREFIX}{name}", source=str(weights),
        spec=None if is_folder else f"{PREFIX}{name}", tile_px=tile_px, mpp=mpp, seed=seed, **overrides,
    )


def _check_checkpoint(meta: dict, meta_file: Path) -> tuple[dict, dict]:
    """(config, metadata) of our timm checkpoint JSON, types and bounds checked."""
    FORMAT.check(meta, meta_file)
    config, extra = meta.get("config"), meta.get("metadata", {})
    try:
        if not isinstance(config, dict) or not isinstance(extra, dict):
            raise ValueError("'config' and 'metadata' must be JSON objects")
        if not isinstance(config.get("architecture"), str):
            raise ValueError("config.architecture must be a string")
        for key in ("model_args", "pretrained_cfg"):
            if not isinstance(config.get(key, {}), dict):
                raise ValueError(f"config.{key} must be a JSON object")
        check_int("config", "num_classes", config.get("num_classes", 0), 0, 100_000)
        if config.get("input_px") is not None:
            check_int("config", "input_px", config["input_px"], 8, 8192)
        for key in ("mean", "std"):
            values = config.get(key, [0.5] * 3)
            if not isinstance(values, list) or len(values) != 3:
                raise ValueError(f"config.{key} must be a list of 3 numbers")
            for v in values:
                check_float("config", key, v, -10.0 if key == "mean" else 1e-6, 10.0)
        check_encoder_metadata(extra)
    except ValueError as exc:
        raise ValueError(f"{meta_file}: {exc}") from None
    return config, extra


def load(path: Path, meta: dict, tile_px: int | None, mpp: float | None, **overrides) -> TileEncoder:
    """Our checkpoint of a timm encoder (``meta``: its JSON)."""
    config, extra = _check_checkpoint(meta, path.with_suffix(".json"))
    overrides.setdefault("num_classes", int(config.get("num_classes", 0)))
    preprocessing = {k: config[k] for k in ("input_px", "mean", "std") if k in config}
    return build_encoder(
        config["architecture"], read_safetensors(path), dict(config.get("model_args", {})),
        dict(config.get("pretrained_cfg", {})), name=str(extra.get("name", path.stem)), source=str(path), spec=None,
        tile_px=tile_px or extra.get("tile_px"), mpp=mpp or extra.get("mpp"), preprocessing=preprocessing,
        **overrides,
    )


def save(encoder: TileEncoder, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``encoder`` as our checkpoint: ``NAME.safetensors`` (state dict) + ``NAME.json`` (``family: timm``,
    ``architecture``, the rebuild config, tile geometry and ``metadata``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {**encoder.config, "num_classes": int(encoder.num_classes)}
    base = {"name": encoder.name, "tile_px": encoder.tile_px, "mpp": encoder.mpp}
    body = {
        "family": "timm",
        "architecture": config["architecture"],
        "config": config,
        "metadata": json_safe({**base, **(metadata or {})}),
    }
    return FORMAT.write_pair(path, path.with_suffix(".json"), body, tensor_writer(encoder.model, FORMAT))


register_encoder_family(EncoderFamily("timm", FORMAT.name, create, load, save, claims_folder))
