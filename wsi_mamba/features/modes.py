"""Feature modes: how a slide's tiles become feature vectors, as small value objects.

:class:`TileMode` encodes each tile alone (averaged over 1, 4 or 8 dihedral views); :class:`RegionMode` encodes
whole regions in one pass and pools the last feature map into the tiles (:mod:`.region_mode`); either may first
normalise the stain (:class:`~wsi_mamba.data.stain_norm.StainNorm`, fitted once per slide). A mode is
recorded in every feature store and model (:meth:`~FeatureMode.attrs`), read back with :func:`mode_from_attrs`,
and is part of the features' identity: features of two modes never mix. :func:`resolve` picks the mode a model
needs. Plain data here (no torch: the CLI builds modes while parsing); ``encode`` runs the engine of its mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from ..data.stain_norm import StainNorm
from ..ranges import COUNT, FRACTION, POSITIVE_INT, VIEWS, check_fields

if TYPE_CHECKING:
    import numpy as np

    from ..models.encoder import TileEncoder
    from ..slide.base import Slide
    from ..slide.tiling import TileGrid
    from .grid_features import GridFeatures
    from .options import ReadOptions
    from .runner import DeviceRunner


class FeatureMode(Protocol):
    """One way of turning a slide's tile grid into features."""

    def attrs(self) -> dict:
        """What a feature store (and a model trained on it) records: ``{"mode": ..., sizes}``."""
        ...

    def check(self, encoder: TileEncoder) -> FeatureMode:
        """This mode as it runs on ``encoder`` (defaults made concrete); ``ValueError`` when it cannot."""
        ...

    def describe(self) -> str:
        """The mode in words, for messages: ``tile mode (4 views)``."""
        ...

    def encode(
        self,
        slide: Slide,
        grid: TileGrid,
        encoder: TileEncoder,
        read: ReadOptions,
        runner: DeviceRunner,
        on_batch: Callable[[int], None] | None = None,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> GridFeatures:
        """Features and colour statistics of every kept tile of ``grid`` (a mode :meth:`check` gave); ``normalise``
        (the mode's stain normalisation fitted on this slide, None: none) maps uint8 pixels before the encoder."""
        ...


def stain_attrs(stain: StainNorm | None) -> dict:
    """A mode's stain normalisation as stores record it (nothing without one: older stores read as none)."""
    return stain.attrs() if stain is not None else {}


def describe_stain(stain: StainNorm | None) -> str:
    return f", {stain.describe()}" if stain is not None else ""


def check_band(name: str, band: object) -> tuple[float, float]:
    """``band`` as a (lo, hi) pair of probabilities with lo ≤ hi; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(band, (tuple, list)) or len(band) != 2:
        raise ValueError(f"{name} must be a pair (lo, hi) of probabilities, got {band!r:.80}")
    for end, value in zip(("lo", "hi"), band, strict=True):
        FRACTION.check(f"{name} {end}", value)
    if band[0] > band[1]:
        raise ValueError(f"{name} must have lo ≤ hi, got {band[0]:g} > {band[1]:g}")
    return float(band[0]), float(band[1])


@dataclass(frozen=True)
class TileMode:
    """Each tile encoded alone, its features averaged over ``views`` dihedral views (1, 4 or 8), its stain
    normalised by ``stain`` first (None: as read). With ``on_demand`` = (lo, hi) every tile is encoded in view 0
    and only the tiles whose view-0 tumour probability (the encoder's one-logit head) lies in [lo, hi] get the
    other views (their features: the mean of all ``views``); the others keep their view-0 features."""

    views: int = 1
    stain: StainNorm | None = None
    on_demand: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_fields(self, views=VIEWS)
        if self.on_demand is not None:
            object.__setattr__(self, "on_demand", check_band("TileMode.on_demand", self.on_demand))
            if self.views == 1:
                raise ValueError("TileMode.on_demand needs views 4 or 8: one view has no other views to add")

    def attrs(self) -> dict:
        views = {"views": self.views} if self.views > 1 else {}
        on_demand = {"views_on_demand": list(self.on_demand)} if self.on_demand is not None else {}
        return {"mode": "tile", **views, **on_demand, **stain_attrs(self.stain)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> TileMode:
        band = attrs.get("views_on_demand")
        on_demand = check_band("views_on_demand", band) if band is not None else None
        return cls(int(attrs.get("views", 1)), StainNorm.from_attrs(attrs), on_demand)

    def check(self, encoder: TileEncoder) -> TileMode:
        """Every encoder takes tiles; views on demand need its one-logit head (``ValueError`` otherwise)."""
        if self.on_demand is not None and not encoder.has_tumour_head:
            has = f"{encoder.num_classes} outputs" if encoder.num_classes != 1 else "no classifier layer"
            raise ValueError(
                f"views on demand need an encoder whose classifier head gives one tumour logit; {encoder.name} "
                f"has {has}"
            )
        return self

    def describe(self) -> str:
        if self.on_demand is not None:
            lo, hi = self.on_demand
            views = f"tile mode ({self.views} views on demand, first-view p in [{lo:g}, {hi:g}])"
        else:
            views = f"tile mode ({self.views} views)" if self.views > 1 else "tile mode"
        return views + describe_stain(self.stain)

    def encode(
        self,
        slide: Slide,
        grid: TileGrid,
        encoder: TileEncoder,
        read: ReadOptions,
        runner: DeviceRunner,
        on_batch: Callable[[int], None] | None = None,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> GridFeatures:
        from .tile_mode import encode_tiles  # torch and the readers load when a slide is encoded, not at parse

        return encode_tiles(slide, grid, encoder, self.views, read, runner, on_batch, normalise, self.on_demand)


@dataclass(frozen=True)
class RegionMode:
    """Whole regions of ``px`` pixels a side through the encoder in one pass, pooled into the tiles; neighbouring
    regions share ``overlap_px`` (None: a quarter of the region in whole tiles, made concrete by :meth:`check`);
    the stain normalised by ``stain`` first (None: as read)."""

    px: int
    overlap_px: int | None = None
    stain: StainNorm | None = None

    def __post_init__(self) -> None:
        check_fields(self, px=POSITIVE_INT, overlap_px=COUNT)

    def attrs(self) -> dict:
        return {"mode": "region", "region_px": self.px, "region_overlap_px": self.overlap_px, **stain_attrs(self.stain)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> RegionMode:
        if attrs.get("region_px") is None:
            raise ValueError(f"region mode without region_px: {attrs!r:.120}")
        return cls(int(attrs["region_px"]), attrs.get("region_overlap_px"), StainNorm.from_attrs(attrs))

    def cells(self, tile_px: int) -> tuple[int, int]:
        """(cells a side, overlap cells) for tiles of ``tile_px``; ``ValueError`` when the sizes are not whole
        tiles or the overlap leaves no step."""
        if self.px < tile_px or self.px % tile_px:
            raise ValueError(f"--region-px {self.px} must be a positive multiple of the encoder's tile_px ({tile_px})")
        k = self.px // tile_px
        if self.overlap_px is None:
            return k, k // 4
        if self.overlap_px % tile_px or self.overlap_px >= self.px:
            raise ValueError(
                f"--region-overlap {self.overlap_px} must be a multiple of tile_px ({tile_px}) in "
                f"[0, region_px {self.px})"
            )
        return k, self.overlap_px // tile_px

    def check(self, encoder: TileEncoder) -> RegionMode:
        """The mode with its overlap made concrete, after checking ``encoder`` can run it: a model with
        ``forward_last_map`` (VMamba) of any input size, tile_px a multiple of its ``feature_stride``, and
        whole-tile sizes."""
        model = encoder.model
        if not hasattr(model, "forward_last_map") or encoder.input_px is not None:
            raise ValueError(f"region mode needs a VMamba encoder (any input size), not {encoder.name}")
        if encoder.tile_px % model.feature_stride:
            raise ValueError(
                f"region mode needs the encoder's tile_px ({encoder.tile_px}) to be a multiple of its stride "
                f"({model.feature_stride} px per last-stage feature pixel)"
            )
        k, overlap = self.cells(encoder.tile_px)
        return RegionMode(k * encoder.tile_px, overlap * encoder.tile_px, self.stain)

    def describe(self) -> str:
        return f"region mode ({self.px} px, overlap {self.overlap_px} px)" + describe_stain(self.stain)

    def encode(
        self,
        slide: Slide,
        grid: TileGrid,
        encoder: TileEncoder,
        read: ReadOptions,
        runner: DeviceRunner,
        on_batch: Callable[[int], None] | None = None,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> GridFeatures:
        from .region_mode import encode_regions  # as TileMode.encode: the engine loads when it runs

        return encode_regions(slide, grid, encoder, self.cells(encoder.tile_px), read, runner, on_batch, normalise)


def mode_from_attrs(attrs: dict) -> FeatureMode:
    """The mode a store's (or a model's) attributes record; no ``mode`` (stores older than modes): tile mode."""
    if attrs.get("mode", "tile") == "tile":
        return TileMode.from_attrs(attrs)
    return RegionMode.from_attrs(attrs)


@dataclass(frozen=True)
class ViewsOnDemand:
    """What ``--views-on-demand LO,HI`` without ``--views`` asks for: the model's views, on demand in ``band``
    (:func:`resolve` takes it for a model trained so; extract, with no model, refuses it)."""

    band: tuple[float, float]
    stain: StainNorm | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "band", check_band("--views-on-demand", self.band))

    def describe(self) -> str:
        return f"views on demand (first-view p in [{self.band[0]:g}, {self.band[1]:g}])"


def requested_mode(
    region_px: int | None,
    region_overlap_px: int | None,
    views: int | None,
    on_demand: tuple[float, float] | None = None,
) -> FeatureMode | ViewsOnDemand | None:
    """The mode the user's ``--region-px`` / ``--region-overlap`` / ``--views`` / ``--views-on-demand`` ask for;
    None when they ask for none (extract: tile mode; predict: the model's); :class:`ViewsOnDemand` for a band
    without ``--views`` (the model's views). ``ValueError`` for views in region mode or a band with one view."""
    if region_px is None:
        if on_demand is None:
            return None if views is None else TileMode(views)
        if views is None:
            return ViewsOnDemand(on_demand)
        if views == 1:
            raise ValueError("--views-on-demand needs --views 4 or 8: one view has no other views to add")
        return TileMode(views, on_demand=on_demand)
    if views is not None and views > 1:
        raise ValueError(f"--views {views} is for tile mode: region mode encodes whole regions, not tiles")
    if on_demand is not None:
        raise ValueError("--views-on-demand is for tile mode: region mode encodes whole regions, not tiles")
    return RegionMode(region_px, region_overlap_px)


NO_STAIN_NORM = "none"
"""A stain request of ``--stain-norm none`` (asked for no normalisation, unlike None: not asked)."""


def with_stain(mode: FeatureMode | ViewsOnDemand, stain: StainNorm | str | None) -> FeatureMode | ViewsOnDemand:
    """``mode`` with the stain normalisation ``stain`` (:data:`NO_STAIN_NORM` or None: none)."""
    return replace(mode, stain=stain if isinstance(stain, StainNorm) else None)


def resolve(
    requested: FeatureMode | ViewsOnDemand | None,
    model_mode: dict | None,
    model: str,
    stain: StainNorm | str | None = None,
) -> FeatureMode:
    """The mode a model's slides are encoded in: the one it was trained in (``model_mode``, its
    ``feature_mode``; None: tile mode). ``requested`` (None: not asked) and ``stain`` (the ``--stain-norm`` /
    ``--stain-target`` asked for; None: not asked; :data:`NO_STAIN_NORM`: none) may name it, not change it: its
    slide model saw only features of its own mode, and on others can answer with confidence and be wrong
    (``ValueError``). Views on demand are part of the mode: a model trained with them in a band takes that band
    only, one trained without them takes none."""
    trained = mode_from_attrs(model_mode or {})
    if stain is not None:
        wanted = stain if isinstance(stain, StainNorm) else None
        if wanted != trained.stain:
            asked = wanted.describe() if wanted is not None else "no stain normalisation"
            raise ValueError(
                f"model {model} was trained on features of {trained.describe()}, not of {asked}: leave "
                "--stain-norm / --stain-target out to use the model's"
            )
    if requested is not None:
        requested = replace(requested, stain=trained.stain)
    if requested is None or requested == trained:
        return trained
    if isinstance(requested, ViewsOnDemand):
        if isinstance(trained, TileMode) and trained.on_demand == requested.band:
            return trained
        raise ValueError(
            f"model {model} was trained on features of {trained.describe()}, not of {requested.describe()}: leave "
            "--views-on-demand out to use the model's"
        )
    if isinstance(requested, RegionMode):
        if isinstance(trained, RegionMode) and requested.px == trained.px and requested.overlap_px is None:
            return trained
        raise ValueError(
            f"model {model} was trained on features of {trained.describe()}, not of region mode "
            f"({requested.px} px): leave --region-px out to use the model's mode"
        )
    views = requested.views if isinstance(requested, TileMode) else None
    on_demand = isinstance(trained, TileMode) and trained.on_demand is not None
    if isinstance(requested, TileMode) and (requested.on_demand is not None or on_demand):
        raise ValueError(
            f"model {model} was trained on features of {trained.describe()}, not of "
            f"{replace(requested, stain=None).describe()}: leave --views and --views-on-demand out to use the model's"
        )
    raise ValueError(
        f"model {model} was trained on features of {trained.describe()}, not of {views} view(s): leave --views out "
        "to use the model's"
    )


__all__ = [
    "NO_STAIN_NORM",
    "FeatureMode",
    "RegionMode",
    "TileMode",
    "ViewsOnDemand",
    "mode_from_attrs",
    "requested_mode",
    "resolve",
    "with_stain",
]
