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
from ..ranges import COUNT, POSITIVE_INT, VIEWS, check_fields

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


@dataclass(frozen=True)
class TileMode:
    """Each tile encoded alone, its features averaged over ``views`` dihedral views (1, 4 or 8), its stain
    normalised by ``stain`` first (None: as read)."""

    views: int = 1
    stain: StainNorm | None = None

    def __post_init__(self) -> None:
        check_fields(self, views=VIEWS)

    def attrs(self) -> dict:
        views = {"views": self.views} if self.views > 1 else {}
        return {"mode": "tile", **views, **stain_attrs(self.stain)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> TileMode:
        return cls(int(attrs.get("views", 1)), StainNorm.from_attrs(attrs))

    def check(self, encoder: TileEncoder) -> TileMode:
        return self  # every encoder takes tiles

    def describe(self) -> str:
        return (f"tile mode ({self.views} views)" if self.views > 1 else "tile mode") + describe_stain(self.stain)

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

        return encode_tiles(slide, grid, encoder, self.views, read, runner, on_batch, normalise)


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


def requested_mode(region_px: int | None, region_overlap_px: int | None, views: int | None) -> FeatureMode | None:
    """The mode the user's ``--region-px`` / ``--region-overlap`` / ``--views`` ask for; None when they ask for
    none (extract: tile mode; predict: the model's). ``ValueError`` for views in region mode."""
    if region_px is None:
        return None if views is None else TileMode(views)
    if views is not None and views > 1:
        raise ValueError(f"--views {views} is for tile mode: region mode encodes whole regions, not tiles")
    return RegionMode(region_px, region_overlap_px)


NO_STAIN_NORM = "none"
"""A stain request of ``--stain-norm none`` (asked for no normalisation, unlike None: not asked)."""


def with_stain(mode: FeatureMode, stain: StainNorm | str | None) -> FeatureMode:
    """``mode`` with the stain normalisation ``stain`` (:data:`NO_STAIN_NORM` or None: none)."""
    return replace(mode, stain=stain if isinstance(stain, StainNorm) else None)


def resolve(
    requested: FeatureMode | None, model_mode: dict | None, model: str, stain: StainNorm | str | None = None
) -> FeatureMode:
    """The mode a model's slides are encoded in: the one it was trained in (``model_mode``, its
    ``feature_mode``; None: tile mode). ``requested`` (None: not asked) and ``stain`` (the ``--stain-norm`` /
    ``--stain-target`` asked for; None: not asked; :data:`NO_STAIN_NORM`: none) may name it, not change it: its
    slide model saw only features of its own mode, and on others can answer with confidence and be wrong
    (``ValueError``)."""
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
    if isinstance(requested, RegionMode):
        if isinstance(trained, RegionMode) and requested.px == trained.px and requested.overlap_px is None:
            return trained
        raise ValueError(
            f"model {model} was trained on features of {trained.describe()}, not of region mode "
            f"({requested.px} px): leave --region-px out to use the model's mode"
        )
    views = requested.views if isinstance(requested, TileMode) else None
    raise ValueError(
        f"model {model} was trained on features of {trained.describe()}, not of {views} view(s): leave --views out "
        "to use the model's"
    )


__all__ = [
    "NO_STAIN_NORM",
    "FeatureMode",
    "RegionMode",
    "TileMode",
    "mode_from_attrs",
    "requested_mode",
    "resolve",
    "with_stain",
]
