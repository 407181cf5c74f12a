"""Typed config: defaults, YAML, dotted overrides, and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from facekd.config import ConfigError, load_config, save_config, to_dict


@dataclass
class Optim:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass
class Loss:
    name: str = "hinton"
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)


@dataclass
class Root:
    steps: int = 10
    amp: bool = False
    out: str | None = None
    optim: Optim = field(default_factory=Optim)
    losses: list[Loss] = field(default_factory=list)


def test_defaults_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.05\nlosses:\n  - {name: triplet, weight: 2}\n")
    cfg = load_config(Root, path, ["optim.name=adamw", "optim.lr=1e-3", "out=runs/x"])
    assert cfg.steps == 20 and cfg.optim == Optim("adamw", 1e-3, (0.9, 0.999))
    assert cfg.losses == [Loss("triplet", 2.0, {})] and cfg.out == "runs/x"
    assert load_config(Root) == Root()


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = load_config(Root, None, ["losses=[{name: fitnets, kwargs: {stage: 3}}]", "amp=true"])
    again = load_config(Root, save_config(cfg, tmp_path / "resolved.yaml"))
    assert again == cfg and to_dict(again)["optim"]["betas"] == [0.9, 0.999]


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=0.1", r"unknown key\(s\) \['lrr'\] in optim"),
        ("stpes=3", r"unknown key\(s\) \['stpes'\]"),
        ("steps=abc", r"steps: expected an integer"),
        ("steps=1.5", r"steps: expected an integer"),
        ("amp=1", r"amp: expected true/false"),
        ("optim.name=adam", r"optim.name: 'adam' is not one of \['sgd', 'adamw'\]"),
        ("losses=[{weight: x}]", r"losses\[0\].weight: expected a number"),
        ("optim=3", r"optim: expected a mapping"),
        ("nonsense", r"must look like key.path=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Root, None, [override])


def test_bad_yaml_files(tmp_path):
    (tmp_path / "a.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Root, tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, tmp_path / "b.yaml")


def test_benchmark_configs_are_short_and_valid():
    from pathlib import Path

    from facekd.config import ExperimentConfig
    from facekd.losses import LOSSES
    from facekd.models import BACKBONES, HEADS

    configs = sorted((Path(__file__).parents[1] / "benchmarks" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert len(path.read_text().splitlines()) <= 40, f"{path.name} is longer than 40 lines"
        cfg = load_config(ExperimentConfig, path)
        assert all(loss.name in LOSSES for loss in cfg.losses), path.name
        assert cfg.head is None or cfg.head.name in HEADS
        assert cfg.student.name in BACKBONES or cfg.student.name.endswith((".pt", ".pth"))


def test_real_data_benchmark_configs_are_short_and_valid(tmp_path):
    """benchmarks/configs/real: common.yaml + each method's lines, as the driver merges them."""
    import importlib.util
    from pathlib import Path

    from facekd.config import ExperimentConfig, from_dict

    root = Path(__file__).parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("bench_real", root / "bench_real_distill.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for method in bench.METHODS:
        path = root / "configs" / "real" / f"{method}.yaml"
        assert len(path.read_text().splitlines()) <= 15, f"{path.name} is not short"
        cfg = from_dict(ExperimentConfig, bench.method_config(method, tmp_path, quick=False))
        assert cfg.data.student_size == 56 and cfg.train.steps == 800
        assert "{" not in str(cfg.teacher.cache or "") and "{" not in str(cfg.data.path)
