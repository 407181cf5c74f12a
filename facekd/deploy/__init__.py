"""Deployment: what runs a trained student outside training.

``export`` (ONNX export checked in onnxruntime), ``api`` (``facekd.load``: embed / verify
photos), ``embed_folder`` (``facekd embed``: a folder of photos, resumable), and int8
post-training quantisation with onnxruntime and onnxruntime latency:

``quantize_onnx`` (``facekd quantize``), the calibration sources it reads
(``calibration.load_faces``), the exact PReLU rewrite (``graph.rewrite_prelu``), fp32 / int8 /
mixed accuracy (``accuracy.pair_accuracies``) and side-by-side latency of eager torch and
onnxruntime fp32 / int8 (``latency.ort_compare``).
"""

from facekd.deploy.accuracy import pair_accuracies
from facekd.deploy.calibration import CalibrationError, load_faces
from facekd.deploy.graph import GraphError, rewrite_prelu
from facekd.deploy.quantize import quantize_onnx

__all__ = [
    "CalibrationError",
    "GraphError",
    "load_faces",
    "pair_accuracies",
    "quantize_onnx",
    "rewrite_prelu",
]
