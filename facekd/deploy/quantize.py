"""Static post-training int8 quantisation of a face model with onnxruntime's own tools.

``quantize_onnx("student.onnx", "aligned/", "student.int8.onnx")`` writes the int8 model and
``student.int8.onnx.json`` (the sidecar) and returns the sidecar dict. Recipe, each choice
measured on the legacy MobileFaceNet (``benchmarks/bench_int8.py``, README "int8 students"):

1. ``onnxruntime.quantization.shape_inference.quant_pre_process`` (shape inference, ORT's
   basic graph optimisation), then ``facekd.deploy.graph.rewrite_prelu``: exact, and what
   makes int8 pay off on a PReLU network in onnxruntime (see that module).
2. ``quantize_static`` in QDQ format, weights int8 per output channel (symmetric), activations
   **uint8** (asymmetric): on x86 onnxruntime fuses U8S8 QDQ into NHWC ``QLinearConv`` for
   every convolution, while S8S8 left the 17 depthwise convolutions in float with 32
   transposes (0.96x fp32 speed).
3. Activation ranges from ``method``: ``percentile`` (default, 99.99th percentile of |x| over
   a 2048-bin histogram), ``minmax`` or ``entropy`` (KL divergence, TensorRT's method).
   minmax let outliers set the scale: raw-embedding cosine to fp32 0.83 vs 0.98 here.
4. ``keep_float`` names node roles left in float (``facekd.deploy.graph.node_roles``):
   default ``graph.DEFAULT_KEEP_FLOAT = ("gdc", "conv_sep")``, the global depthwise layer and
   the 1x1 convolution whose output it pools. Quantising the GDC alone dropped the cosine to
   0.87; with it float, quantising conv_sep's output still cost 0.976 -> 0.993 on the legacy
   MobileFaceNet and 0.853 -> 0.994 on a ReLU student, at no measurable speed
   (``benchmarks/bench_relu_student.py``); quantising only the fully connected layer kept
   0.9999. ``"first"``, ``"fc"``, ``"embedding"`` (gdc + fc) and ``"depthwise"`` are
   available too. Kept convolutions still *store* int8 weights (per channel, dequantised to
   float: ``graph.int8_stored_weights``): the legacy model's file goes from 2.91x to 3.09x
   smaller than fp32; ``int8_kept_weights=False`` keeps them fp32.

Checks written to the sidecar: the cosine of the int8 model's raw embeddings to the fp32
file's on ``held_back`` calibration-source faces never used to calibrate (and of the
rewritten fp32 graph, which must be ~1), file sizes, and for each ``bins`` pair set the
fp32 / int8 / fp32-gallery-int8-probe accuracy (``facekd.deploy.accuracy``); a ``.bin`` that
is also the calibration source is scored only on pairs with no calibration face.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from facekd.deploy.calibration import FaceBatches, load_faces, split_faces, to_input
from facekd.deploy.graph import (
    DEFAULT_KEEP_FLOAT,
    int8_stored_weights,
    load_model,
    name_nodes,
    node_roles,
    rewrite_prelu,
)
from facekd.deploy.qat import QatSettings, qat_fp32_onnx

METHODS = ("percentile", "minmax", "entropy")
ROLES = ("first", "gdc", "fc", "embedding", "conv_sep", "depthwise")
SIDECAR_FORMAT = "facekd.int8/1"


def _input_spec(model) -> tuple[str, int]:
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] != dims[3] or dims[2] < 8:
        raise ValueError(f"expected an NCHW square image input, got {inp.name} {dims}")
    return inp.name, int(dims[2])


def prepare(src: Path, dst: Path, rewrite: bool = True) -> dict:
    """``quant_pre_process`` + node names + PReLU rewrite, written to ``dst``; returns counts."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    model = onnx.load(str(dst))
    name_nodes(model)
    counts = rewrite_prelu(model) if rewrite else {}
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return counts


def _cosines(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"min": float(cos.min()), "mean": float(cos.mean()), "p1": float(np.percentile(cos, 1))}


def _raw(path: Path, faces: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: to_input(faces[i : i + 64])})[0]
                           for i in range(0, len(faces), 64)])  # fmt: skip


def _calibrate(prep: Path, out: Path, faces, input_name, method, percentile, exclude, progress):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calib = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
             "entropy": CalibrationMethod.Entropy}[method]  # fmt: skip
    extra = {"CalibStridedMinMax": 1}  # one batch at a time: bounded memory (FaceBatches)
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    reader = FaceBatches(faces, input_name, progress=progress)
    # onnxruntime prints a line per collected batch; the reader's tqdm bar replaces them
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_static(
            str(prep), str(out), reader,
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=calib, nodes_to_exclude=exclude, extra_options=extra,
        )  # fmt: skip
    reader.bar.close()


def _store_kept_weights(path: Path, float_nodes) -> list[str]:
    """The kept-float convolutions of the quantised file at ``path`` get int8-stored weights."""
    import onnx

    model = onnx.load(str(path))
    done = int8_stored_weights(model, float_nodes)
    onnx.save(model, str(path))
    return done


def quantize_onnx(
    model,
    calibration,
    out,
    *,
    method: str = "percentile",
    percentile: float = 99.99,
    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT,
    calibration_size: int = 512,
    held_back: int = 128,
    seed: int = 0,
    rewrite: bool = True,
    int8_kept_weights: bool = True,
    bins: tuple = (),
    qat: QatSettings | None = None,
    qat_model=None,
    progress: bool = True,
) -> dict:
    """Quantise ``model`` (``.onnx``) on faces from ``calibration`` into ``out`` (docstring).

    ``calibration``: a folder of aligned crops, a verification ``.bin`` or a RecordIO ``.rec``;
    ``calibration_size`` faces calibrate and ``held_back`` more (same seeded draw) check.
    ``int8_kept_weights``: the ``keep_float`` convolutions still compute in float, but store
    their weights as int8 (``graph.int8_stored_weights``); False keeps them fp32.
    Raises ``GraphError`` / ``CalibrationError`` (both ``ValueError``) for bad inputs.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if set(keep_float) - set(ROLES):
        raise ValueError(f"keep_float roles must be among {ROLES}, got {keep_float}")
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    src, out = Path(model), Path(out)
    input_name, size = _input_spec(load_model(src))
    faces, ids = load_faces(calibration, calibration_size + held_back, seed, size, progress)
    cal, cal_ids, held, held_ids = split_faces(faces, ids, min(held_back, len(faces) - 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        prep, tmp = work / "prepared.onnx", work / out.name
        base, qat_log = src, None
        if qat is not None:
            base = work / "qat_fp32.onnx"
            qat_log = qat_fp32_onnx(qat_model or src, calibration, held_ids, base, qat, size=size,
                                    keep_float=keep_float, method=method, percentile=percentile,
                                    progress=progress)  # fmt: skip
        counts = prepare(base, prep, rewrite)
        roles = node_roles(load_model(prep))
        exclude = sorted({n for r in (*keep_float, "prelu") for n in roles[r]})
        _calibrate(prep, tmp, cal, input_name, method, percentile, exclude, progress)
        weight_only = _store_kept_weights(tmp, exclude) if int8_kept_weights else []
        ref = _raw(src, held)
        parity = {
            "int8": _cosines(_raw(tmp, held), ref),
            "prepared_fp32": _cosines(_raw(prep, held), ref),
        }
        if qat_log is not None:
            parity["qat_fp32"] = _cosines(_raw(base, held), ref)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = {
        "tool": "", "format": "QDQ", "weights": "int8 per-channel symmetric",
        "activations": "uint8 per-tensor", "method": method,
        "percentile": percentile if method == "percentile" else None,
        "keep_float": list(keep_float),
        "float_nodes": [n for n in exclude if n not in roles["prelu"]],
        "float_nodes_with_int8_weights": weight_only,
        "prelu_rewrite": counts if rewrite else "off",
        "qat": qat_log,
    }  # fmt: skip
    calib = {
        "source": str(Path(calibration).resolve()), "seed": seed, "faces": len(cal),
        "held_back": len(held), "ids": cal_ids.tolist(), "held_back_ids": held_ids.tolist(),
    }  # fmt: skip
    sidecar = _sidecar(src, out, settings, calib, parity)
    sidecar["accuracy"] = _bin_accuracies(bins, src, out, calibration, cal_ids)
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return sidecar


def _sidecar(src: Path, out: Path, settings: dict, calib: dict, parity: dict) -> dict:
    import onnxruntime as ort

    return {
        "format": SIDECAR_FORMAT,
        "file": out.name,
        "fp32_model": str(src.resolve()),
        "bytes": {"fp32": src.stat().st_size, "int8": out.stat().st_size},
        "size_ratio": src.stat().st_size / out.stat().st_size,
        "quantization": settings | {"tool": f"onnxruntime {ort.__version__} quantize_static"},
        "calibration": calib,
        "cosine_to_fp32_held_back": parity,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _bin_accuracies(bins, src, out, calibration, cal_ids) -> dict:
    from facekd.data.verification import read_bin
    from facekd.deploy.accuracy import held_out_pairs, pair_accuracies

    res = {}
    for path in bins:
        ps = read_bin(path)
        same = Path(path).resolve() == Path(calibration).resolve()
        mask = held_out_pairs(ps.pairs, cal_ids) if same else None
        res[ps.name] = pair_accuracies(ps, src, out, mask) | {"excludes_calibration_faces": same}
    return res
