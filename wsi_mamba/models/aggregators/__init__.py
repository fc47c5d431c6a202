"""Slide-level aggregators on the same feature stores, by name (timm style): ``create_aggregator("abmil",
in_dim)``. One module per family registers its classes: ``ss2d`` (this project's SlideMamba), ``abmil``,
``clam-sb``, ``transmil``, ``mean``, ``max``; see ``docs/workflows.md`` for what each is and its tile scores."""

from . import abmil, clam, pooling, ss2d, transmil  # noqa: F401 (each registers its aggregators)
from .registry import (
    Aggregator,
    AggregatorConfig,
    AggregatorSpec,
    aggregator_spec,
    create_aggregator,
    list_aggregators,
    register_aggregator,
)

__all__ = [
    "Aggregator",
    "AggregatorConfig",
    "AggregatorSpec",
    "aggregator_spec",
    "create_aggregator",
    "list_aggregators",
    "register_aggregator",
]
