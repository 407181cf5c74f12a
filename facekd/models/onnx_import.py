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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facekd.models import BACKBONES, build_backbone
from facekd.models.base import stride2_size
from facekd.models.checkpoints import CheckpointError
from facekd.models.mobilefacenet import ConvBlock, MobileFaceNet, _width
from facekd.models.onnx_graph import Node, OnnxGraph
from facekd.teachers.onnx_teacher import METADATA_KEY

MIN_COSINE = 0.99999
_PREFIX_OPS = ("Sub", "Mul", "Div", "Add")


class OnnxImportError(CheckpointError):
    """The ONNX graph is not a MobileFaceNet-family model (the message names the node)."""


@dataclass
class ConvUnit:
    """Conv [+ BatchNorm] [+ PReLU] as found in the graph."""

    node: Node
    weight: np.ndarray
    bias: np.ndarray | None
    stride: int
    groups: int
    bn: tuple | None = None  # (gamma, beta, mean, var, eps)
    slope: np.ndarray | None = None


def _fail(node: Node | None, expected: str) -> OnnxImportError:
    where = node.describe() if node is not None else "the end of the graph"
    return OnnxImportError(
        f"not an InsightFace MobileFaceNet-family graph: {where} does not fit; expected {expected}"
    )


class _Cursor:
    """Walks the main path of the graph from its input; ``t`` is the current tensor."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.g, self.t = graph, graph.input

    def next_node(self, skip_add: bool = True) -> Node | None:
        nodes = [n for n in self.g.consumers(self.t) if not (skip_add and n.op == "Add")]
        if len(nodes) > 1:  # the family is one path (plus residual Adds)
            raise _fail(nodes[1], f"one path: {nodes[0].describe()} reads the same tensor")
        return nodes[0] if nodes else None

    def has_residual(self) -> bool:
        return any(n.op == "Add" for n in self.g.consumers(self.t))

    def _bn(self, node: Node) -> tuple:
        params = [self.g.const(x) for x in node.inputs[1:5]]
        if any(p is None for p in params):
            raise _fail(node, "BatchNormalization with constant parameters")
        return (*params, float(node.attrs.get("epsilon", 1e-5)))

    def conv(self, what: str, act: bool, kernel: int, stride: int, groups: str = "one") -> ConvUnit:
        """One conv unit; ``groups``: ``"one"``, ``"depthwise"`` or ``"any"``."""
        node = self.next_node()
        is_conv = node is not None and node.op == "Conv" and node.inputs[0] == self.t
        w = self.g.const(node.inputs[1]) if is_conv else None
        if w is None or w.ndim != 4:
            raise _fail(node, f"{what}: a Conv with constant weights")
        g = int(node.attrs.get("group", 1))
        k = tuple(w.shape[2:])
        s = tuple(node.attrs.get("strides", [1, 1]))
        pads = tuple(node.attrs.get("pads", [0, 0, 0, 0]))
        pad = kernel // 2 if kernel in (1, 3) else 0
        ok = (
            (kernel == 0 or k == (kernel, kernel))
            and k[0] == k[1]
            and s == (stride, stride)
            and pads == (pad,) * 4
            and tuple(node.attrs.get("dilations", [1, 1])) == (1, 1)
            and node.attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and {"one": g == 1, "depthwise": g == w.shape[0] and w.shape[1] == 1}.get(groups, True)
        )
        if not ok:
            shape = f"{k[0]}x{k[1]} stride {s} pads {pads} groups {g}"
            raise _fail(node, f"{what} (found {shape})")
        unit = ConvUnit(
            node, w, self.g.const(node.inputs[2]) if len(node.inputs) > 2 else None, stride, g
        )
        self.t = node.outputs[0]
        nxt = self.g.consumers(self.t)
        if len(nxt) == 1 and nxt[0].op == "BatchNormalization":
            unit.bn, self.t = self._bn(nxt[0]), nxt[0].outputs[0]
            nxt = self.g.consumers(self.t)
        is_prelu = len(nxt) == 1 and nxt[0].op == "PRelu"
        if act and not is_prelu:
            raise _fail(nxt[0] if nxt else None, f"PReLU after {what}")
        if is_prelu and not act:
            raise _fail(nxt[0], f"no activation after {what} (a linear layer)")
        if is_prelu:
            slope = self.g.const(nxt[0].inputs[1])
            c = w.shape[0]
            if slope is None or slope.size not in (1, c):
                raise _fail(nxt[0], f"PReLU with 1 or {c} constant slopes")
            unit.slope, self.t = np.broadcast_to(slope.reshape(-1), (c,)), nxt[0].outputs[0]
        return unit

    def bottleneck(self, what: str, stride: int, residual: bool) -> list[ConvUnit]:
        start = self.t
        units = [self.conv(f"{what}: 1x1 expansion", True, 1, 1)]
        c_in = units[0].weight.shape[1]
        units.append(
            self.conv(f"{what}: 3x3 depthwise stride {stride}", True, 3, stride, "depthwise")
        )
        units.append(self.conv(f"{what}: 1x1 linear projection", False, 1, 1))
        if residual:
            add = next((n for n in self.g.consumers(self.t) if n.op == "Add"), None)
            if add is None or sorted(add.inputs) != sorted([start, self.t]):
                raise _fail(add or self.next_node(), f"{what}: the residual Add of its input")
            if units[2].weight.shape[0] != c_in:
                raise _fail(add, f"{what}: a residual block keeping {c_in} channels")
            self.t = add.outputs[0]
        return units

    def residual_run(self, what: str) -> list[list[ConvUnit]]:
        blocks = []
        while self.has_residual():
            blocks.append(self.bottleneck(f"{what} block {len(blocks)}", 1, True))
        if not blocks:
            raise _fail(self.next_node(), f"{what}: residual bottlenecks")
        return blocks

    def flatten(self, what: str) -> None:
        node = self.next_node()
        if node is None or node.op not in ("Flatten", "Reshape"):
            raise _fail(node, f"{what}: Flatten")
        if node.op == "Flatten" and node.attrs.get("axis", 1) != 1:
            raise _fail(node, f"{what}: Flatten from axis 1")
        if node.op == "Reshape":
            shape = self.g.const(node.inputs[1])
            if shape is None or shape.size != 2 or not (shape[1] == -1 or shape[0] in (0, -1)):
                raise _fail(node, f"{what}: a Reshape to (batch, features)")
        self.t = node.outputs[0]

    def linear(self, what: str) -> tuple[Node, np.ndarray, np.ndarray | None]:
        """Gemm, MatMul [+ Add]: weight ``(out, in)`` and bias."""
        node = self.next_node()
        if node is not None and node.op == "Gemm":
            w, c = (
                self.g.const(node.inputs[1]),
                self.g.const(node.inputs[2] if len(node.inputs) > 2 else None),
            )
            if w is None or node.attrs.get("transA", 0) or node.inputs[0] != self.t:
                raise _fail(node, f"{what}: Gemm with constant weights")
            w = w if node.attrs.get("transB", 0) else w.T
            w = w * node.attrs.get("alpha", 1.0)
            b = (
                None
                if c is None
                else np.broadcast_to(c.reshape(-1) * node.attrs.get("beta", 1.0), (w.shape[0],))
            )
            self.t = node.outputs[0]
            return node, w, b
        if node is not None and node.op == "MatMul":
            w = self.g.const(node.inputs[1])
            if w is None or w.ndim != 2 or node.inputs[0] != self.t:
                raise _fail(node, f"{what}: MatMul with constant weights")
            self.t = node.outputs[0]
            b = None
            nxt = self.g.consumers(self.t)
            if len(nxt) == 1 and nxt[0].op == "Add":
                b = next((self.g.const(x) for x in nxt[0].inputs if x != self.t), None)
                if b is None:
                    raise _fail(nxt[0], f"{what}: bias Add of a constant")
                self.t = nxt[0].outputs[0]
            return node, w.T, b
        raise _fail(node, f"{what}: a fully connected layer (Gemm or MatMul)")


def _input_prefix(cur: _Cursor) -> tuple[np.ndarray, np.ndarray] | None:
    """Constant affine ops in front of the stem: ``(mean, std)`` per channel, or None."""
    a, b, seen = np.ones(3), np.zeros(3), False
    while (node := cur.next_node(skip_add=False)) is not None and node.op in _PREFIX_OPS:
        if len(cur.g.consumers(cur.t)) != 1 or node.inputs[0] != cur.t:
            raise _fail(node, "the stem convolution (or a constant normalisation of the input)")
        c = cur.g.const(node.inputs[1])
        if c is None or c.size not in (1, 3):
            raise _fail(node, "a normalisation by one constant or one per channel")
        c = c.reshape(-1).astype(np.float64)
        if node.op == "Sub":
            b = b - c
        elif node.op == "Add":
            b = b + c
        elif node.op == "Mul":
            a, b = a * c, b * c
        else:
            a, b = a / c, b / c
        seen, cur.t = True, node.outputs[0]
    return (-b / a, 1.0 / a) if seen else None


def _parse(graph: OnnxGraph) -> dict:
    """Walk the graph: every unit in ``MobileFaceNet``'s forward order, plus the head."""
    cur = _Cursor(graph)
    prefix = _input_prefix(cur)
    units: list[ConvUnit] = [cur.conv("the stem: 3x3 stride-2 conv from 3 channels", True, 3, 2)]
    if units[0].weight.shape[1] != 3:
        raise _fail(units[0].node, "the stem: 3x3 stride-2 conv from 3 channels")
    blocks = []
    if cur.has_residual():
        run = cur.residual_run("stem stage")
        blocks.append(len(run))
        units += [u for b in run for u in b]
        stem_groups = None
    else:
        units.append(cur.conv("the second stem conv: 3x3 stride 1, grouped", True, 3, 1, "any"))
        blocks.append(1)
        stem_groups = units[-1].groups
    inner = []
    for stage in (1, 2, 3):
        down = cur.bottleneck(f"stage {stage} downsampling bottleneck", 2, False)
        inner.append(down[0].weight.shape[0])
        run = cur.residual_run(f"stage {stage}")
        blocks.append(len(run))
        units += down + [u for b in run for u in b]
    units.append(cur.conv("conv_sep: 1x1 conv with PReLU", True, 1, 1))
    head_node = cur.next_node()
    w = (
        graph.const(head_node.inputs[1])
        if head_node is not None and head_node.op == "Conv"
        else None
    )
    if w is not None and w.shape[1] == 1 and w.shape[2] > 1:
        units.append(
            cur.conv("the GDC head: depthwise conv, no activation", False, 0, 1, "depthwise")
        )
        head, side = "gdc", units[-1].weight.shape[-1]
        nxt = cur.next_node()
        if nxt is not None and nxt.op == "Conv":  # the Linear as a 1x1 conv on the 1x1 map
            fc = cur.conv("the embedding layer (1x1 conv)", False, 1, 1)
            if fc.bn is not None:
                raise _fail(fc.node, "the embedding layer then BatchNorm1d after the flatten")
            cur.flatten("the embedding")
            fc_node, fc_w, fc_b = fc.node, fc.weight[:, :, 0, 0], fc.bias
        else:
            cur.flatten("the GDC head")
            fc_node, fc_w, fc_b = cur.linear("the embedding layer")
    elif w is not None and w.shape[2] == 1:
        units.append(cur.conv("the fc head: 1x1 conv with PReLU", True, 1, 1))
        cur.flatten("the fc head")
        fc_node, fc_w, fc_b = cur.linear("the fc head's embedding layer")
        head = "fc"
        side = math.isqrt(fc_w.shape[1] // units[-1].weight.shape[0])
        if side * side * units[-1].weight.shape[0] != fc_w.shape[1]:
            raise _fail(fc_node, "a fully connected layer over the flattened square map")
    else:
        raise _fail(head_node, "the embedding head: a GDC depthwise conv or a 1x1 conv")
    bn1d = None
    nxt = cur.next_node()
    if nxt is not None and nxt.op == "BatchNormalization":
        bn1d, cur.t = cur._bn(nxt), nxt.outputs[0]
    if cur.t not in graph.outputs:
        raise _fail(cur.next_node(), "the graph output (the embedding)")
    return dict(
        units=units,
        blocks=tuple(blocks),
        stem_groups=stem_groups,
        inner=inner,
        head=head,
        side=side,
        fc=(fc_node, fc_w, fc_b),
        bn1d=bn1d,
        prefix=prefix,
    )


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
            raise _fail(
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
        raise _fail(node, f"an embedding layer {tuple(fc.weight.shape)}, found {fc_w.shape}")
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
    from facekd.export import compare_backends, parity_faces
    from facekd.teachers.onnx_teacher import OnnxTeacher

    feed = {"mean": 0.0, "std": 1.0} if contract["in_graph"] else {}
    reference = OnnxTeacher(
        path,
        mean=feed.get("mean", contract["mean"]),
        std=feed.get("std", contract["std"]),
        channels=contract["channels"],
        input_size=model.input_size,
        device="cpu",
    )
    return compare_backends(reference, model, parity_faces(model.input_size))


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
    parsed = _parse(graph)
    dims = graph.input_dims
    fixed = dims[2] if len(dims) == 4 and dims[2] and dims[2] == dims[3] else None
    input_size = fixed or 16 * parsed["side"]
    if stride2_size(input_size, 4) != parsed["side"]:
        raise _fail(
            parsed["fc"][0], f"an embedding layer sized for {input_size}x{input_size} inputs"
        )
    contract = _input_contract(graph, parsed, mean, std, channels)
    name, kwargs = _arch(parsed, input_size)
    try:
        model = build_backbone(name, **kwargs)
    except ValueError as err:
        raise _fail(parsed["units"][1].node, f"a facekd MobileFaceNet: {err}") from None
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
