"""Triplet distillation (Feng et al., 2019; MG reference code) and the plain triplet loss."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.data.sampler import PKBatchSampler
from facekd.losses.triplet import (
    TripletDistillation,
    adaptive_margin,
    embedding_distance,
    mine_triplets,
    pairwise_distance,
    triplet_distillation_loss,
    triplet_hinge,
)
from facekd.types import Batch, ModelOutput

M_MIN, M_MAX = 0.2, 0.5


def _vec(deg: float, norm: float = 1.0) -> list[float]:
    r = math.radians(deg)
    return [norm * math.cos(r), norm * math.sin(r)]


def _dist(deg_u: float, deg_v: float, metric: str) -> float:
    """Distance of two unit vectors at the given angles, by hand."""
    delta = math.radians(abs(deg_u - deg_v))
    cos = math.cos(delta)
    return {"l2sq": 2 - 2 * cos, "angle": math.acos(cos), "cosine_distance": 1 - cos}[metric]


# (anchor, positive, negative) angles in degrees; norms differ to exercise the normalisation
STUDENT = [(0, 30, 60), (0, 50, 40), (0, 10, 100)]
TEACHER = [(0, 20, 90), (10, 40, 50), (0, 60, 45)]  # third: teacher finds the negative closer


def _hand_loss(metric, student=STUDENT, teacher=TEACHER, m_min=M_MIN, m_max=M_MAX):
    d = [max(_dist(a, n, metric) - _dist(a, p, metric), 0.0) for a, p, n in teacher]
    d_max = max(d)
    total = 0.0
    for (a, p, n), d_i in zip(student, d, strict=True):
        f = (m_max - m_min) / d_max * d_i + m_min
        total += max(_dist(a, p, metric) - _dist(a, n, metric) + f, 0.0)
    return total / len(student)


def _rows(triplets, which, norm):
    return torch.tensor([_vec(t[which], norm) for t in triplets], dtype=torch.float64)


@pytest.mark.parametrize("metric", ["l2sq", "angle", "cosine_distance"])
def test_three_triplet_hand_example_mg_layout(metric):
    s = [_rows(STUDENT, i, norm) for i, norm in enumerate((2.0, 0.5, 3.0))]
    t = [_rows(TEACHER, i, norm) for i, norm in enumerate((1.5, 4.0, 0.7))]
    got = triplet_hinge(
        embedding_distance(s[0], s[1], metric),
        embedding_distance(s[0], s[2], metric),
        embedding_distance(t[0], t[1], metric),
        embedding_distance(t[0], t[2], metric),
    )
    expected = _hand_loss(metric)
    assert expected > 0
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("metric", ["l2sq", "angle"])
def test_batch_function_with_labels_hand_example(metric):
    # labels [0, 0, 1] -> exactly the triplets (0, 1, 2) and (1, 0, 2) under mining="all"
    s_deg, t_deg = [0, 30, 70], [0, 20, 90]
    e_s = torch.tensor([_vec(x, 2.0) for x in s_deg], dtype=torch.float64)
    e_t = torch.tensor([_vec(x) for x in t_deg], dtype=torch.float64)
    got = triplet_distillation_loss(e_s, e_t, torch.tensor([0, 0, 1]), metric=metric, mining="all")
    trip = [(0, 1, 2), (1, 0, 2)]
    expected = _hand_loss(
        metric,
        student=[tuple(s_deg[i] for i in t) for t in trip],
        teacher=[tuple(t_deg[i] for i in t) for t in trip],
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_margin_function_values_and_clipping():
    d = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(adaptive_margin(d), torch.tensor([0.2, 0.35, 0.5]))  # F(0), F(dmax)
    clipped = adaptive_margin(torch.tensor([0.0, 0.25, 0.5, 2.0]), dmax=0.5)
    torch.testing.assert_close(clipped, torch.tensor([0.2, 0.35, 0.5, 0.5]))
    zeros = adaptive_margin(torch.zeros(4))  # all d = 0: MG divides by 0, facekd gives m_min
    torch.testing.assert_close(zeros, torch.full((4,), 0.2))
    assert adaptive_margin(torch.zeros(0)).numel() == 0


def test_fixed_margin_equivalence():
    torch.manual_seed(0)
    e_s, e_t = torch.randn(12, 8), torch.randn(12, 8)
    labels = torch.arange(4).repeat_interleave(3)
    same = triplet_distillation_loss(e_s, e_t, labels, m_min=0.3, m_max=0.3, mining="all")
    plain = triplet_distillation_loss(e_s, None, labels, adaptive=False, margin=0.3, mining="all")
    torch.testing.assert_close(same, plain)
    assert plain.item() > 0


# angles 0, 40 (identity 0), 60, 180 (identity 1), 20 (unlabelled: in no triplet)
MINING_DEG, MINING_LABELS = [0, 40, 60, 180, 20], torch.tensor([0, 0, 1, 1, -1])


def _mined(mining, alpha=0.35):
    e = torch.tensor([_vec(x) for x in MINING_DEG], dtype=torch.float64)
    a, p, n = mine_triplets(MINING_LABELS, pairwise_distance(e), mining, alpha)
    return sorted(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))


def _brute_semihard(alpha):
    lab = MINING_LABELS.tolist()
    out = []
    for a in range(5):
        for p in range(5):
            for n in range(5):
                if min(lab[a], lab[p], lab[n]) < 0 or a == p or lab[a] != lab[p]:
                    continue
                if lab[n] == lab[a]:
                    continue
                ap = _dist(MINING_DEG[a], MINING_DEG[p], "l2sq")
                an = _dist(MINING_DEG[a], MINING_DEG[n], "l2sq")
                if ap < an < ap + alpha:
                    out.append((a, p, n))
    return out


def test_mining_modes_select_the_documented_triplets():
    # squared L2: d01=0.468, d02=1.0, d03=4.0, d12=0.121, d13=3.532, d23=3.0
    everything = [(a, p, n) for a, p in [(0, 1), (1, 0), (2, 3), (3, 2)] for n in (0, 1, 2, 3)]
    assert _mined("all") == [t for t in everything if MINING_LABELS[t[2]] != MINING_LABELS[t[0]]]
    assert _mined("semihard", alpha=0.6) == [(0, 1, 2), (3, 2, 1)] == _brute_semihard(0.6)
    assert _mined("semihard") == [] == _brute_semihard(0.35)  # no negative in the window
    # batch-hard: farthest positive, nearest negative per anchor
    assert _mined("hard") == [(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]


def test_gradient_reaches_student_not_teacher():
    torch.manual_seed(0)
    e_s = torch.randn(8, 16, requires_grad=True)
    e_t = torch.randn(8, 16, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = triplet_distillation_loss(e_s, e_t, labels, mining="all", metric="angle")
    loss.backward()
    assert e_t.grad is None
    assert e_s.grad is not None and e_s.grad.abs().sum() > 0


def test_student_equal_to_teacher_is_zero_only_when_the_teacher_clears_its_margin():
    # With D == T a triplet costs max(F(d) - d, 0), d = T_an - T_ap: zero only when the teacher
    # itself separates the negative by more than the (adaptive) margin. Not a mimic loss.
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # d = 2 everywhere
    assert triplet_distillation_loss(far, far, labels, mining="all").item() == 0.0
    # one triplet with d = 0.3: F(d_max) = m_max -> loss 0.5 - 0.3 = 0.2
    s_ap, s_an = torch.tensor([0.1]), torch.tensor([0.4])
    assert triplet_hinge(s_ap, s_an, s_ap, s_an).item() == pytest.approx(0.2)
    # the teacher cannot separate them (d = 0): F = m_min -> loss m_min
    assert triplet_hinge(s_an, s_ap, s_an, s_ap).item() == pytest.approx(0.2 + 0.3)


@pytest.mark.parametrize("mining", ["all", "semihard", "hard"])
@pytest.mark.parametrize(
    "labels", [[3, 3, 3, 3], [0, 1, 2, 3], [-1, -1, -1, -1]], ids=["one_id", "no_pos", "unlab"]
)
def test_batches_without_triplets_give_a_connected_zero(mining, labels):
    e_s = torch.randn(4, 8, requires_grad=True)
    loss = triplet_distillation_loss(e_s, torch.randn(4, 8), torch.tensor(labels), mining=mining)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(e_s.grad, torch.zeros_like(e_s))


def test_angle_metric_has_finite_gradient_for_duplicate_images():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = triplet_distillation_loss(e, e.detach(), torch.tensor([0, 0, 1]), metric="angle")
    loss.backward()
    assert torch.isfinite(e.grad).all()


def test_module_on_pk_batch():
    labels = torch.arange(20).repeat_interleave(3)
    sampler = PKBatchSampler(labels.numpy(), p=4, k=3, seed=0)
    idx = torch.tensor(next(iter(sampler)))
    torch.manual_seed(0)
    e_t = torch.randn(60, 32)[idx]
    student = ModelOutput(embedding=(e_t + 0.5 * torch.randn_like(e_t)).requires_grad_())
    batch = Batch(images=torch.zeros(12, 3, 8, 8), labels=labels[idx])
    for mining in ("all", "semihard", "hard"):
        loss = TripletDistillation(mining=mining, metric="cosine_distance")
        assert loss.requires == {"embedding"}
        value = loss(student, ModelOutput(embedding=e_t), batch)
        assert torch.isfinite(value) and value.item() >= 0
    assert "dmax='batch'" in repr(TripletDistillation())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"metric": "l2"},
        {"mining": "random"},
        {"m_min": 0.6},
        {"dmax": 0.0},
        {"dmax": "running"},
        {"dmax": True},
        {"mining_alpha": 0.0},
    ],
)
def test_options_are_validated(kwargs):
    with pytest.raises(ValueError):
        TripletDistillation(**kwargs)
