"""Named pathology foundation-model tile encoders (``--encoder uni --encoder-weights PATH``): a data table of their
published build options, built offline through timm (``pretrained=False``) from weights users download themselves.

Each :class:`EncoderPreset` is read off the model's Hugging Face model card and ``config.json`` (``source``):
timm architecture and ``create_model`` options, input size, normalisation, magnification and the feature the
authors use. Weights are the file or folder as the model's repository has it (``config.json`` +
``pytorch_model.bin`` / ``model.safetensors``, or the bare state dict); pickles are read weights-only. Phikon-v2 and
Hibou are transformers DINOv2 models: their weights are renamed onto the equivalent timm ViT
(:mod:`.dinov2_hf`). CONCH v1.5 is not here: its vision tower ends in CoCa's attentional pooler and projection,
which timm does not build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...outputs.artefact import ArtefactFormat, read_json_object
from ...outputs.atomic import json_safe
from ..checkpoint import read_safetensors, tensor_writer
from ..state import check_state_dict
from .base import MEAN, STD, TileEncoder
from .dinov2_hf import hf_config, hf_dinov2_to_timm, timm_vit_args
from .registry import EncoderFamily, register_encoder_family
from .timm import HF_CONFIG, IGNORED_OVERRIDES, import_timm, read_weights

FORMAT = ArtefactFormat("wsi-mamba/preset-encoder", 1)
PREFIX = "preset:"
HOPTIMUS_MEAN, HOPTIMUS_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
HIBOU_MEAN, HIBOU_STD = (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)


@dataclass(frozen=True)
class EncoderPreset:
    """One published encoder. ``model_args``: timm ``create_model`` options (JSON; ``mlp_layer``/``act_layer`` by
    name); for ``layout="hf-dinov2"`` the published transformers config instead (``hf_config``), used when the
    weights come without their ``config.json``. ``pool``: ``"token"`` (class token) or ``"token+mean"`` (class
    token concatenated with the mean of the patch tokens, registers excluded). ``params``: the published size."""

    name: str
    title: str
    repo: str
    architecture: str
    input_px: int
    mpp: float
    feature_dim: int
    params: str
    files: str
    source: str
    model_args: dict = field(default_factory=dict)
    hf_config: dict = field(default_factory=dict)
    layout: str = "timm"
    pool: str = "token"
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD


_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "silu"}
PRESETS: dict[str, EncoderPreset] = {p.name: p for p in (
    EncoderPreset(
        "uni", "UNI", "MahmoodLab/UNI", "vit_large_patch16_224", 224, 0.5, 1024, "303M",
        "config.json + pytorch_model.bin (or the bare .bin)",
        "huggingface.co/MahmoodLab/UNI model card: timm.create_model('vit_large_patch16_224', img_size=224, "
        "patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True); ImageNet mean/std; 20x",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
    ),
    EncoderPreset(
        "uni2-h", "UNI2-h", "MahmoodLab/UNI2-h", "vit_giant_patch14_224", 224, 0.5, 1536, "681M",
        "config.json + pytorch_model.bin (or the bare .bin)",
        "huggingface.co/MahmoodLab/UNI2-h model card timm_kwargs (ViT-H/14, 8 registers, SwiGLUPacked + SiLU, "
        "mlp_ratio 2.66667*2, no_embed_class); ImageNet mean/std; 20x",
        {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
         "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True, "reg_tokens": 8,
         "dynamic_img_size": True, **_SWIGLU},
    ),
    EncoderPreset(
        "virchow", "Virchow", "paige-ai/Virchow", "vit_huge_patch14_224", 224, 0.5, 2560, "632M",
        "config.json + pytorch_model.bin / model.safetensors",
        "huggingface.co/paige-ai/Virchow config.json model_args (mlp_ratio 5.3375, global_pool '') and model card "
        "(mlp_layer=SwiGLUPacked, act_layer=SiLU; embedding = class token + mean of tokens 1:); 20x",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "",
         "dynamic_img_size": True, **_SWIGLU},
        pool="token+mean",
    ),
    EncoderPreset(
        "virchow2", "Virchow2", "paige-ai/Virchow2", "vit_huge_patch14_224", 224, 0.5, 2560, "632M",
        "config.json + model.safetensors / pytorch_model.bin",
        "huggingface.co/paige-ai/Virchow2 config.json model_args (reg_tokens 4, mlp_ratio 5.3375, global_pool '') "
        "and model card (SwiGLUPacked, SiLU; embedding = class token + mean of tokens 5:, registers 1-4 "
        "excluded); trained at 5-40x, tiles at 0.5 um/px as the card's examples",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
         "global_pool": "", "dynamic_img_size": True, **_SWIGLU},
        pool="token+mean",
    ),
    EncoderPreset(
        "h-optimus-0", "H-optimus-0", "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2", 224, 0.5, 1536,
        "1.1B", "config.json + model.safetensors / pytorch_model.bin",
        "huggingface.co/bioptimus/H-optimus-0 model card: create_model(..., init_values=1e-5, dynamic_img_size="
        "False), config.json img_size 224, global_pool token; mean (0.707223, 0.578729, 0.703617), std (0.211883, "
        "0.230117, 0.177517); 224 px tiles at 0.5 um/px",
        {"img_size": 224, "init_values": 1e-5, "global_pool": "token", "num_classes": 0, "dynamic_img_size": False},
        mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
    ),
    EncoderPreset(
        "h-optimus-1", "H-optimus-1", "bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2", 224, 0.5, 1536,
        "1.1B", "config.json + model.safetensors / pytorch_model.bin",
        "huggingface.co/bioptimus/H-optimus-1 model card: same architecture, options and mean/std as H-optimus-0",
        {"img_size": 224, "init_values": 1e-5, "global_pool": "token", "num_classes": 0, "dynamic_img_size": False},
        mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
    ),
    EncoderPreset(
        "prov-gigapath", "Prov-GigaPath (tile)", "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2", 224,
        0.5, 1536, "1.13B", "config.json + pytorch_model.bin",
        "huggingface.co/prov-gigapath/prov-gigapath config.json model_args (patch 16, embed 1536, depth 40, heads "
        "24, init_values 1e-5, mlp_ratio 5.33334; SwiGLUPacked from the timm architecture); card: ImageNet "
        "mean/std, resize 256 + centre crop 224 (here: 224 px tiles), 20x",
        {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
         "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
    ),
    EncoderPreset(
        "phikon-v2", "Phikon-v2", "owkin/phikon-v2", "vit_large_patch16_224", 224, 0.5, 1024, "303M",
        "config.json + model.safetensors (transformers Dinov2Model)",
        "huggingface.co/owkin/phikon-v2 config.json (Dinov2Model: hidden 1024, 24 layers, 16 heads, patch 16, "
        "layerscale 1e-5) and model card (feature = last_hidden_state[:, 0]); ImageNet mean/std; 20x",
        hf_config={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 16,
                   "image_size": 224, "layerscale_value": 1e-5, "mlp_ratio": 4},
        layout="hf-dinov2",
    ),
    EncoderPreset(
        "hibou-b", "Hibou-B", "histai/hibou-b", "vit_base_patch14_reg4_dinov2", 224, 0.5, 768, "85.7M",
        "config.json + model.safetensors (DINOv2 with 4 registers)",
        "huggingface.co/histai/hibou-b config.json (ViT-B/14, 4 registers) and preprocessor_config.json (224 px, "
        "mean (0.7068, 0.5755, 0.722), std (0.195, 0.2316, 0.1816)); feature = pooler_output (class token)",
        hf_config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 14,
                   "image_size": 224, "num_register_tokens": 4},
        layout="hf-dinov2", mean=HIBOU_MEAN, std=HIBOU_STD,
    ),
    EncoderPreset(
        "hibou-l", "Hibou-L", "histai/hibou-L", "vit_large_patch14_reg4_dinov2", 224, 0.5, 1024, "303.7M",
        "config.json + model.safetensors (DINOv2 with 4 registers)",
        "huggingface.co/histai/hibou-L config.json (ViT-L/14, 4 registers, SwiGLU FFN: the published 303.7M "
        "parameters need it) and preprocessor_config.json (as Hibou-B); feature = pooler_output (class token)",
        hf_config={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14,
                   "image_size": 224, "num_register_tokens": 4, "use_swiglu_ffn": True},
        layout="hf-dinov2", mean=HIBOU_MEAN, std=HIBOU_STD,
    ),
)}


def get_preset(name: str) -> EncoderPreset:
    """The preset ``name`` (case-insensitive); ``ValueError`` listing the known ones otherwise."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown encoder preset {name!r}; available: {', '.join(PRESETS)}") from None


def is_preset(name: object) -> bool:
    """True for a preset name (``uni``) or ``preset:NAME``."""
    return str(name).lower().removeprefix(PREFIX) in PRESETS


def _hf_folder_config(preset: EncoderPreset, weights: Path) -> dict:
    """The transformers config of ``weights`` (its folder's config.json; the preset's published one for a bare
    file), with problems named after the file."""
    config_file = weights / HF_CONFIG if weights.is_dir() else None
    config = read_json_object(config_file) if config_file and config_file.is_file() else dict(preset.hf_config)
    try:
        hf_config(config)
    except ValueError as exc:
        raise ValueError(f"{config_file or weights}: {exc}") from None
    return config


def model_args(preset: EncoderPreset, hf: dict | None = None, **overrides) -> dict:
    """The timm ``create_model`` options of ``preset`` (JSON values) with ``overrides`` (``depth=1`` for tests)."""
    base = timm_vit_args(hf or preset.hf_config, preset.input_px) if preset.layout == "hf-dinov2" else preset.model_args
    return {**base, **overrides}


def _resolve(args: dict) -> dict:
    """``args`` with ``mlp_layer`` names turned into timm classes."""
    if isinstance(args.get("mlp_layer"), str):
        args = {**args, "mlp_layer": getattr(import_timm().layers, args["mlp_layer"])}
    return args


def _token_mean_head(model: torch.nn.Module) -> None:
    """Make ``model.forward_head(x, pre_logits=True)`` the class token concatenated with the mean patch token
    (prefix tokens, i.e. class and registers, excluded), as Virchow's model card computes its embedding."""
    prefix = int(model.num_prefix_tokens)

    def forward_head(x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return torch.cat([x[:, 0], x[:, prefix:].mean(1)], dim=-1)

    model.forward_head = forward_head
    model.head_hidden_size = 2 * int(model.embed_dim)


def build_preset(
    preset: EncoderPreset, state: dict[str, torch.Tensor], args: dict, *, source: str | None,
    tile_px: int | None = None, mpp: float | None = None, overrides: dict | None = None,
) -> TileEncoder:
    """A :class:`TileEncoder` of ``preset`` built with timm options ``args`` (``pretrained=False``) and the timm
    state dict ``state`` loaded strictly; ``ValueError`` naming ``source`` for weights of another shape."""
    timm = import_timm()
    with torch.device("meta"):  # no initialisation of (up to 1.1 B) parameters the weights replace anyway
        model = timm.create_model(preset.architecture, pretrained=False, **_resolve(args))
    try:
        check_state_dict(model, state)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc} (not {preset.title} weights)") from None
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(f"{preset.architecture}: tensors the weights do not hold (an unsupported timm version?)")
    if preset.pool == "token+mean":
        _token_mean_head(model)
    config = {"preset": preset.name, "architecture": preset.architecture, "model_args": args,
              "overrides": dict(overrides or {})}
    return TileEncoder(
        model, name=preset.name, tile_px=int(tile_px or preset.input_px), mpp=float(mpp or preset.mpp),
        source=source, family="preset", spec=f"{PREFIX}{preset.name}", mean=preset.mean, std=preset.std,
        input_px=preset.input_px, config=json_safe(config),
    )


def create(
    name: str | None, weights: str | Path | None, tile_px: int | None, mpp: float | None, seed: int, **overrides
) -> TileEncoder:
    """Preset ``name`` from ``weights`` (the published file or folder; needed: presets are never random).
    ``overrides``: timm build options replacing the preset's (``depth=1`` in tests)."""
    preset = get_preset(str(name).removeprefix(PREFIX))
    if weights is None:
        raise ValueError(f"{preset.name}: needs --encoder-weights, the {preset.files} from huggingface.co/"
                         f"{preset.repo} (downloaded by you; nothing is fetched)")
    for key in (*IGNORED_OVERRIDES, "num_classes"):
        overrides.pop(key, None)
    weights = Path(weights)
    state, read_from = read_weights(weights)
    if preset.layout == "hf-dinov2":
        hf = _hf_folder_config(preset, weights)
        args = model_args(preset, hf, **overrides)
        try:
            state = hf_dinov2_to_timm(state, hf, preset.input_px)
        except ValueError as exc:
            raise ValueError(f"{read_from}: {exc}") from None
    else:
        _check_folder_architecture(preset, weights)
        args = model_args(preset, **overrides)
    return build_preset(preset, state, args, source=str(weights), tile_px=tile_px, mpp=mpp, overrides=overrides)


def _check_folder_architecture(preset: EncoderPreset, weights: Path) -> None:
    """A folder whose timm ``config.json`` names another architecture is not this preset's."""
    config_file = weights / HF_CONFIG
    if weights.is_dir() and config_file.is_file():
        named = read_json_object(config_file).get("architecture")
        if named is not None and named != preset.architecture:
            raise ValueError(f"{config_file}: architecture {named!r}, not {preset.title}'s {preset.architecture!r}")


def load(path: Path, meta: dict, tile_px: int | None, mpp: float | None, **overrides) -> TileEncoder:
    """Our checkpoint of a preset encoder (timm state dict + JSON naming the preset and its build options)."""
    FORMAT.check(meta, path.with_suffix(".json"))
    config, extra = meta.get("config", {}), meta.get("metadata", {})
    if not isinstance(config, dict) or not isinstance(extra, dict) or not isinstance(config.get("model_args"), dict):
        raise ValueError(f"{path.with_suffix('.json')}: 'config' with 'model_args' and 'metadata' must be objects")
    preset = get_preset(str(config.get("preset")))
    return build_preset(
        preset, read_safetensors(path), dict(config["model_args"]), source=str(path),
        tile_px=tile_px or extra.get("tile_px"), mpp=mpp or extra.get("mpp"), overrides=config.get("overrides"),
    )


def save(encoder: TileEncoder, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``encoder`` as ``NAME.safetensors`` (timm state dict) + ``NAME.json`` (preset, build options, tile
    geometry and ``metadata``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"name": encoder.name, "tile_px": encoder.tile_px, "mpp": encoder.mpp}
    body = {"family": "preset", "config": encoder.config, "metadata": json_safe({**base, **(metadata or {})})}
    return FORMAT.write_pair(path, path.with_suffix(".json"), body, tensor_writer(encoder.model, FORMAT))


def vit_param_count(args: dict) -> int:
    """Parameters of a timm ViT with these (resolved) options, by arithmetic (no model is built): patch
    embedding, class/register tokens, position embeddings, blocks (LayerNorms, qkv, projection, layer scales, MLP
    or packed SwiGLU) and the final norm; no head."""
    dim, depth, patch = int(args["embed_dim"]), int(args["depth"]), int(args["patch_size"])
    grid = (int(args["img_size"]) // patch) ** 2
    registers, swiglu = int(args.get("reg_tokens", 0)), args.get("mlp_layer") == "SwiGLUPacked"
    hidden = int(dim * float(args.get("mlp_ratio", 4.0)))
    qkv_bias = 3 * dim if args.get("qkv_bias", True) else 0
    layer_scale = 2 * dim if args.get("init_values") is not None else 0
    mlp = dim * hidden + hidden + (hidden // 2 if swiglu else hidden) * dim + dim
    block = 4 * dim + 3 * dim * dim + qkv_bias + dim * dim + dim + layer_scale + mlp
    tokens = dim * (1 + registers) + dim * (grid + (0 if args.get("no_embed_class") else 1 + registers))
    return 3 * patch * patch * dim + dim + tokens + depth * block + 2 * dim


def preset_param_count(preset: EncoderPreset) -> int:
    """:func:`vit_param_count` of ``preset``'s full published configuration (the architecture's own defaults,
    read from timm's registry without building, overlaid with the preset's options)."""
    return vit_param_count({**ARCHITECTURE_DEFAULTS[preset.architecture], **model_args(preset)})


# timm's own options of the architectures the presets use (timm/models/vision_transformer.py model functions),
# which the presets' options overlay
ARCHITECTURE_DEFAULTS: dict[str, dict] = {
    "vit_base_patch14_reg4_dinov2": {"patch_size": 14, "embed_dim": 768, "depth": 12, "num_heads": 12,
                                     "init_values": 1e-5, "reg_tokens": 4, "no_embed_class": True},
    "vit_large_patch16_224": {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_large_patch14_reg4_dinov2": {"patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                                      "init_values": 1e-5, "reg_tokens": 4, "no_embed_class": True},
    "vit_huge_patch14_224": {"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16},
    "vit_giant_patch14_224": {"patch_size": 14, "embed_dim": 1408, "depth": 40, "num_heads": 16,
                              "mlp_ratio": 48 / 11},
    "vit_giant_patch14_dinov2": {"patch_size": 14, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                                 "init_values": 1e-5, "mlp_ratio": 2.66667 * 2, **_SWIGLU},
    "vit_giant_patch14_reg4_dinov2": {"patch_size": 14, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                                      "init_values": 1e-5, "mlp_ratio": 2.66667 * 2, "reg_tokens": 4,
                                      "no_embed_class": True, **_SWIGLU},
}


def preset_rows() -> list[dict]:
    """One row per preset for ``wsi-mamba encoders``: name, model, repository, architecture, parameters (by
    arithmetic, and as published), feature size, input size, µm/px, normalisation and the weights layout."""
    return [
        {"name": p.name, "model": p.title, "repo": p.repo, "architecture": p.architecture,
         "params": preset_param_count(p), "params_published": p.params, "feature_dim": p.feature_dim,
         "input_px": p.input_px, "mpp": p.mpp, "mean": list(p.mean), "std": list(p.std), "feature": (
             "class token + mean patch token" if p.pool == "token+mean" else "class token"),
         "weights": p.files}
        for p in PRESETS.values()
    ]


register_encoder_family(EncoderFamily("preset", FORMAT.name, create, load, save, claims_name=is_preset))
