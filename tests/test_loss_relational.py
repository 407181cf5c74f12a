"""DarkRank (hard / soft) against brute force; RKD against loops and its invariances."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from facekd.losses.relational import (
    RKD,
    DarkRank,
    darkrank_loss,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
)
from facekd.types import Batch, ModelOutput


def _emb(b=6, d=5, seed=0):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _scores(e, alpha=3.0, beta=3.0, metric="l2"):
    """Brute-force DarkRank scores S[q][i] = -alpha * d^beta on normalised rows."""
    rows = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in e.tolist()]
    out = []
    for a in rows:
        line = []
        for b in rows:
            cos = sum(x * y for x, y in zip(a, b, strict=True))
            d = math.sqrt(max(2 - 2 * cos, 1e-12)) if metric == "l2" else max(1 - cos, 1e-12)
            line.append(-alpha * d**beta)
        out.append(line)
    return out


def _pl_log_prob(scores):
    """log prod_k exp(s_k) / sum_{l >= k} exp(s_l), by explicit sums."""
    return sum(
        math.log(math.exp(scores[k]) / sum(math.exp(v) for v in scores[k:]))
        for k in range(len(scores))
    )


def _teacher_lists(s_t, length):
    n = len(s_t)
    return [
        sorted((i for i in range(n) if i != q), key=lambda i: -s_t[q][i])[:length] for q in range(n)
    ]


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_hard_darkrank_equals_brute_force_plackett_luce(metric):
    e_s, e_t = _emb(seed=1), _emb(seed=2)
    s_s, s_t = _scores(e_s, metric=metric), _scores(e_t, metric=metric)
    for length in (4, None):
        lists = _teacher_lists(s_t, 5 if length is None else length)
        expected = -sum(_pl_log_prob([s_s[q][i] for i in lst]) for q, lst in enumerate(lists)) / 6
        got = darkrank_loss(e_s, e_t, "hard", list_len=length, metric=metric).item()
        assert got == pytest.approx(expected, rel=1e-9)


def test_soft_darkrank_equals_brute_force_kl_over_all_permutations():
    e_s, e_t = _emb(seed=3), _emb(seed=4)
    s_s, s_t = _scores(e_s), _scores(e_t)
    total = 0.0
    for q, lst in enumerate(_teacher_lists(s_t, 4)):
        for perm in itertools.permutations(lst):  # 4! = 24 orders
            log_pt = _pl_log_prob([s_t[q][i] for i in perm])
            log_ps = _pl_log_prob([s_s[q][i] for i in perm])
            total += math.exp(log_pt) * (log_pt - log_ps)
    got = darkrank_loss(e_s, e_t, "soft", list_len=4).item()
    assert got == pytest.approx(total / 6, rel=1e-9)
    assert got > 0
    assert darkrank_loss(e_t, e_t, "soft").abs().item() < 1e-12


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_darkrank_is_invariant_to_batch_order(variant):
    e_s, e_t = _emb(8, 5, seed=5), _emb(8, 5, seed=6)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(7))
    a = darkrank_loss(e_s, e_t, variant)
    b = darkrank_loss(e_s[perm], e_t[perm], variant)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_darkrank_module_validation_and_small_batches():
    for kwargs in (
        {"variant": "medium"},
        {"metric": "l1"},
        {"variant": "soft", "list_len": 7},
        {"variant": "soft", "list_len": None},
        {"list_len": 0},
        {"alpha": 0},
    ):
        with pytest.raises(ValueError):
            DarkRank(**kwargs)
    e = _emb(3, 4, seed=8).float()  # list_len 4 > B - 1 = 2: ranks the 2 others
    out = ModelOutput(embedding=e)
    batch = Batch(images=torch.zeros(3, 3, 8, 8), labels=torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(DarkRank()(out, ModelOutput(embedding=e * 2), batch))
    with pytest.raises(ValueError, match="at least 2"):
        darkrank_loss(e[:1], e[:1])


def test_rkd_terms_equal_explicit_loops():
    f_s, f_t = _emb(4, 3, seed=9), _emb(4, 3, seed=10)

    def huber(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    def dist(f):
        d = [[math.dist(f[i], f[j]) for j in range(4)] for i in range(4)]
        mu = sum(d[i][j] for i in range(4) for j in range(4) if i != j) / 12
        return [[v / mu for v in row] for row in d]

    def angle(f, i, j, k):
        u = [a - b for a, b in zip(f[i], f[j], strict=True)]
        v = [a - b for a, b in zip(f[k], f[j], strict=True)]
        nu, nv = math.hypot(*u), math.hypot(*v)
        if nu == 0 or nv == 0:
            return 0.0
        return sum(a * b for a, b in zip(u, v, strict=True)) / (nu * nv)

    s, t = f_s.tolist(), f_t.tolist()
    ds, dt = dist(s), dist(t)
    l_d = sum(huber(ds[i][j] - dt[i][j]) for i in range(4) for j in range(4)) / 16
    idx = itertools.product(range(4), repeat=3)
    l_a = sum(huber(angle(s, i, j, k) - angle(t, i, j, k)) for i, j, k in idx) / 64
    assert rkd_distance_loss(f_s, f_t).item() == pytest.approx(l_d, rel=1e-6)
    assert rkd_angle_loss(f_s, f_t).item() == pytest.approx(l_a, rel=1e-6)
    assert rkd_loss(f_s, f_t).item() == pytest.approx(25 * l_d + 50 * l_a, rel=1e-6)
    d = pairwise_distances(f_s)
    assert torch.all(d.diagonal() == 0) and torch.allclose(d, d.t())


def test_rkd_is_zero_when_student_equals_teacher_up_to_scale_and_rotation():
    f_t = _emb(8, 6, seed=11)
    q, _ = torch.linalg.qr(_emb(6, 6, seed=12))
    for f_s in (f_t * 3.7, f_t * 0.01, (f_t @ q) * 2.0):
        assert rkd_distance_loss(f_s, f_t).item() < 1e-12
        assert rkd_angle_loss(f_s, f_t).item() < 1e-12
        assert rkd_loss(f_s, f_t).item() < 1e-10
    assert rkd_distance_loss(f_t + _emb(8, 6, seed=13), f_t) > 0
    with pytest.raises(ValueError):
        RKD(dist_weight=0, angle_weight=0)
    only_angle = RKD(dist_weight=0.0, angle_weight=1.0)
    out_s, out_t = ModelOutput(embedding=f_t.float()), ModelOutput(embedding=2 * f_t.float())
    batch = Batch(images=torch.zeros(8, 3, 8, 8), labels=torch.zeros(8, dtype=torch.long))
    assert only_angle(out_s, out_t, batch).item() < 1e-6


def test_relational_gram_products_stay_float32_under_autocast():
    e_s, e_t = _emb(8, 16, seed=14).float(), _emb(8, 16, seed=15).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dr = darkrank_loss(e_s, e_t)
        rk = rkd_loss(e_s, e_t)
    assert dr.dtype == rk.dtype == torch.float32
    assert torch.allclose(dr, darkrank_loss(e_s, e_t), rtol=1e-5)
    assert torch.allclose(rk, rkd_loss(e_s, e_t), rtol=1e-5)
