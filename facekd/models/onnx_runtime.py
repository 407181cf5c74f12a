"""A black-box ONNX face model as a facekd teacher (onnxruntime, CPU or CUDA provider).

InsightFace's model zoo ships its recognition models as ONNX files (``w600k_r50.onnx``,
``glintr100.onnx``: input ``(1, 3, 112, 112)`` RGB, 512-d output), and ``facekd export``
writes students the same way. ``OnnxTeacher(path)`` runs such a file wherever facekd expects
a teacher (``forward_features(x) -> ModelOutput``), so the teacher cache and every
embedding-level method work with it.

Input contract, in order of precedence (each item overrides the ones below it):

1. explicit options: ``mean``, ``std`` (scalars or one per channel in the model's channel
   order, on 0-255 pixel values),
   ``channels`` (``"rgb"`` | ``"bgr"``), ``layout`` (``"nchw"`` | ``"nhwc"``), ``input_size``;
2. the ``facekd.preprocessing`` metadata that ``facekd export`` writes into the graph;
3. the graph itself: input name, layout (the axis of size 3), a fixed spatial size; and
   InsightFace's rule for normalisation: a ``Sub`` and a ``Mul`` among the first 8 nodes mean
   the graph normalises itself (feed raw pixels: ``mean 0, std 1``), otherwise
   ``mean 127.5, std 127.5``; channels default to RGB (InsightFace feeds ``swapRB=True``).

facekd tensors are RGB in [-1, 1] (``x = p / 127.5 - 1`` of pixel ``p``), so the model is fed
``(((x + 1) * 127.5) - mean) / std``, channel-flipped for BGR, permuted for NHWC.

Outputs: ``embedding`` = the output named ``embedding_output`` (default: the first output of
rank 2); ``pooled`` = the tensor named ``pooled_output`` (any tensor in the graph: it is added
to the graph outputs when it is not one; rank 4 maps are averaged over space), else none.
``stages`` are never available: methods that need stage maps refuse this teacher (see
``facekd.teachers.check_teacher_serves``). ``fingerprint()`` hashes the file and the input
contract, so a teacher cache built for one ONNX file is refused for another.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facekd.types import ModelOutput

METADATA_KEY = "facekd.preprocessing"
LAYOUTS, CHANNELS = ("nchw", "nhwc"), ("rgb", "bgr")


class OnnxTeacherError(ValueError):
    """The ONNX file cannot serve as a teacher as configured (the message says why)."""


def _graph_normalises_itself(model) -> bool:
    """InsightFace's test (``ArcFaceONNX``): Sub and Mul among the first 8 graph nodes."""
    ops = {node.op_type for node in model.graph.node[:8]}
    return "Sub" in ops and "Mul" in ops


def _per_channel(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size not in (1, 3) or not np.isfinite(arr).all() or (name == "std" and (arr == 0).any()):
        raise OnnxTeacherError(f"{name} must be one finite number or three, got {value!r}")
    return np.broadcast_to(arr, (3,)).reshape(1, 3, 1, 1).copy()


def _read_graph(path: Path):
    """``(file bytes, onnx.ModelProto, stored facekd.preprocessing metadata or {})``."""
    import onnx

    if not path.is_file():
        raise FileNotFoundError(f"ONNX teacher {path} does not exist")
    raw = path.read_bytes()
    try:
        model = onnx.load_from_string(raw)
    except Exception as err:  # noqa: BLE001 - any parse failure means "not an ONNX model"
        raise OnnxTeacherError(f"{path} is not a readable ONNX model: {err}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    stored = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    return raw, model, stored


def _image_input(model, path: Path) -> tuple[str, list[int | None]]:
    """Name and dims (``None`` where dynamic) of the graph's one rank-4 image input."""
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if len(inputs) != 1:
        raise OnnxTeacherError(
            f"{path}: a face teacher takes one image input, the graph has "
            f"{[i.name for i in inputs]}"
        )
    name = inputs[0].name
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise OnnxTeacherError(f"{path}: input {name} has rank {len(dims)}, not 4")
    return name, dims


def _expose_pooled(model, pooled_output: str, path: Path) -> bool:
    """Make the tensor ``pooled_output`` a graph output (in place); True when one was added,
    so the graph must be serialised again. Raises when the graph has no such tensor."""
    import onnx

    outputs = [o.name for o in model.graph.output]
    if pooled_output in outputs:
        return False
    if pooled_output not in {v for n in model.graph.node for v in n.output}:
        raise OnnxTeacherError(
            f"{path}: no tensor named {pooled_output!r} in the graph (outputs: {outputs})"
        )
    model.graph.output.append(onnx.ValueInfoProto(name=pooled_output))
    return True


def _providers(device: str) -> list[str]:
    """onnxruntime providers for ``device`` (``"auto"``, ``"cuda..."`` or ``"cpu"``): CUDA
    first when insisted on (an error without it) or, for ``"auto"``, when it and a CUDA device
    are available; the CPU provider always."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if str(device).startswith("cuda") and not has_cuda:
        raise OnnxTeacherError("device is CUDA but onnxruntime has no CUDAExecutionProvider")
    if str(device).startswith("cuda") or (
        device == "auto" and has_cuda and torch.cuda.is_available()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    return providers


class OnnxTeacher(nn.Module):
    """See the module docstring. ``device``: ``"auto"`` (default) runs on onnxruntime's CUDA
    provider when it and a CUDA device are available, else on the CPU; ``"cuda"`` insists on
    CUDA (an error without it), ``"cpu"`` never uses it."""

    provides = frozenset({"embedding"})  # + "pooled" when pooled_output is given

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        mean=None,
        std=None,
        channels: str | None = None,
        layout: str | None = None,
        input_size: int | None = None,
        embedding_output: str | None = None,
        pooled_output: str | None = None,
        device: str = "auto",
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        raw, model, stored = _read_graph(self.path)
        self.input_name, dims = _image_input(model, self.path)
        self.layout = (layout or stored.get("layout") or self._layout_from(dims)).lower()
        if self.layout not in LAYOUTS:
            raise OnnxTeacherError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        spatial = dims[2:] if self.layout == "nchw" else dims[1:3]
        graph_size = spatial[0] if spatial[0] and spatial[0] == spatial[1] else None
        self.input_size = int(input_size or stored.get("input_size") or graph_size or 0)
        if not self.input_size:
            raise OnnxTeacherError(
                f"{self.path}: input {self.input_name} has no fixed square size ({dims}); "
                "give input_size (e.g. 112)"
            )
        if graph_size and self.input_size != graph_size:
            raise OnnxTeacherError(
                f"{self.path}: input_size={self.input_size} but the graph's input is "
                f"{graph_size}x{graph_size}"
            )
        in_graph = _graph_normalises_itself(model)
        if mean is None:
            mean = stored.get("mean", 0.0 if in_graph else 127.5)
        if std is None:
            std = stored.get("std", 1.0 if in_graph else 127.5)
        self.mean, self.std = _per_channel(mean, "mean"), _per_channel(std, "std")
        self.channels = (channels or stored.get("channels") or "rgb").lower()
        if self.channels not in CHANNELS:
            raise OnnxTeacherError(f"channels must be one of {CHANNELS}, got {self.channels!r}")
        outputs = [o.name for o in model.graph.output]
        if pooled_output and _expose_pooled(model, pooled_output, self.path):
            raw = model.SerializeToString()
        self.embedding_output = embedding_output or self._first_rank2(model, outputs)
        if self.embedding_output not in outputs:
            raise OnnxTeacherError(f"{self.path}: no output {self.embedding_output!r} ({outputs})")
        self.pooled_output = pooled_output
        if pooled_output:
            self.provides = frozenset({"embedding", "pooled"})
        self.session = ort.InferenceSession(raw, providers=_providers(device))
        contract = {
            "mean": self.mean.ravel().tolist(),
            "std": self.std.ravel().tolist(),
            "channels": self.channels,
            "layout": self.layout,
            "size": self.input_size,
            "embedding_output": self.embedding_output,
            "pooled_output": pooled_output,
        }
        self._fingerprint = hashlib.sha256(raw + json.dumps(contract).encode()).hexdigest()
        self.contract = contract

    @staticmethod
    def _layout_from(dims) -> str:
        if dims[1] == 3:
            return "nchw"
        if dims[3] == 3:
            return "nhwc"
        raise OnnxTeacherError(f"cannot tell the input layout from its shape {dims}; give layout")

    @staticmethod
    def _first_rank2(model, outputs) -> str:
        for o in model.graph.output:
            if len(o.type.tensor_type.shape.dim) == 2:
                return o.name
        return outputs[0]

    def fingerprint(self) -> str:
        return self._fingerprint

    def forward_features(self, x: torch.Tensor) -> ModelOutput:
        """``x (B, 3, S, S)`` facekd RGB in [-1, 1] -> ``ModelOutput(embedding, pooled)``."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"ONNX teacher {self.path.name} takes (B, 3, {self.input_size}, "
                f"{self.input_size}) faces, got {tuple(x.shape)}; set data.image_size to "
                f"{self.input_size}"
            )
        pixels = (x.detach().float().cpu().numpy() + 1.0) * 127.5
        if self.channels == "bgr":  # first: per-channel mean / std are in the model's order
            pixels = pixels[:, ::-1]
        feed = (pixels - self.mean) / self.std
        if self.layout == "nhwc":
            feed = feed.transpose(0, 2, 3, 1)
        names = [self.embedding_output] + ([self.pooled_output] if self.pooled_output else [])
        results = self.session.run(names, {self.input_name: np.ascontiguousarray(feed, np.float32)})
        embedding = torch.from_numpy(np.asarray(results[0], np.float32)).to(x.device)
        if embedding.ndim != 2 or embedding.shape[0] != x.shape[0]:
            raise OnnxTeacherError(
                f"{self.path.name}: output {self.embedding_output} has shape "
                f"{tuple(embedding.shape)}, expected (B, D); give embedding_output"
            )
        pooled = None
        if self.pooled_output:
            pooled = torch.from_numpy(np.asarray(results[1], np.float32)).to(x.device)
            pooled = pooled.mean(dim=(2, 3)) if pooled.ndim == 4 else pooled.flatten(1)
        return ModelOutput(embedding=embedding, stages=[], pooled=pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).embedding

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.contract}"
