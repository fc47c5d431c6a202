"""The tile encoder every family returns: a backbone in eval mode, its identity and the tile geometry it expects.

Features are the backbone's pooled pre-logits (``forward_head(forward_features(x), pre_logits=True)``, the same
call for VMamba and timm models). An encoder is identified by its name and a hash of its weights, which every
feature store records, so features of different encoders are never mixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...data.augment_config import VIEW_COUNTS
from ...data.dihedral import dihedral
from ...devices import autocast

# ImageNet statistics, as the published VMamba models were trained with (and most timm models).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INFERENCE_PRECISIONS = ("fp32", "int8")
"""Precisions of :meth:`TileEncoder.inference_model` on the CPU: the model itself, or int8 MLP layers."""
INT8_LAYERS = ("fc1", "fc2")
"""Layers "int8" quantises: the MLPs pay (1.2x); VMamba's SS2D projections alone do not, and add error."""


def check_views(views: int) -> int:
    """``views`` when it is one of :data:`VIEW_COUNTS`; ``ValueError`` otherwise."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {', '.join(map(str, VIEW_COUNTS))}, got {views!r}")
    return views


def dihedral_views(x: torch.Tensor, views: int) -> list[torch.Tensor]:
    """The first ``views`` dihedral transforms of an (n, c, h, w) batch (:func:`~wsi_mamba.data.dihedral.dihedral`
    0, 1, …): 90° rotations, then their mirror images; view 0 is ``x`` itself."""
    return [dihedral(x, k, axes=(2, 3)) for k in range(views)]


def weights_hash(model: torch.nn.Module) -> str:
    """A short SHA-256 of the model's tensors (names, dtypes, shapes and bytes), order-independent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass
class TileEncoder:
    """A backbone in eval mode with its identity, the tile geometry it expects and its input normalisation.

    ``source`` is the file the weights came from (None: seeded random weights); ``spec`` is what
    :func:`~wsi_mamba.models.encoders.create_encoder` needs besides ``source`` to rebuild it when the source does
    not describe itself (``"timm:resnet18"`` with a plain weights file), None when it does (our checkpoints).
    ``input_px`` is the side the network must see (models with a fixed input size): tiles of another size are
    resized to it; None feeds tiles as they are. ``config`` is the family's rebuild information."""

    model: torch.nn.Module
    name: str
    tile_px: int = 128
    mpp: float = 1.0
    source: str | None = None
    family: str = "vmamba"
    spec: str | None = None
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    input_px: int | None = None
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()
        self.hash = weights_hash(self.model)

    @property
    def dim(self) -> int:
        """Width of a feature vector (timm's ``head_hidden_size`` where a model has a pre-logits layer)."""
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier head (1 for a tumour-logit encoder)."""
        config = getattr(self.model, "config", None)
        return int(getattr(self.model, "num_classes", None) or getattr(config, "num_classes", 0))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TileEncoder:
        self.model.to(device)
        return self

    def preprocess(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, h, w, 3) uint8 RGB → (n, 3, h, w) float32 normalised with the model's mean/std, on the encoder's
        device (a pinned tensor is copied there without blocking); resized (bilinear, antialiased) to ``input_px``
        when the model needs a fixed size."""
        if isinstance(tiles, torch.Tensor):
            x = tiles.to(self.device, non_blocking=tiles.is_pinned())
        else:
            x = torch.as_tensor(tiles, device=self.device)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"tiles must be (n, h, w, 3) uint8, got {tuple(x.shape)} {x.dtype}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.input_px is not None and tuple(x.shape[-2:]) != (self.input_px, self.input_px):
            x = F.interpolate(x, size=(self.input_px,) * 2, mode="bilinear", antialias=True).clamp_(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)  # in place: one float copy of the input (region mode's whole regions)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features of preprocessed tiles (differentiable; used by encoder training)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def inference_model(self, precision: str = "fp32") -> torch.nn.Module:
        """The backbone for CPU inference in ``precision`` (:data:`INFERENCE_PRECISIONS`): "fp32" is :attr:`model`;
        "int8" an inference-only copy whose MLP layers (``fc1``, ``fc2``: VMamba's and timm's) are int8
        (:func:`~..cpu_inference.quantize_linears`), made once per encoder: 1.2x on the shipped encoder, features
        within 0.6 % of their largest value, the same carved AUC. Not used by the engine by default: its features
        differ from fp32 (BENCHMARKS.md), so a store of them would have to record the precision."""
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"inference precision must be {' or '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
        if precision == "fp32":
            return self.model
        cache = self.__dict__.setdefault("_inference_models", {})
        if precision not in cache:
            from ..cpu_inference import quantize_linears

            cache[precision] = quantize_linears(self.model, names=INT8_LAYERS)
        return cache[precision]

    def classifier_head(self) -> torch.nn.Module | None:
        """The classifier layer that maps :meth:`features` to logits (VMamba's ``classifier.head``, timm's
        ``get_classifier()``); None when the model has none."""
        classifier = getattr(self.model, "classifier", None)
        head = getattr(classifier, "head", None)
        if isinstance(head, torch.nn.Module):
            return head
        get_classifier = getattr(self.model, "get_classifier", None)
        head = get_classifier() if callable(get_classifier) else None
        return None if head is None or isinstance(head, torch.nn.Identity) else head

    @property
    def has_tumour_head(self) -> bool:
        """Whether the classifier head gives one (tumour) logit per tile."""
        return self.num_classes == 1 and self.classifier_head() is not None

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(n, num_classes) logits of (n, dim) :meth:`features`; the head being linear, the logit of features
        averaged over views is the mean of the views' logits. ``ValueError`` for a model without a head."""
        head = self.classifier_head()
        if head is None:
            raise ValueError(f"encoder {self.name} has no classifier head")
        return head(features)

    def view_features(self, x: torch.Tensor, views: int = 1) -> torch.Tensor:
        """Features of preprocessed square tiles averaged over ``views`` dihedral views (:data:`VIEW_COUNTS`;
        1: the tiles as they are). With 4 or 8 views a rotated tile gets the same features; the classifier head
        being linear, its logit is the mean of the views' logits."""
        if check_views(views) == 1:
            return self.features(x)
        return torch.stack([self.features(view).float() for view in dihedral_views(x, views)]).mean(0)

    def views_on_demand(
        self, x: torch.Tensor, views: int, band: tuple[float, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of preprocessed square tiles in view 0, and for the tiles whose view-0 tumour probability (the
        sigmoid of :meth:`logits_from_features`) lies in ``band`` = (lo, hi), both ends included, the mean over
        all ``views`` views (as :meth:`view_features`); the views each tile got, (n,) uint8. The other views run
        on the chosen tiles only. Needs a one-logit head (:attr:`has_tumour_head`)."""
        first = self.features(x)
        used = torch.ones(len(x), dtype=torch.uint8)
        if check_views(views) == 1 or not len(x):
            return first, used
        p = torch.sigmoid(self.logits_from_features(first).float()[:, 0])
        chosen = ((p >= band[0]) & (p <= band[1])).nonzero().squeeze(1)  # NaN: never chosen
        out = first.float()
        if len(chosen):
            subset = x[chosen]
            rest = [self.features(dihedral(subset, k, axes=(2, 3))).float() for k in range(1, views)]
            out = out.clone()
            out[chosen] = torch.stack([out[chosen], *rest]).mean(0)
            used[chosen.cpu()] = views
        return out, used

    @torch.inference_mode()
    def encode(self, tiles: np.ndarray, views: int = 1) -> np.ndarray:
        """(n, h, w, 3) uint8 tiles → (n, dim) float32 features, averaged over ``views`` dihedral views (bf16
        autocast on CUDA)."""
        if len(tiles) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = self.preprocess(tiles)
        with autocast(x.device):
            out = self.view_features(x, views)
        return out.float().cpu().numpy()

    def identity(self) -> dict:
        """What a feature store records about the encoder."""
        return {"encoder": self.name, "encoder_hash": self.hash, "tile_px": self.tile_px, "mpp": self.mpp}

    def source_record(self) -> dict:
        """Where the weights came from, as a feature store records it: ``encoder_source`` (absolute path or None)
        and ``encoder_spec`` (see the class docstring); :func:`~wsi_mamba.models.encoders.encoder_from_record`
        rebuilds the encoder from it."""
        return {
            "encoder_source": str(Path(self.source).resolve()) if self.source else None,
            "encoder_spec": self.spec,
        }
