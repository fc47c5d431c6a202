"""The one home of the HED stain space and of the dihedral numbering (``wsi_mamba.data.stain``,
``wsi_mamba.data.dihedral``) and the three users that share them: augmentation, test-time views, synth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_mamba.data import augment, stain
from wsi_mamba.data.dihedral import dihedral
from wsi_mamba.models.encoders.base import dihedral_views

# [[1, 2], [3, 4]] under transforms 0-7, worked out by hand: rotations counter-clockwise, then left-right mirrors.
BY_HAND = [
    [[1, 2], [3, 4]],
    [[2, 4], [1, 3]],
    [[4, 3], [2, 1]],
    [[3, 1], [4, 2]],
    [[2, 1], [4, 3]],
    [[4, 2], [3, 1]],
    [[3, 4], [1, 2]],
    [[1, 3], [2, 4]],
]


def moved_by_hand(patch: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` of an (h, w, c) patch by moving pixels as the 2 × 2 table moves its corners."""
    out = patch.copy()
    for _ in range(k % 4):  # counter-clockwise: row r of the result is column (w - 1 - r) of the input
        out = np.stack([out[:, out.shape[1] - 1 - r] for r in range(out.shape[1])])
    return out[:, ::-1] if k >= 4 else out


def test_dihedral_numbering_by_hand() -> None:
    image = np.array([[1, 2], [3, 4]])
    for k, expected in enumerate(BY_HAND):
        assert dihedral(image, k).tolist() == expected, k
        assert dihedral(torch.tensor(image), k).tolist() == expected, k
    with pytest.raises(ValueError, match="0–7"):
        dihedral(image, 8)


def test_augmentation_views_and_synth_number_transforms_alike() -> None:
    """Per-patch augmentation (NHWC), test-time views (NCHW) and the synth's patches (HWC) give the same images."""
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (8, 5, 5, 3), dtype=np.uint8)
    k = torch.arange(8)
    augmented = augment.dihedral(torch.from_numpy(patches), k).numpy()
    for i in range(8):
        np.testing.assert_array_equal(augmented[i], np.asarray(moved_by_hand(patches[i], i)))
    nchw = torch.from_numpy(patches).permute(0, 3, 1, 2)
    for i, view in enumerate(dihedral_views(nchw, 8)):
        np.testing.assert_array_equal(view.permute(0, 2, 3, 1).numpy(), [moved_by_hand(p, i) for p in patches])


def test_stain_vectors_are_ruifrok_johnston() -> None:
    """Rows of RGB_FROM_HED are the published H, E, DAB optical-density vectors, normalised; augmentation uses them."""
    published = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    np.testing.assert_allclose(stain.RGB_FROM_HED, published / np.linalg.norm(published, axis=1, keepdims=True), 1e-6)
    np.testing.assert_allclose(stain.HED_FROM_RGB @ stain.RGB_FROM_HED, np.eye(3), atol=1e-5)
    np.testing.assert_array_equal(augment.RGB_FROM_HED.numpy(), stain.RGB_FROM_HED)


def test_hed_scale_shift_doubles_pure_haematoxylin() -> None:
    """A pixel of pure haematoxylin (optical density 0.4 along H's vector) becomes the pixel of density 0.8 when H
    is scaled by 2, and E or DAB changes leave it as it is; unit scale and no shift keep any pixel."""
    h = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])

    def pixel(density: float) -> np.ndarray:  # the intensity whose optical density -ln(I·254/255² + 1/255) is given
        return np.round((np.exp(-density * h) - 1 / 255) * 255 * 255 / 254).astype(np.uint8)[None, None]

    light, dark = pixel(0.4), pixel(0.8)
    assert np.abs(stain.hed_scale_shift(light, (2, 1, 1), (0, 0, 0)).astype(int) - dark).max() <= 1
    assert np.abs(stain.hed_scale_shift(light, (1, 3, 0.2), (0, 0, 0)).astype(int) - light).max() <= 1
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.abs(stain.hed_scale_shift(rgb, (1, 1, 1), (0, 0, 0)).astype(int) - rgb).max() <= 1
