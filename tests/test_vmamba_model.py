"""VSSM on the small CPU configuration: shapes, any input size, input checks, checkpointing, backends."""

from __future__ import annotations

import re

import pytest
import torch

from wsi_mamba.models import VMambaConfig, create_model


@pytest.fixture(scope="module")
def nano() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vmamba_nano", num_classes=5, scan_backend="cpu").eval()


def test_forward_features_pyramid_and_head(nano: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = nano.forward_features(x)
        logits = nano.forward_head(feats)
        pooled = nano.forward_head(feats, pre_logits=True)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    assert logits.shape == (2, 5) and pooled.shape == (2, 256)
    torch.testing.assert_close(nano(x), logits)


def test_odd_input_size_runs(nano: torch.nn.Module) -> None:
    with torch.no_grad():
        feats = nano.forward_features(torch.randn(1, 3, 37, 53))
        logits = nano.forward_head(feats)
    assert [tuple(f.shape[2:]) for f in feats] == [(10, 14), (5, 7), (3, 4), (2, 2)]
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", [(1, 4, 32, 32), (3, 32, 32), (1, 1, 32, 32)])
def test_wrong_input_shape_raises(nano: torch.nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got {tuple(shape)}")):
        nano(torch.randn(*shape))


def test_reference_and_cpu_backends_agree(nano: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        nano.set_scan_backend("reference")
        ref = nano(x)
        nano.set_scan_backend("cpu")
        out = nano(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)



def test_unknown_scan_backend_is_refused(nano: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="scan backend is 'cuda', expected one of auto, reference, cpu, numba, triton"):
        nano.set_scan_backend("cuda")
    assert {m.scan_backend for m in nano.modules() if hasattr(m, "scan_backend")} == {"cpu"}
    with pytest.raises(ValueError, match="scan_backend is 'cuda'"):
        VMambaConfig(scan_backend="cuda")


def test_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("vmamba_nano", depths=(1, 1, 0, 0), num_classes=3, scan_backend="cpu")
    x = torch.randn(1, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(ckpt, plain)


@pytest.mark.triton
def test_triton_backend_matches_cpu() -> None:
    pytest.importorskip("triton", reason="triton does not import (it ships Linux wheels only)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = create_model("vmamba_nano", depths=(1, 0, 0, 0), num_classes=3).to(device).eval()
    x = torch.randn(1, 3, 32, 32, device=device)
    with torch.no_grad():
        model.set_scan_backend("cpu" if device == "cpu" else "reference")
        expected = model(x)
        model.set_scan_backend("triton")
        out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_autocast_close_to_float32(nano: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = nano(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = nano(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=5e-2)


def test_drop_path_only_while_training() -> None:
    torch.manual_seed(0)
    model = create_model("vmamba_nano", depths=(1, 0, 0, 1), drop_path_rate=0.5, scan_backend="cpu")
    assert [b.drop_path.p for layer in model.layers for b in layer.blocks] == [0.0, 0.5]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))
