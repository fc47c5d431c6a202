"""Slide model: masking, whole-grid scan, pooling, backends, grid placement, checkpoint I/O, input checks."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from wsi_mamba.models import (
    SlideMamba,
    SlideModelConfig,
    SlideOutput,
    cross_merge,
    cross_scan,
    grid_tensors,
    load_slide_model,
    save_slide_model,
)
from wsi_mamba.models.ss2d import route as _route
from wsi_mamba.models.ss2d import unroute as _unroute

IN_DIM = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> SlideMamba:
    torch.manual_seed(seed)
    settings = {"in_dim": IN_DIM, "dim": 16, "depth": 2, "d_state": 4, "attn_dim": 8, "scan_backend": "cpu"}
    model = SlideMamba(SlideModelConfig(**{**settings, **overrides})).to(dtype)
    with torch.no_grad():  # random biases / norms so that no masking bug hides behind a zero init
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def random_inputs(batch: int, rows: int, cols: int, dtype=torch.float32, seed: int = 1, tissue: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, IN_DIM, rows, cols, generator=gen, dtype=dtype)
    mask = torch.rand(batch, rows, cols, generator=gen) < tissue
    mask[:, 0, 0] = True
    return features, mask


def outputs_equal(a: SlideOutput, b: SlideOutput) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("logit", "tile_logits", "attention"))


# ------------------------------------------------------------------------------------------------ masking


def test_background_values_do_not_matter() -> None:
    model = make_model()
    features, mask = random_inputs(2, 9, 11)
    noisy = features.clone()
    off = ~mask[:, None].expand_as(features)
    noisy[off] = 1e4 * torch.randn(int(off.sum()))
    wild = features.clone()
    wild[off] = float("nan")
    wild[:, :, 8, 10] = float("inf")
    mask[:, 8, 10] = False
    with torch.no_grad():
        base, out_noisy, out_wild = model(features, mask), model(noisy, mask), model(wild, mask)
    assert outputs_equal(base, out_noisy)
    assert outputs_equal(base, out_wild)
    assert torch.isfinite(base.logit).all()


def test_gradients_of_background_features_are_zero() -> None:
    model = make_model().train()  # dropout on: still exactly zero
    features, mask = random_inputs(2, 7, 8)
    features.requires_grad_(True)
    out = model(features, mask)
    (out.logit.sum() + (out.tile_logits**2).sum() + (out.attention * torch.randn_like(out.attention)).sum()).backward()
    off = ~mask[:, None].expand_as(features)
    assert torch.count_nonzero(features.grad[off]) == 0
    assert torch.count_nonzero(features.grad[~off]) > 0


def set_compact(model: SlideMamba, compact: bool) -> SlideMamba:
    for block in model.blocks:
        block.op.compact = compact
    return model


@pytest.mark.parametrize("compact", [True, False])
def test_background_margin_changes_nothing(compact: bool) -> None:
    """Tokens at background cells are not tokens at all: a margin of background around the tissue (or the
    crop to the bounding box) changes the outputs at tissue cells only by rounding."""
    model = set_compact(make_model(torch.float64), compact)
    gen = np.random.default_rng(3)
    cells = [(r, c) for r in range(6) for c in range(7) if gen.random() < 0.55 or (r, c) in ((0, 0), (5, 6))]
    rows, cols = np.array(cells).T + np.array([[4], [3]])
    feats = gen.standard_normal((len(cells), IN_DIM))
    small, small_mask, offset = grid_tensors(feats, rows, cols)
    big, big_mask, _ = grid_tensors(feats, rows, cols, shape=(14, 15), crop=False)
    assert offset == (4, 3) and small.shape[-2:] == (6, 7) and big.shape[-2:] == (14, 15)
    with torch.no_grad():
        a = model(small.double(), small_mask)
        b = model(big.double(), big_mask)
    window = (slice(None), slice(4, 10), slice(3, 10))
    torch.testing.assert_close(a.tile_logits, b.tile_logits[window], rtol=0, atol=1e-12)
    torch.testing.assert_close(a.attention, b.attention[window], rtol=0, atol=1e-12)
    torch.testing.assert_close(a.logit, b.logit, rtol=0, atol=1e-12)
    assert b.attention.sum() == pytest.approx(1.0) and b.attention[~big_mask].abs().max() == 0


def test_distant_tissue_islands_interact_through_the_scan() -> None:
    model = make_model(torch.float64)  # at init the cross-island effect is ~1e-7: below float32 rounding
    features, _ = random_inputs(1, 16, 16, dtype=torch.float64)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, :2, :2] = True  # island A
    mask[0, 12:, 13:] = True  # island B, far beyond the 3x3 conv's reach
    changed = features.clone()
    changed[0, :, 12:, 13:] += 1.0
    with torch.no_grad():
        a, b = model(features, mask), model(changed, mask)
    island_a = a.tile_logits[0, :2, :2] - b.tile_logits[0, :2, :2]
    assert island_a.abs().max() > 1e-9  # float64 rounding is ~1e-16
    background = features.clone()
    background[0, :, 5:9, 5:9] += 1.0  # the gap between the islands: no effect at all
    with torch.no_grad():
        assert outputs_equal(a, model(background, mask))


# ------------------------------------------------------------------------------------------------ pooling


def test_attention_is_a_softmax_over_tissue_and_logit_its_mean_tile_logit() -> None:
    model = make_model()
    features, mask = random_inputs(3, 6, 9)
    mask[2] = False  # an all-background sample
    model.train()
    out = model(features, mask)
    assert out.logit.shape == (3,) and out.tile_logits.shape == out.attention.shape == (3, 6, 9)
    assert torch.all(out.attention >= 0)
    torch.testing.assert_close(out.attention[:2].sum((1, 2)), torch.ones(2))
    assert torch.count_nonzero(out.attention[~mask]) == 0
    assert torch.count_nonzero(out.tile_logits[~mask]) == 0
    assert out.logit[2] == 0 and torch.count_nonzero(out.attention[2]) == 0
    out.logit.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model(features, mask)
    torch.testing.assert_close(out.logit, (out.attention * out.tile_logits).sum((1, 2)))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    features, mask = random_inputs(1, 5, 6)
    grads = []
    for enable in (False, True):
        model = make_model(dropout=0.0).train()
        model.set_grad_checkpointing(enable)
        model(features, mask).logit.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------- backends


@pytest.mark.parametrize("compact", [True, False])
def test_cpu_and_reference_backends_agree_forward_and_backward(compact: bool) -> None:
    features, mask = random_inputs(2, 5, 6, dtype=torch.float64)
    mask[1, :, 3:] = False  # samples with different tissue counts (padding in the compact scan)
    results = []
    for backend in ("cpu", "reference"):
        model = set_compact(make_model(torch.float64, scan_backend=backend), compact)
        feats = features.clone().requires_grad_(True)
        out = model(feats, mask)
        (out.logit.sum() + (out.tile_logits * out.attention).sum()).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        results.append((out, feats.grad, grads))
    (out_c, g_c, p_c), (out_r, g_r, p_r) = results
    for key in ("logit", "tile_logits", "attention"):
        torch.testing.assert_close(getattr(out_c, key), getattr(out_r, key), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_c, g_r, rtol=1e-9, atol=1e-12)
    for name in p_c:
        torch.testing.assert_close(p_c[name], p_r[name], rtol=1e-9, atol=1e-12, msg=name)


def test_scan_paths_agree_and_route_helpers_match_cross_scan() -> None:
    x = torch.randn(2, 3, 4, 5)
    routes = cross_scan(x)
    ys = torch.randn_like(routes)
    for k in range(4):
        assert torch.equal(_route(x, k), routes[:, k])
    merged = sum(_unroute(ys[:, k], k, 4, 5) for k in range(4))
    torch.testing.assert_close(merged, cross_merge(ys, 4, 5))
    features, mask = random_inputs(3, 5, 7, dtype=torch.float64)
    mask[1, 2:] = False
    mask[2] = False
    model = make_model(torch.float64)
    outs = []
    for compact in (True, False):
        for per in (1, 2, 4):
            for block in set_compact(model, compact).blocks:
                block.op.routes_per_call = per
            with torch.no_grad():
                outs.append(model(features, mask))
    for other in outs[1:]:
        for key in ("logit", "tile_logits", "attention"):
            torch.testing.assert_close(getattr(other, key), getattr(outs[0], key), rtol=1e-12, atol=1e-12)


@pytest.mark.triton
def test_triton_backend_matches_cpu() -> None:
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    features, mask = random_inputs(1, 3, 4)
    model = make_model(depth=1).to(device)
    with torch.no_grad():
        cpu = model(features.to(device), mask.to(device))
        model.set_scan_backend("triton")
        tri = model(features.to(device), mask.to(device))
    torch.testing.assert_close(tri.tile_logits, cpu.tile_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tri.logit, cpu.logit, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- grid_tensors


def test_grid_tensors_places_and_crops() -> None:
    feats = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float16)
    rows, cols = np.array([2, 0, 3]), np.array([5, 4, 4])
    grid, mask, offset = grid_tensors(feats, rows, cols)
    assert offset == (0, 4) and grid.shape == (1, 2, 4, 2) and grid.dtype == torch.float32
    expected_mask = torch.tensor([[True, False], [False, False], [False, True], [True, False]])
    assert torch.equal(mask[0], expected_mask)
    assert torch.equal(grid[0, :, 2, 1], torch.tensor([1.0, 2.0]))
    assert torch.equal(grid[0, :, 0, 0], torch.tensor([3.0, 4.0]))
    assert torch.equal(grid[0, :, 3, 0], torch.tensor([5.0, 6.0]))
    assert torch.count_nonzero(grid[0][:, ~expected_mask]) == 0

    full, full_mask, offset = grid_tensors(torch.from_numpy(feats), rows, cols, shape=(5, 7), crop=False)
    assert offset == (0, 0) and full.shape == (1, 2, 5, 7) and int(full_mask.sum()) == 3
    assert torch.equal(full[..., 0:4, 4:6], grid) and torch.equal(full_mask[..., 0:4, 4:6], mask)
    uncropped, _, _ = grid_tensors(feats, rows, cols, crop=False)
    assert uncropped.shape == (1, 2, 4, 6)

    order = np.array([2, 0, 1])
    again = grid_tensors(feats[order], rows[order], cols[order])
    assert torch.equal(again[0], grid) and torch.equal(again[1], mask) and again[2] == (0, 4)


@pytest.mark.parametrize(
    ("rows", "cols", "shape", "match"),
    [
        ([0, 0, 1], [1, 1, 0], None, r"more than one tile at grid cell \(row, col\) = \(0, 1\)"),
        ([0, 1, 5], [0, 1, 0], (5, 3), "outside the grid"),
        ([0, -1, 2], [0, 1, 0], None, "rows has negative"),
        ([0, 1], [0, 1, 2], None, r"rows must have shape \(3,\)"),
        ([0.0, 1.0, 2.0], [0, 1, 2], None, "rows must hold integers"),
    ],
)
def test_grid_tensors_rejects_bad_indices(rows, cols, shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        grid_tensors(np.zeros((3, 2)), np.array(rows), np.array(cols), shape=shape)


# -------------------------------------------------------------------------------------------- checkpoints


def test_save_load_roundtrip(tmp_path) -> None:
    model = make_model()
    path = save_slide_model(model, tmp_path / "slide", metadata={"epoch": 3, "auc": 0.91})
    assert path.name == "slide.safetensors"
    meta = json.loads((tmp_path / "slide.json").read_text())
    assert meta["format"] == "wsi-mamba/slide-model" and meta["format_version"] == 1
    assert meta["config"] == model.config.to_dict() and meta["metadata"] == {"epoch": 3, "auc": 0.91}
    loaded, metadata = load_slide_model(path)
    assert not loaded.training and loaded.config == model.config and metadata == {"epoch": 3, "auc": 0.91}
    features, mask = random_inputs(2, 6, 7)
    with torch.no_grad():
        a, b = model(features, mask), loaded(features, mask)
    for key in ("logit", "tile_logits", "attention"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-6, atol=1e-7)
    ref, _ = load_slide_model(tmp_path / "slide", scan_backend="reference")
    assert all(block.op.scan_backend == "reference" for block in ref.blocks)
    with pytest.raises(ValueError, match=r"unknown slide model config fields: \['colour'\]"):
        load_slide_model(path, colour="red")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_slide_model(model, tmp_path / "bad", metadata={"x": object()})


def test_checkpoint_of_other_config_names_keys(tmp_path) -> None:
    path = save_slide_model(make_model(), tmp_path / "slide.safetensors")
    meta_file = tmp_path / "slide.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "config": {**meta["config"], "depth": 1}}))
    with pytest.raises(ValueError, match=r"slide\.safetensors: .*unexpected keys \(\d+\): blocks\.1\."):
        load_slide_model(path)
    meta_file.write_text(json.dumps({**meta, "config": {**meta["config"], "attn_dim": 4}}))
    with pytest.raises(ValueError, match=r"shape mismatches \(\d+\): pool\.V\.weight"):
        load_slide_model(path)


def test_bad_checkpoint_files_raise_value_error(tmp_path) -> None:
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(pickle.dumps({"state": Trap()}))
    with pytest.raises(ValueError, match=r"fake\.safetensors: no model config fake\.json"):
        load_slide_model(fake)
    save_slide_model(make_model(depth=1), tmp_path / "real")
    (tmp_path / "fake.json").write_text((tmp_path / "real.json").read_text())
    with pytest.raises(ValueError, match=r"fake\.safetensors: not a readable safetensors file"):
        load_slide_model(fake)
    assert not marker.exists()

    (tmp_path / "fake.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"fake\.json: not valid JSON"):
        load_slide_model(fake)
    (tmp_path / "fake.json").write_text(json.dumps({"format": "wsi-mamba/vmamba", "format_version": 1}))
    with pytest.raises(ValueError, match=r"fake\.json: not a wsi-mamba/slide-model config"):
        load_slide_model(fake)
    with pytest.raises(ValueError, match=r"missing\.safetensors: no such checkpoint file"):
        load_slide_model(tmp_path / "missing")


# ----------------------------------------------------------------------------------------- inputs, config


@pytest.mark.parametrize(
    ("features_shape", "mask_shape", "mask_dtype", "match"),
    [
        ((1, IN_DIM + 1, 4, 5), (1, 4, 5), torch.bool, "features of shape"),
        ((IN_DIM, 4, 5), (1, 4, 5), torch.bool, "features of shape"),
        ((1, IN_DIM, 4, 5), (1, 5, 4), torch.bool, "bool mask of shape"),
        ((2, IN_DIM, 4, 5), (1, 4, 5), torch.bool, "bool mask of shape"),
        ((1, IN_DIM, 4, 5), (1, 4, 5), torch.uint8, "bool mask of shape"),
        ((1, IN_DIM, 0, 5), (1, 0, 5), torch.bool, "non-empty"),
    ],
)
def test_shape_errors(features_shape, mask_shape, mask_dtype, match) -> None:
    model = make_model(depth=1)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(features_shape), torch.ones(mask_shape, dtype=mask_dtype))


def test_config_dict_roundtrip_and_validation() -> None:
    config = SlideModelConfig(in_dim=32, depth=3, dropout=0.0)
    assert SlideModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown slide model config fields: \['heads', 'zz'\]"):
        SlideModelConfig.from_dict({**config.to_dict(), "zz": 1, "heads": 2})
    with pytest.raises(ValueError, match="in_dim"):
        SlideModelConfig.from_dict({"dim": 8})
    with pytest.raises(ValueError, match="scan_backend"):
        SlideModelConfig(in_dim=4, scan_backend="cuda")
    with pytest.raises(ValueError, match="dropout"):
        SlideModelConfig(in_dim=4, dropout=1.0)


def test_large_grid_smoke() -> None:
    torch.manual_seed(0)
    model = SlideMamba(SlideModelConfig(in_dim=16, dim=16, depth=1, scan_backend="cpu")).eval()
    features = torch.randn(1, 16, 300, 300)
    yy, xx = torch.meshgrid(torch.arange(300), torch.arange(300), indexing="ij")
    mask = (((yy - 150) ** 2 + (xx - 140) ** 2) < 120**2)[None]
    with torch.no_grad():
        out = model(features, mask)
    assert torch.isfinite(out.logit).all() and out.tile_logits.shape == (1, 300, 300)
    assert out.attention.sum().item() == pytest.approx(1.0, abs=1e-4)
