"""The triplet fine-tuning benchmark (``benchmarks/bench_triplet_ft.py``): its rows are
Feng et al.'s protocol (one start, the same P x K batches, only the loss differs), and the
report's triplet activity is read correctly from the logs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_triplet_ft as bench  # noqa: E402
import triplet_ft_report as report  # noqa: E402

from facekd.config import ExperimentConfig, from_dict  # noqa: E402


def test_rows_share_the_start_the_batches_and_the_schedule(tmp_path):
    cfgs = {
        row: from_dict(ExperimentConfig, bench.row_config(row, 2, tmp_path, False, None))
        for row in bench.ROWS
    }
    start = str(bench.start_checkpoint(tmp_path))
    for row, cfg in cfgs.items():
        assert cfg.student.name == start and cfg.train.seed == cfg.data.seed == 2
        assert cfg.data == cfgs["triplet_fd"].data and cfg.data.sampler == "pk"
        assert cfg.train == cfgs["triplet_fd"].train
        assert row in report.LABELS
    assert cfgs["arcface_cont"].head.init == start and cfgs["arcface_cont"].ce_weight == 1.0
    for row in ("triplet_fixed", "triplet_fd"):
        assert cfgs[row].head is None and cfgs[row].ce_weight == 0.0
    adaptive = [c.losses[0].kwargs.get("adaptive", True) for c in cfgs.values() if c.losses]
    assert adaptive == [False, True]  # triplet_fixed, triplet_fd


def test_triplet_activity_averages_the_seeds_logs():
    logs = [
        {"stats/triplet_distillation/triplets_first": 300.0,
         "stats/triplet_distillation/triplets_last": 100.0,
         "stats/triplet_distillation/active_first": 0.8,
         "stats/triplet_distillation/active_last": 0.4},
        {"stats/triplet_distillation/triplets_first": 200.0,
         "stats/triplet_distillation/triplets_last": 50.0,
         "stats/triplet_distillation/active_first": 0.6,
         "stats/triplet_distillation/active_last": 0.2},
    ]  # fmt: skip
    act = report.triplet_activity(logs)
    want = {"triplets_first": 250.0, "triplets_last": 75.0, "active_first": 0.7,
            "active_last": 0.3}  # fmt: skip
    assert act == pytest.approx(want)
    assert report.triplet_activity([{"loss_first": 1.0}]) is None  # ArcFace continued


def test_unknown_row_is_refused():
    assert bench.main(["--rows", "triplet_fd,hinton"]) == 2
