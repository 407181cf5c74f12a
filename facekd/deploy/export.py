"""Export a student backbone to ONNX, checked against torch in onnxruntime before it is kept.

``export_onnx(checkpoint_or_model, "student.onnx")`` writes one self-contained ``.onnx`` file
(weights inside, no external data) and ``student.onnx.json`` (the sidecar), or raises
``ExportError`` and leaves nothing behind.

Graph contract (written into the sidecar too):

* input ``input``: ``(N, 3, S, S)`` float32 RGB in [-1, 1], i.e. ``(x / 255 - 0.5) / 0.5`` of
  an ArcFace-aligned crop (``facekd.data.transforms.to_tensor``); ``S`` = the model's
  ``input_size`` (112, or the student's low resolution); ``N`` is dynamic.
* output ``embedding``: ``(N, D)`` float32, the raw backbone output (not L2-normalised, no
  flip-sum: the test-time recipe of ``facekd.evaluation.embed`` is applied outside the graph,
  so ``extract_embeddings("student.onnx", faces)`` equals the torch path).
* only the backbone (``load_backbone`` gives exactly that: no classifier head, no adapters).
* metadata ``facekd.preprocessing``: this contract as JSON (mean / std 127.5 on 0-255
  pixels, RGB, NCHW, input size, architecture), read by ``facekd.teachers.OnnxTeacher``.
* opset 17 by default: supported by onnxruntime >= 1.14, TensorRT >= 8.6, OpenVINO 2023+ and
  ONNX.js/onnxruntime-web, and enough for every op of iResNet / MobileFaceNet. The dynamo
  exporter writes opset 18 and converts down; the sidecar records the opset actually written.

Exporter: ``torch.onnx.export(dynamo=True)`` first; if it raises, the TorchScript exporter
(``dynamo=False``); the sidecar names the one used (and the dynamo error).

Parity (the reason this module exists): the exported graph runs in onnxruntime
(CPUExecutionProvider) on synthetic faces (``facekd.data.synthetic``, rendered at ``S``) at
batch 1 and at batch 7, through ``extract_embeddings`` (no flip, raw outputs) for both
backends; every row must reach cosine >= 0.9999 with torch, else ``ExportError`` with the
worst cosine and the file is deleted. The numbers go into the sidecar.

Optional variants, each checked the same way and reported (never required for success):
``fp16=True`` -> ``<stem>.fp16.onnx`` (weights and compute in float16, float32 input/output,
via ``onnxruntime.transformers.float16``); ``int8=True`` -> ``<stem>.int8.onnx``
(``onnxruntime.quantization.quantize_dynamic``, int8 weights). Their cosine to torch and the
drop against the fp32 export are recorded; a variant that cannot be built or run is skipped
with the reason in the sidecar.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facekd.evaluation.embed import extract_embeddings
from facekd.models.parity import PARITY_BATCHES, parity_faces, row_agreement

OPSET = 17
MIN_COSINE = 0.9999
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
SIDECAR_FORMAT = "facekd.onnx/1"


class ExportError(RuntimeError):
    """The export failed or its ONNX graph disagrees with torch; nothing was written."""


def compare_backends(reference, candidate, faces: np.ndarray, batches=PARITY_BATCHES) -> dict:
    """Row-wise agreement of two backends on ``faces`` at each batch size.

    Both run through ``extract_embeddings(..., flip=False, normalize=False, batch_size=b)`` on
    the first ``b`` faces. Returns ``{"batch_<b>": {"min_cosine", "max_abs_diff",
    "max_rel_norm_diff"}, "min_cosine": worst over batches}``.
    """
    report: dict = {}
    for b in batches:
        kw = dict(batch_size=b, flip=False, normalize=False, progress=False)
        ref = extract_embeddings(reference, faces[:b], **kw)
        got = extract_embeddings(candidate, faces[:b], **kw)
        try:
            report[f"batch_{b}"] = row_agreement(ref, got)
        except ValueError as err:
            raise ExportError(str(err)) from None
    report["min_cosine"] = min(v["min_cosine"] for v in report.values())
    return report


def _write_onnx(model: nn.Module, path: Path, opset: int, dynamo: bool) -> None:
    """Write ``model`` as one ONNX file (``input`` -> ``embedding``, dynamic batch)."""
    size = model.input_size
    example = (torch.zeros(2, 3, size, size),)
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=({0: batch},),
                **names,
            )
        else:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                **names,
            )


def _check_graph(path: Path, size: int) -> int:
    """Validate the file (checker, names, dynamic batch, one file); returns its opset."""
    import onnx

    folder_files = [p.name for p in path.parent.iterdir()]
    if folder_files != [path.name]:
        raise ExportError(f"the export is not a single file: {sorted(folder_files)}")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    inputs = [
        i for i in graph.graph.input if i.name not in {t.name for t in graph.graph.initializer}
    ]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.graph.output] != [
        OUTPUT_NAME
    ]:
        raise ExportError(
            f"graph I/O {[i.name for i in inputs]} -> {[o.name for o in graph.graph.output]}, "
            f"expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    if len(shape) != 4 or isinstance(shape[0], int) or shape[1:] != [3, size, size]:
        raise ExportError(f"input shape {shape}, expected [batch, 3, {size}, {size}]")
    return max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def _stamp_preprocessing(path: Path, model: nn.Module, size: int) -> None:
    """Write the input contract into the graph's metadata, where ``OnnxTeacher`` reads it."""
    import onnx

    from facekd.models.onnx_runtime import METADATA_KEY

    proto = onnx.load(str(path))
    contract = {
        "mean": 127.5,
        "std": 127.5,
        "channels": "rgb",
        "layout": "nchw",
        "input_size": size,
        "arch": getattr(model, "arch", type(model).__name__),
        "arch_kwargs": dict(getattr(model, "arch_kwargs", {})),
    }
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(contract)})
    onnx.save(proto, str(path))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _variant(kind: str, src: Path, dst: Path, model: nn.Module, faces, base_cos: float) -> dict:
    """Build the fp16 / int8 file next to the export, check it, report (skip on failure)."""
    try:
        if kind == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), dst)
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        parity = compare_backends(model, _session(dst), faces)
    except ImportError as err:
        dst.unlink(missing_ok=True)
        return {"skipped": f"{kind} tooling not installed: {err}"}
    except Exception as err:  # noqa: BLE001 - a variant is optional: report, keep the export
        dst.unlink(missing_ok=True)
        return {"skipped": f"{kind} variant failed: {type(err).__name__}: {str(err)[:300]}"}
    return {
        "file": dst.name,
        "sha256": _sha256(dst),
        "parity": parity,
        "cosine_drop": base_cos - parity["min_cosine"],
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_with_fallback(model: nn.Module, tmp: Path, opset: int, dynamo: bool):
    """Write ``tmp`` with the dynamo exporter (when ``dynamo``), else or on its failure with
    TorchScript, clearing ``tmp``'s folder in between; returns ``(exporter, dynamo_error)``
    (the dynamo error's first line, or None) and raises ``ExportError`` when nothing worked."""
    exporter, dynamo_error = ("dynamo" if dynamo else "torchscript"), None
    try:
        _write_onnx(model, tmp, opset, dynamo)
    except Exception as err:  # noqa: BLE001 - recorded, then the legacy exporter is tried
        if not dynamo:
            raise ExportError(f"ONNX export failed: {type(err).__name__}: {err}") from err
        dynamo_error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        exporter = "torchscript"
        for p in tmp.parent.iterdir():
            p.unlink()
        try:
            _write_onnx(model, tmp, opset, dynamo=False)
        except Exception as err2:  # noqa: BLE001
            raise ExportError(
                f"ONNX export failed (dynamo: {dynamo_error}; torchscript: "
                f"{type(err2).__name__}: {err2})"
            ) from err2
    return exporter, dynamo_error


def _checked_parity(model: nn.Module, path: Path, faces: np.ndarray, min_cosine: float) -> dict:
    """``compare_backends`` of torch and the graph at ``path``; ``ExportError`` naming the
    worst cosine (overall and per batch) when a row falls below ``min_cosine``."""
    parity = compare_backends(model, _session(path), faces)
    if not parity["min_cosine"] >= min_cosine:
        rows = {k: round(v["min_cosine"], 6) for k, v in parity.items() if k != "min_cosine"}
        raise ExportError(
            f"ONNX and torch embeddings disagree: worst cosine {parity['min_cosine']:.6f} "
            f"< {min_cosine} (per batch: {rows}); the file was not kept"
        )
    return parity


def _sidecar(
    model: nn.Module,
    out: Path,
    source: str,
    size: int,
    *,
    opset: int,
    opset_requested: int,
    exporter: str,
    dynamo_error: str | None,
    parity: dict,
) -> dict:
    """The sidecar dict of the kept export at ``out`` (format ``SIDECAR_FORMAT``): file and
    hash, source and architecture, the graph contract (``input`` / ``output``), how it was
    exported (``opset`` written and requested, exporter, dynamo error), versions and parity;
    ``variants`` is left empty for the caller to fill."""
    import onnxruntime as ort

    return {
        "format": SIDECAR_FORMAT,
        "file": out.name,
        "sha256": _sha256(out),
        "source": source,
        "arch": getattr(model, "arch", type(model).__name__),
        "arch_kwargs": dict(getattr(model, "arch_kwargs", {})),
        "input_size": size,
        "embedding_size": int(getattr(model, "num_features", 0)) or None,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "color": "RGB",
            "normalization": "(x / 255 - 0.5) / 0.5",
            "range": [-1.0, 1.0],
            "alignment": "ArcFace 5-point template (facekd.data.align)",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", int(getattr(model, "num_features", 0)) or "D"],
            "note": "raw; test time: f(x) + f(flip(x)), then L2-normalise",
        },
        "opset": opset,
        "opset_requested": opset_requested,
        "exporter": exporter,
        "dynamo_error": dynamo_error,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "parity": parity,
        "variants": {},
    }


def export_onnx(
    model_or_path,
    out: str | os.PathLike,
    opset: int = OPSET,
    fp16: bool = False,
    int8: bool = False,
    dynamo: bool = True,
    min_cosine: float = MIN_COSINE,
    source: str | None = None,
) -> dict:
    """Export, check and describe a backbone; returns the sidecar dict (also written as JSON).

    Args:
        model_or_path: a backbone module (copied; the caller's is untouched) or anything
            ``load_backbone`` accepts (name, facekd file, training checkpoint, insightface
            state dict, legacy MXNet prefix).
        out: the ``.onnx`` path; the sidecar is ``<out>.json``.
        opset: ONNX opset (default 17, see the module docstring).
        fp16, int8: also write the optional variants.
        dynamo: try the dynamo exporter first (falls back to TorchScript on error).
        min_cosine: per-row cosine to torch that every parity row must reach.
        source: what to record as the source in the sidecar (default: the path, or the
            module's class name).

    Raises:
        ExportError: export failed, the graph is malformed, or parity is below ``min_cosine``
            (message names the worst cosine); no file is left at ``out``.
    """
    if isinstance(model_or_path, nn.Module):
        model, source_default = copy.deepcopy(model_or_path), type(model_or_path).__name__
    else:
        from facekd.models.checkpoints import load_backbone

        model, source_default = load_backbone(model_or_path), str(model_or_path)
    model, source = model.float().cpu().eval(), source or source_default
    size = int(model.input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp = work / out.name
        exporter, dynamo_error = _export_with_fallback(model, tmp, opset, dynamo)
        _stamp_preprocessing(tmp, model, size)
        written_opset = _check_graph(tmp, size)
        faces = parity_faces(size)
        parity = _checked_parity(model, tmp, faces, min_cosine)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sidecar = _sidecar(
        model,
        out,
        source,
        size,
        opset=written_opset,
        opset_requested=opset,
        exporter=exporter,
        dynamo_error=dynamo_error,
        parity={"provider": "CPUExecutionProvider", "min_cosine_required": min_cosine} | parity,
    )
    for kind, wanted in (("fp16", fp16), ("int8", int8)):
        if wanted:
            dst = out.with_name(f"{out.stem}.{kind}.onnx")
            sidecar["variants"][kind] = _variant(kind, out, dst, model, faces, parity["min_cosine"])
    side = Path(f"{out}.json")
    side.write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return sidecar
