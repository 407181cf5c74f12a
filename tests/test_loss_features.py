"""Feature-map losses: FitNets, attention transfer, FSP (reference values and adapters)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facekd.losses.attention import AttentionTransfer, at_loss, attention_map
from facekd.losses.fitnets import FitNets, hint_loss, select_stage
from facekd.losses.fsp import FSP, fsp_distance, fsp_matrix
from facekd.types import Batch, ModelOutput


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _out(stages):
    b = next(s for s in stages if s is not None).shape[0]
    return ModelOutput(embedding=torch.zeros(b, 4), stages=list(stages))


BATCH = Batch(images=torch.zeros(2, 3, 8, 8), labels=torch.zeros(2, dtype=torch.long))


# -- attention transfer -------------------------------------------------------------------
def test_at_hand_computed_uniform_vs_peaked():
    """Uniform map -> q = 1/4 everywhere (16 positions); one-hot map -> q = e_0.

    diff = (1/4 - 1, 1/4 x 15): squared norm 9/16 + 15/16 = 3/2 per sample.
    """
    f_s = torch.ones(2, 3, 4, 4)
    f_t = torch.zeros(2, 3, 4, 4)
    f_t[:, 1, 0, 0] = 2.0
    assert at_loss(f_s, f_t, mode="code").item() == pytest.approx(1.5 / 16)
    assert at_loss(f_s, f_t, mode="paper").item() == pytest.approx(math.sqrt(1.5))


def test_at_matches_explicit_loops():
    f_s, f_t = _rand(2, 3, 4, 4, seed=1), _rand(2, 3, 4, 4, seed=2)
    q = {}
    for name, f in (("s", f_s), ("t", f_t)):
        rows = []
        for b in range(2):
            a = [
                sum(f[b, c, h, w].item() ** 2 for c in range(3)) for h in range(4) for w in range(4)
            ]
            n = math.sqrt(sum(v * v for v in a))
            rows.append([v / n for v in a])
        q[name] = rows
    sq = [sum((x - y) ** 2 for x, y in zip(q["s"][b], q["t"][b], strict=True)) for b in range(2)]
    assert at_loss(f_s, f_t, mode="code").item() == pytest.approx(sum(sq) / 32, rel=1e-5)
    paper = sum(math.sqrt(v) for v in sq) / 2
    assert at_loss(f_s, f_t, mode="paper").item() == pytest.approx(paper, rel=1e-5)
    assert torch.allclose(attention_map(f_s).norm(dim=1), torch.ones(2))


def test_at_spatial_mismatch_pools_the_larger_map_and_is_channel_free():
    f_s, f_t = _rand(2, 5, 4, 4, seed=3), _rand(2, 3, 8, 8, seed=4)
    expected = at_loss(f_s, F.avg_pool2d(f_t, 2))
    assert torch.allclose(at_loss(f_s, f_t), expected)
    assert torch.allclose(at_loss(f_t, f_s), at_loss(F.avg_pool2d(f_t, 2), f_s))


def test_at_module_sums_weighted_pairs_and_validates():
    t = _out([_rand(2, 3, 8, 8, seed=5), _rand(2, 4, 4, 4, seed=6)])
    s = _out([_rand(2, 6, 8, 8, seed=7), _rand(2, 2, 4, 4, seed=8)])
    loss = AttentionTransfer(pairs=[[0, 0], [1, 1]], mode="paper", pair_weights=[1.0, 2.0])
    loss.build(s, t)
    expected = at_loss(s.stages[0], t.stages[0], mode="paper") + 2 * at_loss(
        s.stages[1], t.stages[1], mode="paper"
    )
    assert torch.allclose(loss(s, t, BATCH), expected)
    with pytest.raises(ValueError, match="available stages"):
        AttentionTransfer(pairs=[(4, 0)]).build(s, t)
    for kwargs in (
        {"mode": "both"},
        {"pairs": [1, 2]},
        {"pairs": [(0, 0)], "pair_weights": [1, 2]},
    ):
        with pytest.raises(ValueError):
            AttentionTransfer(**kwargs)


# -- FSP ----------------------------------------------------------------------------------
def test_fsp_matrix_equals_double_loop():
    f1, f2 = _rand(2, 3, 4, 4, seed=9), _rand(2, 5, 4, 4, seed=10)
    g = fsp_matrix(f1, f2)
    assert g.shape == (2, 3, 5)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                v = sum(f1[b, i, h, w] * f2[b, j, h, w] for h in range(4) for w in range(4)) / 16
                assert g[b, i, j].item() == pytest.approx(v.item(), rel=1e-5, abs=1e-6)


def test_fsp_pools_the_larger_map_of_a_pair():
    f1, f2 = _rand(2, 3, 8, 8, seed=11), _rand(2, 4, 4, 4, seed=12)
    assert torch.allclose(fsp_matrix(f1, f2), fsp_matrix(F.max_pool2d(f1, 2), f2))
    assert torch.allclose(fsp_matrix(f1, f2, "avg"), fsp_matrix(F.avg_pool2d(f1, 2), f2))


def test_fsp_modes_hand_computed():
    g_s, g_t = torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)
    g_s[0] = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # columns (3, 4) and (0, 1)
    # paper: squared Frobenius (9 + 16 + 1) / B; code: column norms (5 + 1) / B
    assert fsp_distance(g_s, g_t, "paper").item() == pytest.approx(26 / 2)
    assert fsp_distance(g_s, g_t, "code").item() == pytest.approx(6 / 2)
    f_s = [_rand(2, 3, 4, 4, seed=13), _rand(2, 3, 4, 4, seed=14)]
    f_t = [_rand(2, 3, 4, 4, seed=15), _rand(2, 3, 4, 4, seed=16)]
    diff = fsp_matrix(*f_s) - fsp_matrix(*f_t)
    paper = sum(diff[b, i, j].item() ** 2 for b in range(2) for i in range(3) for j in range(3))
    loss = FSP(pairs=[((0, 1), (0, 1))])
    loss.build(_out(f_s), _out(f_t))
    assert len(loss.adapters) == 0
    assert loss(_out(f_s), _out(f_t), BATCH).item() == pytest.approx(paper / 2, rel=1e-5)


# METHODS 7a / 4.4 shapes at 112 px: iResNet-100 stages and insightface mbf (scale 2) stages
IRESNET100 = [(64, 112), (64, 56), (128, 28), (256, 14), (512, 7)]
MBF = [(128, 56), (128, 28), (256, 14), (256, 7)]


def _shaped(spec):
    return _out([torch.zeros(1, c, s, s) for c, s in spec])


def test_fsp_adapter_shapes_follow_the_methods_table():
    loss = FSP()
    loss.build(_shaped(MBF), _shaped(IRESNET100))
    shapes = {k: tuple(m[0].weight.shape[:2]) for k, m in loss.adapters.items()}
    # (out, in) channels: mbf 128 -> iResNet 64 at layer1, 256 -> 512 at layer4
    assert shapes == {"p0_in": (64, 128), "p2_out": (512, 256)}
    assert all(isinstance(m[1], torch.nn.BatchNorm2d) for m in loss.adapters.values())


# -- FitNets ------------------------------------------------------------------------------
def test_hint_loss_modes():
    hint, reg = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    reg[0, 0, 0, 0], reg[1, 2, 3, 3] = 2.0, 4.0  # squared errors 4 and 16
    assert hint_loss(hint, reg, "code").item() == pytest.approx(20 / 96)
    assert hint_loss(hint, reg, "paper").item() == pytest.approx(0.5 * 20 / 2)


def test_fitnets_default_taps_and_regressor_on_methods_shapes():
    loss = FitNets()
    loss.build(_shaped(MBF), _shaped(IRESNET100))  # layer3 (256, 14) <- layers[5] (256, 14)
    conv, bn = loss.regressor
    assert tuple(conv.weight.shape) == (256, 256, 1, 1) and bn.num_features == 256
    small = FitNets(regressor="conv1x1")
    small.build(_shaped([(16, 8), (16, 8), (128, 14)]), _shaped(IRESNET100))
    assert tuple(small.regressor[0].weight.shape) == (256, 128, 1, 1)


def test_fitnets_spatial_mismatch_and_paper_regressor():
    t = _out([None, _rand(2, 4, 4, 4, seed=17)])
    s = _out([_rand(2, 3, 8, 8, seed=18)])
    pooled = FitNets(teacher_stage=1, student_stage=0, regressor="conv1x1")
    pooled.build(s, t)
    expected = hint_loss(t.stages[1], F.avg_pool2d(pooled.regressor(s.stages[0]), 2))
    assert torch.allclose(pooled(s, t, BATCH), expected)
    valid = FitNets(teacher_stage=1, student_stage=0, regressor="conv_valid", mode="paper")
    valid.build(s, t)
    assert tuple(valid.regressor.weight.shape) == (4, 3, 5, 5)  # k = 8 - 4 + 1
    assert torch.isfinite(valid(s, t, BATCH))
    with pytest.raises(ValueError, match="at least as large"):
        FitNets(teacher_stage=0, student_stage=1, regressor="conv_valid").build(t, s)


def test_fitnets_names_missing_and_uncached_stages():
    t = _out([None, _rand(2, 4, 4, 4)])
    with pytest.raises(ValueError, match="cache_stages"):
        select_stage(t, 0, "teacher")
    with pytest.raises(ValueError, match=r"available stages .*\(2, 4, 4, 4\)"):
        select_stage(t, 5, "teacher")
    with pytest.raises(RuntimeError, match="build"):
        FitNets(teacher_stage=1, student_stage=1)(t, t, BATCH)
    for kwargs in ({"regressor": "fc"}, {"mode": "l1"}):
        with pytest.raises(ValueError):
            FitNets(**kwargs)


def test_fsp_and_attention_stay_float32_under_autocast():
    f1, f2 = _rand(2, 3, 8, 8, seed=19), _rand(2, 4, 4, 4, seed=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = fsp_matrix(f1.bfloat16(), f2.bfloat16())
        a = at_loss(f1.bfloat16(), f2.bfloat16())
    assert g.dtype == torch.float32 and a.dtype == torch.float32
    assert torch.allclose(g, fsp_matrix(f1.bfloat16().float(), f2.bfloat16().float()))
