"""Slides of real size composed from small ones, for training and validating a slide model at real scale.

A CAMELYON16 slide holds 20,000–70,000 tissue tiles, often in several tissue sections; the cohorts a slide
model can afford to encode hold about 1,000 per slide. A *composed slide* packs K small slides' tile grids
(their features as ``extract`` wrote them, each grid flipped or transposed at random) side by side onto one
grid with background between them, as the sections of one real slide: K normal slides make a normal slide,
one tumour slide and K − 1 normal ones a tumour slide with a single lesion among K times the normal tissue.
The tile features are real; only the layout is composed. Training on them teaches the slide model how much
evidence makes a tumour slide when a normal slide has K times more chances to show a tumour-like tile, and
choosing the threshold on composed validation slides sets it for slides of that size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .slide_examples import Example

SECTION_GAP = 2
"""Background cells between two packed sections (the scan crosses background, as between real sections)."""


@dataclass(frozen=True)
class Section:
    """One small slide placed in a composed slide: its index among the sources and its grid transform
    (``transpose`` first, then the flips)."""

    source: int
    transpose: bool
    flip_rows: bool
    flip_cols: bool


@dataclass(frozen=True)
class CompositionPlan:
    """The sections of one composed slide, in packing order."""

    sections: tuple[Section, ...]


def _oriented(tensor: torch.Tensor, section: Section) -> torch.Tensor:
    """``tensor`` (..., R, C) with the section's transform applied to its last two axes."""
    if section.transpose:
        tensor = tensor.transpose(-2, -1)
    dims = [d for d, flip in ((-2, section.flip_rows), (-1, section.flip_cols)) if flip]
    return tensor.flip(dims) if dims else tensor


def _pack(shapes: list[tuple[int, int]], gap: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Shelf packing: the top-left corner of each (rows, cols) box, left to right in rows of boxes about
    twice as wide as tall (a real slide's shape), ``gap`` cells apart; and the grid's (rows, cols)."""
    area = sum((r + gap) * (c + gap) for r, c in shapes)
    width = max(max(c for _, c in shapes), math.ceil(math.sqrt(2 * area)))
    corners, x, y, shelf = [], 0, 0, 0
    for rows, cols in shapes:
        if x and x + cols > width:
            x, y, shelf = 0, y + shelf + gap, 0
        corners.append((y, x))
        x += cols + gap
        shelf = max(shelf, rows)
    total_cols = max(cx + c for (_, cx), (_, c) in zip(corners, shapes, strict=True))
    return corners, (y + shelf, total_cols)


def compose(sources: Sequence[Example], plan: CompositionPlan, name: str) -> Example:
    """The composed slide of ``plan`` over ``sources``: tumour when any section is; per-tile targets where
    every section has them (a tumour section without annotations leaves its tiles unknown, -1)."""
    parts = [(sources[s.source], s) for s in plan.sections]
    grids = [_oriented(example.mask[0], section) for example, section in parts]
    corners, (rows, cols) = _pack([tuple(g.shape) for g in grids], SECTION_GAP)
    depth = parts[0][0].features.shape[1]
    features = torch.zeros(1, depth, rows, cols)
    mask = torch.zeros(1, rows, cols, dtype=torch.bool)
    target = torch.full((1, rows, cols), -1.0)
    for (example, section), grid, (y, x) in zip(parts, grids, corners, strict=True):
        r, c = grid.shape
        features[0, :, y : y + r, x : x + c] = _oriented(example.features[0], section)
        mask[0, y : y + r, x : x + c] = grid
        if example.tile_target is not None:
            target[0, y : y + r, x : x + c] = _oriented(example.tile_target[0], section)
    label = max(example.label for example, _ in parts)
    return Example(name, label, features, mask, target)


def draw_plan(labels: Sequence[int], sections: int, tumour: bool, rng: np.random.Generator) -> CompositionPlan:
    """A plan of ``sections`` distinct sources: all normal, or (``tumour``) one tumour source and
    ``sections`` − 1 normal ones, in random order, each with a random transform."""
    normal = np.flatnonzero(np.asarray(labels) == 0)
    positive = np.flatnonzero(np.asarray(labels) == 1)
    chosen = rng.choice(normal, sections - int(tumour), replace=False).tolist()
    if tumour:
        chosen.append(int(rng.choice(positive)))
    order = rng.permutation(len(chosen))
    flips = rng.integers(0, 2, size=(len(chosen), 3)).astype(bool)
    return CompositionPlan(tuple(Section(int(chosen[i]), *map(bool, flips[i])) for i in order))


def check_composable(labels: Sequence[int], sections: int, what: str) -> None:
    """``ValueError`` unless composed slides of ``sections`` sections can be drawn from slides of ``labels``."""
    normal, tumour = sum(1 for y in labels if y == 0), sum(1 for y in labels if y == 1)
    if sections < 2:
        raise ValueError(f"composed slides need at least 2 sections, got {sections}")
    if normal < sections or tumour < 1:
        raise ValueError(
            f"{what}: composed slides of {sections} sections need at least {sections} normal slides and one "
            f"tumour slide, got {normal} normal and {tumour} tumour"
        )


class ComposedSlides(Sequence[Example]):
    """``count`` composed slides of ``sections`` sections over ``sources``, half of them tumour (even indices
    normal), built when read so only one is in memory at a time. ``fresh``: each read draws a new plan (a
    training epoch sees new compositions; the sequence of draws is fixed by ``seed``); else slide ``i`` is
    always the same (validation)."""

    def __init__(
        self, sources: Sequence[Example], count: int, sections: int, seed: int, fresh: bool, prefix: str
    ) -> None:
        labels = [example.label for example in sources]
        check_composable(labels, sections, prefix)
        self.sources, self.count, self.prefix, self.fresh = sources, count, prefix, fresh
        self._labels, self._sections = labels, sections
        self._rng = np.random.default_rng(seed)
        self._plans = [self._draw(i) for i in range(count)]

    def _draw(self, index: int) -> CompositionPlan:
        return draw_plan(self._labels, self._sections, tumour=index % 2 == 1, rng=self._rng)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(index)
        index %= self.count
        plan = self._draw(index) if self.fresh else self._plans[index]
        return compose(self.sources, plan, self.name(index))

    def name(self, index: int) -> str:
        """The name of composed slide ``index`` (0-based): PREFIX-NNN, counted from 1."""
        return f"{self.prefix}-{index + 1:03d}"


class ExampleChain(Sequence[Example]):
    """Several example sequences read as one (the slides, then the composed slides)."""

    def __init__(self, *parts: Sequence[Example]) -> None:
        self.parts = [part for part in parts if len(part)]

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        for part in self.parts:
            if 0 <= index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(index)

    def names(self) -> list[str]:
        """The examples' names, without composing any slide."""
        return [name for part in self.parts for name in _names(part)]


def _names(part: Sequence[Example]) -> list[str]:
    if isinstance(part, ComposedSlides):
        return [part.name(i) for i in range(len(part))]
    return [example.name for example in part]


def with_composed(
    train: list[Example], val: list[Example], sections: int, train_count: int, val_count: int, seed: int
) -> tuple[ExampleChain, ExampleChain]:
    """The training and validation sets with composed slides of ``sections`` sections added: ``train_count``
    fresh ones each epoch from the training slides, ``val_count`` fixed ones from the validation slides (never
    mixing the two)."""
    composed_train = ComposedSlides(train, train_count, sections, seed, fresh=True, prefix="composed-train")
    composed_val = ComposedSlides(val, val_count, sections, seed + 1, fresh=False, prefix="composed-val")
    return ExampleChain(train, composed_train), ExampleChain(val, composed_val)
