"""Margin heads (ArcFace, CosFace, softmax) and Partial FC against hand-computed values."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from facekd.models.heads import FALLBACKS, HEADS, ArcFace, CosFace, HeadOutput, build_head

COSINE_HEADS = ["arcface", "cosface"]
S = 64.0


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def angle_head(name: str, **kw):
    """2-d head with centres at 0, 90 and 180 degrees (already unit length)."""
    head = build_head(name, num_classes=3, embedding_size=2, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([unit(0), unit(90), unit(180)]))
    return head


def data(b=6, c=10, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_shapes_and_output_type(name):
    head = build_head(name, num_classes=10, embedding_size=8)
    x, y = data()
    out = head(x, y)
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == out.margin_logits.shape == (6, 10)
    assert out.logits.dtype == torch.float32
    assert torch.equal(out.targets, y) and out.classes is None
    assert head.arch == name and head.arch_kwargs == {"num_classes": 10, "embedding_size": 8}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_init_is_deterministic_and_seeded(name):
    a, b = (build_head(name, num_classes=7, embedding_size=4) for _ in range(2))
    c = build_head(name, num_classes=7, embedding_size=4, seed=1)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)


@pytest.mark.parametrize("name", COSINE_HEADS)
def test_logits_are_scaled_cosines(name):
    head = build_head(name, num_classes=10, embedding_size=8)
    x, y = data()
    xn, wn = x.numpy().astype(np.float64), head.weight.detach().numpy().astype(np.float64)
    cos = (xn / np.linalg.norm(xn, axis=1, keepdims=True)) @ (
        wn / np.linalg.norm(wn, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(head(x, y).logits.detach().numpy(), S * cos, atol=1e-4)


@pytest.mark.parametrize("name", COSINE_HEADS)
def test_margin_only_at_target_column(name):
    head = build_head(name, num_classes=10, embedding_size=8)
    x, y = data()
    out = head(x, y)
    diff = (out.margin_logits - out.logits).detach()
    mask = torch.zeros_like(diff, dtype=torch.bool)
    mask[torch.arange(6), y] = True
    assert torch.all(diff[~mask] == 0)
    assert torch.all(diff[mask] < -1e-3)  # the margin lowers the target logit


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("arcface", S * math.cos(math.radians(60) + 0.5)),  # 60 deg + 28.65 deg
        ("cosface", S * (math.cos(math.radians(60)) - 0.4)),
    ],
)
def test_margin_hand_formula(name, expected):
    head = angle_head(name)
    out = head(torch.tensor([unit(60)]), torch.tensor([0]))
    assert out.margin_logits[0, 0].item() == pytest.approx(expected, abs=1e-4)
    assert out.logits[0, 0].item() == pytest.approx(S * 0.5, abs=1e-4)
    assert out.margin_logits[0, 1].item() == pytest.approx(S * math.cos(math.radians(30)), abs=1e-4)


ARC_100 = math.cos(math.radians(100) + 0.5)


@pytest.mark.parametrize(
    ("fallback", "expected_170", "expected_100"),
    [
        ("cosface", math.cos(math.radians(170)) - 0.5 * math.sin(0.5), ARC_100),
        ("none", math.cos(math.radians(170) + 0.5), ARC_100),
        ("easy", math.cos(math.radians(170)), math.cos(math.radians(100))),  # cos(theta) <= 0
    ],
)
def test_arcface_fallback_beyond_pi(fallback, expected_170, expected_100):
    # m = 0.5 rad: 170 deg + m = 3.47 rad > pi; 100 deg + m < pi but cos(100 deg) < 0
    head = angle_head("arcface", fallback=fallback)
    out = head(torch.tensor([unit(170), unit(100), unit(60)]), torch.tensor([0, 0, 0]))
    expected = [expected_170, expected_100, math.cos(math.radians(60) + 0.5)]
    np.testing.assert_allclose(
        out.margin_logits[:, 0].detach().numpy(), S * np.array(expected), atol=1e-4
    )


def test_arcface_default_fallback_is_documented_cosface():
    assert ArcFace(3, 2).fallback == "cosface" and set(FALLBACKS) == {"cosface", "easy", "none"}


@pytest.mark.parametrize("name", COSINE_HEADS)
def test_unlabelled_rows_get_no_margin(name):
    head = build_head(name, num_classes=10, embedding_size=8)
    x, y = data()
    y[[1, 4]] = -1
    out = head(x, y)
    assert torch.equal(out.margin_logits[[1, 4]], out.logits[[1, 4]])
    assert not torch.equal(out.margin_logits[0], out.logits[0])
    assert torch.equal(head(x).margin_logits, head(x).logits)  # labels=None: all unlabelled
    ce = head.loss(out)
    keep = y >= 0
    ref = nn.functional.cross_entropy(out.margin_logits[keep], y[keep])
    assert ce.item() == pytest.approx(ref.item(), rel=1e-6)


def test_softmax_head_equals_linear():
    head = build_head("softmax", num_classes=10, embedding_size=8)
    lin = nn.Linear(8, 10)
    with torch.no_grad():
        head.bias.copy_(torch.randn(10))
        lin.weight.copy_(head.weight)
        lin.bias.copy_(head.bias)
    x, y = data()
    out = head(x, y)
    torch.testing.assert_close(out.logits, lin(x))
    assert out.margin_logits is out.logits


@pytest.mark.parametrize("name", sorted(HEADS))
def test_gradient_reaches_weight_and_embedding(name):
    head = build_head(name, num_classes=10, embedding_size=8)
    x, y = data()
    x.requires_grad_(True)
    head.loss(head(x, y)).backward()
    for grad in (head.weight.grad, x.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_straight_through_same_value_other_gradient():
    x, y = data()
    outs, grads = [], []
    for st in (False, True):
        head = build_head("arcface", num_classes=10, embedding_size=8, straight_through=st)
        xi = x.clone().requires_grad_(True)
        out = head(xi, y)
        out.margin_logits[torch.arange(6), y].sum().backward()
        outs.append(out.margin_logits.detach())
        grads.append(xi.grad)
        if st:  # the gradient of the margin logit is the plain cosine's
            xj = x.clone().requires_grad_(True)
            head(xj, y).logits[torch.arange(6), y].sum().backward()
            torch.testing.assert_close(xi.grad, xj.grad)
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1], atol=1e-3)


def test_float32_under_autocast():
    head = build_head("arcface", num_classes=10, embedding_size=8)
    x, y = data()
    x = x.bfloat16()
    ref = head(x.float(), y)  # the same (bf16-rounded) inputs in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x, y)
    assert out.logits.dtype == out.margin_logits.dtype == torch.float32
    torch.testing.assert_close(out.margin_logits, ref.margin_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("arcface", {"margin": -0.1}, "margin"),
        ("arcface", {"margin": 4.0}, "margin"),
        ("cosface", {"margin": 1.5}, "margin"),
        ("arcface", {"scale": 0.0}, "scale"),
        ("cosface", {"sample_rate": 0.0}, "sample_rate"),
        ("softmax", {"sample_rate": 1.5}, "sample_rate"),
        ("arcface", {"fallback": "clip"}, "fallback"),
        ("softmax", {"num_classes": 0}, "num_classes"),
    ],
)
def test_invalid_arguments(name, kwargs, message):
    kw = {"num_classes": 10, "embedding_size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_head(name, **kw)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_invalid_inputs(name):
    head = build_head(name, num_classes=10, embedding_size=8)
    x, y = data()
    with pytest.raises(ValueError, match="embedding_size=5"):
        head(torch.randn(6, 5), y)
    with pytest.raises(ValueError, match=r"\[-1, 9\]"):
        head(x, torch.tensor([0, 1, 2, 3, 4, 10]))
    with pytest.raises(ValueError, match="integer"):
        head(x, y.float())


def test_build_head_errors_list_names():
    with pytest.raises(KeyError, match="arcface, cosface, softmax"):
        build_head("sphereface", num_classes=3)
    with pytest.raises(TypeError, match="cosface"):
        build_head("cosface", num_classes=3, fallback="none")
    with pytest.raises(TypeError, match="arcface"):
        build_head("arcface", num_classes=3, bias=True)  # cosine heads have no bias


# ----------------------------------------------------------------- Partial FC
@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize(("num_classes", "rate", "labels"), [(95, 0.1, 4), (100, 0.05, 12)])
def test_partial_fc_sampling(name, num_classes, rate, labels):
    head = build_head(name, num_classes=num_classes, embedding_size=8, partial_fc=True)
    head.sample_rate = rate
    x, _ = data(b=16)
    y = torch.arange(labels).repeat(4)[:16] * 7  # `labels` distinct positives
    y[-1] = -1
    out = head.train()(x, y)
    positives = torch.unique(y[y >= 0])
    assert out.classes is not None and torch.isin(positives, out.classes).all()
    assert out.classes.numel() == max(positives.numel(), math.ceil(rate * num_classes))
    assert torch.equal(out.classes, torch.unique(out.classes))  # sorted, no duplicates
    assert out.logits.shape == (16, out.classes.numel())
    assert out.targets[-1] == -1 and torch.equal(out.classes[out.targets[:-1]], y[:-1])
    full = head.eval()(x, y)
    assert full.classes is None and full.logits.shape == (16, num_classes)
    rows = torch.arange(15)
    torch.testing.assert_close(
        out.margin_logits[rows, out.targets[:-1]], full.margin_logits[rows, y[:-1]]
    )
    torch.testing.assert_close(out.logits, full.logits[:, out.classes])
    # a second head (e.g. the teacher's) scored on the same columns agrees
    torch.testing.assert_close(head(x, y, classes=out.classes).logits, out.logits)


def test_partial_fc_gradient_only_on_sampled_centres():
    head = build_head("arcface", num_classes=50, embedding_size=8, partial_fc=True)
    x, y = data(c=50)
    out = head.train()(x, y)
    head.loss(out).backward()
    touched = head.weight.grad.abs().sum(1) > 0
    assert torch.equal(touched.nonzero().squeeze(1), out.classes)


def test_partial_fc_full_when_rate_one_and_reproducible_on_resume():
    head = build_head("cosface", num_classes=40, embedding_size=8, partial_fc=True, sample_rate=1)
    assert head.train()(*data(c=40)).classes is None
    kw = {"num_classes": 40, "embedding_size": 8, "partial_fc": True, "sample_rate": 0.25}
    a = build_head("cosface", **kw).train()
    x, y = data(c=40)
    first = a(x, y).classes
    resumed = build_head("cosface", **kw).train()
    resumed.load_state_dict(a.state_dict())  # sample_step travels in the state dict
    second = a(x, y).classes
    assert not torch.equal(first, second)  # a new draw every step
    assert torch.equal(resumed(x, y).classes, second)


def test_partial_fc_scales_to_200k_classes():
    head = build_head("arcface", num_classes=200_000, embedding_size=512, partial_fc=True)
    x, y = data(b=64, c=200_000, d=512)
    start = time.perf_counter()
    classes = head.sample_classes(y)  # ~10 ms; a per-class Python loop would take seconds
    assert time.perf_counter() - start < 1.0
    assert classes.shape == (20_000,) and torch.isin(y, classes).all()
    out = head.train()(x, y)
    assert out.logits.shape == (64, 20_000) and torch.isin(y, out.classes).all()
    assert not torch.equal(out.classes, classes)  # the next step draws new negatives
    head.loss(out).backward()
    assert torch.isfinite(head.weight.grad[out.classes]).all()


# ----------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(n, {}) for n in sorted(HEADS)] + [("arcface", {"partial_fc": True, "sample_rate": 0.5})],
)
def test_loss_decreases_on_separable_problem(name, kwargs):
    torch.manual_seed(0)
    centres = torch.randn(8, 16) * 3
    y = torch.arange(8).repeat(8)
    x = centres[y] + 0.3 * torch.randn(64, 16)
    net = nn.Linear(16, 16)
    head = build_head(name, num_classes=8, embedding_size=16, **kwargs).train()
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=0.02)
    losses = []
    for _ in range(40):
        loss = head.loss(head(net(x), y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    assert (head.eval()(net(x), y).logits.argmax(1) == y).float().mean() > 0.95


def test_cosface_defaults():
    head = CosFace(5, 4)
    assert (head.scale, head.margin) == (64.0, 0.4)
    assert (ArcFace(5, 4).scale, ArcFace(5, 4).margin) == (64.0, 0.5)
