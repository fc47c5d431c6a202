"""Slides composed of small ones (``train --compose-sections``): every section's tiles land once, with their
targets, transformed as the plan says; plans and their draws; the training that uses them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from workflow_fixtures import TRAINING, WorkflowData, workflow_data

from wsi_mamba.workflows.training.composed_slides import (
    SECTION_GAP,
    ComposedSlides,
    CompositionPlan,
    ExampleChain,
    Section,
    check_composable,
    compose,
    draw_plan,
    with_composed,
)
from wsi_mamba.workflows.training.slide_examples import Example, SlideSet
from wsi_mamba.workflows.training.slide_training import train_slide_model

DEPTH = 3


def random_example(name: str, label: int, rows: int, cols: int, seed: int, targets: bool = True) -> Example:
    """An example whose first feature channel numbers its tissue cells (unique over all examples of a test:
    ``seed`` * 10,000 + cell index) and whose target is 1 on some tissue cells of a tumour slide."""
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy(rng.random((rows, cols)) < 0.6)[None]
    mask[0, 0, 0] = True  # at least one tissue cell
    features = torch.zeros(1, DEPTH, rows, cols)
    cells = int(mask.sum())
    features[0, 0][mask[0]] = torch.arange(cells, dtype=torch.float32) + seed * 10_000
    features[0, 1:][:, mask[0]] = torch.from_numpy(rng.normal(size=(DEPTH - 1, cells)).astype(np.float32))
    target = torch.full((1, rows, cols), -1.0)
    target[mask] = torch.from_numpy((rng.random(cells) < 0.3).astype(np.float32) * label)
    return Example(name, label, features, mask, target if targets or label == 0 else None)


def cell_table(example: Example) -> dict[float, tuple[np.ndarray, float]]:
    """Tissue cells by their number (channel 0): their feature vector and target."""
    mask = example.mask[0]
    ids = example.features[0, 0][mask].tolist()
    vectors = example.features[0][:, mask].T.numpy()
    targets = example.tile_target[0][mask].tolist() if example.tile_target is not None else [None] * len(ids)
    return {i: (v, t) for i, v, t in zip(ids, vectors, targets, strict=True)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compose_places_every_section_tile_once_with_its_features_and_target(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sources = [
        random_example(f"s{i}", int(i == 0), int(rng.integers(1, 9)), int(rng.integers(1, 12)), seed=i + 1)
        for i in range(5)
    ]
    plan = draw_plan([e.label for e in sources], sections=4, tumour=True, rng=rng)
    composed = compose(sources, plan, "c")
    assert composed.label == 1 and composed.name == "c"
    assert {s.source for s in plan.sections} >= {0} and len({s.source for s in plan.sections}) == 4
    expected: dict[float, tuple[np.ndarray, float]] = {}
    for section in plan.sections:
        expected |= cell_table(sources[section.source])
    got = cell_table(composed)
    assert int(composed.mask.sum()) == len(expected) == len(got)
    for key, (vector, target) in expected.items():
        np.testing.assert_array_equal(got[key][0], vector)
        assert got[key][1] == target
    assert (composed.features[0][:, ~composed.mask[0]] == 0).all()
    assert (composed.tile_target[0][~composed.mask[0]] == -1).all()


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("flip_rows", [False, True])
@pytest.mark.parametrize("flip_cols", [False, True])
def test_compose_applies_the_section_transform(transpose: bool, flip_rows: bool, flip_cols: bool) -> None:
    source = random_example("s", 1, 4, 7, seed=3)
    source.mask[:] = True
    composed = compose([source], CompositionPlan((Section(0, transpose, flip_rows, flip_cols),)), "c")
    grid = source.features[0]
    expected = grid.transpose(-2, -1) if transpose else grid
    if flip_rows:
        expected = expected.flip(-2)
    if flip_cols:
        expected = expected.flip(-1)
    torch.testing.assert_close(composed.features[0], expected, rtol=0, atol=0)


def test_sections_are_apart_and_the_layout_is_about_twice_as_wide_as_tall() -> None:
    sources = [random_example(f"s{i}", 0, 6, 6, seed=i + 1) for i in range(16)]
    for example in sources:
        example.mask[:] = True
    composed = compose(sources, CompositionPlan(tuple(Section(i, False, False, False) for i in range(16))), "c")
    mask = composed.mask[0].numpy()
    assert mask.sum() == 16 * 36
    rows, cols = mask.shape
    assert 1.5 <= cols / rows <= 3.5, mask.shape
    # each 6 x 6 block of tissue is surrounded by SECTION_GAP background cells from the next one
    from scipy import ndimage

    labelled, count = ndimage.label(mask)
    assert count == 16
    grown = ndimage.binary_dilation(labelled == 1, iterations=SECTION_GAP)
    assert not (grown & (labelled > 1)).any()


def test_a_tumour_section_without_annotations_leaves_its_tiles_unknown() -> None:
    normal = random_example("n", 0, 3, 3, seed=1)
    tumour = random_example("t", 1, 3, 3, seed=2, targets=False)
    composed = compose(
        [normal, tumour], CompositionPlan((Section(0, False, False, False), Section(1, *[False] * 3))), "c"
    )
    ids = composed.features[0, 0]
    tumour_cells = composed.mask[0] & (ids >= 20_000)
    normal_cells = composed.mask[0] & (ids < 20_000)
    assert (composed.tile_target[0][tumour_cells] == -1).all()
    assert (composed.tile_target[0][normal_cells] == 0).all()


def test_draw_plan_takes_distinct_sources_and_one_tumour_slide_when_asked() -> None:
    labels = [0] * 6 + [1] * 3
    rng = np.random.default_rng(0)
    for tumour in (False, True) * 20:
        plan = draw_plan(labels, 5, tumour, rng)
        sources = [s.source for s in plan.sections]
        assert len(set(sources)) == 5
        assert sum(labels[s] for s in sources) == int(tumour)


def test_check_composable_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="at least 4 normal slides and one tumour slide, got 3 normal and 2"):
        check_composable([0, 0, 0, 1, 1], 4, "validation")
    with pytest.raises(ValueError, match="at least 2 sections"):
        check_composable([0, 0, 1], 1, "validation")
    check_composable([0, 0, 0, 0, 1], 4, "validation")


def test_fixed_sequences_repeat_and_fresh_ones_draw_anew_from_the_seed() -> None:
    sources = [random_example(f"s{i}", int(i >= 5), 4, 5, seed=i + 1) for i in range(7)]
    fixed = ComposedSlides(sources, 4, 3, seed=0, fresh=False, prefix="v")
    assert [e.label for e in fixed] == [0, 1, 0, 1]
    assert [e.name for e in fixed] == ["v-001", "v-002", "v-003", "v-004"]
    torch.testing.assert_close(fixed[1].features, fixed[1].features)
    fresh = ComposedSlides(sources, 4, 3, seed=0, fresh=True, prefix="t")
    again = ComposedSlides(sources, 4, 3, seed=0, fresh=True, prefix="t")
    first = [cell_table(fresh[i % 4]).keys() for i in range(8)]  # two epochs
    assert first == [cell_table(again[i % 4]).keys() for i in range(8)]  # the same sequence of draws
    assert len({frozenset(k) for k in first}) > 4  # ... of new compositions each epoch
    with pytest.raises(IndexError):
        fixed[4]


def test_example_chain_reads_its_parts_in_order_and_names_without_composing() -> None:
    small = [random_example(f"s{i}", int(i >= 3), 3, 3, seed=i + 1) for i in range(5)]
    train, val = with_composed(small[:4] + small[4:], small, sections=2, train_count=3, val_count=2, seed=0)
    assert len(train) == 5 + 3 and len(val) == 5 + 2
    assert [train[i].name for i in range(5)] == [e.name for e in small]
    assert val.names() == [e.name for e in small] + ["composed-val-001", "composed-val-002"]
    assert val[-1].name == "composed-val-002" and isinstance(val, ExampleChain)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


@pytest.mark.usefixtures("one_torch_thread")
def test_train_with_composed_slides_records_them_and_chooses_the_threshold_on_them(
    data: WorkflowData, tmp_path: Path
) -> None:
    cfg = replace(TRAINING, compose_sections=2, compose_slides=3, compose_val_slides=4)
    model = train_slide_model(
        data.features,
        data.labels,
        tmp_path / "model",
        cfg=cfg,
        progress=False,
        validation=SlideSet(data.features, data.labels, data.annotations),
    )
    meta = json.loads((model / "model.json").read_text())
    training = meta["training"]
    assert training["config"]["compose_sections"] == 2 and training["config"]["compose_slides"] == 3
    composed = [n for n in training["slides"]["validation"] if n.startswith("composed-val-")]
    assert len(composed) == 4
    # the threshold is for slides of real size: chosen on the 4 composed validation slides only (2 normal)
    assert meta["threshold_rule"]["chosen_on"].startswith("4 validation slides of real size, each composed of 2")
    assert meta["threshold_rule"]["chosen_on"].endswith("(2 normal)")


def test_train_refuses_one_section_and_folds_with_composition(data: WorkflowData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--compose-sections must be at least 2"):
        train_slide_model(data.features, data.labels, tmp_path / "a", cfg=replace(TRAINING, compose_sections=1))
    with pytest.raises(ValueError, match="not --folds"):
        train_slide_model(
            data.features, data.labels, tmp_path / "b", cfg=replace(TRAINING, compose_sections=2, folds=2)
        )
