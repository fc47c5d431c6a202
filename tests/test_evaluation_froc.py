"""CAMELYON16 lesion-level FROC on polygons, and tile scores -> detections by non-maximum suppression."""

from __future__ import annotations

import bisect
import json

import numpy as np
import pytest

from wsi_mamba.evaluation import SlideDetections, froc, match_detections, sensitivity_at, tile_detections
from wsi_mamba.slide.annotations import Polygon

MPP = 0.5  # µm per level-0 pixel: the 37.5 µm margin is 75 px, the 200 µm ITC diameter 400 px


def square(x0: float, y0: float, side: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], float)


def hand_made_set() -> list[SlideDetections]:
    """Three slides (mpp 0.5):

    tumour_a: A1 = 1000 px square (500 µm, detectable), A2 = 100 px square (diameter 141 px = 71 µm: ITC)
    tumour_b: B1 = 600 px square at (1000, 1000), B2 = 800 px square at (8000, 8000) (both detectable)
    normal:   no lesion
    """
    a1, a2 = square(1000, 1000, 1000), square(5000, 5000, 100)
    b1, b2 = square(1000, 1000, 600), square(8000, 8000, 800)
    tumour_a = np.array(
        [
            [1500, 1500, 0.9],  # inside A1: TP
            [1800, 1200, 0.6],  # inside A1 again: same lesion, it keeps 0.9
            [5050, 5050, 0.8],  # inside the ITC A2 only: neither TP nor FP
            [3000, 3000, 0.5],  # far from everything: FP
            [2100, 1500, 0.3],  # 100 px = 50 µm right of A1: beyond the 37.5 µm margin: FP
        ]
    )
    tumour_b = np.array(
        [
            [1650, 1300, 0.4],  # 50 px = 25 µm right of B1's edge, inside the margin: TP for B1
            [6000, 6000, 0.95],  # FP; B2 is missed
        ]
    )
    normal = np.array([[100, 100, 0.2], [500, 500, 0.6]])  # every detection on a normal slide is an FP
    return [
        SlideDetections("tumour_a", tumour_a, [a1, a2], MPP),
        SlideDetections("tumour_b", tumour_b, [b1, b2], MPP),
        SlideDetections("normal", normal, [], MPP),
    ]


def test_matching_on_hand_made_set() -> None:
    slides = hand_made_set()
    a = match_detections(slides[0])
    assert a.region_is_itc.tolist() == [False, True]
    assert a.region.tolist() == [0, 0, 1, -1, -1]
    assert a.is_tp.tolist() == [True, True, False, False, False]
    assert a.is_fp.tolist() == [False, False, False, True, True]
    assert a.is_ignored.tolist() == [False, False, True, False, False]
    b = match_detections(slides[1])
    assert b.region_is_itc.tolist() == [False, False]
    assert b.region.tolist() == [0, -1]
    normal = match_detections(slides[2])
    assert normal.n_regions == 0 and normal.is_fp.all()


def test_froc_curve_and_score_by_hand() -> None:
    # Non-ITC lesions: A1, B1, B2 -> 3 (the ITC A2 is not counted); 3 slides.
    # TP lesion probabilities: A1 0.9 (best of 0.9, 0.6), B1 0.4.  FPs: 0.5, 0.3 | 0.95 | 0.2, 0.6.
    # threshold:  inf   0.95  0.9   0.6   0.5   0.4   0.3   0.2
    # FPs:         0     1     1     2     3     3     4     5     (/3 slides)
    # TPs:         0     0     1     1     1     2     2     2     (/3 lesions)
    result = froc(hand_made_set())
    assert result.n_slides == 3 and result.n_lesions == 3 and result.n_itc == 1
    np.testing.assert_allclose(result.thresholds, [np.inf, 0.95, 0.9, 0.6, 0.5, 0.4, 0.3, 0.2])
    np.testing.assert_allclose(result.fps_per_slide, np.array([0, 1, 1, 2, 3, 3, 4, 5]) / 3)
    np.testing.assert_allclose(result.sensitivity, np.array([0, 0, 1, 1, 1, 2, 2, 2]) / 3)
    # official rule: the first point whose FP rate is >= the target (bisect_left), the last if none:
    # 1/4 -> point 1 (1/3 FP): 0;  1/2 -> point 3 (2/3 FP): 1/3;  1 -> point 4 (the first at 1 FP): 1/3;
    # 2, 4, 8 -> beyond the curve, last point: 2/3.  Score = (0 + 1/3 + 1/3 + 3 * 2/3) / 6 = 4/9.
    expected = {0.25: 0.0, 0.5: 1 / 3, 1.0: 1 / 3, 2.0: 2 / 3, 4.0: 2 / 3, 8.0: 2 / 3}
    assert result.rule == "official"
    assert result.at_rates == pytest.approx(expected)
    assert result.score == pytest.approx(4 / 9)
    # at_most rule: the last point whose FP rate is <= the target:
    # 1/4 -> point 0: 0;  1/2 -> point 2 (1/3 FP): 1/3;  1 -> point 5 (the last at 1 FP): 2/3;  2, 4, 8: 2/3.
    # Score = (0 + 1/3 + 4 * 2/3) / 6 = 1/2.
    conservative = froc(hand_made_set(), rule="at_most")
    expected_at_most = {0.25: 0.0, 0.5: 1 / 3, 1.0: 2 / 3, 2.0: 2 / 3, 4.0: 2 / 3, 8.0: 2 / 3}
    assert conservative.at_rates == pytest.approx(expected_at_most)
    assert conservative.score == pytest.approx(0.5)
    summary = result.to_dict()
    assert json.loads(json.dumps(summary))["score"] == pytest.approx(4 / 9)
    assert summary["thresholds"][0] is None


def official_froc_score(fp_probs: list[float], tp_probs: list[float], n_images: int, n_tumours: int) -> float:
    """An independent transcription of the official script's compute_froc + compute_score: thresholds
    ascending over the distinct non-zero probabilities, counts of >= threshold, a final (0, 0) point,
    then bisect_left on the reversed (ascending) FP rates."""
    thresholds = sorted((set(fp_probs) | set(tp_probs)) - {0.0})
    fps = [sum(p >= t for p in fp_probs) / n_images for t in thresholds] + [0.0]
    sens = [sum(p >= t for p in tp_probs) / n_tumours for t in thresholds] + [0.0]
    fps_r, sens_r = fps[::-1], sens[::-1]
    return float(np.mean([sens_r[min(bisect.bisect_left(fps_r, r), len(sens_r) - 1)] for r in (0.25, 0.5, 1, 2, 4, 8)]))


def test_froc_matches_official_computation_on_random_sets() -> None:
    rng = np.random.default_rng(0)
    n_tp = 0
    for trial in range(8):
        slides, fp_probs, tp_probs, n_tumours = [], [], [], 0
        for index in range(6):
            # lesions: 600 px squares in cells of a 5 x 5 grid of 1000 px, 400 px apart at least (no merging)
            cells = rng.choice(25, size=rng.integers(0, 4), replace=False)
            lesions = [square(1000 * (c % 5) + 100, 1000 * (c // 5) + 100, 600) for c in cells]
            n_tumours += len(lesions)
            # detections: some anywhere, some around the lesions (inside, in the margin, just outside)
            points = rng.uniform(0, 5000, (rng.integers(0, 20), 2))
            for lesion in lesions:
                points = np.vstack([points, lesion.mean(axis=0) + rng.normal(0, 300, (rng.integers(0, 4), 2))])
            probabilities = np.round(rng.uniform(0, 1, len(points)), 2)  # rounding makes ties
            slide = SlideDetections(f"s{index}", np.column_stack([points, probabilities]), lesions, MPP)
            slides.append(slide)
            # reference assignment, by the simple rule for axis-aligned squares grown by 75 px
            best = [0.0] * len(lesions)
            for (x, y), p in zip(points, probabilities, strict=True):
                hit = [
                    k
                    for k, sq in enumerate(lesions)
                    if np.hypot(max(sq[0, 0] - x, 0, x - sq[1, 0]), max(sq[0, 1] - y, 0, y - sq[2, 1])) < 75
                ]
                if hit:
                    best[hit[0]] = max(best[hit[0]], p)
                else:
                    fp_probs.append(p)
            tp_probs.extend(best)
        if n_tumours == 0:
            continue
        result = froc(slides)
        assert result.score == pytest.approx(official_froc_score(fp_probs, tp_probs, len(slides), n_tumours)), trial
        n_tp += sum(int(match.is_tp.sum()) for match in result.per_slide.values())
    assert n_tp > 20  # the sets do exercise true positives


def test_close_lesions_merge_into_one_region() -> None:
    # 100 px = 50 µm apart: the grown regions (37.5 µm each side) touch -> one region, one lesion
    near = [square(0, 0, 1000), square(1100, 0, 1000)]
    # 200 px = 100 µm apart: two regions
    far = [square(0, 0, 1000), square(1200, 0, 1000)]
    # a plus sign: the rectangles cross although no vertex of one lies inside the other
    cross = [
        np.array([[0, 450], [3000, 450], [3000, 550], [0, 550]], float),
        np.array([[1450, -1000], [1550, -1000], [1550, 2000], [1450, 2000]], float),
    ]
    detection = np.array([[1050, 500, 0.7]])  # in the gap
    merged = match_detections(SlideDetections("near", detection, near, MPP))
    assert merged.lesion_region.tolist() == [0, 0] and merged.n_regions == 1 and merged.is_tp.all()
    apart = match_detections(SlideDetections("far", detection, far, MPP))
    assert apart.lesion_region.tolist() == [0, 1] and apart.is_tp.all()  # 50 px from the first square
    crossing = match_detections(SlideDetections("cross", np.zeros((0, 3)), cross, MPP))
    assert crossing.n_regions == 1
    assert froc([SlideDetections("near", detection, near, MPP)]).n_lesions == 1


def test_itc_is_longest_diameter_below_200_um() -> None:
    # thin rectangles: 390 x 10 px has a diagonal of 390.1 px = 195 µm (ITC); 410 x 10 px = 205 µm (not)
    itc = np.array([[0, 0], [390, 0], [390, 10], [0, 10]], float)
    lesion = np.array([[0, 5000], [410, 5000], [410, 5010], [0, 5010]], float)
    # 290 px square: side 145 µm but diagonal 205 µm -> not an ITC (the longest diameter counts)
    diagonal = square(5000, 0, 290)
    match = match_detections(SlideDetections("t", np.zeros((0, 3)), [itc, lesion, diagonal], MPP))
    assert match.region_is_itc.tolist() == [True, False, False]
    # the same ITC at a coarser mpp is a real lesion: 390 px * 0.6 µm = 234 µm
    assert not match_detections(SlideDetections("t", np.zeros((0, 3)), [itc], 0.6)).region_is_itc[0]


def test_polygons_from_annotations_and_concave_shapes() -> None:
    # an L-shaped lesion: the notch (2000, 2000) is far from both arms -> FP; the arms -> TP
    ell = Polygon(np.array([[0, 0], [3000, 0], [3000, 500], [500, 500], [500, 3000], [0, 3000]], float))
    detections = np.array([[2000, 2000, 0.9], [2500, 250, 0.8], [250, 2500, 0.7], [540, 1500, 0.6]])
    match = match_detections(SlideDetections("ell", detections, [ell], MPP))
    assert match.is_fp.tolist() == [True, False, False, False]  # (540, 1500) is 40 px from the edge
    result = froc([SlideDetections("ell", detections, [ell], MPP)])
    assert result.n_lesions == 1
    np.testing.assert_allclose(result.sensitivity, [0, 0, 1])
    np.testing.assert_allclose(result.fps_per_slide, [0, 1, 1])


def test_zero_probability_detections_are_ignored() -> None:
    slides = [SlideDetections("t", np.array([[50, 50, 0.0], [5000, 5000, 0.0], [60, 60, 0.5]]), [square(0, 0, 500)], 1)]
    result = froc(slides)
    np.testing.assert_allclose(result.fps_per_slide, [0, 0])
    np.testing.assert_allclose(result.sensitivity, [0, 1])
    assert result.per_slide["t"].is_ignored.tolist() == [True, True, False]


def test_no_lesions_raises() -> None:
    normal = SlideDetections("n", np.array([[1, 1, 0.5]]), [], MPP)
    with pytest.raises(ValueError, match="no lesion"):
        froc([normal])
    only_itc = SlideDetections("t", np.array([[1, 1, 0.5]]), [square(0, 0, 50)], MPP)
    with pytest.raises(ValueError, match="isolated-tumour-cell"):
        froc([normal, only_itc])
    with pytest.raises(ValueError, match="at least one slide"):
        froc([])


def test_bad_input_raises() -> None:
    lesion = [square(0, 0, 1000)]
    with pytest.raises(ValueError, match=r"\(k, 3\)"):
        froc([SlideDetections("t", np.zeros((4, 2)), lesion, MPP)])
    with pytest.raises(ValueError, match=">= 0"):
        froc([SlideDetections("t", np.array([[0, 0, -0.1]]), lesion, MPP)])
    with pytest.raises(ValueError, match="mpp"):
        froc([SlideDetections("t", np.zeros((0, 3)), lesion, 0.0)])
    with pytest.raises(ValueError, match="polygon"):
        froc([SlideDetections("t", np.zeros((0, 3)), [np.zeros((2, 2))], MPP)])
    with pytest.raises(ValueError, match="unique"):
        froc([SlideDetections("t", np.zeros((0, 3)), lesion, MPP)] * 2)
    with pytest.raises(ValueError, match="rule"):
        froc([SlideDetections("t", np.zeros((0, 3)), lesion, MPP)], rule="nearest")  # type: ignore[arg-type]


def test_sensitivity_at_rules() -> None:
    fps = np.array([0.0, 0.0, 0.5, 0.5, 1.5])
    sens = np.array([0.0, 0.2, 0.3, 0.6, 0.9])
    assert sensitivity_at(fps, sens, 0.5) == 0.3  # official: first point at >= 0.5
    assert sensitivity_at(fps, sens, 0.5, "at_most") == 0.6  # last point at <= 0.5
    assert sensitivity_at(fps, sens, 1.0) == 0.9  # official reads the point at 1.5 FP
    assert sensitivity_at(fps, sens, 1.0, "at_most") == 0.6
    assert sensitivity_at(fps, sens, 8.0) == sensitivity_at(fps, sens, 8.0, "at_most") == 0.9


# ---------------------------------------------------------------------------------------------------
# tile_detections


def test_nms_on_a_row() -> None:
    x = np.arange(6) * 100
    y = np.zeros(6)
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.2, 0.8])
    # 2 tiles: 0.9 (tile 0) drops tiles 1, 2; 0.8 (tile 5) drops 3, 4 (tile 3 is exactly 2 tiles away)
    np.testing.assert_allclose(tile_detections(x, y, 100, scores), [[50, 50, 0.9], [550, 50, 0.8]])
    # 1 tile: 0.9 drops 1; 0.8 drops 4; 0.5 (tile 2) survives and drops 3
    np.testing.assert_allclose(
        tile_detections(x, y, 100, scores, min_distance_tiles=1), [[50, 50, 0.9], [550, 50, 0.8], [250, 50, 0.5]]
    )
    assert tile_detections(x, y, 100, scores, min_distance_tiles=0).shape == (6, 3)


def test_nms_on_a_grid_with_rounded_corners() -> None:
    size0 = 101.3  # tile corners rounded to integers, as TileGrid does
    rows, cols = np.divmod(np.arange(25), 5)
    x, y = np.round(cols * size0), np.round(rows * size0)
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.5, 25)
    peaks = {(2, 2): 1.0, (2, 3): 0.95, (0, 0): 0.9, (4, 0): 0.8, (0, 4): 0.7}
    for (r, c), s in peaks.items():
        scores[r * 5 + c] = s
    detections = tile_detections(x, y, size0, scores)
    # the top peak wins; (2, 3) is 1 tile from it and goes; the corners are 2.83 tiles away and stay
    assert detections[:4, 2].tolist() == [1.0, 0.9, 0.8, 0.7]
    assert 0.95 not in detections[:, 2]
    np.testing.assert_allclose(detections[0, :2], [2 * size0 + size0 / 2, 2 * size0 + size0 / 2], atol=1)
    # greedy invariants: kept centres are more than 2 tiles apart; scores come out in decreasing order
    gaps = np.hypot(*(detections[:, None, :2] - detections[None, :, :2]).transpose(2, 0, 1))
    assert (gaps[np.triu_indices(len(detections), 1)] > 2 * size0 * 1.01).all()
    assert (np.diff(detections[:, 2]) <= 0).all()
    # every tile is kept or lies within 2 tiles of a kept tile with a score at least its own
    centres = np.column_stack([x, y]) + size0 / 2
    for centre, score in zip(centres, scores, strict=True):
        near = np.hypot(*(detections[:, :2] - centre).T) <= 2.01 * size0
        assert (detections[near, 2] >= score).any()


def test_nms_edge_cases() -> None:
    assert tile_detections([], [], 100, []).shape == (0, 3)
    np.testing.assert_allclose(tile_detections([10], [20], 100, [0.3]), [[60, 70, 0.3]])
    # equal scores: input order decides
    np.testing.assert_allclose(tile_detections([0, 100], [0, 0], 100, [0.5, 0.5]), [[50, 50, 0.5]])
    with pytest.raises(ValueError, match="length"):
        tile_detections([0, 1], [0], 100, [0.5])
    with pytest.raises(ValueError, match="size0"):
        tile_detections([0], [0], 0, [0.5])


def test_package_exports_the_function_even_after_its_module_is_imported() -> None:
    import importlib

    import wsi_mamba.evaluation as evaluation

    importlib.import_module("wsi_mamba.evaluation.lesion_froc")
    assert callable(evaluation.froc) and callable(evaluation.tile_detections)
