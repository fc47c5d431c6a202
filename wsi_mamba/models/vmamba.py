"""VMamba (v2 line): configurations as data, the VSS block and the VSSM backbone + classifier.

Module names and parameter shapes equal the official ``VSSM`` with ``norm_layer="ln2d"``,
``patchembed_version="v2"``, ``downsample_version="v3"`` and ``forward_type="v05_noz"``, so official
state dicts load unchanged (see :mod:`wsi_mamba.models.official`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from wsi_mamba_scan import SCAN_BACKENDS

from .layers import DropPath, LayerNorm2d, Mlp
from .registry import register_model
from .ss2d import SS2D
from .validation import check_bool, check_float, check_int

MAX_STAGES = 8
MAX_STAGE_DEPTH = 128  # blocks per stage (official models have at most 27)
MAX_DIM = 16_384  # channel width of any stage

@dataclass(frozen=True)
class VMambaConfig:
    """Everything that defines a VMamba network (official names in comments)."""

    embed_dim: int = 96  # dims[0]; doubled per stage
    depths: tuple[int, ...] = (2, 2, 9, 2)
    in_chans: int = 3
    num_classes: int = 1000
    d_state: int = 1  # ssm_d_state
    ssm_ratio: float = 2.0
    dt_rank: int | str = "auto"  # ssm_dt_rank
    d_conv: int = 3  # ssm_conv
    conv_bias: bool = False  # ssm_conv_bias
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    scan_backend: str = "auto"  # passed to selective_scan
    grad_checkpointing: bool = False  # use_checkpoint

    def __post_init__(self) -> None:
        """Types and bounds of every field (a config read from a file is checked before anything is built)."""
        owner = "VMamba config"
        if not isinstance(self.depths, (list, tuple)) or not 1 <= len(self.depths) <= MAX_STAGES:
            raise ValueError(f"{owner}: depths must be a list of 1-{MAX_STAGES} stage depths, got {self.depths!r}")
        depths = tuple(check_int(owner, "depths", d, 0, MAX_STAGE_DEPTH) for d in self.depths)
        object.__setattr__(self, "depths", depths)
        ints = {"embed_dim": MAX_DIM, "in_chans": 64, "num_classes": 100_000, "d_state": 256, "d_conv": 31}
        for name, high in ints.items():
            low = 0 if name == "num_classes" else 1
            object.__setattr__(self, name, check_int(owner, name, getattr(self, name), low, high))
        if self.embed_dim * 2 ** (len(depths) - 1) > MAX_DIM:
            raise ValueError(
                f"{owner}: the last stage would be {self.embed_dim * 2 ** (len(depths) - 1)} wide "
                f"(embed_dim doubled per stage), at most {MAX_DIM}"
            )
        # ratios must be > 0: blocks without SS2D or MLP are not supported
        for name in ("ssm_ratio", "mlp_ratio"):
            object.__setattr__(self, name, check_float(owner, name, getattr(self, name), 0, 16, low_open=True))
        if self.dt_rank != "auto":
            object.__setattr__(self, "dt_rank", check_int(owner, "dt_rank", self.dt_rank, 1, MAX_DIM))
        rate = check_float(owner, "drop_path_rate", self.drop_path_rate, 0, 1, high_open=True)
        object.__setattr__(self, "drop_path_rate", rate)
        check_bool(owner, "conv_bias", self.conv_bias)
        if not isinstance(self.scan_backend, str):
            raise ValueError(f"{owner}: scan_backend must be a string, got {self.scan_backend!r}")
        if self.scan_backend not in SCAN_BACKENDS:
            names = ", ".join(SCAN_BACKENDS)
            raise ValueError(f"{owner}: scan_backend is {self.scan_backend!r}, expected one of {names}")
        check_bool(owner, "grad_checkpointing", self.grad_checkpointing)

    @property
    def dims(self) -> list[int]:
        return [self.embed_dim * 2**i for i in range(len(self.depths))]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["depths"] = list(self.depths)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> VMambaConfig:
        if not isinstance(data, dict):
            raise ValueError(f"VMamba config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VMamba config fields: {unknown}")
        return cls(**data)


CONFIGS: dict[str, VMambaConfig] = {
    # VMamba-T [s1l8] = vmambav2v_tiny_224.yaml: 30,249,064 params
    "vmamba_tiny": VMambaConfig(96, (2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2),
    # VMamba-S [s2l15] = vmambav2_small_224.yaml: 50,147,752 params
    "vmamba_small": VMambaConfig(96, (2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3),
    # VMamba-B [s2l15] = vmambav2_base_224.yaml: 88,557,800 params
    "vmamba_base": VMambaConfig(128, (2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6),
    # small CPU models for tests, demos and the default tile encoder
    "vmamba_micro": VMambaConfig(48, (1, 1, 2, 1), ssm_ratio=1.0, drop_path_rate=0.0),
    "vmamba_nano": VMambaConfig(32, (1, 1, 2, 1), ssm_ratio=1.0, drop_path_rate=0.0),
    "vmamba_pico": VMambaConfig(16, (1, 1, 2, 1), ssm_ratio=1.0, drop_path_rate=0.0),
}


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x))), channel-first."""

    def __init__(self, dim: int, cfg: VMambaConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, cfg.d_state, cfg.ssm_ratio, cfg.dt_rank, cfg.d_conv, cfg.conv_bias, cfg.scan_backend)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def patch_embed_v2(in_chans: int, dim: int) -> nn.Sequential:
    """Stem "v2": two 3×3 stride-2 convs with LN (+GELU between); keys ``patch_embed.{0,2,5,7}``."""
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1),
        nn.Identity(),
        LayerNorm2d(dim // 2),
        nn.Identity(),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
        nn.Identity(),
        LayerNorm2d(dim),
    )


def downsample_v3(dim: int, out_dim: int) -> nn.Sequential:
    """Downsample "v3": 3×3 stride-2 conv + LN; keys ``downsample.{1,3}``."""
    return nn.Sequential(
        nn.Identity(),
        nn.Conv2d(dim, out_dim, 3, stride=2, padding=1),
        nn.Identity(),
        LayerNorm2d(out_dim),
    )


class VSSM(nn.Module):
    """VMamba backbone with its classifier head; input (B, in_chans, H, W) of any size."""

    def __init__(self, config: VMambaConfig) -> None:
        super().__init__()
        self.config = config
        self.grad_checkpointing = config.grad_checkpointing
        dims = config.dims
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        self.patch_embed = patch_embed_v2(config.in_chans, dims[0])
        self.layers = nn.ModuleList()
        for i, depth in enumerate(config.depths):
            start = sum(config.depths[:i])
            blocks = nn.Sequential(*(VSSBlock(dims[i], config, rates[start + j]) for j in range(depth)))
            last = i == len(config.depths) - 1
            down = nn.Identity() if last else downsample_v3(dims[i], dims[i + 1])
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=down)))
        self.num_features = dims[-1]
        self.classifier = nn.Sequential(
            OrderedDict(
                norm=LayerNorm2d(dims[-1]),
                permute=nn.Identity(),
                avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                head=nn.Linear(dims[-1], config.num_classes),
            )
        )
        self.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each VSS block in the backward pass (training memory ↓, time ↑)."""
        self.grad_checkpointing = enable

    def set_scan_backend(self, backend: str) -> None:
        """Select the selective-scan backend of every SS2D ("auto", "reference", "cpu", "numba", "triton")."""
        if backend not in SCAN_BACKENDS:
            raise ValueError(f"scan backend is {backend!r}, expected one of {', '.join(SCAN_BACKENDS)}")
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = backend

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"VSSM expects input of shape (batch, {self.config.in_chans}, H, W), got {tuple(x.shape)}"
            )

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs (before each stage's downsample), NCHW, strides 4, 8, 16, 32 for 4 stages."""
        self._check_input(x)
        x = self.patch_embed(x)
        pyramid = []
        for layer in self.layers:
            for block in layer.blocks:
                x = self._run_block(block, x)
            pyramid.append(x)
            x = layer.downsample(x)
        return pyramid

    def forward_last_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map through the classifier's LayerNorm, (B, C, H / s, W / s) with s =
        :attr:`feature_stride`: what :meth:`forward_head` pools, kept spatial. Only one stage's activations live
        at a time (no pyramid), so memory follows the input's pixels (region mode's whole-region pass)."""
        self._check_input(x)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer.downsample(layer.blocks(x))
        return self.classifier.norm(x)

    @property
    def feature_stride(self) -> int:
        """Input pixels per pixel of :meth:`forward_last_map` (4 from the stem, 2 per downsample)."""
        return 4 * 2 ** (len(self.config.depths) - 1)

    def forward_head(self, features: list[torch.Tensor] | torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classifier on the last stage output: LN → global average pool → [Linear]."""
        x = features[-1] if isinstance(features, (list, tuple)) else features
        for name, module in self.classifier.named_children():
            if name == "head" and pre_logits:
                break
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """Published init: Linear (incl. Linear2d) trunc-normal std 0.02 and zero bias; LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_vmamba(config: VMambaConfig | dict, **overrides) -> VSSM:
    """A :class:`VSSM` from a config (object or dict) with field overrides."""
    if isinstance(config, dict):
        config = VMambaConfig.from_dict(config)
    unknown = sorted(set(overrides) - {f.name for f in fields(VMambaConfig)})
    if unknown:
        raise ValueError(f"unknown VMamba config fields: {unknown}")
    return VSSM(replace(config, **overrides))


def _register_all() -> None:
    for name, cfg in CONFIGS.items():
        register_model(name, lambda cfg=cfg, **overrides: build_vmamba(cfg, **overrides))


_register_all()

__all__ = ["CONFIGS", "VSSM", "VMambaConfig", "VSSBlock", "build_vmamba"]
