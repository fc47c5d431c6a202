"""VMamba backbones (official-checkpoint compatible), the SS2D mixer, the slide model, the slide aggregators'
registry (``create_aggregator``), a model registry and checkpoint I/O."""

from .aggregators import create_aggregator, list_aggregators, register_aggregator
from .checkpoint import load_checkpoint, save_checkpoint
from .grid import grid_tensors
from .official import config_from_official, load_official
from .registry import create_model, list_models, register_model
from .slide_model import SlideMamba, SlideOutput
from .slide_model_config import SlideModelConfig
from .slide_model_io import load_slide_model, save_slide_model
from .ss2d import SS2D, cross_merge, cross_scan
from .vmamba import CONFIGS, VSSM, VMambaConfig, VSSBlock, build_vmamba

__all__ = [
    "CONFIGS",
    "SS2D",
    "VSSM",
    "SlideMamba",
    "SlideModelConfig",
    "SlideOutput",
    "VMambaConfig",
    "VSSBlock",
    "build_vmamba",
    "config_from_official",
    "create_aggregator",
    "create_model",
    "cross_merge",
    "cross_scan",
    "grid_tensors",
    "list_aggregators",
    "list_models",
    "load_checkpoint",
    "load_official",
    "load_slide_model",
    "register_aggregator",
    "register_model",
    "save_checkpoint",
    "save_slide_model",
]
