"""Packaging: every package of the source tree is listed in pyproject.toml (a wheel would miss the others)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "wsi_mamba").rglob("__init__.py")}
    found |= {name for name, folder in config["package-dir"].items() if (ROOT / folder / "__init__.py").exists()}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    data = config["package-data"]["wsi_mamba"]
    shipped = [p for p in (ROOT / "wsi_mamba" / "shipped_models").rglob("*") if p.is_file()]
    assert shipped and all(any(p.relative_to(ROOT / "wsi_mamba").match(g) for g in data) for p in shipped)
