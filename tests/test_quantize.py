"""int8 deployment: PReLU rewrite, calibration sources, static quantisation, accuracy, latency.

A tiny hand-built MobileFaceNet-shaped ONNX graph (conv -> PReLU -> depthwise -> PReLU ->
global depthwise -> flatten -> fully connected) at 16 px keeps every test on CPU and fast.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facekd.deploy.calibration import CalibrationError, FaceBatches, load_faces  # noqa: E402
from facekd.deploy.graph import node_roles, rewrite_prelu  # noqa: E402

SIZE = 16


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def tiny_model(path, seed=0, slopes=None):
    """conv3x3(8) -> PReLU -> dw3x3 s2 -> PReLU -> gdc 8x8 -> flatten -> fc(6)."""
    rng = np.random.default_rng(seed)
    a1 = slopes if slopes is not None else rng.uniform(-0.5, 1.5, 8)  # mixed: both rewrite forms
    inits = [
        _init("w1", rng.normal(0, 0.3, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
        _init("a1", np.reshape(a1, (8, 1, 1))), _init("a2", rng.uniform(0, 0.5, (8, 1, 1))),
        _init("w2", rng.normal(0, 0.3, (8, 1, 3, 3))), _init("b2", rng.normal(0, 0.1, 8)),
        _init("w3", rng.normal(0, 0.1, (8, 1, 8, 8))), _init("b3", np.zeros(8)),
        _init("wf", rng.normal(0, 0.3, (6, 8))), _init("bf", np.zeros(6)),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("PRelu", ["c1", "a1"], ["p1"], name="prelu1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="dw", group=8, pads=[1] * 4,
                         strides=[2, 2]),
        helper.make_node("PRelu", ["c2", "a2"], ["p2"], name="prelu2"),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], name="gdc", group=8),
        helper.make_node("Flatten", ["c3"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["embedding"], name="fc", transB=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run(model_or_path, x):
    data = model_or_path if isinstance(model_or_path, bytes) else str(model_or_path)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _faces(n, seed=0):
    """Smooth random 'faces' (blurred noise), uint8 RGB at SIZE px."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(f, (3, 3), 0) for f in raw])


@pytest.fixture
def face_folder(tmp_path):
    root = tmp_path / "aligned"
    for i, face in enumerate(_faces(24)):
        (root / f"id{i % 3}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"id{i % 3}" / f"{i:02d}.png"), face[:, :, ::-1])
    return root


def test_prelu_rewrite_matches_numpy_prelu(tmp_path):
    path = tiny_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    counts = rewrite_prelu(model)
    assert counts == {"max": 1, "min_mul_add": 1}  # a2 <= 1 everywhere, a1 has slopes > 1
    assert not [n for n in model.graph.node if n.op_type == "PRelu"]
    # independent reference: PReLU by its definition, on the first conv's output
    x = np.random.default_rng(1).normal(0, 1, (4, 3, SIZE, SIZE)).astype(np.float32)
    c1 = helper.make_model(
        helper.make_graph(
            [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1] * 4)], "c",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
            [helper.make_tensor_value_info("c1", TensorProto.FLOAT, None)],
            [t for t in onnx.load(str(path)).graph.initializer if t.name in ("w1", "b1")],
        ), opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    c1.ir_version = 8
    pre = _run(c1.SerializeToString(), x)
    a = numpy_helper.to_array(next(t for t in onnx.load(str(path)).graph.initializer
                                   if t.name == "a1"))  # fmt: skip
    expected = np.where(pre > 0, pre, a * pre)
    model.graph.output.append(helper.make_tensor_value_info("p1", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_p1 = sess.run(["p1"], {"input": x})[0]
    np.testing.assert_allclose(got_p1, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sess.run(["embedding"], {"input": x})[0], _run(path, x),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_node_roles(tmp_path):
    model = onnx.load(str(tiny_model(tmp_path / "m.onnx")))
    rewrite_prelu(model)
    roles = node_roles(model)
    assert roles["first"] == ["conv1"] and roles["gdc"] == ["gdc"]
    assert roles["fc"] == ["flatten", "fc"] and roles["embedding"] == ["gdc", "flatten", "fc"]
    assert roles["depthwise"] == ["dw", "gdc"]
    assert roles["conv_sep"] == ["dw"]  # the convolution whose output the GDC pools
    assert len(roles["prelu"]) == 5  # 3 (min/mul/add) + 2 (mul/max)


def test_calibration_sources_agree(tmp_path, face_folder):
    from facekd.data.recordio import RecordIOWriter
    from facekd.data.verification import write_bin

    faces = _faces(24)
    write_bin(tmp_path / "v.bin", [cv2.imencode(".png", f[:, :, ::-1])[1].tobytes()
                                   for f in faces], [True, False] * 6)  # fmt: skip
    with RecordIOWriter(tmp_path / "train.rec") as w:
        for f in faces:
            w.write(cv2.imencode(".png", f[:, :, ::-1])[1].tobytes(), 0)
    got_bin, ids = load_faces(tmp_path / "v.bin", 10, seed=3, size=SIZE, progress=False)
    got_rec, ids_rec = load_faces(tmp_path / "train.rec", 10, seed=3, size=SIZE, progress=False)
    got_dir, ids_dir = load_faces(face_folder, 30, size=SIZE, progress=False)
    np.testing.assert_array_equal(ids, ids_rec)
    np.testing.assert_array_equal(got_bin, faces[ids])  # PNG is lossless
    np.testing.assert_array_equal(got_rec, faces[ids])
    assert len(got_dir) == 24 and got_dir.dtype == np.uint8  # all of them, capped at what exists
    batches = FaceBatches(got_bin, "input", batch_size=4)
    assert len(batches) == 3
    x = batches.get_next()["input"]
    np.testing.assert_allclose(x[0, :, 0, 0], (got_bin[0, 0, 0] / 255.0 - 0.5) / 0.5, rtol=1e-6)


def test_calibration_source_errors(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        load_faces(tmp_path / "nothing", 4, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="holds no images"):
        load_faces(tmp_path / "empty", 4, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match="unreadable"):
        load_faces(tmp_path / "bad", 4, progress=False)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CalibrationError, match="expected a folder"):
        load_faces(tmp_path / "notes.txt", 4, progress=False)
