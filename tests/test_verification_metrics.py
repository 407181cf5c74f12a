"""Verification metrics: insightface oracle parity, exact search, folds, hand examples, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import interpolate
from scipy.interpolate import BSpline
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facekd.evaluation.verification import (
    GRID_ACCURACY,
    best_threshold,
    kfold_ids,
    legacy_slinear,
    val_threshold,
    verify,
)


# ------------------------------------------------------------------------------------------
# FROZEN TEST ORACLE: insightface recognition/arcface_torch/eval/verification.py
# (calculate_roc / calculate_accuracy / calculate_val / calculate_val_far), re-typed minimally
# with the same grid, KFold(shuffle=False) and threshold loops. Do not "improve" it.
# The one substitution: ``interp1d(far_train, thresholds, kind='slinear')`` fails on duplicate
# FAR values in current SciPy, so ``_oracle_interp`` builds the degree-1 spline that
# interp1d(kind='slinear') built before that check (knots [x0, x, x_last], coefficients y).
# ------------------------------------------------------------------------------------------
def _oracle_interp(x, y, x_new):
    assert x[0] <= x_new <= x[-1]  # interp1d's bounds check
    return float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], np.asarray(y), 1)(x_new))


def _oracle_accuracy(threshold, dist, issame):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, issame))
    tn = np.sum(np.logical_and(~predict, ~issame))
    return float(tp + tn) / dist.size


def _oracle_val_far(threshold, dist, issame):
    predict = np.less(dist, threshold)
    ta = np.sum(np.logical_and(predict, issame))
    fa = np.sum(np.logical_and(predict, ~issame))
    return float(ta) / float(np.sum(issame)), float(fa) / float(np.sum(~issame))


def _oracle(emb1, emb2, issame, nfolds=10, far_target=1e-3):
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
    folds = list(KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))))
    thresholds = np.arange(0, 4, 0.01)
    acc, best = np.zeros(nfolds), np.zeros(nfolds)
    for f, (tr, te) in enumerate(folds):
        acc_train = np.zeros(len(thresholds))
        for t, th in enumerate(thresholds):
            acc_train[t] = _oracle_accuracy(th, dist[tr], issame[tr])
        best[f] = thresholds[np.argmax(acc_train)]
        acc[f] = _oracle_accuracy(best[f], dist[te], issame[te])
    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(nfolds), np.zeros(nfolds)
    for f, (tr, te) in enumerate(folds):
        far_train = np.array([_oracle_val_far(th, dist[tr], issame[tr])[1] for th in thresholds])
        if np.max(far_train) >= far_target:
            threshold = _oracle_interp(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        val[f], far[f] = _oracle_val_far(threshold, dist[te], issame[te])
    return acc, best, np.mean(val), np.std(val), np.mean(far)


# ------------------------------------------------------------------------------------------
def _pairs(seed, n=300, dim=6, ties=False):
    """Normalised (emb1, emb2, issame); ``ties``: vectors in {-1,0,1}^3, so distances repeat
    and hit grid values exactly (e.g. orthogonal pairs: d = 2.0 = GRID_ACCURACY[200])."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    if ties:
        e1 = rng.integers(-1, 2, (n, 3)).astype(float)
        e2 = np.where(issame[:, None] & (rng.random((n, 1)) < 0.6), e1, rng.integers(-1, 2, (n, 3)))
        e1[~e1.any(1), 0], e2[~e2.any(1), 0] = 1.0, 1.0
    else:
        e1 = rng.standard_normal((n, dim))
        e2 = np.where(issame[:, None], e1, 0) + rng.standard_normal((n, dim)) * 0.9
    return normalize(e1), normalize(e2), issame


def test_oracle_interp_is_scipy_interp1d_without_duplicates():
    x, y = np.array([0.0, 0.1, 0.25, 1.0]), np.array([0.0, 0.001, 0.002, 0.003])
    for t in (0.0, 0.05, 0.1, 0.2, 1.0):
        ref = float(interpolate.interp1d(x, y, kind="slinear")(t))
        assert _oracle_interp(x, y, t) == ref == legacy_slinear(x, y, t)


@pytest.mark.parametrize(
    "x_new, expected",
    [(0.0, 0.001), (0.05, 0.0015), (0.1, 0.003), (0.2, 0.0035), (1.0, 0.0)],
)
def test_legacy_slinear_with_duplicates_by_hand(x_new, expected):
    """Last point of an equal-x run is used; a duplicated maximum evaluates to 0."""
    x, y = np.array([0, 0, 0.1, 0.1, 0.3, 1, 1.0]), np.arange(7) * 0.001
    assert legacy_slinear(x, y, x_new) == pytest.approx(expected, abs=1e-15)
    assert legacy_slinear(x, y, x_new) == _oracle_interp(x, y, x_new)


@pytest.mark.parametrize("seed, ties, n", [(0, False, 300), (1, False, 257), (2, True, 300)])
@pytest.mark.parametrize("far_target", [1e-3, 0.05])
def test_grid_mode_reproduces_insightface(seed, ties, n, far_target):
    e1, e2, issame = _pairs(seed, n, ties=ties)
    acc, best, val, val_std, far = _oracle(e1, e2, issame, far_target=far_target)
    r = verify((e1, e2), issame, thresholds="grid", far_target=far_target, normalize=False)
    np.testing.assert_allclose(r.fold_accuracy, acc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.thresholds, best, rtol=0, atol=1e-12)
    assert r.accuracy == pytest.approx(np.mean(acc), abs=1e-12)
    assert r.accuracy_std == pytest.approx(np.std(acc), abs=1e-12)
    assert (r.val, r.val_std, r.far) == pytest.approx((val, val_std, far), abs=1e-12)
    interleaved = np.stack([e1, e2], 1).reshape(2 * n, -1)  # .bin order: 2k, 2k+1
    r2 = verify(interleaved, issame, thresholds="grid", far_target=far_target, normalize=False)
    assert r2.accuracy == r.accuracy and r2.val == r.val


@pytest.mark.parametrize("seed, ties", [(3, False), (4, True), (5, True)])
def test_exact_search_is_optimal_on_every_training_fold(seed, ties):
    e1, e2, issame = _pairs(seed, 400, ties=ties)
    dist = np.sum((e1 - e2) ** 2, 1)
    folds = kfold_ids(len(dist), 10)
    r = verify((e1, e2), issame, normalize=False)
    for f in range(10):
        tr = folds != f
        th_exact, acc_exact = best_threshold(dist[tr], issame[tr], "exact")
        th_grid, acc_grid = best_threshold(dist[tr], issame[tr], "grid")
        assert acc_exact >= acc_grid
        assert acc_exact == np.mean((dist[tr] < th_exact) == issame[tr])  # achieved, not claimed
        cuts = np.r_[np.unique(dist[tr]), np.inf]  # "d < t" for every t: all cuts, brute force
        assert acc_exact == max(np.mean((dist[tr] < t) == issame[tr]) for t in cuts)
        assert r.thresholds[f] == th_exact


def test_kfold_ids_match_sklearn():
    for n, k in [(6000, 10), (257, 10), (7, 3)]:
        ref = np.zeros(n, int)
        for f, (_, te) in enumerate(KFold(n_splits=k, shuffle=False).split(np.arange(n))):
            ref[te] = f
        assert (kfold_ids(n, k) == ref).all()


def test_perfect_embeddings():
    rng = np.random.default_rng(0)
    e1 = normalize(rng.standard_normal((200, 16)))
    issame = np.arange(200) % 2 == 0
    e2 = np.where(issame[:, None], e1, -e1)
    r = verify((e1, e2), issame)
    assert r.accuracy == 1 and r.accuracy_std == 0 and r.eer == 0 and r.auc == 1
    assert r.val == 1 and r.far == 0 and all(v == 1 for v in r.tar_at_far.values())
    assert verify((e1, e2), issame, thresholds="grid").accuracy == 1


def test_hand_computed_four_pairs_two_folds():
    """d = [0.25, 2.25, 1.5625, 3.0625], same = [T, F, T, F], folds {0,1} and {2,3}.

    exact: fold 0 trains on (1.5625 T, 3.0625 F) -> theta = 2.3125; 2.25 < theta is a false
    accept -> 0.5. Fold 1 trains on (0.25 T, 2.25 F) -> theta = 1.25; 1.5625 rejected -> 0.5.
    grid: first best grid value above the positive: 1.57 (-> 1.0) and 0.26 (-> 0.5).
    VAL@FAR=0.5 (one training negative): theta = that negative -> VAL 1, FAR (1 + 0) / 2.
    Pooled, positives {0.25, 1.5625} < negatives {2.25, 3.0625}: AUC 1, EER 0.
    """
    e1, e2 = np.zeros((4, 1)), np.array([[0.5], [1.5], [1.25], [1.75]])
    issame = np.array([True, False, True, False])
    r = verify((e1, e2), issame, n_folds=2, far_target=0.5, normalize=False)
    assert r.thresholds.tolist() == [2.3125, 1.25]
    assert r.fold_accuracy.tolist() == [0.5, 0.5] and r.accuracy_std == 0
    assert (r.val, r.far, r.auc, r.eer) == (1.0, 0.5, 1.0, 0.0)
    g = verify((e1, e2), issame, n_folds=2, far_target=0.5, thresholds="grid", normalize=False)
    np.testing.assert_allclose(g.thresholds, [1.57, 0.26], atol=1e-12)
    assert g.fold_accuracy.tolist() == [1.0, 0.5]
    assert (g.accuracy, g.accuracy_std) == (0.75, 0.25)
    assert (g.val, g.far) == (1.0, 0.5)
    assert g.accuracy_se == pytest.approx(np.std([1.0, 0.5], ddof=1) / np.sqrt(2))


def test_explicit_folds_equal_reordered_contiguous_folds():
    e1, e2, issame = _pairs(7, 200)
    folds = np.random.default_rng(0).permutation(np.repeat(np.arange(5), 40))
    r = verify((e1, e2), issame, folds=folds, thresholds="grid", normalize=False)
    order = np.argsort(folds, kind="stable")
    ref = verify(
        (e1[order], e2[order]), issame[order], n_folds=5, thresholds="grid", normalize=False
    )
    assert r.fold_accuracy.tolist() == ref.fold_accuracy.tolist()
    assert (r.val, r.far, r.auc) == (ref.val, ref.far, ref.auc)
    assert not np.array_equal(
        r.fold_accuracy, verify((e1, e2), issame, n_folds=5, normalize=False).fold_accuracy
    )


def test_single_class_folds_keep_accuracy_and_skip_val():
    """LFW-mini's .bin (fold-major, 300 matched then 300 mismatched) in 10 contiguous folds."""
    e1, e2, _ = _pairs(9, 120)
    issame = np.repeat([True, False, True, False], 30)
    with pytest.warns(UserWarning, match=r"folds \[0, 1, 3, 4, 5, 6, 8, 9\] lack"):
        r = verify((e1, e2), issame, normalize=False)
    assert np.isfinite(r.fold_accuracy).all() and np.isfinite(r.val)
    with pytest.warns(UserWarning, match="lack"):
        r = verify((e1, e2), issame, n_folds=4, normalize=False)
    assert np.isnan(r.val) and np.isnan(r.far) and np.isfinite(r.accuracy)


def test_val_threshold_exact_is_largest_with_far_at_most_target():
    neg = np.array([0.5, 0.5, 1.0, 2.0, 3.0])
    assert val_threshold(neg, 0.2) == 0.5  # d < 0.5 accepts none: the tie at 0.5 is 2/5
    assert val_threshold(neg, 0.4) == 1.0  # accepts the two 0.5s: FAR = 0.4
    assert val_threshold(neg, 0.6) == 2.0 and val_threshold(neg, 1.0) == np.inf
    assert np.mean(neg < val_threshold(neg, 0.4)) <= 0.4


def test_normalize_flag_and_grid_constant():
    e1, e2, issame = _pairs(8, 100)
    assert verify((3 * e1, 0.5 * e2), issame).accuracy == verify((e1, e2), issame).accuracy
    assert len(GRID_ACCURACY) == 400 and GRID_ACCURACY[200] == 2.0


@pytest.mark.parametrize(
    "embeddings, issame, kwargs, match",
    [
        (np.ones((5, 4)), [True, False], {}, "odd number"),
        (np.ones((6, 4)), [True, False], {}, "2 labels for 3 pairs"),
        (np.r_[np.ones((5, 4)), [[np.nan] * 4]], [True, False, True], {}, "NaN"),
        ((np.ones((3, 4)), np.ones((2, 4))), [True, False, True], {}, "alike"),
        (np.eye(6), [True, True, True], {}, "both matched and mismatched"),
        (np.eye(6), [True, False, True], {"n_folds": 4}, "n_folds"),
        (np.eye(6), [True, False, True], {"folds": [0, 1]}, "folds must be 3"),
        (np.eye(6), [True, False, True], {"thresholds": "fine"}, "thresholds must be"),
        (np.eye(6), [True, False, True], {"far_target": 0}, "far_target"),
    ],
)
def test_malformed_inputs_raise(embeddings, issame, kwargs, match):
    with pytest.raises(ValueError, match=match):
        verify(embeddings, issame, **kwargs)
