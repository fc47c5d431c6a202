"""Histology augmentations on uint8 RGB batches (n, h, w, 3): what tile classifiers on H&E need.

- the dihedral group: the 8 flips / 90° rotations, drawn per patch (tissue has no orientation);
- stain jitter in HED space (Tellez et al. 2019): the optical density is unmixed into haematoxylin, eosin
  and DAB with Ruifrok & Johnston's matrix, each channel scaled and shifted, and mixed back;
- brightness, contrast and saturation jitter (scanner and staining differences);
- mild Gaussian blur on some patches (focus differences).

Labels are untouched by construction: every transform is per patch and keeps the patch's geometry.
All randomness comes from the ``torch.Generator`` passed in, so a seed reproduces a run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import stain
from .augment_config import AugmentConfig
from .dihedral import dihedral as dihedral_transform

RGB_FROM_HED = torch.from_numpy(stain.RGB_FROM_HED.copy())  # the stain vectors of wsi_mamba.data.stain
# Inverted by torch (float32), as before the vectors moved: NumPy's inverse differs in the last bit, which
# would change a few augmented pixels of seeded training runs.
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def dihedral(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply dihedral transform ``k[i]`` (0–7, numbered as :func:`wsi_mamba.data.dihedral.dihedral`) to patch
    ``i`` of an (n, h, w, c) batch of square patches."""
    out = torch.empty_like(x)
    for t in range(8):
        sel = (k == t).nonzero().flatten()
        if len(sel):
            out[sel] = dihedral_transform(x[sel], t, axes=(1, 2))
    return out


def hed_jitter(rgb: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Stain jitter in HED space on float RGB in [0, 1], (n, h, w, 3)."""
    n = rgb.shape[0]
    od = -torch.log(rgb.clamp(min=1e-6, max=1.0) * (254 / 255) + 1 / 255)  # optical density, finite on white
    hed = od @ HED_FROM_RGB
    alpha = 1 + sigma * (2 * torch.rand((n, 1, 1, 3), generator=generator) - 1)
    beta = sigma * (2 * torch.rand((n, 1, 1, 3), generator=generator) - 1)
    od = (hed * alpha + beta) @ RGB_FROM_HED
    return ((torch.exp(-od) - 1 / 255) * (255 / 254)).clamp(0, 1)


def colour_jitter(rgb: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on float RGB in [0, 1], (n, h, w, 3)."""
    n = rgb.shape[0]

    def factor(strength: float) -> torch.Tensor:
        return 1 + strength * (2 * torch.rand((n, 1, 1, 1), generator=generator) - 1)

    rgb = rgb * factor(cfg.brightness)
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = (rgb - mean) * factor(cfg.contrast) + mean
    grey = (rgb * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    rgb = (rgb - grey) * factor(cfg.saturation) + grey
    return rgb.clamp(0, 1)


def gaussian_blur(rgb: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each patch of (n, h, w, 3) with its own σ (a separable 5-tap Gaussian)."""
    taps = torch.arange(-2, 3, dtype=rgb.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None].to(rgb.dtype) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (n, 5)
    n, h, w, c = rgb.shape
    x = rgb.permute(3, 0, 1, 2).reshape(1, c * n, h, w)  # grouped conv: one group per (channel, patch)
    weight = kernel.repeat(c, 1)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), weight.view(c * n, 1, 1, 5), groups=c * n)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="reflect"), weight.view(c * n, 1, 5, 1), groups=c * n)
    return x.reshape(c, n, h, w).permute(1, 2, 3, 0)


def augment_patches(
    x: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()  # noqa: B008 (frozen)
) -> torch.Tensor:
    """Augment an (n, h, w, 3) uint8 RGB batch of square patches; returns uint8 of the same shape."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"patches must be (n, h, w, 3) uint8, got {tuple(x.shape)} {x.dtype}")
    n = x.shape[0]
    if n == 0:
        return x
    if cfg.dihedral:
        x = dihedral(x, torch.randint(8, (n,), generator=generator))
    rgb = x.float() / 255
    if cfg.hed_sigma > 0:
        rgb = hed_jitter(rgb, cfg.hed_sigma, generator)
    rgb = colour_jitter(rgb, cfg, generator)
    if cfg.blur_probability > 0:
        blurred = torch.rand(n, generator=generator) < cfg.blur_probability
        sel = blurred.nonzero().flatten()
        if len(sel):
            low, high = cfg.blur_sigma
            sigma = low + (high - low) * torch.rand(len(sel), generator=generator)
            rgb[sel] = gaussian_blur(rgb[sel], sigma)
    return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8)
