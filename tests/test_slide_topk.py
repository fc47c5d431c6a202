"""The slide model's max-evidence (top-k) branch: off by default with the computation unchanged bit for bit
(shipped checkpoints included), masked cells never picked, gradients, a lone tumour tile, checkpoint I/O."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from wsi_mamba.models import SlideMamba, SlideModelConfig, load_slide_model, save_slide_model
from wsi_mamba.models.aggregators import create_aggregator
from wsi_mamba.models.slide_model import TopKEvidence, masked_softmax, topk_mean
from wsi_mamba.workflows.bundle import shipped_models
from wsi_mamba.workflows.training.configs import SlideTrainingConfig
from wsi_mamba.workflows.training.slide_training import train_slide_model

IN_DIM = 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(seed: int = 0, **overrides) -> SlideMamba:
    torch.manual_seed(seed)
    settings = {"in_dim": IN_DIM, "dim": 16, "depth": 1, "d_state": 4, "attn_dim": 8, "scan_backend": "cpu"}
    model = SlideMamba(SlideModelConfig(**{**settings, **overrides}))
    with torch.no_grad():  # random biases / norms so that no masking bug hides behind a zero init
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def with_topk(model: SlideMamba, k: int) -> SlideMamba:
    """A copy of ``model`` with the top-k branch (its other weights the same)."""
    other = SlideMamba(SlideModelConfig(**{**model.config.to_dict(), "topk": k})).eval()
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert missing == ["evidence.weight"] and unexpected == []
    return other


def random_inputs(batch: int = 2, rows: int = 5, cols: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, IN_DIM, rows, cols, generator=gen)
    mask = torch.rand(batch, rows, cols, generator=gen) < 0.6
    mask[:, 0, 0] = True
    return features, mask


def head_before_topk(model: SlideMamba, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``SlideMamba.forward_head`` as it was before the branch existed (frozen copy: the shipped computation)."""
    cells = mask[:, None]
    h = model.norm(tokens).masked_fill(~cells, 0.0)
    attention = masked_softmax(model.pool(h)[:, 0], mask)
    tile_logits = model.head(h)[:, 0].masked_fill(~mask, 0.0)
    pooled = torch.einsum("bdrc,brc->bd", h, attention.to(h.dtype))
    logit = F.linear(pooled, model.head.weight.flatten(1), model.head.bias)[:, 0]
    logit = torch.where(mask.flatten(1).any(1), logit, torch.zeros_like(logit))
    return logit, tile_logits, attention


# ------------------------------------------------------------------------------------- off = unchanged


def test_off_by_default_and_bit_identical_to_the_computation_before() -> None:
    model = make_model()
    assert model.config.topk == 0 and model.evidence is None
    assert not [k for k in model.state_dict() if k.startswith("evidence")]
    features, mask = random_inputs()
    with torch.no_grad():
        out = model(features, mask)
        expected = head_before_topk(model, model.forward_features(features, mask), mask)
    for got, want in zip((out.logit, out.tile_logits, out.attention), expected, strict=True):
        assert torch.equal(got, want)


def test_shipped_default_model_has_its_topk_branch() -> None:
    path = shipped_models()["pcam-camelyon"] / "slide_model.safetensors"
    topk = json.loads(path.with_suffix(".json").read_text())["config"]["topk"]
    model, _ = load_slide_model(path)  # strict: the branch's tensors are in the checkpoint
    assert topk > 0 and model.config.topk == topk and model.evidence is not None


def test_shipped_model_without_topk_loads_unchanged_and_gives_the_same_outputs() -> None:
    path = shipped_models()["synthetic-camelyon"] / "slide_model.safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert "topk" not in meta["config"]  # an old config: the field's default applies
    model, _ = load_slide_model(path)  # strict: no missing or unexpected tensor
    assert model.config.topk == 0 and model.evidence is None
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, model.config.in_dim, 6, 7, generator=gen)
    mask = torch.rand(1, 6, 7, generator=gen) > 0.3
    with torch.no_grad():
        out = model(features, mask)
        expected = head_before_topk(model, model.forward_features(features, mask), mask)
    assert all(torch.equal(a, b) for a, b in zip((out.logit, out.tile_logits, out.attention), expected, strict=True))


def test_old_config_loads_and_bounds_are_checked() -> None:
    old = {"in_dim": 8, "dim": 16, "depth": 1, "d_state": 2, "ssm_ratio": 1.0, "mlp_ratio": 2.0, "attn_dim": 8}
    assert SlideModelConfig.from_dict(old).topk == 0
    assert SlideModelConfig.from_dict({**old, "topk": 3}).topk == 3
    for bad in (-1, 65, 1.5, True, "2"):
        with pytest.raises(ValueError, match="topk"):
            SlideModelConfig(in_dim=8, topk=bad)


# ---------------------------------------------------------------------------------------------- topk_mean


def test_topk_mean_never_picks_masked_cells() -> None:
    logits = torch.tensor([[[-3.0, float("nan"), -1.0], [1e30, -2.0, float("inf")]]], requires_grad=True)
    mask = torch.tensor([[[True, False, True], [False, True, False]]])
    assert topk_mean(logits, mask, 1).item() == -1.0  # not 0, NaN or the huge values off tissue
    assert topk_mean(logits, mask, 2).item() == -1.5
    assert topk_mean(logits, mask, 5).item() == -2.0  # fewer tissue cells than k: the mean of all of them
    assert topk_mean(logits, torch.zeros_like(mask), 2).item() == 0.0  # no tissue
    topk_mean(logits, mask, 2).sum().backward()
    assert torch.equal(logits.grad, torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.5, 0.0]]]))


def test_shapes_and_nothing_leaks_from_off_tissue() -> None:
    model = make_model(topk=3)
    features, mask = random_inputs(batch=3)
    mask[2] = False  # a sample without tissue
    with torch.no_grad():
        out = model(features, mask)
        poisoned = features.clone()
        poisoned.masked_fill_(~mask[:, None], float("nan"))
        poisoned[:, :, -1, -1].masked_fill_(~mask[:, None, -1, -1], 1e30)
        again = model(poisoned, mask)
    assert out.logit.shape == (3,) and out.tile_logits.shape == out.attention.shape == (3, 5, 6)
    assert torch.isfinite(again.logit).all() and out.logit[2].item() == 0.0
    torch.testing.assert_close(again.logit, out.logit, rtol=0, atol=1e-6)


def test_gradients_reach_the_branch_and_not_the_background() -> None:
    model = make_model(topk=2)
    features, mask = random_inputs()
    features.requires_grad_(True)
    model(features, mask).logit.sum().backward()
    grad = model.evidence.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()
    assert torch.equal(features.grad.masked_select(~mask[:, None]), torch.zeros(int((~mask).sum()) * IN_DIM))
    for param in model.parameters():  # trained jointly: the rest of the model gets gradients too
        assert param.grad is not None


def test_a_lone_high_tile_raises_the_slide_logit_more_with_topk() -> None:
    """Constructed weights: tile logits are -2 everywhere and +6 on one tile (64 tissue tiles)."""
    off = make_model(dim=8)
    tokens = torch.randn(8).repeat(1, 8, 8, 1).permute(0, 3, 1, 2).contiguous()  # (1, 8, 8, 8) same token
    lone = tokens.clone()
    lone[0, :, 3, 4] = torch.randn(8)
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    with torch.no_grad():
        normed = off.norm(lone)[0]
        n0, n1 = normed[:, 0, 0], normed[:, 3, 4]
        direction = n1 - n0
        weight = 8.0 * direction / direction.dot(direction)  # w · (n1 - n0) = 8
        off.head.weight.copy_(weight.reshape(off.head.weight.shape))
        off.head.bias.fill_(-2.0 - float(weight.dot(n0)))
    on = with_topk(off, 2)
    with torch.no_grad():
        tile = off.forward_head(lone, mask).tile_logits
        torch.testing.assert_close(tile[0, 3, 4], torch.tensor(6.0))
        torch.testing.assert_close(tile[0, 0, 0], torch.tensor(-2.0))
        raise_off = off.forward_head(lone, mask).logit - off.forward_head(tokens, mask).logit
        raise_on = on.forward_head(lone, mask).logit - on.forward_head(tokens, mask).logit
        pooled = off.forward_head(lone, mask).logit
        # w = (1/2, 1/2): half the pooled logit plus half the top-2 mean (6 - 2) / 2
        torch.testing.assert_close(on.forward_head(lone, mask).logit, 0.5 * pooled + 0.5 * 2.0)
    assert raise_on.item() > raise_off.item() + 1.0


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_keeps_the_branch(tmp_path) -> None:
    model = make_model(topk=4)
    with torch.no_grad():
        model.evidence.weight.copy_(torch.tensor([0.3, 1.7]))
    path = save_slide_model(model, tmp_path / "slide")
    assert json.loads((tmp_path / "slide.json").read_text())["config"]["topk"] == 4
    loaded, _ = load_slide_model(path)
    assert isinstance(loaded.evidence, TopKEvidence) and loaded.evidence.k == 4
    assert torch.equal(loaded.evidence.weight, model.evidence.weight)
    features, mask = random_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(features, mask).logit, model(features, mask).logit)


def test_registry_and_training_options() -> None:
    assert create_aggregator("ss2d", IN_DIM, topk=3).config.topk == 3
    assert SlideTrainingConfig().topk == 0
    with pytest.raises(ValueError, match="topk"):
        SlideTrainingConfig(topk=65)
    cfg = SlideTrainingConfig(aggregator="abmil", topk=2)
    with pytest.raises(ValueError, match="ss2d"):  # refused before anything is read
        train_slide_model("no-features", "no-labels.csv", "no-model", cfg=cfg, progress=False)
