"""The cost-per-side benchmark (``benchmarks/bench_sides.py``): its smoke run and its arithmetic."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_sides  # noqa: E402


def test_quick_run_measures_each_side(tmp_path):
    assert bench_sides.main(["--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    rows = {int(s): r for s, r in doc["sides"].items()}
    assert set(rows) == {32, 56}
    # only the GDC kernel depends on the side: 512 channels x (4^2 - 2^2) depthwise weights
    assert rows[56]["params"] - rows[32]["params"] == 512 * (4 * 4 - 2 * 2)
    # the conv maps' area goes with the side squared: (28 / 16)^2 = 3.06, plus the fixed head
    assert 2.8 < rows[56]["gflops"] / rows[32]["gflops"] < 3.3
    assert all(r["torch_b1_ms"] > 0 for r in rows.values())
    assert (tmp_path / "cost.png").stat().st_size > 0
    assert "| 32 px | 980,096 |" in (tmp_path / "report.md").read_text()


def test_table_divides_by_the_largest_side():
    res = {
        56: {"params": 10, "gflops": 0.1, "torch_b1_ms": 2.0},
        112: {"params": 12, "gflops": 0.4, "torch_b1_ms": 5.0},
    }
    text = bench_sides.table(res, (1,), ("torch",))
    assert "| 56 px | 10 | 0.100 | 4.00x | 2.00 (2.50x) |" in text
    assert "| 112 px | 12 | 0.400 | 1.00x | 5.00 (1.00x) |" in text
