"""Profiler: exact counts on hand-computed models, FLOPs against an independent hook count,
ratios, report round trip, and that the caller's model is left as it was."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from facekd.evaluation import profile as prof
from facekd.evaluation.profile import (
    ComparisonReport,
    TimingBudget,
    compare,
    count_flops,
    count_parameters,
    profile_model,
)
from facekd.models import build_backbone

#: a few rounds, no time cap: the run counts are exact (never assert wall-time values)
TINY = TimingBudget(warmup=1, runs=3, min_runs=2)


class TinyNet(nn.Module):
    """conv 3->4 (3x3, pad 1, bias) on 8x8, then linear 256->10 (bias)."""

    input_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.bn(self.conv(x)), 1))


def hook_flops(model: nn.Module, input_size: int) -> int:
    """Independent count: 2*Cout*(Cin/groups)*kh*kw*Hout*Wout per conv, 2*in*out per linear."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * m.out_channels * (m.in_channels // m.groups) * kh * kw * out[0, 0].numel()

    def linear_hook(m: nn.Linear, inp, _out):
        nonlocal total
        total += 2 * m.in_features * m.out_features * (inp[0].numel() // m.in_features)

    handles = [
        mod.register_forward_hook(conv_hook if isinstance(mod, nn.Conv2d) else linear_hook)
        for mod in model.modules()
        if isinstance(mod, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, input_size, input_size))
    for h in handles:
        h.remove()
    return total


def test_tiny_net_counts_by_hand():
    model = TinyNet()
    model.conv.bias.requires_grad_(False)
    # conv 4*3*3*3 + 4 bias, BN 4 + 4, linear 256*10 + 10
    assert count_parameters(model) == (112 + 8 + 2570, 112 + 8 + 2570 - 4)
    # conv: 2 * 4 * 3 * 9 * (8*8) = 13824; linear: 2 * 256 * 10 = 5120 (bias and BN not counted)
    assert count_flops(model, 8) == 13824 + 5120 == hook_flops(model, 8)


def test_shared_parameters_counted_once():
    lin = nn.Linear(5, 5, bias=False)
    assert count_parameters(nn.Sequential(lin, lin)) == (25, 25)


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_flops_match_independent_count(name):
    model = build_backbone(name)
    flops, ref = count_flops(model, 112), hook_flops(model, 112)
    assert abs(flops - ref) <= 0.02 * ref


def test_published_flops():
    """MobileFaceNet: 221 M MAdds (Chen et al. 2018); iResNet-100: 12.1 GMACs (insightface)."""
    assert count_flops(build_backbone("mobilefacenet"), 112) / 2e9 == pytest.approx(0.221, rel=0.02)
    assert count_flops(build_backbone("iresnet100"), 112) / 2e9 == pytest.approx(12.1, rel=0.02)


def test_compare_ratios_fields_and_json_round_trip():
    torch.manual_seed(0)
    teacher = build_backbone("iresnet18", width=0.25, input_size=32)
    student = build_backbone("mobilefacenet", width=0.25, input_size=32)
    report = compare(teacher, student, batch_sizes=(1, 4), budget=TINY, progress=False)
    t, s = report.teacher, report.student
    assert (t.params, s.params) == (count_parameters(teacher)[0], count_parameters(student)[0])
    assert report.compression_ratio == pytest.approx(t.params / s.params)
    assert report.flops_ratio == pytest.approx(hook_flops(teacher, 32) / hook_flops(student, 32))
    assert t.gmacs == pytest.approx(t.gflops / 2)
    assert t.size_bytes > 4 * t.params and report.size_ratio > 1
    assert {(x.batch_size, x.precision) for x in t.latency} == {
        (b, p) for b in (1, 4) for p in ("fp32", "bf16")
    }
    for lat in t.latency + s.latency:
        if lat.skipped:  # bf16 on a CPU without native support
            assert lat.precision == "bf16" and lat.median_ms is None
            continue
        assert lat.median_ms > 0 and lat.p90_ms >= lat.median_ms and lat.throughput > 0
        assert (lat.runs, lat.warmup_runs) == (3, 1)
    assert all(sp["speedup"] is None or sp["speedup"] > 0 for sp in report.speedups())
    data = json.loads(json.dumps(report.to_json()))
    assert data == report.to_json()
    assert ComparisonReport.from_json(data).to_json() == data
    assert data["environment"]["threads"] == torch.get_num_threads()
    table = report.table()
    assert "compression" in table and "iresnet18" in table and "speed-up" in table


def test_callers_model_not_mutated():
    model = TinyNet().train()
    before = copy.deepcopy(model.state_dict())
    profile_model(model, 8, batch_sizes=(1, 2), budget=TINY, progress=False)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value)
    w = model.conv.weight
    assert w.dtype == torch.float32 and w.is_contiguous()
    assert not w.is_contiguous(memory_format=torch.channels_last)
    assert w.device.type == "cpu" and w.requires_grad


def test_bf16_skipped_with_reason(monkeypatch):
    monkeypatch.setattr(prof, "bf16_support", lambda device="cpu": (False, "no bf16 here"))
    report = compare(TinyNet(), TinyNet(), batch_sizes=(2,), budget=TINY, progress=False)
    lat = report.teacher.latency_for(2, "bf16")
    assert lat.skipped == "no bf16 here" and lat.median_ms is None and lat.runs == 0
    assert report.teacher.latency_for(2, "fp32").median_ms > 0
    sp = {x["precision"]: x["speedup"] for x in report.speedups()}
    assert sp["bf16"] is None and sp["fp32"] > 0
    assert "skipped: no bf16 here" in report.table()
    json.dumps(report.to_json())


def test_rounds_interleave_abba_and_respect_budget():
    order: list[str] = []
    steps = [lambda: order.append("t"), lambda: order.append("s")]
    times, warm = prof._time_rounds(
        steps, TimingBudget(warmup=1, runs=3, min_runs=1), torch.device("cpu")
    )
    assert warm == 1 and [len(t) for t in times] == [3, 3]
    assert "".join(order) == "ts" + "tsstts"  # warm-up round, then ABBA-ordered timed rounds
    # a time cap stops after min_runs once spent; never fewer than min_runs
    capped = TimingBudget(warmup=5, runs=1000, min_runs=2, max_seconds=1e-9)
    times, warm = prof._time_rounds(steps, capped, torch.device("cpu"))
    assert warm == 1 and [len(t) for t in times] == [2, 2]


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_sizes": ()}, {"batch_sizes": (0,)}, {"precisions": ("fp16",)}],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        profile_model(TinyNet(), 8, **{"budget": TINY, "progress": False, **kwargs})
    with pytest.raises(ValueError):
        TimingBudget(min_runs=0)
