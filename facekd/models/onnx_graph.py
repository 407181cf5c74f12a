"""An ONNX graph as plain Python: nodes, constant tensors, consumers; exact canonical rewrites.

``facekd.models.onnx_import`` matches a graph against a module family by topology and tensor
shapes. Exporters write the same network in different spellings, so this module first rewrites
them into one, every rewrite exact (no arithmetic on activations changes):

* ``Constant`` nodes become constants; ``Identity`` nodes are dropped (their output is an
  alias of their input; TorchScript writes one per shared PReLU slope); ``Unsqueeze`` /
  ``Squeeze`` / ``Transpose`` / ``Reshape`` of constants are computed (unfolded exports);
* a convolution split into parallel group-1 convolutions over the same input (each optionally
  followed by its own PReLU) and joined by ``Concat`` on the channel axis, as ESP-DL writes
  large 1x1 convolutions, becomes the one convolution (weights, biases and slopes concatenated
  in the order of the ``Concat`` inputs).

Nodes keep their names (or ``#index`` when the exporter left them empty) so an importer can
name the first node that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "group")


_FOLDABLE = ("Unsqueeze", "Squeeze", "Transpose", "Reshape")


def _fold(op: str, args: list[np.ndarray], attrs: dict) -> np.ndarray:
    """The few shape ops exporters leave on constants (PReLU slopes, transposed weights)."""
    x = args[0]
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "Reshape":
        shape = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(args[1].tolist())]
        return x.reshape(shape)
    axes = attrs.get("axes", args[1].tolist() if len(args) > 1 else None)
    if op == "Squeeze":
        return np.squeeze(x, axis=None if axes is None else tuple(axes))
    for axis in sorted(a % (x.ndim + len(axes)) for a in axes):
        x = np.expand_dims(x, axis)
    return x


@dataclass
class Node:
    """One ONNX node: operator, name, tensor names, attributes as Python values."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def describe(self) -> str:
        return f"node {self.name!r} ({self.op} -> {self.outputs[0] if self.outputs else '-'})"


class OnnxGraph:
    """A single-input graph: ``nodes`` (topological order), ``consts``, ``input``, ``outputs``.

    Args:
        path: the ``.onnx`` file (weights inside it or in external data next to it).
    """

    def __init__(self, path: str | Path) -> None:
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(path))
        self.meta = {p.key: p.value for p in proto.metadata_props}
        g = proto.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in g.initializer
        }
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"a face model has one image input; this graph has {len(inputs)}")
        self.input = inputs[0].name
        self.input_dims = [
            d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim
        ]
        self.outputs = [o.name for o in g.output]
        alias: dict[str, str] = {}
        self.nodes: list[Node] = []
        for i, n in enumerate(g.node):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            ins = [alias.get(x, x) for x in n.input]
            if n.op_type == "Constant" and "value" in attrs:
                self.consts[n.output[0]] = numpy_helper.to_array(attrs["value"])
            elif n.op_type in _FOLDABLE and all(x in self.consts for x in ins if x):
                self.consts[n.output[0]] = _fold(n.op_type, [self.consts[x] for x in ins], attrs)
            elif n.op_type == "Identity":
                if ins[0] in self.consts:
                    self.consts[n.output[0]] = self.consts[ins[0]]
                else:
                    alias[n.output[0]] = ins[0]
            else:
                self.nodes.append(Node(n.op_type, n.name or f"#{i}", ins, list(n.output), attrs))
        self.outputs = [alias.get(o, o) for o in self.outputs]
        for node in [n for n in self.nodes if n.op == "Concat"]:
            self._merge_split_conv(node)

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def producer(self, tensor: str) -> Node | None:
        return next((n for n in self.nodes if tensor in n.outputs), None)

    def const(self, name: str | None) -> np.ndarray | None:
        return None if not name else self.consts.get(name)

    def _merge_split_conv(self, cat: Node) -> None:
        """Replace ``Concat(conv_1(x) [-> PReLU], conv_2(x) [-> PReLU], ...)`` by one conv."""
        if cat.attrs.get("axis") not in (1, -3) or len(cat.inputs) < 2:
            return
        branches = []
        for t in cat.inputs:
            prelu = self.producer(t)
            conv = prelu
            if prelu is not None and prelu.op == "PRelu":
                conv = self.producer(prelu.inputs[0])
            else:
                prelu = None
            if conv is None or conv.op != "Conv" or conv.attrs.get("group", 1) != 1:
                return
            parts = [conv] + ([prelu] if prelu else [])
            if any(len(self.consumers(p.outputs[0])) != 1 for p in parts):
                return  # a branch is used elsewhere: not a split convolution
            branches.append((conv, prelu))
        convs = [c for c, _ in branches]
        attrs = [tuple(str(c.attrs.get(k)) for k in _CONV_ATTRS) for c in convs]
        weights = [self.const(c.inputs[1]) for c in convs]
        if (
            len({c.inputs[0] for c in convs}) != 1
            or len(set(attrs)) != 1
            or any(w is None for w in weights)
        ):
            return
        if len({p is None for _, p in branches}) != 1:
            return  # some branches activated, some not
        biases = [
            self.const(c.inputs[2]) if len(c.inputs) > 2 and c.inputs[2] else np.zeros(len(w))
            for c, w in zip(convs, weights, strict=True)
        ]
        if any(b is None for b in biases):
            return
        name = convs[0].name
        w_name, b_name, mid = f"{name}/merged_w", f"{name}/merged_b", f"{name}/merged_out"
        self.consts[w_name] = np.concatenate(weights, axis=0)
        self.consts[b_name] = np.concatenate([b.reshape(-1) for b in biases])
        activated = branches[0][1] is not None
        merged = [
            Node("Conv", name, [convs[0].inputs[0], w_name, b_name], [mid], dict(convs[0].attrs))
        ]
        if activated:
            slopes = []
            for (_, prelu), w in zip(branches, weights, strict=True):
                s = self.const(prelu.inputs[1])
                if s is None:
                    return
                slopes.append(np.broadcast_to(s.reshape(-1), (w.shape[0],)))
            s_name = f"{name}/merged_slope"
            self.consts[s_name] = np.concatenate(slopes)
            merged.append(Node("PRelu", branches[0][1].name, [mid, s_name], [cat.outputs[0]]))
        else:
            merged[0].outputs = [cat.outputs[0]]
        removed = {id(n) for pair in branches for n in pair if n is not None} | {id(cat)}
        at = self.nodes.index(cat)
        self.nodes[at : at + 1] = merged
        self.nodes = [n for n in self.nodes if id(n) not in removed]


__all__ = ["Node", "OnnxGraph"]
