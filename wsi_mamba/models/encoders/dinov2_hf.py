"""Hugging Face ``transformers`` DINOv2 weights (``Dinov2Model``, ``Dinov2WithRegistersModel``) onto a timm ViT.

Phikon-v2 and Hibou are published as transformers DINOv2 models, not timm ones. Their blocks are timm's ViT block
with other names (separate q/k/v projections instead of one ``qkv``), so :func:`timm_vit_args` turns the HF
``config.json`` into ``timm.create_model`` options and :func:`hf_dinov2_to_timm` renames and concatenates the
tensors. The features equal the transformers model's ``pooler_output`` (the class token after the final
LayerNorm); tests compare both on random weights when transformers is installed.

Position embeddings: transformers adds them to the class token too, then inserts register tokens; timm without
class-token embedding (``no_embed_class``, used with registers) adds them to the patches only, so the class token's
position is folded into the class token. A grid other than the input's is resampled once here, as transformers
does at every call (bicubic, ``align_corners=False``; antialiased in the registers variant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

# transformers' Dinov2Config defaults (configuration_dinov2.py), for keys a config.json leaves out
HF_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4, "hidden_act": "gelu",
    "layer_norm_eps": 1e-6, "image_size": 224, "patch_size": 14, "num_channels": 3, "qkv_bias": True,
    "layerscale_value": 1.0, "use_swiglu_ffn": False, "num_register_tokens": 0,
}
_SUPPORTED_ACTS = ("gelu",)
QKV = ("query", "key", "value")  # transformers' separate projections, in the order timm's fused qkv stacks them


def hf_config(config: Mapping) -> dict:
    """``config`` (a DINOv2 ``config.json``) with transformers' defaults filled in; ``ValueError`` for a setting
    the timm ViT cannot reproduce (another activation, LayerNorm epsilon or channel count)."""
    cfg = {**HF_DEFAULTS, **{k: v for k, v in config.items() if k in HF_DEFAULTS}}
    if cfg["hidden_act"] not in _SUPPORTED_ACTS:
        raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (only {', '.join(_SUPPORTED_ACTS)})")
    if not math.isclose(float(cfg["layer_norm_eps"]), 1e-6):
        raise ValueError(f"layer_norm_eps {cfg['layer_norm_eps']} is not supported (timm's ViT uses 1e-6)")
    if int(cfg["num_channels"]) != 3:
        raise ValueError(f"num_channels {cfg['num_channels']}: RGB models only")
    return cfg


def swiglu_hidden(cfg: Mapping) -> int:
    """Width of transformers' SwiGLU FFN (``Dinov2SwiGLUFFN``): 2/3 of the MLP width, rounded up to 8."""
    hidden = int(cfg["hidden_size"] * cfg["mlp_ratio"])
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def timm_vit_args(config: Mapping, input_px: int) -> dict:
    """``timm.create_model("vit_base_patch16_224", **args)`` options that rebuild the DINOv2 of ``config`` for
    ``input_px`` inputs (JSON values; ``mlp_layer: "SwiGLUPacked"`` / ``act_layer: "silu"`` for SwiGLU FFNs)."""
    cfg = hf_config(config)
    dim, registers = int(cfg["hidden_size"]), int(cfg["num_register_tokens"])
    args = {
        "img_size": int(input_px), "patch_size": int(cfg["patch_size"]), "embed_dim": dim,
        "depth": int(cfg["num_hidden_layers"]), "num_heads": int(cfg["num_attention_heads"]),
        "qkv_bias": bool(cfg["qkv_bias"]), "init_values": float(cfg["layerscale_value"]), "num_classes": 0,
        "global_pool": "token", "reg_tokens": registers, "no_embed_class": registers > 0,
    }
    if cfg["use_swiglu_ffn"]:  # timm's packed SwiGLU: fc1 gives both halves, so its width is twice transformers'
        args |= {"mlp_ratio": (2 * swiglu_hidden(cfg) + 0.5) / dim, "mlp_layer": "SwiGLUPacked", "act_layer": "silu"}
    else:
        args["mlp_ratio"] = float(cfg["mlp_ratio"])
    return args


def _resample_grid(patch_pos: torch.Tensor, grid: int, antialias: bool) -> torch.Tensor:
    """(1, n, d) position embeddings of a square grid → (1, grid², d), as transformers' DINOv2 interpolates."""
    side = math.isqrt(patch_pos.shape[1])
    if side * side != patch_pos.shape[1]:
        raise ValueError(f"position embeddings of {patch_pos.shape[1]} patches are not a square grid")
    if side == grid:
        return patch_pos
    dim = patch_pos.shape[-1]
    image = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=antialias)
    return image.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(patch_pos.dtype)


def hf_dinov2_to_timm(state: Mapping[str, torch.Tensor], config: Mapping, input_px: int) -> dict[str, torch.Tensor]:
    """The timm ViT state dict (see :func:`timm_vit_args`) of transformers DINOv2 weights ``state`` (a
    ``dinov2.`` prefix is dropped, the unused ``mask_token`` too); ``ValueError`` naming a missing tensor."""
    cfg = hf_config(config)
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    swiglu, registers = bool(cfg["use_swiglu_ffn"]), int(cfg["num_register_tokens"])
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        try:
            return state.pop(key)
        except KeyError:
            raise ValueError(f"not DINOv2 weights of this config: no tensor {key!r}") from None

    state.pop("embeddings.mask_token", None)
    cls_token, position = take("embeddings.cls_token"), take("embeddings.position_embeddings")
    patch_pos = _resample_grid(position[:, 1:], int(input_px) // int(cfg["patch_size"]), antialias=registers > 0)
    if registers:
        out["cls_token"] = cls_token + position[:, :1]
        out["reg_token"] = take("embeddings.register_tokens")
        out["pos_embed"] = patch_pos
    else:
        out["cls_token"] = cls_token
        out["pos_embed"] = torch.cat([position[:, :1], patch_pos], dim=1)
    out["patch_embed.proj.weight"] = take("embeddings.patch_embeddings.projection.weight")
    out["patch_embed.proj.bias"] = take("embeddings.patch_embeddings.projection.bias")
    fc1, fc2 = ("weights_in", "weights_out") if swiglu else ("fc1", "fc2")
    for i in range(int(cfg["num_hidden_layers"])):
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        attention = hf + "attention.attention."
        out[tm + "attn.qkv.weight"] = torch.cat([take(f"{attention}{p}.weight") for p in QKV])
        if cfg["qkv_bias"]:
            out[tm + "attn.qkv.bias"] = torch.cat([take(f"{attention}{p}.bias") for p in QKV])
        renames = {
            "norm1": "norm1", "attention.output.dense": "attn.proj", "norm2": "norm2",
            f"mlp.{fc1}": "mlp.fc1", f"mlp.{fc2}": "mlp.fc2",
        }
        for source, target in renames.items():
            for kind in ("weight", "bias"):
                out[f"{tm}{target}.{kind}"] = take(f"{hf}{source}.{kind}")
        out[tm + "ls1.gamma"] = take(hf + "layer_scale1.lambda1")
        out[tm + "ls2.gamma"] = take(hf + "layer_scale2.lambda1")
    out["norm.weight"], out["norm.bias"] = take("layernorm.weight"), take("layernorm.bias")
    if state:
        extra = sorted(state)
        raise ValueError(f"not DINOv2 weights of this config: {len(extra)} unexpected tensors ({', '.join(extra[:4])})")
    return out
