"""Quantisation-aware fine-tuning (``facekd.deploy.qat``): the simulation against independent
computations (numpy rounding, onnxruntime's own scale rule and histogram collector), the
fine-tuning on a tiny MobileFaceNet, and ``quantize_onnx(qat=...)`` / ``facekd quantize`` end to
end."""

from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from facekd.deploy.qat import (  # noqa: E402
    QatSettings,
    SimulatedInt8,
    activation_ranges,
    finetune,
    residual_blocks,
    simulate_int8,
    simulated_layers,
    uint8_params,
)
from facekd.models import build_backbone  # noqa: E402

SIZE = 32


def _tiny(seed=0):
    torch.manual_seed(seed)
    net = build_backbone("mobilefacenet", width=0.25, input_size=SIZE, blocks=(1, 1, 1, 1))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(f, (5, 5), 0) for f in raw])


def test_weights_round_per_output_channel_like_numpy():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    x = torch.randn(2, 4, 8, 8)
    w = conv.weight.detach().numpy()
    s = np.abs(w.reshape(6, -1)).max(1) / 127.0
    wq = np.clip(np.rint(w / s[:, None, None, None]), -127, 127) * s[:, None, None, None]
    want = torch.nn.functional.conv2d(x, torch.from_numpy(wq.astype(np.float32)), conv.bias,
                                      padding=1)  # fmt: skip
    got = SimulatedInt8(conv)(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, conv(x), atol=1e-5)  # the rounding is really there


def test_uint8_params_are_onnxruntimes():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for lo, hi in ((-1.3, 2.7), (0.2, 5.0), (-4.0, -0.5), (-0.01, 0.03)):
        qmin, qmax = np.array(0, np.uint8), np.array(255, np.uint8)
        zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax)
        got_scale, got_zp = uint8_params(lo, hi)
        assert got_scale == pytest.approx(float(scale), rel=1e-6) and got_zp == int(zp)


def test_activation_ranges_follow_onnxruntimes_calibration():
    from onnxruntime.quantization.calibrate import HistogramCollector

    net = _tiny()
    x = torch.randn(16, 3, SIZE, SIZE)
    first = simulated_layers(net)
    name = next(iter(first))  # the first conv: its input is x itself
    mm = activation_ranges(net, x, [name], "minmax")[name][0]
    assert mm == uint8_params(x.min().item(), x.max().item())
    collector = HistogramCollector("percentile", True, 2048, 128, 99.9, None)
    collector.collect({"x": x.numpy()})
    lo, hi = collector.compute_collection_result()["x"][:2]
    scale, _ = activation_ranges(net, x, [name], "percentile", 99.9)[name][0]
    width = x.abs().max().item() / 2048  # one histogram bin
    assert scale == pytest.approx((float(hi) - float(lo)) / 255, abs=2 * width / 255)
    assert scale < mm[0]  # the percentile clips the tails minmax keeps


def test_roles_pick_the_layers_onnx_roles_pick():
    net = _tiny()
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    default = simulated_layers(net)  # the GDC and the convolution it pools (conv_sep)
    assert [n for n, a in default.items() if not a] == convs[-2:]
    assert [n for n, a in simulated_layers(net, ("gdc",)).items() if not a] == [convs[-1]]
    assert not simulated_layers(net, ("embedding",))[linear[0]]
    assert all(simulated_layers(net, ()).values())


def test_residual_additions_land_on_the_uint8_grid_and_undo_restores_the_model():
    from facekd.evaluation.embed import fold_batchnorm

    net = fold_batchnorm(_tiny())
    x = torch.randn(8, 3, SIZE, SIZE)
    with torch.no_grad():
        plain = net(x)
    adds = residual_blocks(net)
    assert adds and all(net.get_submodule(n).residual for n in adds)
    ranges = activation_ranges(net, x, adds, "percentile")
    undo, counts = simulate_int8(net, x, keep_float=())
    assert counts["int8_residual_additions"] == len(adds)
    seen = {}
    hooks = [net.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in adds]  # fmt: skip
    with torch.no_grad():
        simulated = net(x)
    for h in hooks:
        h.remove()
    for n in adds:  # every output is zero_point + an integer number of steps, within [0, 255]
        scale, zp = ranges[n][1]
        q = seen[n] / scale + zp
        assert torch.allclose(q, q.round(), atol=1e-3) and q.min() >= -1e-3 and q.max() <= 255.001
    assert not torch.allclose(simulated, plain, atol=1e-4)
    undo()
    assert not any(isinstance(m, SimulatedInt8) for m in net.modules())
    with torch.no_grad():
        assert torch.equal(net(x), plain)  # no hook left behind


def test_finetune_raises_the_simulated_cosine_and_returns_a_plain_model():
    net = _tiny()
    with torch.no_grad():  # one large weight per kernel: coarse int8 steps, a real loss to win
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[:, :, 0, 0] *= 10
    before = copy.deepcopy(net.state_dict())
    settings = QatSettings(steps=60, lr=1e-3, batch_size=16)
    tuned, log = finetune(net, _faces(64), settings, keep_float=(), progress=False)
    assert log["cosine_before"] < 0.96 and log["cosine_after"] > log["cosine_before"] + 0.015
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # untouched
    kinds = {type(m) for m in tuned.modules()}
    assert SimulatedInt8 not in kinds and nn.BatchNorm2d not in kinds  # folded, unwrapped
    assert not any(p.requires_grad for p in tuned.parameters())
    x = torch.randn(2, 3, SIZE, SIZE)
    assert tuned(x).shape == net(x).shape


def test_finetune_stops_on_a_non_finite_loss():
    net = _tiny()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="QAT loss"):
        finetune(net, _faces(8), QatSettings(steps=2, batch_size=4), progress=False)
    with pytest.raises(ValueError, match="QAT needs"):
        QatSettings(steps=0)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from facekd.deploy.export import export_onnx

    tmp = tmp_path_factory.mktemp("qat")
    root = tmp / "aligned"
    root.mkdir()
    for i, face in enumerate(_faces(48, seed=3)):
        cv2.imwrite(str(root / f"{i:02d}.png"), face[:, :, ::-1])
    export_onnx(_tiny(), tmp / "m.onnx")
    return tmp / "m.onnx", root


def test_quantize_with_qat_end_to_end(tiny_onnx, capsys):
    from facekd.cli import main

    src, root = tiny_onnx
    out = src.parent / "m.qat.int8.onnx"
    argv = ["quantize", str(src), "--calibration", str(root), "--out", str(out),
            "--calibration-size", "24", "--held-back", "8", "--qat-steps", "20",
            "--qat-lr", "1e-3", "--qat-batch", "8", "--qat-faces", "40"]  # fmt: skip
    assert main(argv) == 0
    assert "QAT: 20 steps" in capsys.readouterr().out
    info = json.loads((out.parent / f"{out.name}.json").read_text())
    qat = info["quantization"]["qat"]
    assert set(qat["ids"]).isdisjoint(info["calibration"]["held_back_ids"])
    assert len(qat["ids"]) == 40 and len(qat["loss"]) >= 2
    # the reference stays the untouched fp32 file: its cosine to itself would be 1
    assert info["fp32_model"] == str(src.resolve())
    assert 0.5 < info["cosine_to_fp32_held_back"]["qat_fp32"]["mean"] < 0.99999
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
