"""VMamba backbones (official-checkpoint compatible), the SS2D mixer, a model registry and checkpoint I/O."""

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
    "create_model",
    "cross_merge",
    "cross_scan",
    "list_models",
    "register_model",
]
