"""Shared fixtures: tiny backbones that honour the contract, the shared real data folder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from facekd.models import build_backbone

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: registry name -> kwargs that make it tiny enough for CPU tests (same code paths)
TINY_KWARGS = {
    "iresnet18": {"width": 0.125, "input_size": 32},
    "iresnet34": {"width": 0.125, "input_size": 32},
    "iresnet50": {"width": 0.125, "input_size": 32},
    "iresnet100": {"width": 0.125, "input_size": 32},
    "iresnet200": {"width": 0.125, "input_size": 32},
    "mbf": {"width": 0.25, "input_size": 32},
    "mobilefacenet": {"width": 0.25, "input_size": 32},
}


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (only on machines with ../shared/data)")
    return path


def sine_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic, RNG-free weights (the recipe behind golden/insightface_forward.json)."""
    out = {}
    for i, (key, value) in enumerate(model.state_dict().items()):
        if not value.dtype.is_floating_point:
            out[key] = value
            continue
        t = torch.sin(torch.arange(value.numel(), dtype=torch.float64) * 0.37 + i)
        t = t.reshape(value.shape)
        if key.endswith("running_var"):
            t = 1.0 + 0.5 * t.abs()
        elif key.endswith("weight") and value.dim() > 1:
            t = t / math.sqrt(value[0].numel())
        out[key] = t.float()
    return out


@pytest.fixture
def tiny_student():
    torch.manual_seed(0)
    return build_backbone("mobilefacenet", width=0.25, input_size=32)


@pytest.fixture
def tiny_teacher():
    torch.manual_seed(0)
    return build_backbone("iresnet18", width=0.125, input_size=32)
