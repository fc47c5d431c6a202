"""The published configurations: parameter counts and state-dict keys/shapes equal the official ones."""

from __future__ import annotations

import itertools

import pytest
import torch
from vmamba_keys import official_keys

from wsi_mamba.models import create_model, list_models

OFFICIAL_PARAMS = {"vmamba_tiny": 30_249_064, "vmamba_small": 50_147_752, "vmamba_base": 88_557_800}


def meta_model(name: str) -> torch.nn.Module:
    """Build without allocating memory (shapes and names only)."""
    with torch.device("meta"):
        return create_model(name)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_equals_official(name: str) -> None:
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_state_dict_equals_official_key_list(size: str) -> None:
    model = meta_model(f"vmamba_{size}")
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == official_keys(size)


def test_nano_is_small() -> None:
    assert "vmamba_nano" in list_models()
    assert sum(p.numel() for p in meta_model("vmamba_nano").parameters()) <= 3_000_000


def test_unknown_name_and_override() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vmamba_huge")
    with pytest.raises(ValueError, match="unknown VMamba config fields"):
        create_model("vmamba_nano", not_a_field=1)
    model = meta_model("vmamba_nano")
    assert model.config.num_classes == 1000
    with torch.device("meta"):
        assert create_model("vmamba_nano", num_classes=2).classifier.head.out_features == 2


def test_published_init() -> None:
    torch.manual_seed(0)
    model = create_model("vmamba_nano", d_state=3)
    op = model.layers[0].blocks[0].op
    assert torch.allclose(op.A_logs, torch.log(torch.tensor([1.0, 2.0, 3.0])).expand_as(op.A_logs))
    assert torch.all(op.Ds == 1)
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert op.dt_projs_weight.abs().max() <= op.dt_rank**-0.5
    assert op.x_proj_weight.abs().max() <= op.d_inner**-0.5
    assert op.dt_rank == 2  # ceil(32 / 16), from the block width
    assert torch.all(model.layers[0].blocks[0].norm.weight == 1)
    assert model.classifier.head.bias.abs().max() == 0
    assert model.classifier.head.weight.abs().max() <= 2.0


def test_drop_path_schedule_is_linear_over_blocks() -> None:
    rates = [b.drop_path.p for layer in meta_model("vmamba_tiny").layers for b in layer.blocks]
    assert len(rates) == 14 and rates[0] == 0.0 and abs(rates[-1] - 0.2) < 1e-7
    assert all(abs((b - a) - 0.2 / 13) < 1e-6 for a, b in itertools.pairwise(rates))
