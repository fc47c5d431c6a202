"""Lesion annotations: ASAP XML (CAMELYON16) and GeoJSON (QuPath) I/O, rasterising, per-tile fractions.

Coordinates are level-0 pixels (x, y). Parsing uses ``xml.etree.ElementTree`` and ``json`` only.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..outputs.atomic import atomic_path, write_text_atomic
from ..outputs.capped import InputFileError, load_json, read_capped_bytes
from .errors import AnnotationError
from .tiling import TileGrid, region_fractions

LESION_GROUPS = ("_0", "_1", "Tumor", "tumor", "Metastases")
EXCLUSION_GROUPS = ("_2", "Exclusion", "exclusion")
_COLORS = {"lesion": "#F4FA58", "exclusion": "#64FE2E"}
MAX_COORDINATE = 1e7
"""The largest |x| or |y| an annotation may have, in level-0 px (50 times the widest real slide)."""
MAX_ANNOTATION_BYTES = 64 * 1024 * 1024
"""The size cap of an annotation file (QuPath exports of detailed outlines reach tens of MB)."""


@dataclass
class Polygon:
    """A closed polygon: ``points`` (n, 2) float level-0 (x, y); ``group`` as in the source file."""

    points: np.ndarray
    name: str = ""
    group: str = "Tumor"


@dataclass
class Annotations:
    """Lesion polygons and exclusion polygons (cut out of the lesions) of one slide."""

    lesions: list[Polygon] = field(default_factory=list)
    exclusions: list[Polygon] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lesions) + len(self.exclusions)


def _polygon(points: object, path: Path, name: str, group: str) -> Polygon:
    """``points`` as a :class:`Polygon`; :class:`AnnotationError` naming the file and the annotation unless they
    are at least 3 finite (x, y) pairs within ±:data:`MAX_COORDINATE` level-0 px."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):  # "x", [1, 2, 3] beside [1, 2], a dict
        raise AnnotationError(path, f"annotation {name!r}: coordinates are not (x, y) number pairs") from None
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 3 or not np.isfinite(array).all():
        raise AnnotationError(path, f"annotation {name!r} is not a polygon of at least 3 finite points")
    if np.abs(array).max() > MAX_COORDINATE:
        raise AnnotationError(
            path,
            f"annotation {name!r} has a coordinate of {np.abs(array).max():.3g} px, beyond ±{MAX_COORDINATE:.0e} "
            "level-0 pixels (no slide is that large)",
        )
    return Polygon(array, name, group)


def _read_bytes(path: Path, what: str) -> bytes:
    """The bytes of an annotation file, capped (:data:`MAX_ANNOTATION_BYTES`, regular files only)."""
    try:
        return read_capped_bytes(path, MAX_ANNOTATION_BYTES)
    except InputFileError as exc:
        raise AnnotationError(path, exc.problem) from None
    except OSError as exc:
        raise AnnotationError(path, f"not a readable {what} file ({exc})") from exc


def _number(element: ET.Element, key: str, path: Path, name: str, default: str | None = None) -> float:
    """The attribute ``key`` of an ASAP element as a finite number; :class:`AnnotationError` otherwise."""
    text = element.get(key, default)
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise AnnotationError(path, f"annotation {name!r} has a non-numeric coordinate {key}={text!r}")
    return value


def read_asap_xml(path: str | PathLike[str]) -> Annotations:
    """Read ASAP XML: groups ``_0``, ``_1``, ``Tumor`` are lesions; ``_2``, ``Exclusion`` are cut out."""
    path = Path(path)
    try:
        root = ET.fromstring(_read_bytes(path, "ASAP XML"))
    except ET.ParseError as exc:
        raise AnnotationError(path, f"not a readable ASAP XML file ({exc})") from exc
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(path, f"root element is <{root.tag}>, expected <ASAP_Annotations>")
    result = Annotations()
    for element in root.iter("Annotation"):
        name = element.get("Name", "")
        group = element.get("PartOfGroup", "")
        kind = element.get("Type", "Polygon")
        if kind not in ("Polygon", "Spline", "Rectangle"):
            continue  # dots and measurement lines carry no area
        coords = sorted(element.iter("Coordinate"), key=lambda c: _number(c, "Order", path, name, "0"))
        points = [(_number(c, "X", path, name), _number(c, "Y", path, name)) for c in coords]
        polygon = _polygon(points, path, name, group)
        (result.exclusions if group in EXCLUSION_GROUPS else result.lesions).append(polygon)
    return result


def write_asap_xml(annotations: Annotations, path: str | PathLike[str]) -> None:
    """Write ASAP XML (what CAMELYON16 ships and ASAP opens), atomically."""
    root = ET.Element("ASAP_Annotations")
    annotations_el = ET.SubElement(root, "Annotations")
    groups: dict[str, str] = {}
    polygons = [(p, "lesion") for p in annotations.lesions] + [
        (p, "exclusion") for p in annotations.exclusions
    ]
    for index, (polygon, role) in enumerate(polygons):
        group = polygon.group or ("Tumor" if role == "lesion" else "Exclusion")
        groups.setdefault(group, _COLORS[role])
        element = ET.SubElement(
            annotations_el,
            "Annotation",
            Name=polygon.name or f"Annotation {index}",
            Type="Polygon",
            PartOfGroup=group,
            Color=_COLORS[role],
        )
        coordinates = ET.SubElement(element, "Coordinates")
        for order, (x, y) in enumerate(polygon.points):
            ET.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{x:.4f}", Y=f"{y:.4f}")
    groups_el = ET.SubElement(root, "AnnotationGroups")
    for group, color in groups.items():
        group_el = ET.SubElement(groups_el, "Group", Name=group, PartOfGroup="None", Color=color)
        ET.SubElement(group_el, "Attributes")
    ET.indent(root)
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)


def to_geojson(annotations: Annotations) -> dict:
    """A GeoJSON FeatureCollection QuPath imports (classification Tumor / Exclusion)."""
    features = []
    for polygons, cls, color in (
        (annotations.lesions, "Tumor", [200, 0, 0]),
        (annotations.exclusions, "Exclusion", [0, 200, 0]),
    ):
        for polygon in polygons:
            ring = [[float(x), float(y)] for x, y in polygon.points]
            ring.append(ring[0])
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {
                        "objectType": "annotation",
                        "name": polygon.name,
                        "classification": {"name": cls, "color": color},
                        "group": polygon.group,
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(annotations: Annotations, path: str | PathLike[str]) -> None:
    """Write :func:`to_geojson` to ``path``, atomically."""
    write_text_atomic(path, json.dumps(to_geojson(annotations)))


def _member(parent: dict, key: str, path: Path, where: str) -> dict:
    """``parent[key]`` when it is a JSON object ({} when missing or null); :class:`AnnotationError` otherwise."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AnnotationError(path, f"{where}: {key} is a {type(value).__name__}, expected a JSON object")
    return value


def _class_name(props: dict, path: Path, where: str) -> str:
    """A GeoJSON feature's class: ``classification.name`` (QuPath), a plain string, or Tumor."""
    value = props.get("classification")
    if isinstance(value, str) or value is None:
        return value or "Tumor"
    return str(_member(props, "classification", path, where).get("name") or "Tumor")


def read_geojson(path: str | PathLike[str]) -> Annotations:
    """Read a GeoJSON FeatureCollection (Polygon/MultiPolygon); classification "Exclusion" and polygon
    holes are exclusions, everything else a lesion."""
    path = Path(path)
    try:
        data = load_json(_read_bytes(path, "GeoJSON"), path)
    except InputFileError as exc:  # not JSON, or nested too deeply for the parser
        raise AnnotationError(path, f"not a readable GeoJSON file ({exc.problem})") from None
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise AnnotationError(path, "not a GeoJSON FeatureCollection")
    result = Annotations()
    for index, feature in enumerate(features):
        where = f"feature {index}"
        if not isinstance(feature, dict):
            raise AnnotationError(path, f"{where} is a {type(feature).__name__}, expected a JSON object")
        geometry = _member(feature, "geometry", path, where)
        props = _member(feature, "properties", path, where)
        cls = _class_name(props, path, where)
        name = str(props.get("name") or f"Annotation {index}")
        kind = geometry.get("type")
        coordinates = geometry.get("coordinates")
        if kind == "Polygon":
            polygons = [coordinates]
        elif kind == "MultiPolygon":
            polygons = coordinates
        else:
            continue
        if not isinstance(polygons, list) or not all(isinstance(rings, list) and rings for rings in polygons):
            raise AnnotationError(path, f"{where} ({name!r}) has malformed coordinates")
        exclusion = cls in EXCLUSION_GROUPS
        group = "Exclusion" if exclusion else str(props.get("group", cls))
        for rings in polygons:
            (result.exclusions if exclusion else result.lesions).append(_polygon(rings[0], path, name, group))
            result.exclusions.extend(_polygon(hole, path, name, "Exclusion") for hole in rings[1:])
    return result


def read_annotations(path: str | PathLike[str]) -> Annotations:
    """ASAP XML (``.xml``) or GeoJSON (``.json``/``.geojson``) by extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".xml":
        return read_asap_xml(path)
    if suffix in (".json", ".geojson"):
        return read_geojson(path)
    raise AnnotationError(path, "unknown annotation format (expected .xml, .json or .geojson)")


def rasterize(annotations: Annotations, dimensions: tuple[int, int], downsample: float) -> np.ndarray:
    """Boolean lesion mask of a level-0 image ``dimensions`` (w, h) at ``downsample`` (level-0 px per
    mask px; ``target_mpp / slide_mpp``): lesions filled, exclusions subtracted."""
    width = max(1, round(dimensions[0] / downsample))
    height = max(1, round(dimensions[1] / downsample))
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for polygons, value in ((annotations.lesions, 1), (annotations.exclusions, 0)):
        for polygon in polygons:
            # vertices in continuous coordinates, pixel i spans [i, i + 1): PIL fills by pixel index
            draw.polygon(
                [(x / downsample - 0.5, y / downsample - 0.5) for x, y in polygon.points], fill=value
            )
    return np.asarray(image, dtype=bool)


def lesion_fractions(annotations: Annotations, grid: TileGrid, dimensions: tuple[int, int]) -> np.ndarray:
    """Per-tile fraction of lesion (exclusions subtracted) for each tile of ``grid`` on a slide of
    level-0 ``dimensions`` (w, h); the mask is rasterised at 1/32 of a tile side."""
    return lesion_fractions_at(annotations, dimensions, grid.x, grid.y, grid.size0)


def lesion_fractions_at(
    annotations: Annotations,
    dimensions: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    size0: float,
    cells_per_tile: int = 32,
) -> np.ndarray:
    """Lesion fraction of each level-0 square (x, y, size0), the mask rasterised at ``size0 / cells_per_tile``."""
    downsample = size0 / cells_per_tile
    mask = rasterize(annotations, dimensions, downsample)
    return region_fractions(mask, downsample, x, y, size0)
