"""VMamba backbones (official-checkpoint compatible), the SS2D mixer, a model registry and checkpoint I/O."""

from .checkpoint import load_checkpoint, save_checkpoint
from .official import config_from_official, load_official
from .registry import create_model, list_models, register_model
from .ss2d import SS2D, cross_merge, cross_scan
from .vmamba import CONFIGS, VSSM, VMambaConfig, VSSBlock, build_vmamba

__all__ = [
    "CONFIGS",
    "SS2D",
    "VSSM",
    "VMambaConfig",
    "VSSBlock",
    "build_vmamba",
    "config_from_official",
    "create_model",
    "cross_merge",
    "cross_scan",
    "list_models",
    "load_checkpoint",
    "load_official",
    "register_model",
    "save_checkpoint",
]
