"""The quantisation-friendly student's benchmark (``benchmarks/bench_relu_student.py``): its
training row and the report's arithmetic, on a hand-made result."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_relu_student as relu  # noqa: E402
import pytest  # noqa: E402


@pytest.mark.parametrize("row", relu.ROWS)
def test_row_is_a_relu_kt_student_at_the_teachers_resolution(tmp_path, row):
    import bench_embedding_kd as emb

    from facekd.config import ExperimentConfig, from_dict

    cfg = from_dict(ExperimentConfig, emb.row_config(row, 0, tmp_path, False, None))
    assert cfg.student.init == "kt" and cfg.student.kwargs["activation"] == "relu"
    assert cfg.data.student_size is None and cfg.data.image_size == 112
    assert [x.name for x in cfg.losses] == ["embedding"] and cfg.ce_weight == 0.0
    assert cfg.teacher.cache == str(tmp_path / "teacher_cache_all")  # one cache for every side


def _acc(fp32, int8, mixed):
    return {k: {"grid": {"accuracy": v}} for k, v in
            (("fp32", fp32), ("int8", int8), ("fp32_gallery_int8_probe", mixed))}  # fmt: skip


def test_tables_compute_size_and_speed_ratios():
    accuracy = {"lfw": _acc(0.99, 0.985, 0.9875), "cfp": _acc(0.8, 0.79, 0.795)}
    q = {"bytes": 1_000_000, "cosine": {"mean": 0.98, "min": 0.9}, "accuracy": accuracy}
    res = {"models": {"relu_student": {"fp32_bytes": 4_000_000, "int8": {"none": q}}}}
    text = relu.table(res)
    assert "| relu_student | all | 4.00 -> 1.00 (4.00x) | 0.9800 / 0.9000 |" in text
    assert "99.00 -> 98.50 (98.75) | 80.00 -> 79.00 (79.50) |" in text
    lat = {"base": {1: 10.0, 64: 400.0}, "fast": {1: 5.0, 64: 100.0}}
    speed = relu.speed_table(lat, "base")
    assert "| fast | 5.0 | 100.0 | 2.00x | 4.00x |" in speed
    assert "| base | 10.0 | 400.0 | 1.00x | 1.00x |" in speed


def test_files_made_from_an_older_source_are_made_anew(tmp_path):
    import os

    src, made = tmp_path / "student.pt", tmp_path / "student.onnx"
    src.touch()
    assert not relu._fresh(made, src)  # never made
    made.touch()
    os.utime(src, (made.stat().st_mtime + 10,) * 2)  # the student retrained after the export
    assert not relu._fresh(made, src)
    os.utime(made, (src.stat().st_mtime + 1,) * 2)
    assert relu._fresh(made, src)
