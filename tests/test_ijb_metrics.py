"""IJB 1:1 metrics: pooling by hand, TAR@FAR point choice, chunked scoring, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from sklearn.preprocessing import normalize

from facekd.evaluation.ijb import (
    evaluate_ijb,
    ijb_metrics,
    pair_scores,
    template_features,
)
from facekd.evaluation.verification import tar_at_far

# 3 templates x 2 media, 2-D features. Media ids repeat across templates on purpose: a media
# is the pair (template, media). Rows are shuffled so grouping cannot rely on order.
#                 feature     faceness template media
_ROWS = [
    ((2.0, 0.0), 0.5, 1, 10),  # T1 media 10: (1, 0) and (0, 2) -> mean (0.5, 1)
    ((0.0, 2.0), 1.0, 1, 10),
    ((1.0, 1.0), 1.0, 1, 11),  # T1 media 11: (1, 1);  T1 = (1.5, 2) / 2.5 = (0.6, 0.8)
    ((3.0, 0.0), 1.0, 2, 10),  # T2 media 10: (3, 0)
    ((0.0, -4.0), 0.25, 2, 20),  # T2 media 20: (0, -1);  T2 = (3, -1) / sqrt(10)
    ((-1.0, 0.0), 1.0, 3, 10),  # T3 media 10: (-1, 0), (-3, 0) -> mean (-2, 0)
    ((-3.0, 0.0), 1.0, 3, 10),
    ((0.0, 4.0), 0.5, 3, 11),  # T3 media 11: (0, 2);  T3 = (-2, 2) / sqrt(8)
]
_ORDER = [4, 0, 7, 2, 5, 1, 6, 3]


def _fixture():
    rows = [_ROWS[i] for i in _ORDER]
    feats = np.array([r[0] for r in rows], np.float32)
    score = np.array([r[1] for r in rows], np.float32)
    tids = np.array([r[2] for r in rows])
    mids = np.array([r[3] for r in rows])
    return feats, score, tids, mids


def test_template_pooling_by_hand():
    feats, score, tids, mids = _fixture()
    ids, t = template_features(feats, tids, mids, score)
    assert ids.tolist() == [1, 2, 3]
    expected = [[0.6, 0.8], np.array([3, -1]) / np.sqrt(10), np.array([-1, 1]) / np.sqrt(2)]
    np.testing.assert_allclose(t, expected, atol=1e-12)
    s = pair_scores(ids, t, [1, 1, 2, 2], [2, 3, 3, 1])
    by_hand = [1 / np.sqrt(10), 0.2 / np.sqrt(2), -4 / np.sqrt(20), 1 / np.sqrt(10)]
    np.testing.assert_allclose(s, by_hand, atol=1e-12)


def test_pooling_options_by_hand():
    feats, score, tids, mids = _fixture()
    _, plain = template_features(feats, tids, mids, use_detector_score=False)
    # T1: media 10 = mean((2, 0), (0, 2)) = (1, 1); media 11 = (1, 1)  ->  (1, 1) / sqrt(2)
    np.testing.assert_allclose(plain[0], [2**-0.5, 2**-0.5], atol=1e-12)
    _, unit = template_features(feats, tids, mids, score, use_norm_score=False)
    # T1 with unit image features: mean(0.5 (1, 0), (0, 1)) + (1, 1) / sqrt(2)
    t1 = np.array([0.25, 0.5]) + 2**-0.5
    np.testing.assert_allclose(unit[0], t1 / np.linalg.norm(t1), atol=1e-12)


def _insightface_pooling(feats, tids, mids):
    """FROZEN ORACLE (insightface eval_ijbc.py image2template_feature + verification),
    re-typed: loops over templates and media, mean per media, sum, normalise."""
    uniq = np.unique(tids)
    out = np.zeros((len(uniq), feats.shape[1]))
    for c, t in enumerate(uniq):
        (ind_t,) = np.where(tids == t)
        f, m = feats[ind_t], mids[ind_t]
        media = [f[m == u].mean(0, keepdims=True) for u in np.unique(m)]
        out[c] = np.sum(np.array(media), axis=0)
    return uniq, normalize(out)


def test_vectorised_pooling_and_chunked_scores_match_loop_oracle():
    rng = np.random.default_rng(0)
    n, d = 2000, 16
    tids = rng.integers(0, 150, n) * 7 + 3  # sparse, unsorted ids
    mids = rng.integers(0, 4, n)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    score = rng.random(n).astype(np.float32)
    ids_ref, ref = _insightface_pooling(feats.astype(np.float64) * score[:, None], tids, mids)
    for chunk in (1, 13, 10**6):
        ids, t = template_features(feats, tids, mids, score, chunk_size=chunk)
        assert np.array_equal(ids, ids_ref)
        np.testing.assert_allclose(t, ref, atol=1e-6)  # oracle weighted in float32 first
    t1, t2 = rng.choice(ids, 5000), rng.choice(ids, 5000)
    dense = np.sum(t[np.searchsorted(ids, t1)] * t[np.searchsorted(ids, t2)], axis=1)
    for chunk in (1, 7, 4096, 10**9):
        np.testing.assert_allclose(pair_scores(ids, t, t1, t2, chunk), dense, atol=1e-13)
    for tile in (1, 7, 10**6):  # dense pair list: the tiled matrix-product path
        np.testing.assert_allclose(pair_scores(ids, t, t1, t2, tile=tile), dense, atol=1e-13)
    sparse = slice(0, 40)  # 40 pairs over 150 templates: the gathering path
    got = pair_scores(ids, t, t1[sparse], t2[sparse], chunk_size=7)
    np.testing.assert_allclose(got, dense[sparse], atol=1e-13)


def test_tar_at_far_picks_documented_points():
    """8 impostors (FPR steps of 1/8, exact in binary) and 4 genuine pairs.

    ROC corners: (0, .25) (1/8, .25) (1/8, .5) (2/8, .5) (2/8, .75) (3/8, .75) (3/8, 1).
    FAR 1/8: two points at FPR 1/8 -> the larger TPR .5. FAR 3/16: FPR 1/8 and 2/8 are equally
    near -> insightface takes the later point (2/8, .75); conservative: .5 (FPR <= 3/16).
    """
    impostor = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1]
    genuine = [0.95, 0.8, 0.45, 0.35]
    labels = np.r_[np.zeros(8), np.ones(4)].astype(int)
    scores = np.r_[impostor, genuine]
    fars = (1e-3, 1 / 8, 3 / 16, 1.0)
    r = ijb_metrics(labels, scores, fars)
    assert r.tar_at_far == {1e-3: 0.25, 1 / 8: 0.5, 3 / 16: 0.75, 1.0: 1.0}
    c = ijb_metrics(labels, scores, fars, mode="conservative")
    assert c.tar_at_far == {1e-3: 0.25, 1 / 8: 0.5, 3 / 16: 0.5, 1.0: 1.0}
    assert r.auc == pytest.approx(1 - (1 + 2 + 3) / 32)  # impostors above each genuine


def test_nearest_rule_equals_insightface_min_over_flipped_roc():
    rng = np.random.default_rng(1)
    labels = rng.random(3000) < 0.1
    scores = np.round(rng.standard_normal(3000) + labels, 1)  # ties -> equal-FPR runs
    fpr, tpr, _ = roc_curve(labels, scores)
    ours = tar_at_far(fpr, tpr, (1e-3, 1e-2, 0.05, 0.1, 0.5))
    f, t = np.flipud(fpr), np.flipud(tpr)  # FROZEN ORACLE: eval_ijbc.py's table loop
    for far, tar in ours.items():
        _, i = min(zip(abs(f - far), range(len(f)), strict=True))
        assert tar == t[i]


def test_evaluate_ijb_end_to_end_and_errors():
    feats, score, tids, mids = _fixture()
    r = evaluate_ijb(feats, tids, mids, [1, 1, 2], [2, 3, 3], [1, 0, 0], score, fars=(0.5,))
    np.testing.assert_allclose(r.scores, [1 / 10**0.5, 0.2 / 2**0.5, -4 / 20**0.5])
    assert r.tar_at_far == {0.5: 1.0} and r.auc == 1.0 and r.n_templates == 3
    with pytest.raises(ValueError, match="no image"):
        evaluate_ijb(feats, tids, mids, [1, 9], [2, 3], [1, 0], score)
    with pytest.raises(ValueError, match="faceness"):
        template_features(feats, tids, mids)
    with pytest.raises(ValueError, match="NaN"):
        template_features(np.full((8, 2), np.nan), tids, mids, score)
    with pytest.raises(ValueError, match="8 features but 7"):
        template_features(feats, tids[:7], mids, score)
    with pytest.raises(ValueError, match="both genuine and impostor"):
        ijb_metrics([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="mode"):
        ijb_metrics([0, 1], [0.2, 0.3], mode="nearest-ish")
