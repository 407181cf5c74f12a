"""``quantize_onnx`` / ``facekd quantize`` end to end on the tiny graph; accuracy and latency."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from facekd.deploy.calibration import to_input  # noqa: E402
from facekd.deploy.quantize import quantize_onnx  # noqa: E402
from tests.test_quantize import SIZE, _faces, _run, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    root = tmp / "aligned"
    root.mkdir()
    for i, face in enumerate(_faces(40, seed=5)):
        cv2.imwrite(str(root / f"{i:02d}.png"), face[:, :, ::-1])
    src = tiny_model(tmp / "m.onnx")
    out = tmp / "m.int8.onnx"
    info = quantize_onnx(src, root, out, calibration_size=32, held_back=8, progress=False)
    return src, out, info, root


def test_int8_file_is_qdq_and_close_to_fp32(quantized):
    src, out, info, root = quantized
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "PRelu" not in ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert {t.name.split("_")[0] for t in int8_weights} >= {"w1", "w2", "wf"}
    # the global depthwise conv and the conv it pools (conv_sep: here "dw") compute in float
    # by default; their weights are stored int8
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert convs["gdc"].input[1] == "w3_dequantized" and convs["dw"].input[1] == "w2_dequantized"
    assert info["quantization"]["float_nodes_with_int8_weights"] == ["dw", "gdc"]
    # the sidecar's cosine is what an independent run of both files gives on held-back faces
    from facekd.deploy.calibration import load_faces

    faces, ids = load_faces(root, 40, seed=0, size=SIZE, progress=False)
    assert ids[-8:].tolist() == info["calibration"]["held_back_ids"]
    ref, got = _run(src, to_input(faces[-8:])), _run(out, to_input(faces[-8:]))
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert info["cosine_to_fp32_held_back"]["int8"]["min"] == pytest.approx(cos.min(), abs=1e-5)
    assert cos.min() > 0.9  # 8-bit on a 3-layer net: far from the ~0 of a broken scale
    assert info["cosine_to_fp32_held_back"]["prepared_fp32"]["min"] > 0.99999
    assert set(info["calibration"]["ids"]).isdisjoint(info["calibration"]["held_back_ids"])
    assert json.loads((out.parent / f"{out.name}.json").read_text())["file"] == out.name


def test_quantize_refuses_bad_input(tmp_path, quantized):
    from facekd.deploy.graph import GraphError

    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(GraphError, match="not a readable ONNX"):
        quantize_onnx(tmp_path / "x.onnx", quantized[3], tmp_path / "y.onnx", progress=False)
    with pytest.raises(ValueError, match="keep_float"):
        quantize_onnx(quantized[0], quantized[3], tmp_path / "y.onnx", keep_float=("head",))


def test_pair_accuracies_mixed_pairs_use_both_models(tmp_path, quantized):
    from facekd.data.verification import read_bin, write_bin
    from facekd.deploy.accuracy import held_out_pairs, pair_accuracies
    from facekd.evaluation.embed import extract_embeddings
    from facekd.evaluation.verification import verify

    src, out = quantized[0], quantized[1]
    faces = _faces(40, seed=9)
    write_bin(tmp_path / "v.bin", list(faces), [True, False] * 10)
    ps = read_bin(tmp_path / "v.bin")
    acc = pair_accuracies(ps, src, out)
    f = extract_embeddings(str(src), ps.images, progress=False)
    q = extract_embeddings(str(out), ps.images, progress=False)
    want = verify((f[0::2], q[1::2]), ps.issame, thresholds="exact")
    assert acc["fp32_gallery_int8_probe"]["exact"]["accuracy"] == want.accuracy
    assert acc["int8"]["exact"]["accuracy"] == verify(q, ps.issame, thresholds="exact").accuracy
    mask = held_out_pairs(ps.pairs, np.array([0, 3]))
    assert mask.tolist() == [False, False] + [True] * 18


def test_cli_quantize_and_usage_errors(tmp_path, quantized, capsys):
    from facekd.cli import main

    out = tmp_path / "c.int8.onnx"
    args = ["quantize", str(quantized[0]), "--calibration", str(quantized[3]), "--out", str(out)]
    assert main([*args, "--calibration-size", "16", "--held-back", "4", "--method", "minmax"]) == 0
    text = capsys.readouterr().out
    assert "cosine to fp32 on 4 held-back faces" in text and out.exists()
    assert json.loads(out.with_name(out.name + ".json").read_text())["quantization"]["method"] == (
        "minmax"
    )
    assert main(["quantize", str(quantized[0]), "--calibration", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ort_compare_times_torch_and_onnx(quantized):
    import torch

    from facekd.deploy.latency import ort_compare, speedups
    from facekd.evaluation.profile import TimingBudget

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    budget = TimingBudget(warmup=1, runs=3, min_runs=1)
    lat = ort_compare({"torch": net, "ort_fp32": quantized[0], "ort_int8": quantized[1]},
                      (1, 2), size=SIZE, budget=budget, threads=1)  # fmt: skip
    assert all(lat[n][b].runs == 3 and lat[n][b].median_ms > 0 for n in lat for b in (1, 2))
    ups = speedups(lat)
    want = lat["ort_fp32"][2].median_ms / lat["ort_int8"][2].median_ms
    assert ups["ort_int8/ort_fp32@b2"] == pytest.approx(want)
    assert set(ups) == {f"{k}@b{b}" for k in ("ort_fp32/torch", "ort_int8/ort_fp32",
                                              "ort_int8/torch") for b in (1, 2)}  # fmt: skip


def test_ort_compare_feeds_each_entry_its_own_side():
    import torch

    from facekd.deploy.latency import ort_compare
    from facekd.evaluation.profile import TimingBudget

    seen: dict = {}

    class Record(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            seen.setdefault(self.name, set()).add(tuple(x.shape))
            return x.mean((2, 3))

    budget = TimingBudget(warmup=1, runs=2, min_runs=1)
    models = {"at56": Record("at56"), "at80": Record("at80")}
    lat = ort_compare(models, (1, 3), size={"at56": 56, "at80": 80}, budget=budget, threads=1)
    assert seen == {n: {(b, 3, s, s) for b in (1, 3)} for n, s in (("at56", 56), ("at80", 80))}
    assert set(lat) == {"at56", "at80"} and all(set(v) == {1, 3} for v in lat.values())
    with pytest.raises(ValueError, match=r"no input size for \['at80'\]"):
        ort_compare(models, (1,), size={"at56": 56}, budget=budget)


def test_int8_bench_needs_one_file_per_student_and_a_sidecar(tmp_path, quantized):
    from facekd.deploy.command import int8_bench
    from facekd.deploy.latency import fp32_of

    assert fp32_of(quantized[1]) == quantized[0].resolve()
    with pytest.raises(ValueError, match="one file per student"):
        int8_bench({"a": (None, "a"), "b": (None, "b")}, [quantized[1]], [], tmp_path)
    with pytest.raises(ValueError, match="no sidecar"):
        fp32_of(quantized[0])


def test_int8_stored_weights_are_per_channel_and_within_half_a_step(tmp_path):
    from onnx import numpy_helper

    from facekd.deploy.graph import int8_stored_weights

    src = tiny_model(tmp_path / "m.onnx", seed=3)
    model = onnx.load(str(src))
    w3 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w3"))
    assert int8_stored_weights(model, ["gdc", "fc"]) == ["gdc"]  # fc is a Gemm: left alone
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q, scale = inits["w3_int8"], inits["w3_scale"]
    assert q.dtype == np.int8 and "w3" not in inits and scale.shape == (8,)
    # independent: per output channel, the largest |w| maps to 127 and rounding errs <= s / 2
    peak = np.abs(w3).reshape(8, -1).max(1)
    assert np.allclose(scale, peak / 127)
    assert np.abs(q.astype(np.float32) * scale[:, None, None, None] - w3).max() <= (
        scale.max() / 2 + 1e-7
    )
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert list(dq.input) == ["w3_int8", "w3_scale", "w3_zero_point"]
    x = to_input(_faces(4, seed=2))
    ref, got = _run(src, x), _run(model.SerializeToString(), x)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.9999


def test_kept_float_weights_can_stay_fp32(tmp_path, quantized):
    _, _, _, root = quantized
    src = tiny_model(tmp_path / "m.onnx")
    out = tmp_path / "m.int8.onnx"
    info = quantize_onnx(
        src, root, out, calibration_size=16, held_back=4, progress=False, int8_kept_weights=False
    )
    gdc = next(n for n in onnx.load(str(out)).graph.node if n.name == "gdc")
    assert gdc.input[1] == "w3" and info["quantization"]["float_nodes_with_int8_weights"] == []
    assert info["size_ratio"] < quantized[2]["size_ratio"]  # the int8-stored file is smaller
