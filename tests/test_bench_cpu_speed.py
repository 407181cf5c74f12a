"""The CPU-speed benchmark compares like with like: its plain loop computes the same
embeddings as facekd's default path, and its report renders from the recorded results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from facekd.evaluation.embed import extract_embeddings
from facekd.models import build_backbone
from tests.conftest import TINY_KWARGS

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_cpu_speed", ROOT / "benchmarks" / "bench_cpu_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_equals_facekd_default_path():
    bench = _bench()
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", **TINY_KWARGS["mobilefacenet"]).eval()
    crops = list(np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    plain = bench.plain_embed(model, crops, batch=2)
    facekd = extract_embeddings(model, crops, batch_size=2, progress=False)
    assert plain.shape == facekd.shape
    assert (plain * facekd).sum(1).min() >= 0.9999


def test_report_renders_speed_ups():
    bench = _bench()

    def run(wall: float, cpu: float) -> dict:
        return {"wall_s": wall, "wall_s_runs": [wall], "img_per_s": 1024 / wall, "user_s": cpu,
                "system_s": 0.0, "threads": 2, "images": 1024, "min_cosine": 1.0}  # fmt: skip

    res = {
        "command": "x", "repeats": 1, "layout_images": 8, "layout": {},
        "env": {"cpu": "c", "cpus_available": 2, "torch": "t", "libc": "glibc",
                "bf16_native": True, "load_before": 0.0},
        "embed": {"plain": run(40.0, 80.0), "facekd": run(10.0, 20.0)},
    }  # fmt: skip
    md = bench._markdown(res)
    assert "| facekd | 10.00 (10.0) | 102.4 | 20.0 | 0.0 | 2 | **4.00x** | 4.00x | 1.000000 |" in md
