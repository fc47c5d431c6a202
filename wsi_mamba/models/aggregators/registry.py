"""The aggregator registry (timm style): ``register_aggregator`` on each family's class, ``create_aggregator``
by name. An aggregator maps tile features on the slide's tissue grid (B, in_dim, R, C) and the tissue mask
(B, R, C) to a :class:`~wsi_mamba.models.slide_model.SlideOutput` (slide logit, per-tile logits, attention).

Every aggregator's configuration is a frozen dataclass with ``in_dim`` and a JSON round trip
(:class:`AggregatorConfig`); its checkpoint records the registry name beside the config
(``slide_model_io.py``), so loading picks the class from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ..grid import check_grid_inputs
from ..validation import check_float, check_int

__all__ = [
    "Aggregator",
    "AggregatorConfig",
    "AggregatorSpec",
    "aggregator_spec",
    "check_grid_inputs",
    "create_aggregator",
    "list_aggregators",
    "register_aggregator",
]


@dataclass(frozen=True)
class AggregatorConfig:
    """Base of the aggregators' configs: ``in_dim`` + bounded fields, checked on construction (a config read
    from a file fails with one line before anything is built). Subclasses list their bounds in ``BOUNDS``:
    field -> (low, high) with ints for int fields, floats for float fields (dropout-like: high open)."""

    in_dim: int
    BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {}

    def __post_init__(self) -> None:
        owner = type(self).__name__
        bounds = {"in_dim": (1, 65_536), **self.BOUNDS}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(low, int) and isinstance(high, int):
                checked: Any = check_int(owner, name, value, low, high)
            else:
                checked = check_float(owner, name, value, low, high, high_open=high == 1.0)
            object.__setattr__(self, name, checked)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AggregatorConfig:
        """Inverse of :meth:`to_dict`; unknown or missing fields → ``ValueError`` naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        if "in_dim" not in data:
            raise ValueError(f"{cls.__name__} lacks the required field 'in_dim'")
        return cls(**data)


class Aggregator(nn.Module):
    """Mixin of every registered aggregator: ``aggregator_name`` (set by :func:`register_aggregator`),
    ``config``, and the hooks the training loop and loaders call."""

    aggregator_name: ClassVar[str] = ""
    config: Any

    def aux_loss(self, out: Any, label: torch.Tensor) -> torch.Tensor:
        """Extra training loss of this method for ``out`` (its forward's output) and the slide ``label`` (B,)
        float; 0 by default (CLAM-SB adds its instance-clustering loss)."""
        return out.logit.new_zeros(())

    def set_scan_backend(self, backend: str) -> None:
        """Select the selective-scan backend (only aggregators that scan have one; a no-op otherwise)."""


@dataclass(frozen=True)
class AggregatorSpec:
    """A registry entry: the class, its config class and a one-line description with its paper."""

    name: str
    cls: type[Aggregator]
    config_cls: type
    description: str

    def field_names(self) -> set[str]:
        return {f.name for f in fields(self.config_cls)}


_REGISTRY: dict[str, AggregatorSpec] = {}


def register_aggregator(
    name: str, config_cls: type, description: str = ""
) -> Callable[[type[Aggregator]], type[Aggregator]]:
    """Class decorator: register ``cls(config)`` under ``name`` with its config dataclass."""

    def wrap(cls: type[Aggregator]) -> type[Aggregator]:
        if name in _REGISTRY:
            raise ValueError(f"aggregator {name!r} is already registered")
        cls.aggregator_name = name
        _REGISTRY[name] = AggregatorSpec(name, cls, config_cls, description)
        return cls

    return wrap


def list_aggregators() -> list[str]:
    """The registered aggregator names, sorted."""
    return sorted(_REGISTRY)


def aggregator_spec(name: str) -> AggregatorSpec:
    """The registry entry of ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown aggregator {name!r}; available: {', '.join(list_aggregators())}") from None


def create_aggregator(name: str, in_dim: int, ignore_unknown: bool = False, **overrides) -> Aggregator:
    """Build the registered aggregator ``name`` for ``in_dim``-wide tile features; keyword overrides replace
    fields of its config (with ``ignore_unknown``, overrides it has no field for are dropped: the training
    loop passes its common ``dim``, ``depth``, ``d_state``, ``dropout`` to every family)."""
    spec = aggregator_spec(name)
    if ignore_unknown:
        overrides = {k: v for k, v in overrides.items() if k in spec.field_names()}
    return spec.cls(spec.config_cls(in_dim=in_dim, **overrides))


def tissue_features(module: nn.Module, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Features in the module's dtype (unless autocast) with background cells replaced by 0 (inf/NaN there
    included), so nothing off tissue reaches any weight."""
    weight = next(module.parameters())
    if features.dtype != weight.dtype and not torch.is_autocast_enabled():
        features = features.to(weight.dtype)
    return features.masked_fill(~mask[:, None], 0.0)


def empty_logit(logit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logit`` (B,) with 0 for samples without tissue."""
    return torch.where(mask.flatten(1).any(1), logit, torch.zeros_like(logit))


def uniform_attention(mask: torch.Tensor) -> torch.Tensor:
    """1 / (tissue cells) on tissue, 0 elsewhere (B, R, C)."""
    counts = mask.flatten(1).sum(1).clamp(min=1)
    return mask.float() / counts[:, None, None]


def init_linear(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` (the MIL papers' initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
