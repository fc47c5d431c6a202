"""ASAP XML and GeoJSON annotations: reading, writing, rasterising, per-tile lesion fractions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slide_fixtures import write_pyramid

from wsi_mamba.slide import AnnotationError, open_slide
from wsi_mamba.slide.annotations import (
    Annotations,
    Polygon,
    lesion_fractions,
    rasterize,
    read_annotations,
    read_asap_xml,
    read_geojson,
    write_asap_xml,
    write_geojson,
)
from wsi_mamba.slide.tiling import make_tile_grid

CAMELYON_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="100" Y="100" />
        <Coordinate Order="1" X="500" Y="100" />
        <Coordinate Order="3" X="100" Y="500" />
        <Coordinate Order="2" X="500" Y="500" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_1" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="700" Y="700" /><Coordinate Order="1" X="800" Y="700" />
        <Coordinate Order="2" X="800" Y="800" /><Coordinate Order="3" X="700" Y="800" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="200" Y="200" /><Coordinate Order="1" X="300" Y="200" />
        <Coordinate Order="2" X="300" Y="300" /><Coordinate Order="3" X="200" Y="300" />
      </Coordinates>
    </Annotation>
    <Annotation Name="dot" Type="Dot" PartOfGroup="_0">
      <Coordinates><Coordinate Order="0" X="1" Y="1" /></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""

ONE_POINT = (
    '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="_0"><Coordinates>'
    '<Coordinate Order="0" X="1" Y="{y}"/></Coordinates></Annotation></Annotations></ASAP_Annotations>'
)


@pytest.fixture
def camelyon_xml(tmp_path: Path) -> Path:
    path = tmp_path / "tumor_001.xml"
    path.write_text(CAMELYON_XML)
    return path


def test_read_camelyon_groups(camelyon_xml: Path) -> None:
    ann = read_asap_xml(camelyon_xml)
    assert [p.group for p in ann.lesions] == ["_0", "_1"]
    assert [p.group for p in ann.exclusions] == ["_2"]
    # coordinates follow the Order attribute, not document order
    np.testing.assert_array_equal(ann.lesions[0].points, [[100, 100], [500, 100], [500, 500], [100, 500]])


def test_rasterize_subtracts_exclusions(camelyon_xml: Path) -> None:
    ann = read_asap_xml(camelyon_xml)
    mask = rasterize(ann, (1000, 1000), downsample=10)
    assert mask.shape == (100, 100)
    assert mask[40, 40] and mask[75, 75]
    assert not mask[25, 25]  # inside the _2 exclusion
    assert not mask[60, 60]
    expected = 40 * 40 - 10 * 10 + 10 * 10
    assert abs(int(mask.sum()) - expected) < 150


def test_asap_round_trip(tmp_path: Path, camelyon_xml: Path) -> None:
    ann = read_asap_xml(camelyon_xml)
    out = tmp_path / "copy.xml"
    write_asap_xml(ann, out)
    again = read_annotations(out)
    assert [p.group for p in again.lesions] == ["_0", "_1"] and len(again.exclusions) == 1
    for a, b in zip(ann.lesions + ann.exclusions, again.lesions + again.exclusions, strict=True):
        np.testing.assert_allclose(a.points, b.points)


def test_geojson_round_trip_and_holes(tmp_path: Path, camelyon_xml: Path) -> None:
    ann = read_asap_xml(camelyon_xml)
    path = tmp_path / "ann.geojson"
    write_geojson(ann, path)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    assert {f["properties"]["classification"]["name"] for f in data["features"]} == {"Tumor", "Exclusion"}
    again = read_annotations(path)
    assert len(again.lesions) == 2 and len(again.exclusions) == 1
    np.testing.assert_array_equal(rasterize(again, (1000, 1000), 10), rasterize(ann, (1000, 1000), 10))

    holed = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
                        [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]],
                    ],
                },
            }
        ],
    }
    (tmp_path / "holed.json").write_text(json.dumps(holed))
    ann = read_geojson(tmp_path / "holed.json")
    assert len(ann.lesions) == 1 and len(ann.exclusions) == 1
    assert not rasterize(ann, (100, 100), 1)[50, 50]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<ASAP_Annotations><Annotations><Annotation", "not a readable ASAP XML"),
        ("<Other/>", "expected <ASAP_Annotations>"),
        (ONE_POINT.format(y="zz"), "non-numeric"),
        (ONE_POINT.format(y="2"), "at least 3"),
    ],
)
def test_malformed_xml(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=rf"bad\.xml: .*{problem}"):
        read_asap_xml(path)


def test_malformed_geojson_and_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "bad.geojson").write_text('{"type": "Feature"}')
    with pytest.raises(AnnotationError, match="not a GeoJSON FeatureCollection"):
        read_annotations(tmp_path / "bad.geojson")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        read_annotations(tmp_path / "x.csv")
    with pytest.raises(AnnotationError, match=r"missing\.xml"):
        read_annotations(tmp_path / "missing.xml")


def test_lesion_fraction_per_tile(tmp_path: Path) -> None:
    square = np.array([[0, 0], [512, 0], [512, 256], [0, 256]], float)
    ann = Annotations(lesions=[Polygon(square, "a", "Tumor")])
    with open_slide(write_pyramid(tmp_path / "p.tif", mpp=0.5)) as s:
        grid = make_tile_grid(s, tile_px=128, target_mpp=1.0, min_tissue=0)
        fractions = lesion_fractions(ann, grid, s.dimensions)
    by_cell = dict(zip(zip(grid.rows.tolist(), grid.cols.tolist(), strict=True), fractions, strict=True))
    assert by_cell[(0, 0)] == pytest.approx(1.0, abs=0.05) and by_cell[(0, 1)] == pytest.approx(1.0, abs=0.05)
    assert by_cell[(1, 0)] == pytest.approx(0.0, abs=0.05) and by_cell[(0, 2)] == pytest.approx(0.0, abs=0.05)
