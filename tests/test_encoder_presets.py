"""Named foundation-model encoders (``--encoder uni --encoder-weights PATH``): each preset, built from random weights
saved in the model's published layout, gives the features of timm's own build with the model card's options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wsi_mamba.cli import main
from wsi_mamba.commands._args import UsageError, encoder_options
from wsi_mamba.models.encoders import create_encoder, save_encoder
from wsi_mamba.models.encoders.dinov2_hf import hf_dinov2_to_timm, timm_vit_args
from wsi_mamba.models.encoders.presets import (
    ARCHITECTURE_DEFAULTS,
    PRESETS,
    model_args,
    preset_param_count,
    vit_param_count,
)
from wsi_mamba.models.encoders.timm import import_timm

timm = import_timm()
SwiGLU = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}

# The model cards' own timm calls (architecture, kwargs, how the embedding is taken from the output), written
# out independently of the presets table; ``layout``: how the repository ships the weights.
CARDS = {
    "uni": ("vit_large_patch16_224", dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                                          dynamic_img_size=True), "cls", "folder-bin"),
    "uni2-h": ("vit_giant_patch14_224", dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5,
                                             embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0,
                                             no_embed_class=True, reg_tokens=8, dynamic_img_size=True, **SwiGLU),
               "cls", "bare-bin"),
    "virchow": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375,
                                             global_pool="", dynamic_img_size=True, **SwiGLU), 1, "folder-bin"),
    "virchow2": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4,
                                              mlp_ratio=5.3375, global_pool="", dynamic_img_size=True, **SwiGLU),
                 5, "folder-safetensors"),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", dict(img_size=224, init_values=1e-5, global_pool="token",
                                                          num_classes=0, dynamic_img_size=False),
                    "cls", "folder-safetensors"),
    "h-optimus-1": ("vit_giant_patch14_reg4_dinov2", dict(img_size=224, init_values=1e-5, global_pool="token",
                                                          num_classes=0, dynamic_img_size=False),
                    "cls", "folder-bin"),
    "prov-gigapath": ("vit_giant_patch14_dinov2", dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536,
                                                       depth=40, num_heads=24, init_values=1e-5, mlp_ratio=5.33334,
                                                       num_classes=0), "cls", "folder-bin"),
}
PUBLISHED_PARAMS = {  # model cards / papers: (value, half a unit of its last stated digit)
    "uni": (303.35e6, 0.005e6), "uni2-h": (681e6, 0.5e6), "h-optimus-0": (1.1e9, 0.05e9),
    "h-optimus-1": (1.1e9, 0.05e9),
    "prov-gigapath": (1.13e9, 0.005e9), "phikon-v2": (303e6, 0.5e6), "hibou-b": (85.7e6, 0.05e6),
    "hibou-l": (303.7e6, 0.05e6),
    "virchow": (632e6, 1e6), "virchow2": (632e6, 1e6),  # "632M" in the papers; 631.2M by count
}


def _randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for every tensor (layer scales too, so that no block is a near-identity)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in model.state_dict().items()}


def _embedding(out: torch.Tensor, pool: str | int) -> torch.Tensor:
    """The card's embedding from the model's output: pooled already, or class token + mean of tokens ``pool``:."""
    return out if pool == "cls" else torch.cat([out[:, 0], out[:, pool:].mean(1)], dim=-1)


def _publish(folder: Path, layout: str, state: dict, config: dict) -> Path:
    """``state`` saved as the model's repository has it; the path to pass as --encoder-weights."""
    folder.mkdir(parents=True)
    if layout == "bare-bin":
        torch.save(state, folder / "pytorch_model.bin")
        return folder / "pytorch_model.bin"
    (folder / "config.json").write_text(json.dumps(config))
    if layout == "folder-safetensors":
        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("name", sorted(CARDS))
def test_timm_preset_equals_the_model_cards_build(name: str, tmp_path: Path) -> None:
    architecture, card, pool, layout = CARDS[name]
    reference = timm.create_model(architecture, pretrained=False, **{**card, "depth": 1}).eval()
    state = _randomise(reference, seed=len(name))
    reference.load_state_dict(state)
    serializable = {k: v for k, v in card.items() if k not in SwiGLU}
    weights = _publish(tmp_path / name, layout, state, {"architecture": architecture, "model_args": serializable})
    encoder = create_encoder(name, weights=weights, depth=1)  # full width, one block: the same build options
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _embedding(reference(x), pool)
        got = encoder.features(x)
    assert got.shape == (2, PRESETS[name].feature_dim) == (2, encoder.dim)
    assert (got - expected).abs().max().item() <= 1e-5
    # the arithmetic parameter count (used for the full configs) is right for this build
    assert vit_param_count({**ARCHITECTURE_DEFAULTS[architecture], **model_args(PRESETS[name], depth=1)}) == sum(
        p.numel() for p in reference.parameters()
    )
    assert (encoder.tile_px, encoder.mpp, encoder.input_px) == (224, 0.5, 224)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_full_configs_have_the_published_size(name: str) -> None:
    """Full ViT-L/H/g configurations are not built (0.3-1.1 B parameters): their size by arithmetic matches the
    published one to its stated precision."""
    published, precision = PUBLISHED_PARAMS[name]
    assert abs(preset_param_count(PRESETS[name]) - published) <= precision


def test_full_config_values() -> None:
    full = {name: model_args(p) for name, p in PRESETS.items()}
    assert full["prov-gigapath"]["depth"] == 40 and full["prov-gigapath"]["patch_size"] == 16
    assert full["uni2-h"]["reg_tokens"] == 8 and full["virchow2"]["reg_tokens"] == 4
    assert full["hibou-l"]["mlp_layer"] == "SwiGLUPacked" and "mlp_layer" not in full["hibou-b"]
    phikon = full["phikon-v2"]
    assert (phikon["embed_dim"], phikon["depth"], phikon["patch_size"], phikon["reg_tokens"]) == (1024, 24, 16, 0)
    assert PRESETS["h-optimus-0"].mean == (0.707223, 0.578729, 0.703617)
    assert preset_param_count(PRESETS["prov-gigapath"]) == 1_134_953_984
    assert preset_param_count(PRESETS["uni"]) == 303_350_784


# --- transformers DINOv2 layouts (Phikon-v2, Hibou) ------------------------------------------------------------


def _small_hf_config(name: str, image_size: int = 224) -> dict:
    """The preset's published transformers config at a small width and depth (same structure)."""
    return {**PRESETS[name].hf_config, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": image_size, "model_type": "dinov2", "architectures": ["Dinov2Model"]}


def _timm_to_hf(state: dict, config: dict) -> dict:
    """The inverse renaming (timm ViT → transformers DINOv2), written independently of the converter."""
    registers = config.get("num_register_tokens", 0)
    mlp = ("weights_in", "weights_out") if config.get("use_swiglu_ffn") else ("fc1", "fc2")
    out = {"embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "embeddings.mask_token": torch.zeros(1, state["cls_token"].shape[-1]),
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    if registers:
        cls_pos = torch.randn_like(state["cls_token"])
        out["embeddings.cls_token"] = state["cls_token"] - cls_pos
        out["embeddings.position_embeddings"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        out["embeddings.register_tokens"] = state["reg_token"]
    else:
        out["embeddings.cls_token"] = state["cls_token"]
        out["embeddings.position_embeddings"] = state["pos_embed"]
    for i in range(config["num_hidden_layers"]):
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            for part, tensor in zip(("query", "key", "value"), state[f"{tm}attn.qkv.{kind}"].chunk(3), strict=True):
                out[f"{hf}attention.attention.{part}.{kind}"] = tensor
            out[f"{hf}attention.output.dense.{kind}"] = state[f"{tm}attn.proj.{kind}"]
            out[f"{hf}norm1.{kind}"], out[f"{hf}norm2.{kind}"] = state[f"{tm}norm1.{kind}"], state[f"{tm}norm2.{kind}"]
            out[f"{hf}mlp.{mlp[0]}.{kind}"], out[f"{hf}mlp.{mlp[1]}.{kind}"] = (
                state[f"{tm}mlp.fc1.{kind}"], state[f"{tm}mlp.fc2.{kind}"])
        out[f"{hf}layer_scale1.lambda1"], out[f"{hf}layer_scale2.lambda1"] = state[f"{tm}ls1.gamma"], state[
            f"{tm}ls2.gamma"]
    return out


@pytest.mark.parametrize("name", ["phikon-v2", "hibou-b", "hibou-l"])
def test_dinov2_preset_round_trips_the_key_conversion(name: str, tmp_path: Path) -> None:
    config = _small_hf_config(name)
    args = timm_vit_args(config, 224)
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, **{
        **args, **({"mlp_layer": timm.layers.SwiGLUPacked} if "mlp_layer" in args else {})}).eval()
    state = _randomise(reference, seed=3)
    reference.load_state_dict(state)
    hf_state = _timm_to_hf(state, config)
    weights = tmp_path / name
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in hf_state.items()}, str(weights / "model.safetensors"))
    encoder = create_encoder(name, weights=weights)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (encoder.features(x) - reference(x)).abs().max().item() <= 1e-5
    assert encoder.dim == 64 and encoder.mean == PRESETS[name].mean


@pytest.mark.parametrize(("name", "image_size"), [("phikon-v2", 224), ("hibou-b", 224), ("hibou-l", 224),
                                                  ("phikon-v2", 112), ("hibou-b", 112)])
def test_dinov2_preset_equals_transformers(name: str, image_size: int, tmp_path: Path) -> None:
    """Against transformers' own DINOv2 (pooler_output), when transformers is installed; image_size 112: the
    position embeddings are resampled to the 224 px input as transformers does."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (optional reference)")
    config = _small_hf_config(name, image_size)
    if config.get("num_register_tokens"):
        hf_model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**config))
    else:
        hf_model = transformers.Dinov2Model(transformers.Dinov2Config(**config))
    hf_model.load_state_dict(_randomise(hf_model, seed=4))
    hf_model.eval()
    weights = tmp_path / name
    hf_model.save_pretrained(weights)
    encoder = create_encoder(name, weights=weights)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = hf_model(pixel_values=x).pooler_output
        assert (encoder.features(x) - expected).abs().max().item() <= 1e-5


def test_conversion_names_a_foreign_state_dict() -> None:
    with pytest.raises(ValueError, match=r"no tensor 'embeddings\.cls_token'"):
        hf_dinov2_to_timm({"head.weight": torch.zeros(1)}, _small_hf_config("phikon-v2"), 224)


# --- use: encode, save and reload, errors, the CLI ----------------------------------------------------------------


def _small_encoder(tmp_path: Path, name: str = "h-optimus-0"):
    architecture, card, _, _ = CARDS[name]
    reference = timm.create_model(architecture, pretrained=False, **{**card, "depth": 1, "embed_dim": 48,
                                                                     "num_heads": 4}).eval()
    reference.load_state_dict(_randomise(reference, seed=6))
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    return reference, create_encoder(name, weights=weights, depth=1, embed_dim=48, num_heads=4)


def test_encode_uses_the_presets_normalisation_and_input_size(tmp_path: Path) -> None:
    reference, encoder = _small_encoder(tmp_path)
    tiles = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(PRESETS["h-optimus-0"].mean).view(1, 3, 1, 1)) / torch.tensor(
        PRESETS["h-optimus-0"].std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert np.abs(encoder.encode(tiles) - reference(x).numpy()).max() <= 1e-5
    assert encoder.encode(tiles[:, :112, :112]).shape == (2, 48)  # other tile sizes are resized to 224


def test_saved_preset_encoder_reloads(tmp_path: Path) -> None:
    _, encoder = _small_encoder(tmp_path, "virchow2")
    path = save_encoder(encoder, tmp_path / "enc")
    again = create_encoder(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(again.features(x), encoder.features(x))
    assert (again.hash, again.dim, again.mean) == (encoder.hash, 96, encoder.mean)
    assert encoder.source_record()["encoder_spec"] == "preset:virchow2"


def test_preset_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"uni: needs --encoder-weights.*MahmoodLab/UNI"):
        create_encoder("uni")
    _small_encoder(tmp_path)
    with pytest.raises(ValueError, match=r"weights\.safetensors: .*not UNI weights"):
        create_encoder("uni", weights=tmp_path / "weights.safetensors")
    folder = tmp_path / "virchow2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_large_patch16_224"}))
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    monkeypatch.chdir(tmp_path)  # --encoder virchow2 --encoder-weights virchow2: the preset, not the folder
    with pytest.raises(ValueError, match=r"config\.json: architecture 'vit_large_patch16_224', not Virchow2"):
        create_encoder("virchow2", weights="virchow2")


def test_encoder_weights_take_a_preset_name() -> None:
    class Args:
        encoder_weights, encoder_tile_px, encoder_mpp = "uni/", None, None

    assert encoder_options(Args(), "UNI")["weights"] == "uni/"
    with pytest.raises(UsageError, match="wsi-mamba encoders"):
        encoder_options(Args(), "resnet")


def test_encoders_command_lists_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encoders", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 7 and {r["name"] for r in rows} >= {"uni", "uni2-h", "virchow2", "h-optimus-0",
                                                            "prov-gigapath", "phikon-v2", "hibou-l"}
    virchow2 = next(r for r in rows if r["name"] == "virchow2")
    assert (virchow2["feature_dim"], virchow2["mpp"], virchow2["input_px"]) == (2560, 0.5, 224)
    assert main(["encoders"]) == 0
    text = capsys.readouterr().out
    assert "prov-gigapath" in text and "1.13B" in text and "--encoder NAME --encoder-weights PATH" in text


def test_half_precision_weights_give_a_float32_model(tmp_path: Path) -> None:
    reference, _ = _small_encoder(tmp_path)
    half = tmp_path / "half.safetensors"
    save_file({k: v.half().contiguous() for k, v in reference.state_dict().items()}, str(half))
    encoder = create_encoder("h-optimus-0", weights=half, depth=1, embed_dim=48, num_heads=4)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.float32}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (encoder.features(x) - reference(x)).abs().max().item() < 0.05  # the weights' own rounding
