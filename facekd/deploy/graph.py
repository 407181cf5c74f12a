"""ONNX graph preparation for int8: an exact PReLU rewrite and the roles of the nodes.

Why the rewrite: onnxruntime's CPU ``PRelu`` kernel broadcasts its per-channel slope element
by element. Profiled on the legacy MobileFaceNet (batch 64, one thread) it takes 44 % of the
fp32 run (more than all 49 convolutions) and, once the convolutions are int8, ~75 % of the
int8 run: no int8 operator exists for it, so each of the 33 PReLUs runs in float between a
dequantise and a quantise. ``rewrite_prelu`` replaces every PReLU whose slope ``a`` is a
constant by vectorised elementwise operators that compute the same function exactly:

* all ``a <= 1``: ``max(x, a * x)`` (for ``x >= 0``, ``x >= a x``; for ``x < 0``, ``a x >= x``);
* otherwise: ``x + (a - 1) * min(x, 0)``.

Both are the PReLU up to float rounding (one multiply-add at most). They are 4-7x faster than
the ``PRelu`` kernel here, which makes the fp32 model itself faster too (reported separately,
so the int8 speed-up is never credited with it).

Roles (``node_roles``): ``first`` = the first ``Conv`` (it sees the image); ``gdc`` = the last
``Conv`` (the global depthwise layer of MobileFaceNets); ``fc`` = every node after it (flatten,
fully connected, BatchNorm); ``embedding`` = ``gdc`` + ``fc``; ``depthwise`` = grouped ``Conv``
with one input channel per group; ``prelu`` = the rewrite's nodes (always float: no int8
kernel would run them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REWRITE_PREFIX = "facekd_prelu/"


class GraphError(ValueError):
    """The file is not an ONNX model facekd can quantise."""


def load_model(path):
    """Read and check an ONNX file (one float32 image input); raises ``GraphError``."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise GraphError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - protobuf / checker errors have no common base
        raise GraphError(
            f"{path}: not a readable ONNX model ({type(err).__name__}: {err})"
        ) from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise GraphError(f"{path}: expected one float32 image input, got {len(inputs)} inputs")
    if not any(n.op_type == "Conv" for n in model.graph.node):
        raise GraphError(f"{path}: no Conv node; not a convolutional face model")
    return model


def name_nodes(model) -> None:
    """Give every unnamed node a unique name (exclusions are by name; ESP-DL leaves them empty)."""
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def rewrite_prelu(model) -> dict:
    """Replace constant-slope PReLUs in place (module docstring); returns counts per form."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, counts, used = [], {"max": 0, "min_mul_add": 0}, set()
    for node in model.graph.node:
        slope = inits.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is None:
            nodes.append(node)
            used.update(node.input)
            continue
        a, x, y = numpy_helper.to_array(slope), node.input[0], node.output[0]
        base = REWRITE_PREFIX + node.name
        if (a <= 1).all():
            counts["max"] += 1
            used.add(slope.name)
            nodes += [
                helper.make_node("Mul", [x, slope.name], [base + "/ax"], name=base + "/mul"),
                helper.make_node("Max", [x, base + "/ax"], [y], name=base + "/max"),
            ]
        else:
            counts["min_mul_add"] += 1
            model.graph.initializer.append(
                numpy_helper.from_array(np.zeros(1, a.dtype), base + "/0")
            )
            model.graph.initializer.append(numpy_helper.from_array(a - 1, base + "/a-1"))
            nodes += [
                helper.make_node("Min", [x, base + "/0"], [base + "/neg"], name=base + "/min"),
                helper.make_node("Mul", [base + "/neg", base + "/a-1"], [base + "/c"],
                                 name=base + "/mul"),
                helper.make_node("Add", [x, base + "/c"], [y], name=base + "/add"),
            ]  # fmt: skip
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    keep = [
        t for t in model.graph.initializer if t.name in used or t.name.startswith(REWRITE_PREFIX)
    ]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return counts


def _is_depthwise(node, inits) -> bool:
    from onnx import numpy_helper

    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    w = inits.get(node.input[1])
    return group > 1 and w is not None and numpy_helper.to_array(w).shape[1] == 1


def node_roles(model) -> dict[str, list[str]]:
    """``{"first", "gdc", "fc", "embedding", "depthwise", "prelu"}`` -> node names (docstring)."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    return {
        "first": [nodes[convs[0]].name],
        "gdc": [nodes[convs[-1]].name],
        "fc": [n.name for n in nodes[convs[-1] + 1 :]],
        "embedding": [n.name for n in nodes[convs[-1] :]],
        "depthwise": [n.name for n in nodes if n.op_type == "Conv" and _is_depthwise(n, inits)],
        "prelu": [n.name for n in nodes if n.name.startswith(REWRITE_PREFIX)],
    }
