"""The neuron-selection ablation (``benchmarks/bench_luo.py``): its rows are Luo et al.'s
(the same student, batches and schedule; only the regressed neurons differ), and the students
they build are K-wide."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_luo as bench  # noqa: E402
import luo_report as report  # noqa: E402

from facekd.config import ExperimentConfig, from_dict  # noqa: E402


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "selected_k", lambda work: 105)
    return tmp_path


def test_rows_differ_only_in_the_regressed_neurons(work):
    cfgs = {
        row: from_dict(ExperimentConfig, bench.row_config(row, 1, work, False, None))
        for row in bench.ROWS
    }
    base = cfgs["luo_selected"]
    for row, cfg in cfgs.items():
        assert cfg.train == base.train and cfg.data == base.data and cfg.student == base.student
        assert cfg.train.seed == cfg.data.seed == 1 and cfg.head is None and cfg.ce_weight == 0
        assert [loss.name for loss in cfg.losses] == ["neuron_selection"]
        assert row in report.labels(105)
    assert base.losses[0].kwargs == {"selection": str(work / "luo" / "selection.json")}
    assert cfgs["luo_all"].losses[0].kwargs["indices"] == list(range(128))
    rand = cfgs["luo_random"].losses[0].kwargs["indices"]
    assert len(set(rand)) == 105 and min(rand) >= 0 and max(rand) < 128
    assert rand == bench.row_indices("luo_random", 105)  # one draw, the same for every seed


def test_the_loss_asks_for_a_k_wide_student():
    from facekd.losses.neuron_selection import NeuronSelectionLoss

    for row, width in (("luo_all", 128), ("luo_random", 105)):
        loss = NeuronSelectionLoss(indices=bench.row_indices(row, 105))
        assert loss.student_kwargs() == {"num_features": width}


def test_unknown_row_is_refused():
    assert bench.main(["--rows", "luo_selected,hinton"]) == 2
