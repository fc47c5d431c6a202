"""Official VMamba checkpoints (MzeroMiko/VMamba ``.pth``) → our :class:`VSSM`, with explicit checks.

``config`` is an official classification YAML (its ``MODEL`` / ``MODEL.VSSM`` sections) or a dict of the
official ``VSSM(...)`` keyword arguments. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from .state import load_into_new_model
from .vmamba import VSSM, VMambaConfig

# Defaults of the official config.py (commit 2ed52ea) for fields a YAML may leave out, as VSSM(...) kwargs.
OFFICIAL_DEFAULTS: dict[str, object] = {
    "patch_size": 4, "in_chans": 3, "num_classes": 1000, "depths": [2, 2, 9, 2], "dims": 96,
    "ssm_d_state": 16, "ssm_ratio": 2.0, "ssm_rank_ratio": 2.0, "ssm_dt_rank": "auto", "ssm_act_layer": "silu",
    "ssm_conv": 3, "ssm_conv_bias": True, "ssm_drop_rate": 0.0, "ssm_init": "v0", "forward_type": "v2",
    "mlp_ratio": 4.0, "mlp_act_layer": "gelu", "mlp_drop_rate": 0.0, "gmlp": False, "drop_path_rate": 0.1,
    "patch_norm": True, "norm_layer": "ln2d", "downsample_version": "v2", "patchembed_version": "v2",
    "use_checkpoint": False, "posembed": False, "imgsize": 224,
}
# YAML MODEL.VSSM field → VSSM kwarg.
YAML_FIELDS = {
    "PATCH_SIZE": "patch_size", "IN_CHANS": "in_chans", "DEPTHS": "depths", "EMBED_DIM": "dims",
    "SSM_D_STATE": "ssm_d_state", "SSM_RATIO": "ssm_ratio", "SSM_RANK_RATIO": "ssm_rank_ratio",
    "SSM_DT_RANK": "ssm_dt_rank", "SSM_ACT_LAYER": "ssm_act_layer", "SSM_CONV": "ssm_conv",
    "SSM_CONV_BIAS": "ssm_conv_bias", "SSM_DROP_RATE": "ssm_drop_rate", "SSM_INIT": "ssm_init",
    "SSM_FORWARDTYPE": "forward_type", "MLP_RATIO": "mlp_ratio", "MLP_ACT_LAYER": "mlp_act_layer",
    "MLP_DROP_RATE": "mlp_drop_rate", "GMLP": "gmlp", "PATCH_NORM": "patch_norm", "NORM_LAYER": "norm_layer",
    "DOWNSAMPLE": "downsample_version", "PATCHEMBED": "patchembed_version", "POSEMBED": "posembed",
}
# Forward types with exactly the v05_noz parameters and math (they differ in kernels/precision only).
SUPPORTED_FORWARD_TYPES = ("v05_noz", "v04_noz", "v3_noz")
# kwarg → the only value(s) our implementation reproduces.
REQUIRED = {
    "patch_size": (4,), "patchembed_version": ("v2",), "downsample_version": ("v3",), "patch_norm": (True,),
    "norm_layer": ("ln", "ln2d"), "posembed": (False,), "gmlp": (False,), "ssm_act_layer": ("silu",),
    "mlp_act_layer": ("gelu",), "ssm_drop_rate": (0, 0.0), "mlp_drop_rate": (0, 0.0),
    "forward_type": SUPPORTED_FORWARD_TYPES,
}


MAX_BASE_DEPTH = 16  # official configs include one or two levels of BASE files


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """An official config with its ``BASE`` includes merged in (resolved beside the file). ``ValueError``
    naming the file for an include cycle (a config that includes itself, directly or through others), an
    unreadable file or one that is not a YAML mapping."""
    key = path.resolve()
    if key in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(key) :], key))
        raise ValueError(f"{path}: BASE includes form a cycle ({cycle})")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ValueError(f"{path}: BASE includes nested more than {MAX_BASE_DEPTH} deep")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a valid YAML config ({str(exc).splitlines()[0]})") from None
    bases = (data.get("BASE") or []) if isinstance(data, dict) else None
    if not isinstance(bases, list):
        raise ValueError(f"{path}: not an official config (a YAML mapping whose BASE is a list of files)")
    merged: dict = {}
    for base in bases:  # official "BASE: ['']" includes, resolved beside the file
        if base:
            merged = _merge(merged, _read_yaml(path.parent / str(base), (*chain, key)))
    return _merge(merged, data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def official_kwargs_from_yaml(path: str | Path) -> dict:
    """The official ``VSSM(...)`` kwargs a classification YAML builds (MODEL and MODEL.VSSM sections)."""
    model = _read_yaml(Path(path)).get("MODEL") or {}
    vssm = model.get("VSSM") or {}
    unknown = sorted(set(vssm) - set(YAML_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown MODEL.VSSM fields {unknown}")
    kwargs = {YAML_FIELDS[key]: value for key, value in vssm.items()}
    for key, name in (("NUM_CLASSES", "num_classes"), ("DROP_PATH_RATE", "drop_path_rate")):
        if key in model:
            kwargs[name] = model[key]
    return kwargs


def config_from_official(config: str | Path | Mapping) -> VMambaConfig:
    """Our :class:`VMambaConfig` for an official YAML path or dict of ``VSSM(...)`` kwargs."""
    given = official_kwargs_from_yaml(config) if isinstance(config, (str, Path)) else dict(config)
    unknown = sorted(set(given) - set(OFFICIAL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown official VSSM arguments: {unknown}")
    kw = {**OFFICIAL_DEFAULTS, **given}
    kw["norm_layer"] = str(kw["norm_layer"]).lower()
    for name, allowed in REQUIRED.items():
        if kw[name] not in allowed:
            raise ValueError(f"unsupported official setting {name}={kw[name]!r} (supported: {list(allowed)})")
    if int(kw["ssm_conv"]) <= 1:
        raise ValueError(f"unsupported official setting ssm_conv={kw['ssm_conv']!r} (a depthwise conv is required)")
    depths = [int(d) for d in kw["depths"]]
    dims = kw["dims"]
    embed = int(dims) if isinstance(dims, int) else int(dims[0])
    if not isinstance(dims, int) and list(dims) != [embed * 2**i for i in range(len(depths))]:
        raise ValueError(f"unsupported official dims {list(dims)}: only dims doubling per stage are supported")
    return VMambaConfig(
        embed_dim=embed, depths=tuple(depths), in_chans=int(kw["in_chans"]), num_classes=int(kw["num_classes"]),
        d_state=int(kw["ssm_d_state"]), ssm_ratio=float(kw["ssm_ratio"]), dt_rank=kw["ssm_dt_rank"],
        d_conv=int(kw["ssm_conv"]), conv_bias=bool(kw["ssm_conv_bias"]), mlp_ratio=float(kw["mlp_ratio"]),
        drop_path_rate=float(kw["drop_path_rate"]), grad_checkpointing=bool(kw["use_checkpoint"]),
    )


def _unpickle_reason(err: Exception) -> str:
    """The informative line of torch's weights-only error (which global was refused), else its first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [err.__class__.__name__]
    return next((line for line in lines if "Unsupported global" in line), lines[0]).split(" was not an allowed")[0]


def read_official_state_dict(checkpoint: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """The model state dict inside an official ``.pth`` (``{"model": ...}``) or a plain state dict."""
    name = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
    if isinstance(checkpoint, Mapping):
        obj = checkpoint
    else:
        try:
            obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise ValueError(
                f"{name}: not a weights-only checkpoint, refusing a full unpickle ({_unpickle_reason(err)}); "
                "re-save just its 'model' state dict, or allowlist trusted classes with "
                "torch.serialization.add_safe_globals"
            ) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{name} is not a state dict: expected {{'model': {{name: tensor}}}} or {{name: tensor}}, "
            f"got {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}"
        )
    bad = next(((k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if bad is not None:
        raise ValueError(f"{name} is not a state dict: entry {bad[0]!r} is a {type(bad[1]).__name__}, not a tensor")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def convert_official_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names → ours. Released files already match; the one-file ``vmamba.py`` layout stores
    ``op.x_proj.weight`` (K·(R+2N), Di) and ``op.dt_projs.weight`` (K·Di, R), reshaped here."""
    renames = {".op.x_proj.weight": ".op.x_proj_weight", ".op.dt_projs.weight": ".op.dt_projs_weight"}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.endswith(old):
                key, value = key.removesuffix(old) + new, value.reshape(4, -1, value.shape[-1])
        out[key] = value
    return out


def load_official(
    checkpoint: str | Path | Mapping, config: str | Path | Mapping, scan_backend: str = "auto"
) -> VSSM:
    """Build the model ``config`` describes and load an official checkpoint into it with ``strict=True``.

    Raises ``ValueError`` naming missing, unexpected or wrongly shaped keys when the checkpoint belongs to
    another configuration, and when the file is not a (weights-only) state dict.
    """
    cfg = replace(config_from_official(config), scan_backend=scan_backend)
    state = convert_official_state_dict(read_official_state_dict(checkpoint))
    return load_into_new_model(lambda: VSSM(cfg), state)
