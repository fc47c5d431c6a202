"""Analytic FLOPs/params against the official fvcore numbers, and the ``model-info`` command."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from wsi_mamba.commands import models as models_command
from wsi_mamba.models import CONFIGS
from wsi_mamba.models.analysis import analyze, count_params, stage_sizes

# (name, overrides, params, GFLOPs at 224²) from SPEC §1 (official fvcore with the repo's scan rule).
OFFICIAL = [
    ("vmamba_tiny", {}, 30_249_064, 4.906),
    ("vmamba_small", {}, 50_147_752, 8.716),
    ("vmamba_base", {}, 88_557_800, 15.359),
    ("vmamba_tiny", {"depths": (2, 2, 5, 2), "ssm_ratio": 2.0}, 30_705_832, 4.858),
    ("vmamba_small", {"depths": (2, 2, 20, 2), "ssm_ratio": 1.0}, 49_012_840, 8.612),
    ("vmamba_base", {"depths": (2, 2, 20, 2), "ssm_ratio": 1.0}, 86_614_504, 15.221),
]


@pytest.mark.parametrize(("name", "overrides", "params", "gflops"), OFFICIAL)
def test_flops_and_params_equal_official(name, overrides, params, gflops) -> None:
    cfg = replace(CONFIGS[name], **overrides)
    assert round(sum(s.flops for s in analyze(cfg, 224)) / 1e9, 3) == gflops
    assert count_params(cfg) == params


def test_stage_sizes_round_up() -> None:
    assert stage_sizes(37, 53, 4) == [(10, 14), (5, 7), (3, 4), (2, 2)]
    assert stage_sizes(224, 160, 4)[-1] == (7, 5)


def run_command(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    models_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args), capsys.readouterr()


def test_model_info_json(capsys) -> None:
    code, out = run_command(["model-info", "vmamba_tiny", "--json"], capsys)
    info = json.loads(out.out)
    assert code == 0 and info["params"] == 30_249_064 and round(info["gflops"], 3) == 4.906
    code, out = run_command(["model-info", "vmamba_nano", "--resolution", "160x224"], capsys)
    assert code == 0 and "160x224" in out.out and "parameters" in out.out


def test_model_info_unknown_name(capsys) -> None:
    code, out = run_command(["model-info", "vmamba_huge"], capsys)
    assert code == 2 and "unknown model" in out.err


def test_model_info_bad_resolution(capsys) -> None:
    with pytest.raises(SystemExit):
        run_command(["model-info", "vmamba_nano", "--resolution", "0x5"], capsys)
