"""The Karlekar HR->LR benchmark (``benchmarks/bench_karlekar.py``): its statistics on
hand-made decisions, float16 students that load back in float32, and the ``--quick`` smoke
run end to end on real faces (skipped without ../shared/data)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.data.verification import PairSet
from facekd.evaluation.embed import extract_embeddings
from facekd.evaluation.verification import verify
from facekd.models import build_backbone
from facekd.models.checkpoints import load_backbone, save_backbone
from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_karlekar  # noqa: E402
import karlekar_eval as kr  # noqa: E402


def test_pair_decisions_are_verify_s_per_fold_judgements():
    rng = np.random.default_rng(0)
    n = 200
    issame = np.repeat([True, False], n // 2)
    emb = rng.standard_normal((2 * n, 16)).astype(np.float32)
    emb[1::2][issame] = emb[0::2][issame] + 0.7 * rng.standard_normal((n // 2, 16))
    folds = np.tile([0, 1], n // 2)
    ps = PairSet([b""] * (2 * n), np.arange(2 * n).reshape(n, 2), issame, folds, "toy")
    correct, res = kr.pair_decisions(emb, ps)
    ref = verify((emb[0::2], emb[1::2]), issame, folds=folds, thresholds="grid")
    assert res.accuracy == ref.accuracy
    assert np.mean([correct[folds == f].mean() for f in (0, 1)]) == pytest.approx(ref.accuracy)
    assert 0.6 < ref.accuracy < 1.0  # a case where decisions actually differ between pairs


def test_mcnemar_and_sign_test_count_discordant_pairs():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 1], bool)
    b = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    m = kr.mcnemar(a, b)
    assert (m["a_only"], m["b_only"]) == (7, 1)
    assert m["p"] == pytest.approx(2 * 9 / 256)  # two-sided exact: 2 * P(X <= 1), X ~ B(8, .5)
    assert kr.mcnemar(a, a)["p"] == 1.0
    # seeds x pairs: pair 0 favours A in 2 of 2 seeds, pair 1 ties on average, pair 2 B
    sa = np.array([[1, 1, 0], [1, 0, 0]], bool)
    sb = np.array([[0, 0, 1], [0, 1, 1]], bool)
    st = kr.sign_test(sa, sb)
    assert (st["a_better"], st["b_better"]) == (1, 1) and st["p"] == 1.0


def test_float16_students_load_back_in_float32(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", input_size=56).eval()
    small = bench_karlekar.save_fp16(model, tmp_path / "kt_seed0.pt")
    full = save_backbone(model, tmp_path / "fp32.pt")
    assert small.stat().st_size < 0.6 * full.stat().st_size
    stored = torch.load(small, weights_only=True)["state_dict"]
    assert stored["features.layers.0.layers.0.weight"].dtype == torch.float16
    assert next(model.parameters()).dtype == torch.float32  # the caller's model untouched
    loaded = load_backbone(small)
    assert loaded.input_size == 56
    assert all(
        p.dtype == torch.float32 for p in loaded.state_dict().values() if p.is_floating_point()
    )
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    x = torch.randn(4, 3, 56, 56)
    cos = torch.nn.functional.cosine_similarity(loaded(x), model(x))
    assert cos.min() > 0.999


def test_quick_karlekar_benchmark_runs_end_to_end(tmp_path):
    shared_path("celeba-299")
    shared_path("cfp-mini")
    shared_path("insightface-mobilefacenet-legacy")
    out, work = tmp_path / "report", tmp_path / "work"
    cmd = [sys.executable, "benchmarks/bench_karlekar.py", "--quick", "--work", str(work),
           "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["teacher@112", "teacher@56", "kt_init", *bench_karlekar.ROWS]
    tested = {(t["a"], t["b"], t["set"]) for t in report["paired_tests"]}
    for s in ("lfw", "cfp_fp"):
        assert {("kt_pooled", "scratch", s), ("kt_pooled", "kt_arcface", s)} <= tested
    # the real teacher on 56-px faces is far above chance on these few pairs
    assert rows["teacher@56"]["lfw_mean"] >= 0.85
    # saved students: float16 files named by method and seed, loaded back in float32
    saved = sorted(p.name for p in (out / "students").glob("*.pt"))
    assert saved == ["kt_arcface_seed0.pt", "kt_pooled_seed0.pt", "scratch_seed0.pt"]
    sets = {ps.name: ps for ps in bench_karlekar.real.prepare_eval_sets(work, quick=True)}
    for name in saved:
        model = load_backbone(out / "students" / name)
        assert model.input_size == 56 and model.num_features == 128
        assert next(model.parameters()).dtype == torch.float32
        ps = sets["lfw"]  # the report's accuracy is the saved file's, per-pair extraction
        emb = extract_embeddings(model, ps.images, degrade_to=56, progress=False)
        res = verify((emb[ps.pairs[:, 0]], emb[ps.pairs[:, 1]]), ps.issame, folds=ps.folds,
                     thresholds="grid")  # fmt: skip
        row = rows[name.rsplit("_seed", 1)[0]]
        assert row["lfw_per_seed"][0] == pytest.approx(res.accuracy, abs=1.5 / len(ps))
    # same seed: the two KT rows start from the same weights on the same batch, so their
    # first ArcFace loss (before any update) is the same number
    first = {}
    for r in ("kt_pooled", "kt_arcface"):
        with (work / "karlekar" / f"{r}_seed0" / "log.csv").open() as f:
            first[r] = float(next(csv.DictReader(f))["ce"])
    assert first["kt_pooled"] == pytest.approx(first["kt_arcface"], rel=1e-5)
    assert (out / "accuracy.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "QUICK SMOKE RUN" in md and "McNemar" in md
