"""1:N metrics: CMC, TPIR@FPIR and the threshold at a rate, on score matrices worked by hand."""

import numpy as np
import pytest

from facekd.evaluation.identification import (
    cmc,
    mate_ranks,
    open_set_rates,
    threshold_at_rate,
    tpir_at_fpir,
)

GALLERY = ["a", "b", "c"]
PROBES = ["a", "b", "c", "z", "y"]  # z, y: not enrolled (non-mated)
SCORES = np.array(
    [
        [0.9, 0.5, 0.1],  # a: mate best -> rank 1
        [0.6, 0.4, 0.7],  # b: two others above -> rank 3
        [0.2, 0.3, 0.3],  # c: tie with b counts against -> rank 2
        [0.35, 0.1, 0.2],  # z: best 0.35
        [0.1, 0.8, 0.0],  # y: best 0.8
    ]
)


def test_ranks_and_cmc_by_hand():
    ranks, mate, top = mate_ranks(SCORES, PROBES, GALLERY)
    assert ranks.tolist() == [1, 3, 2, 0, 0]
    np.testing.assert_allclose(mate[:3], [0.9, 0.4, 0.3])
    assert np.isnan(mate[3:]).all()
    np.testing.assert_allclose(top, [0.9, 0.7, 0.3, 0.35, 0.8])
    np.testing.assert_allclose(cmc(SCORES, PROBES, GALLERY), [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(cmc(SCORES, PROBES, GALLERY, max_rank=1), [1 / 3])


def test_rank_does_not_depend_on_gallery_order():
    perm = [2, 0, 1]
    ranks, _, _ = mate_ranks(SCORES[:, perm], PROBES, [GALLERY[i] for i in perm])
    assert ranks.tolist() == [1, 3, 2, 0, 0]


def test_tpir_at_fpir_by_hand():
    # non-mated best scores [0.35, 0.8]; FPIR 0.5 allows one false alarm: T just above 0.35
    res = tpir_at_fpir(SCORES, PROBES, GALLERY, fpirs=(0.5, 0.1))
    assert res[0.5]["threshold"] == np.nextafter(0.35, 1.0)
    assert res[0.5]["fpir_measured"] == 0.5 and res[0.5]["resolved"]
    assert res[0.5]["tpir"] == pytest.approx(1 / 3)  # only probe a is rank 1
    # 0.1 * 2 < 1 false alarm: T just above 0.8, not resolvable with two non-mated probes
    assert res[0.1]["threshold"] == np.nextafter(0.8, 1.0) and not res[0.1]["resolved"]
    assert res[0.1]["fpir_measured"] == 0.0 and res[0.1]["tpir"] == pytest.approx(1 / 3)
    # rank 3: probe b (0.4 >= T) counts too, c (0.3 < T) does not
    assert tpir_at_fpir(SCORES, PROBES, GALLERY, (0.5,), rank=3)[0.5]["tpir"] == pytest.approx(
        2 / 3
    )
    tpir, fpir = open_set_rates(SCORES, PROBES, GALLERY, threshold=0.3)
    assert (tpir, fpir) == (pytest.approx(1 / 3), 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_at_rate_matches_a_brute_force_scan(seed):
    rng = np.random.default_rng(seed)
    neg = np.round(rng.normal(size=int(rng.integers(5, 400))), 1)  # many ties
    for rate in (0.001, 0.01, 0.05, 0.3, 0.9):
        t, resolved = threshold_at_rate(neg, rate)
        allowed = int(np.floor(rate * len(neg) + 1e-9))
        values = np.append(np.unique(neg), np.nextafter(neg.max(), np.inf))
        counts = np.array([(neg >= v).sum() for v in values])
        first_ok = int(np.flatnonzero(counts <= allowed)[0])
        expected = np.nextafter(values[first_ok - 1], np.inf) if first_ok else values[0]
        assert t == expected
        assert (neg >= t).sum() <= allowed < (neg >= np.nextafter(t, -np.inf)).sum()
        assert resolved == (allowed >= 1)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unique"):
        mate_ranks(SCORES[:, :2], PROBES, ["a", "a"])
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        mate_ranks(SCORES[:, :2], PROBES, GALLERY)
    with pytest.raises(ValueError, match="NaN"):
        mate_ranks(np.where(SCORES > 0.85, np.nan, SCORES), PROBES, GALLERY)
    with pytest.raises(ValueError, match="no probe has a mate"):
        cmc(SCORES[3:], PROBES[3:], GALLERY)
    with pytest.raises(ValueError, match="non-mated"):
        tpir_at_fpir(SCORES[:3], PROBES[:3], GALLERY)
    with pytest.raises(ValueError, match="no negative"):
        threshold_at_rate([], 0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        threshold_at_rate([0.1], 1.0)
