"""Smoke test of the real-data distillation benchmark (``--quick``): the whole chain runs on a
few real identities and pairs and writes a complete report. Skips without ../shared/data."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from facekd.evaluation.embed import extract_embeddings
from facekd.evaluation.verification import THRESHOLD_SEARCH, verify
from facekd.models.checkpoints import load_backbone
from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_real_distillation_benchmark_runs_end_to_end(tmp_path):
    shared_path("celeba-299")
    shared_path("cfp-mini")
    shared_path("insightface-mobilefacenet-legacy")
    out, work = tmp_path / "report", tmp_path / "work"
    cmd = [sys.executable, "benchmarks/bench_real_distill.py", "--quick",
           "--work", str(work), "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    spec = importlib.util.spec_from_file_location(
        "bench", ROOT / "benchmarks" / "bench_real_distill.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    methods = list(bench.METHODS)
    assert len(methods) == 10  # scratch + 9 distillation methods
    assert list(rows) == ["teacher", *methods]
    for row in rows.values():
        assert row["compression"] > 0 and math.isfinite(row["gflops"])
    # the real teacher is real: on these few pairs it is far above chance (measured in quick
    # mode, grid thresholds: LFW 0.958, CFP-FF 0.896, CFP-FP 0.792 on 48 pairs per set)
    assert rows["teacher"]["lfw_acc"] >= 0.9 and rows["teacher"]["cfp_ff_acc"] >= 0.8
    assert rows["teacher"]["cfp_fp_acc"] >= 0.7
    # each accuracy is what its named threshold search gives on that model's embeddings of the
    # packed .bin with the protocol's folds (grid by default, exact in the *_exact columns)
    assert report["threshold_search"]["lfw_acc"] == THRESHOLD_SEARCH["grid"]
    assert report["threshold_search"]["lfw_acc_exact"] == THRESHOLD_SEARCH["exact"]
    sets = {ps.name: ps for ps in bench.prepare_eval_sets(work, quick=True)}
    for name in ("teacher", "scratch"):
        path = bench.TEACHER if name == "teacher" else work / "students" / name / "student.pt"
        model = load_backbone(str(path))
        for s, ps in sets.items():
            emb = extract_embeddings(model, ps.images, channels_last=True, progress=False)
            both = (emb[ps.pairs[:, 0]], emb[ps.pairs[:, 1]])
            for key, search in ((f"{s}_acc", "grid"), (f"{s}_acc_exact", "exact")):
                res = verify(both, ps.issame, folds=ps.folds, thresholds=search)
                assert rows[name][key] == pytest.approx(res.accuracy, abs=1e-9), (name, key)
    # students are the configured 56 px width-0.35 MobileFaceNet: about 6x fewer parameters
    assert rows["scratch"]["input_px"] == 56 and 5 < rows["scratch"]["compression"] < 8
    for png in ("accuracy.png", "accuracy_all_sets.png", "roc_lfw.png", "roc_cfp_fp.png"):
        assert (out / png).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "QUICK SMOKE RUN" in md and "against the from-scratch student" in md
    assert "lfw (grid)" in md and "lfw (exact)" in md and "from the grid columns" in md
    assert len(report["verdicts"]) == len(methods) - 1
    assert (work / "selection.json").exists() and (work / "teacher_cache" / "meta.json").exists()
