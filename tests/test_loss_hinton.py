"""Hinton soft-target KD: KL properties, T^2 scaling, label fusion, Partial FC columns."""

from __future__ import annotations

import math

import pytest
import torch

from facekd.engine.distiller import Distiller
from facekd.losses.hinton import (
    HintonKD,
    column_targets,
    hinton_kd_loss,
    seed_fusion_loss,
)
from facekd.models import ArcFace
from facekd.types import Batch, ModelOutput


def _logits(b=4, c=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale


def test_kl_nonnegative_and_zero_for_equal_logits():
    z_s, z_t = _logits(seed=1), _logits(seed=2)
    for T in (1.0, 4.0, 20.0):
        assert hinton_kd_loss(z_s, z_t, T) > 0
        assert hinton_kd_loss(z_t, z_t, T).abs() < 1e-6
    # shift invariance of the softmax: equal up to a per-row constant is still 0
    assert hinton_kd_loss(z_t + 5.0, z_t, 4.0).abs() < 1e-5


def test_kl_matches_explicit_sum():
    z_s, z_t, T = _logits(2, 5, 3), _logits(2, 5, 4), 4.0
    total = 0.0
    for b in range(2):
        zs, zt = (z_s[b] / T).tolist(), (z_t[b] / T).tolist()
        ls = math.log(sum(math.exp(v) for v in zs))
        lt = math.log(sum(math.exp(v) for v in zt))
        total += sum(math.exp(t - lt) * ((t - lt) - (s - ls)) for s, t in zip(zs, zt, strict=True))
    expected = T * T * total / 2
    assert hinton_kd_loss(z_s, z_t, T).item() == pytest.approx(expected, rel=1e-5)


def test_tau_squared_keeps_soft_gradient_size_constant():
    """d(T^2 KL)/dz_s -> (z_s - z_t) / (C B) for large T and zero-mean logits (Hinton 2015)."""
    b, c = 8, 100
    z_t = _logits(b, c, 5, scale=1.0)
    z_s = _logits(b, c, 6, scale=1.0)
    z_t, z_s = z_t - z_t.mean(1, keepdim=True), z_s - z_s.mean(1, keepdim=True)
    norms, raw = [], []
    for T in (4.0, 8.0, 16.0, 32.0):
        z = z_s.clone().requires_grad_(True)
        hinton_kd_loss(z, z_t, T).backward()
        norms.append(z.grad.norm().item())
        raw.append(norms[-1] / T**2)  # what the soft term's gradient would be without T^2
    assert max(norms) / min(norms) < 1.15
    limit = ((z_s - z_t) / (c * b)).norm().item()
    assert norms[-1] == pytest.approx(limit, rel=0.05)
    assert raw[0] / raw[-1] == pytest.approx((32 / 4) ** 2, rel=0.15)  # ~1/T^2 without it


def test_seed_fusion_equals_its_decomposition():
    z_s, z_t = _logits(4, 6, 7), _logits(4, 6, 8)
    y = torch.tensor([0, 5, -1, 2])  # one unlabelled face: soft part only
    T, a, b = 20.0, 0.1, 0.9
    log_q_s = torch.log_softmax(z_s / T, dim=1)
    q_t = torch.softmax(z_t / T, dim=1)
    expected = 0.0
    for i in range(4):
        hard = -log_q_s[i, y[i]].item() if y[i] >= 0 else 0.0  # CE(y, q_S^(T))
        soft = -(q_t[i] * log_q_s[i]).sum().item()  # CE(q_T^(T), q_S^(T))
        expected += a * hard + b * soft
    expected /= 4
    got = seed_fusion_loss(z_s, z_t, y, T, a, b).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # soft part = KL + teacher entropy; so with b = 1, a = 0: T^-2 * hinton + H(q_T)
    entropy = -(q_t * q_t.log()).sum(1).mean().item()
    fused = seed_fusion_loss(z_s, z_t, y, T, 0.0, 1.0).item()
    assert fused == pytest.approx(hinton_kd_loss(z_s, z_t, T).item() / T**2 + entropy, rel=1e-5)


def _outputs(b=3, c=6, classes=None, seed=0):
    z_s, z_t = _logits(b, c if classes is None else len(classes), seed), _logits(b, c, seed + 1)
    emb = torch.zeros(b, 4)
    s = ModelOutput(embedding=emb, logits=z_s, classes=classes)
    return s, ModelOutput(embedding=emb, logits=z_t), z_s, z_t


def _batch(labels):
    return Batch(images=torch.zeros(len(labels), 3, 8, 8), labels=torch.tensor(labels))


def test_module_modes_and_partial_fc_columns():
    classes = torch.tensor([1, 3, 4])
    s, t, z_s, z_t = _outputs(classes=classes)
    batch = _batch([3, 0, 4])  # class 0 is not among the sampled columns: no hard part
    kd = HintonKD(T=4.0)
    assert kd.requires == {"logits"}
    assert torch.allclose(kd(s, t, batch), hinton_kd_loss(z_s, z_t[:, classes], 4.0))
    assert column_targets(batch.labels, classes).tolist() == [1, -1, 2]
    fusion = HintonKD(T=20.0, mode="seed_fusion", a=0.1, b=0.9)
    expected = seed_fusion_loss(z_s, z_t[:, classes], torch.tensor([1, -1, 2]), 20.0, 0.1, 0.9)
    assert torch.allclose(fusion(s, t, batch), expected)


def test_module_refuses_mismatched_classes_and_bad_arguments():
    s, t, _, _ = _outputs()
    t.logits = t.logits[:, :5]
    with pytest.raises(ValueError, match="num_classes"):
        HintonKD()(s, t, _batch([0, 1, 2]))
    s.logits = None
    with pytest.raises(ValueError, match="student logits"):
        HintonKD()(s, t, _batch([0, 1, 2]))
    for kwargs in ({"mode": "fusion"}, {"T": 0}, {"a": -0.1}):
        with pytest.raises(ValueError):
            HintonKD(**kwargs)


def test_partial_fc_through_the_distiller(tiny_student, tiny_teacher):
    torch.manual_seed(0)
    head = ArcFace(16, tiny_student.num_features, partial_fc=True, sample_rate=0.5, seed=1)
    teacher_head = ArcFace(16, tiny_teacher.num_features, seed=2)
    distiller = Distiller(
        tiny_student,
        head=head,
        losses={"hinton": HintonKD(T=4.0)},
        weights={"hinton": 0.9},
        teacher=tiny_teacher,
        teacher_head=teacher_head,
        ce_weight=0.1,
    ).train()
    batch = Batch(images=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 3, 3, 9]))
    terms = distiller(batch)
    # recompute by hand: the student's sampled columns, the teacher over all 16 classes
    student = tiny_student.forward_features(batch.images)
    head.sample_step -= 1  # draw the same sample again
    out = head(student.embedding, batch.labels)
    assert out.classes is not None and out.classes.numel() == 8
    with torch.no_grad():
        t_logits = teacher_head(tiny_teacher.forward_features(batch.images).embedding).logits
    expected = hinton_kd_loss(out.logits, t_logits[:, out.classes], 4.0)
    assert torch.allclose(terms["kd/hinton"], expected, atol=1e-5)
    assert torch.isfinite(terms["loss"])
