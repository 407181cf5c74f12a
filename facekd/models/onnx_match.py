"""Matching an ONNX graph against the InsightFace MobileFaceNet family, by topology and shapes.

``match_graph(graph)`` walks a ``facekd.models.onnx_graph.OnnxGraph`` from its input, unit by
unit in ``MobileFaceNet``'s forward order (the family's layout is drawn in
``facekd.models.onnx_import``), and returns the convolution units (weights, bias, stride,
groups, an explicit BatchNorm's statistics, PReLU slopes), the residual block counts, the head
(GDC or ``fc``), the embedding layer and any normalisation in front of the stem. Node names are
never read: they differ between exporters. The first node that does not fit raises
``OnnxImportError`` naming it and what was expected there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facekd.models.base import CheckpointError
from facekd.models.onnx_graph import Node, OnnxGraph

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


def fail(node: Node | None, expected: str) -> OnnxImportError:
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
            raise fail(nodes[1], f"one path: {nodes[0].describe()} reads the same tensor")
        return nodes[0] if nodes else None

    def has_residual(self) -> bool:
        return any(n.op == "Add" for n in self.g.consumers(self.t))

    def _bn(self, node: Node) -> tuple:
        params = [self.g.const(x) for x in node.inputs[1:5]]
        if any(p is None for p in params):
            raise fail(node, "BatchNormalization with constant parameters")
        return (*params, float(node.attrs.get("epsilon", 1e-5)))

    def conv(self, what: str, act: bool, kernel: int, stride: int, groups: str = "one") -> ConvUnit:
        """One conv unit; ``groups``: ``"one"``, ``"depthwise"`` or ``"any"``."""
        node = self.next_node()
        is_conv = node is not None and node.op == "Conv" and node.inputs[0] == self.t
        w = self.g.const(node.inputs[1]) if is_conv else None
        if w is None or w.ndim != 4:
            raise fail(node, f"{what}: a Conv with constant weights")
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
            raise fail(node, f"{what} (found {shape})")
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
            raise fail(nxt[0] if nxt else None, f"PReLU after {what}")
        if is_prelu and not act:
            raise fail(nxt[0], f"no activation after {what} (a linear layer)")
        if is_prelu:
            slope = self.g.const(nxt[0].inputs[1])
            c = w.shape[0]
            if slope is None or slope.size not in (1, c):
                raise fail(nxt[0], f"PReLU with 1 or {c} constant slopes")
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
                raise fail(add or self.next_node(), f"{what}: the residual Add of its input")
            if units[2].weight.shape[0] != c_in:
                raise fail(add, f"{what}: a residual block keeping {c_in} channels")
            self.t = add.outputs[0]
        return units

    def residual_run(self, what: str) -> list[list[ConvUnit]]:
        blocks = []
        while self.has_residual():
            blocks.append(self.bottleneck(f"{what} block {len(blocks)}", 1, True))
        if not blocks:
            raise fail(self.next_node(), f"{what}: residual bottlenecks")
        return blocks

    def flatten(self, what: str) -> None:
        node = self.next_node()
        if node is None or node.op not in ("Flatten", "Reshape"):
            raise fail(node, f"{what}: Flatten")
        if node.op == "Flatten" and node.attrs.get("axis", 1) != 1:
            raise fail(node, f"{what}: Flatten from axis 1")
        if node.op == "Reshape":
            shape = self.g.const(node.inputs[1])
            if shape is None or shape.size != 2 or not (shape[1] == -1 or shape[0] in (0, -1)):
                raise fail(node, f"{what}: a Reshape to (batch, features)")
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
                raise fail(node, f"{what}: Gemm with constant weights")
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
                raise fail(node, f"{what}: MatMul with constant weights")
            self.t = node.outputs[0]
            b = None
            nxt = self.g.consumers(self.t)
            if len(nxt) == 1 and nxt[0].op == "Add":
                b = next((self.g.const(x) for x in nxt[0].inputs if x != self.t), None)
                if b is None:
                    raise fail(nxt[0], f"{what}: bias Add of a constant")
                self.t = nxt[0].outputs[0]
            return node, w.T, b
        raise fail(node, f"{what}: a fully connected layer (Gemm or MatMul)")


def _input_prefix(cur: _Cursor) -> tuple[np.ndarray, np.ndarray] | None:
    """Constant affine ops in front of the stem: ``(mean, std)`` per channel, or None."""
    a, b, seen = np.ones(3), np.zeros(3), False
    while (node := cur.next_node(skip_add=False)) is not None and node.op in _PREFIX_OPS:
        if len(cur.g.consumers(cur.t)) != 1 or node.inputs[0] != cur.t:
            raise fail(node, "the stem convolution (or a constant normalisation of the input)")
        c = cur.g.const(node.inputs[1])
        if c is None or c.size not in (1, 3):
            raise fail(node, "a normalisation by one constant or one per channel")
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


def match_graph(graph: OnnxGraph) -> dict:
    """Walk the graph: every unit in ``MobileFaceNet``'s forward order, plus the head."""
    cur = _Cursor(graph)
    prefix = _input_prefix(cur)
    units: list[ConvUnit] = [cur.conv("the stem: 3x3 stride-2 conv from 3 channels", True, 3, 2)]
    if units[0].weight.shape[1] != 3:
        raise fail(units[0].node, "the stem: 3x3 stride-2 conv from 3 channels")
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
                raise fail(fc.node, "the embedding layer then BatchNorm1d after the flatten")
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
            raise fail(fc_node, "a fully connected layer over the flattened square map")
    else:
        raise fail(head_node, "the embedding head: a GDC depthwise conv or a 1x1 conv")
    bn1d = None
    nxt = cur.next_node()
    if nxt is not None and nxt.op == "BatchNormalization":
        bn1d, cur.t = cur._bn(nxt), nxt.outputs[0]
    if cur.t not in graph.outputs:
        raise fail(cur.next_node(), "the graph output (the embedding)")
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
