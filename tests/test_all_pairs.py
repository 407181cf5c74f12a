"""All-pairs TAR@FAR (facekd.evaluation.all_pairs) against a brute-force count and sklearn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from facekd.evaluation.all_pairs import all_pair_scores, all_pairs_tar
from facekd.evaluation.verification import tar_at_far


def _clustered(n_ids: int, per: int, dim: int = 16, spread: float = 0.9, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    emb = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(n_ids * per, dim))
    ids = [f"id{k}" for k in range(n_ids) for _ in range(per)]
    return emb, ids


def _brute_force(emb, ids, far):
    """Plain loops: every i < j pair; the threshold admits at most floor(far * n_imp) impostors."""
    norm = [[x / math.sqrt(sum(y * y for y in e)) for x in e] for e in emb.tolist()]
    gen, imp = [], []
    for i, j in itertools.combinations(range(len(norm)), 2):
        s = sum(a * b for a, b in zip(norm[i], norm[j], strict=True))
        (gen if ids[i] == ids[j] else imp).append(s)
    allowed = math.floor(far * len(imp))
    # the lowest threshold t (among the scores) with #impostors > t <= allowed
    best = None
    for t in sorted(set(imp), reverse=True):  # lower t while it still admits few enough
        if sum(1 for z in imp if z > t) > allowed:
            break
        best = t
    return sum(1 for g in gen if g > best) / len(gen), len(gen), len(imp)


@pytest.mark.parametrize("far", [1e-2, 1e-3])
def test_all_pairs_tar_equals_brute_force(far):
    emb, ids = _clustered(n_ids=20, per=6)  # 120 faces: 7,140 pairs, 300 mated
    res = all_pairs_tar(emb, ids, fars=[far])
    want, n_gen, n_imp = _brute_force(emb, ids, far)
    assert (res.n_mated, res.n_impostor) == (n_gen, n_imp) == (300, 6840)
    assert res.tar_at_far[far] == pytest.approx(want, abs=1e-12)
    assert 0.0 < res.tar_at_far[far] < 1.0  # a non-trivial operating point


def test_all_pairs_tar_is_the_conservative_roc_point():
    emb, ids = _clustered(n_ids=40, per=5, spread=1.1, seed=3)
    mated, impostor = all_pair_scores(emb, ids)
    labels = np.r_[np.ones(len(mated)), np.zeros(len(impostor))]
    fpr, tpr, _ = roc_curve(labels, np.r_[mated, impostor])
    fars = (1e-2, 1e-3)
    want = tar_at_far(fpr, tpr, fars, mode="conservative")
    got = all_pairs_tar(emb, ids, fars).tar_at_far
    for far in fars:
        assert got[far] == pytest.approx(want[far], abs=1e-12)


def test_all_pairs_counts_and_unmeasurable_far():
    emb, ids = _clustered(n_ids=3, per=4)  # 66 pairs: 18 mated, 48 impostor
    res = all_pairs_tar(emb, ids, fars=[1e-1, 1e-3])
    assert (res.n_mated, res.n_impostor, res.n_identities) == (18, 48, 3)
    assert math.isnan(res.tar_at_far[1e-3])  # 48 impostors cannot measure FAR 1e-3
    with pytest.raises(ValueError, match="mated and non-mated"):
        all_pairs_tar(emb[:4], ids[:4])
    with pytest.raises(ValueError, match="identities for"):
        all_pairs_tar(emb, ids[:-1])


def test_all_pairs_scores_are_symmetric_in_the_order_of_faces():
    emb, ids = _clustered(n_ids=10, per=4, seed=5)
    perm = np.random.default_rng(0).permutation(len(ids))
    a = all_pairs_tar(emb, ids, fars=[1e-2])
    b = all_pairs_tar(emb[perm], [ids[k] for k in perm], fars=[1e-2])
    assert a.tar_at_far == b.tar_at_far


def test_training_evaluator_reports_all_pairs_tar_on_sets_that_know_identities():
    """eval.synthetic_pairs (and .bin files with a manifest) get TAR@FAR over all pairs."""
    from facekd.config import ExperimentConfig
    from facekd.engine.builder import build_evaluator
    from facekd.models import build_backbone

    cfg = ExperimentConfig()
    cfg.data.image_size = 32
    cfg.eval.synthetic_pairs = 40
    metrics = build_evaluator(cfg)(build_backbone("mobilefacenet", width=0.25, input_size=32))
    assert set(metrics) >= {"synthetic/acc", "synthetic/tar_all@0.001", "synthetic/tar_all@0.0001"}
    # 50 people x 6 faces: 750 mated of 44,850 pairs; 1e-4 x 44,100 impostors allows 4
    assert 0.0 <= metrics["synthetic/tar_all@0.0001"] <= metrics["synthetic/tar_all@0.001"] <= 1
