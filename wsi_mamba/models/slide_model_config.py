"""The configuration of the slide model (:class:`~wsi_mamba.models.slide_model.SlideMamba`), as stored in its
checkpoint's JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from wsi_mamba_scan import SCAN_BACKENDS

from .validation import check_float, check_int

__all__ = ["SlideModelConfig"]


@dataclass(frozen=True)
class SlideModelConfig:
    """Everything that defines a :class:`SlideMamba` (stored in the checkpoint's JSON)."""

    in_dim: int  # tile feature size
    dim: int = 64  # token width
    depth: int = 2  # number of masked VSS blocks
    d_state: int = 4  # SSM state size N
    ssm_ratio: float = 1.0  # d_inner = int(ssm_ratio * dim)
    mlp_ratio: float = 2.0
    attn_dim: int = 64  # hidden size of the gated attention
    dropout: float = 0.1  # after the input projection, on residual branches and in the attention
    scan_backend: str = "auto"  # passed to selective_scan
    topk: int = 0  # K >= 1: the slide logit also weighs the mean of the K highest tile logits (0: off)

    def __post_init__(self) -> None:
        """Types and bounds of every field (a config read from a file is checked before anything is built)."""
        owner = "SlideModelConfig"
        bounds = {
            "in_dim": (1, 65_536),
            "dim": (1, 4096),
            "depth": (0, 64),
            "d_state": (1, 256),
            "attn_dim": (1, 4096),
            "topk": (0, 64),
        }
        for name, (low, high) in bounds.items():
            object.__setattr__(self, name, check_int(owner, name, getattr(self, name), low, high))
        for name in ("ssm_ratio", "mlp_ratio"):
            object.__setattr__(self, name, check_float(owner, name, getattr(self, name), 0, 16, low_open=True))
        if int(self.ssm_ratio * self.dim) < 1:
            raise ValueError("SlideModelConfig: ssm_ratio and mlp_ratio must be > 0 (and d_inner >= 1)")
        object.__setattr__(self, "dropout", check_float(owner, "dropout", self.dropout, 0, 1, high_open=True))
        if not isinstance(self.scan_backend, str):
            raise ValueError(f"SlideModelConfig: scan_backend must be a string, got {self.scan_backend!r}")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(
                f"SlideModelConfig: scan_backend is {self.scan_backend!r}, expected one of {', '.join(SCAN_BACKENDS)}"
            )

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SlideModelConfig:
        """Inverse of :meth:`to_dict`; unknown or missing fields → ``ValueError`` naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"SlideModelConfig: expected a dict, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown slide model config fields: {unknown}")
        if "in_dim" not in data:
            raise ValueError("slide model config lacks the required field 'in_dim'")
        return cls(**data)
