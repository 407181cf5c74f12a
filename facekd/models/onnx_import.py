"""ONNX MobileFaceNets (InsightFace family) as trainable facekd backbones.

``import_onnx("w600k_mbf.onnx")`` reads the graph (``facekd.models.onnx_graph``), matches it
against the MobileFaceNet family by topology and tensor shapes, never by node names (they
differ between exporters), builds the facekd ``MobileFaceNet`` with the matching registry
keywords and copies the weights in. The family (arcface_torch ``mbf`` / ``mbf_large``, their
width / depth variants, the paper's / legacy "y1" net, Espressif's ``mbf`` with its ``fc``
head and depthwise stem, facekd's own exports)::

    Conv 3x3/2 PReLU | stem 2: Conv 3x3/1 grouped PReLU, or residual bottlenecks
    bottleneck/2, residual bottlenecks (x3)      bottleneck = 1x1 PReLU, dw 3x3 PReLU, 1x1
    Conv 1x1 PReLU (conv_sep) | head: dw kxk conv (GDC) or 1x1 conv PReLU ("fc" head)
    flatten, linear (Gemm, MatMul [+ Add], or 1x1 conv before the flatten) [, BatchNorm]

Each ``Conv`` may be followed by a ``BatchNormalization`` node (copied with its statistics) or
carry it folded; folded BatchNorm is re-split exactly: ``gamma = 1``, ``beta = bias``,
``mean = 0``, ``var = 1 - eps``, so ``(y - 0) / sqrt(var + eps) * 1 + bias = y + bias``; an
explicit BatchNorm after a biased conv takes ``mean - bias``. The embedding Linear + BatchNorm1d
likewise. PReLU slopes are copied (a scalar slope is broadcast).

Input normalisation is recorded (``model.import_info["input"]``) from, in this order, the
caller, facekd's export metadata, ``Sub`` / ``Mul`` / ``Div`` / ``Add`` constants in front of
the stem (the graph normalises itself), InsightFace's convention ``(x - 127.5) / 127.5``. facekd
feeds ``(x - 127.5) / 127.5`` RGB: a different ``std`` is folded into the stem weights, BGR
swaps their input channels (both exact, zero padding included); a mean other than 127.5 cannot
be folded exactly at the padded border and is refused.

A graph outside the family raises ``OnnxImportError`` naming the first node that does not fit.
After the import, the module is checked against onnxruntime (``verify=True``) on synthetic
faces at batch 1 and 7; ``import_info["parity"]`` holds the cosines.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from facekd.models import BACKBONES, build_backbone
from facekd.models.base import stride2_size
from facekd.models.mobilefacenet import ConvBlock, MobileFaceNet, _width
from facekd.models.onnx_graph import OnnxGraph
from facekd.models.onnx_match import ConvUnit, OnnxImportError, fail, match_graph
from facekd.models.onnx_runtime import METADATA_KEY
from facekd.models.parity import PARITY_BATCHES, parity_faces, row_agreement

MIN_COSINE = 0.99999


def _arch(parsed: dict, input_size: int) -> tuple[str, dict]:
    """Registry name and keywords that rebuild the parsed graph (shape-checked later)."""
    units, inner = parsed["units"], parsed["inner"]
    c64, g128 = units[0].weight.shape[0], inner[0]
    width = g128 / 128
    scale = max(1, round(c64 / _width(64, width)))
    kwargs = dict(
        num_features=parsed["fc"][1].shape[0],
        blocks=parsed["blocks"],
        scale=scale,
        width=width,
        input_size=input_size,
        head=parsed["head"],
    )
    if parsed["head"] == "fc":
        kwargs["head_channels"] = units[-1].weight.shape[0]
    if parsed["stem_groups"] is not None and parsed["stem_groups"] != math.gcd(
        c64, _width(64, width)
    ):
        kwargs["stem_groups"] = parsed["stem_groups"]
    name = "mobilefacenet" if scale == 1 else "mbf"
    params = inspect.signature(MobileFaceNet).parameters
    defaults = {k: p.default for k, p in params.items()} | BACKBONES[name].keywords
    return name, {k: v for k, v in kwargs.items() if defaults.get(k) != v}


def _set_bn(bn: torch.nn.Module, stats: tuple | None, bias: np.ndarray | None) -> None:
    """BatchNorm after ``y = Wx (+ bias)``: explicit statistics, or the exact re-split."""
    n = bn.num_features
    b = np.zeros(n) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    if stats is None:  # folded: y + bias == BN_{1, bias, 0, 1-eps}(y)
        gamma, beta, mean, var = np.ones(n), b, np.zeros(n), np.full(n, 1.0 - bn.eps)
    else:  # BN(y + bias) with (mean, var, eps) == BN(y) with (mean - bias, var + eps - bn.eps)
        gamma, beta, mean, var, eps = stats
        mean = np.asarray(mean, np.float64) - b
        var = np.asarray(var, np.float64) + eps - bn.eps
    for name, value in (("weight", gamma), ("bias", beta)):
        getattr(bn, name).copy_(torch.as_tensor(np.asarray(value, np.float64)).reshape(n))
    bn.running_mean.copy_(torch.as_tensor(mean).reshape(n))
    bn.running_var.copy_(torch.as_tensor(var).reshape(n))


def _conv_blocks(model: MobileFaceNet) -> list[ConvBlock]:
    return [m for m in model.modules() if isinstance(m, ConvBlock)]  # forward order


@torch.no_grad()
def _load_weights(model: MobileFaceNet, parsed: dict, stem_scale: np.ndarray, perm) -> None:
    blocks = _conv_blocks(model)
    units = parsed["units"]
    if len(blocks) != len(units):  # cannot happen after a successful parse: say so loudly
        raise OnnxImportError(f"{len(units)} conv layers in the graph, {len(blocks)} in the model")
    for i, (block, unit) in enumerate(zip(blocks, units, strict=True)):
        conv, bn = block.layers[0], block.layers[1]
        w = unit.weight.astype(np.float64)
        if i == 0:  # the stem sees facekd's RGB [-1, 1]: fold the graph's own input contract
            w = (w * stem_scale.reshape(1, 3, 1, 1))[:, perm]
        if tuple(conv.weight.shape) != w.shape or conv.stride != (unit.stride, unit.stride):
            raise fail(
                unit.node,
                f"weights {tuple(conv.weight.shape)} stride {conv.stride[0]} "
                f"(facekd {model.arch} {model.arch_kwargs}), found {w.shape} stride {unit.stride}",
            )
        conv.weight.copy_(torch.as_tensor(w))
        _set_bn(bn, unit.bn, unit.bias)
        if unit.slope is not None:
            block.layers[2].weight.copy_(torch.as_tensor(np.asarray(unit.slope, np.float64)))
    node, fc_w, fc_b = parsed["fc"]
    head = model.features
    fc, bn1d = (head.fc, head.bn) if parsed["head"] == "fc" else (head.layers[2], head.layers[3])
    if tuple(fc.weight.shape) != fc_w.shape:
        raise fail(node, f"an embedding layer {tuple(fc.weight.shape)}, found {fc_w.shape}")
    fc.weight.copy_(torch.as_tensor(np.asarray(fc_w, np.float64)))
    _set_bn(bn1d, parsed["bn1d"], fc_b)


def _input_contract(graph: OnnxGraph, parsed: dict, mean, std, channels) -> dict:
    """Where the graph's input normalisation comes from, and what it is (per channel)."""
    stored = json.loads(graph.meta.get(METADATA_KEY, "{}"))
    if mean is not None or std is not None:
        source = "given"
    elif parsed["prefix"] is not None:
        source, (mean, std) = "graph (Sub/Mul/Div/Add before the stem)", parsed["prefix"]
    elif "mean" in stored:
        source, mean, std = "facekd export metadata", stored["mean"], stored.get("std", 127.5)
    else:
        source = "InsightFace convention (no normalisation in the graph)"
    mean = np.broadcast_to(
        np.asarray(127.5 if mean is None else mean, np.float64).reshape(-1), (3,)
    )
    std = np.broadcast_to(np.asarray(127.5 if std is None else std, np.float64).reshape(-1), (3,))
    channels = (channels or stored.get("channels") or "rgb").lower()
    if channels not in ("rgb", "bgr"):
        raise OnnxImportError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    if not np.allclose(mean, 127.5, rtol=0, atol=1e-4):
        raise OnnxImportError(
            f"the graph expects (x - {mean.tolist()}) / {std.tolist()} ({source}); facekd feeds "
            "(x - 127.5) / 127.5, and a different mean cannot be folded into a zero-padded stem "
            "exactly"
        )
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "channels": channels,
        "source": source,
        "in_graph": parsed["prefix"] is not None,
    }


def _verify(model: MobileFaceNet, path: Path, contract: dict) -> dict:
    """onnxruntime (as an ``OnnxTeacher`` with the graph's own contract) vs the module."""
    from facekd.data.transforms import to_tensor
    from facekd.models.onnx_runtime import OnnxTeacher

    feed = {"mean": 0.0, "std": 1.0} if contract["in_graph"] else {}
    reference = OnnxTeacher(
        path,
        mean=feed.get("mean", contract["mean"]),
        std=feed.get("std", contract["std"]),
        channels=contract["channels"],
        input_size=model.input_size,
        device="cpu",
    )
    faces = torch.stack([to_tensor(f) for f in parity_faces(model.input_size)])
    report: dict = {}
    with torch.no_grad():
        for b in PARITY_BATCHES:  # batch 1 and a batch of 7, as the export check
            ref, got = reference(faces[:b]), model.eval()(faces[:b])
            report[f"batch_{b}"] = row_agreement(ref.numpy(), got.numpy())
    report["min_cosine"] = min(v["min_cosine"] for v in report.values())
    return report


def import_onnx(
    path: str | os.PathLike,
    *,
    mean=None,
    std=None,
    channels: str | None = None,
    verify: bool = True,
    min_cosine: float = MIN_COSINE,
) -> MobileFaceNet:
    """The MobileFaceNet-family ONNX file as a facekd backbone, in eval mode.

    Args:
        path: the ``.onnx`` file.
        mean, std: the graph's input normalisation on 0-255 pixels (default: module docstring).
        channels: ``"rgb"`` (default) or ``"bgr"``: the graph's channel order.
        verify: compare against onnxruntime on synthetic faces (batch 1 and 7).
        min_cosine: the per-row cosine ``verify`` requires.

    Returns:
        the backbone; ``arch`` / ``arch_kwargs`` rebuild it, ``import_info`` records the file,
        its input contract and the parity check.

    Raises:
        OnnxImportError: not a family member (names the first node that does not fit), an
            input contract that cannot be folded, or parity below ``min_cosine``.
    """
    path = Path(path)
    try:
        graph = OnnxGraph(path)
    except ValueError as err:
        raise OnnxImportError(f"{path}: {err}") from None
    parsed = match_graph(graph)
    dims = graph.input_dims
    fixed = dims[2] if len(dims) == 4 and dims[2] and dims[2] == dims[3] else None
    input_size = fixed or 16 * parsed["side"]
    if stride2_size(input_size, 4) != parsed["side"]:
        raise fail(
            parsed["fc"][0], f"an embedding layer sized for {input_size}x{input_size} inputs"
        )
    contract = _input_contract(graph, parsed, mean, std, channels)
    name, kwargs = _arch(parsed, input_size)
    try:
        model = build_backbone(name, **kwargs)
    except ValueError as err:
        raise fail(parsed["units"][1].node, f"a facekd MobileFaceNet: {err}") from None
    perm = [2, 1, 0] if contract["channels"] == "bgr" else [0, 1, 2]
    _load_weights(model, parsed, 127.5 / np.asarray(contract["std"]), perm)
    model.eval()
    model.import_info = {
        "format": "onnx",
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "input": contract,
        "batchnorm": sorted(
            {
                "explicit" if bn else "folded"
                for bn in [u.bn for u in parsed["units"]] + [parsed["bn1d"]]
            }
        ),
    }
    if verify:
        parity = _verify(model, path, contract)
        model.import_info["parity"] = parity
        if not parity["min_cosine"] >= min_cosine:
            raise OnnxImportError(
                f"{path}: the imported module disagrees with onnxruntime: worst cosine "
                f"{parity['min_cosine']:.7f} < {min_cosine}"
            )
    return model


__all__ = ["ConvUnit", "OnnxImportError", "import_onnx"]
