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
fully connected, BatchNorm); ``embedding`` = ``gdc`` + ``fc``; ``conv_sep`` = the ``Conv``
before ``gdc`` (MobileFaceNet's 1x1 expansion to 512 channels, whose output the GDC pools);
``depthwise`` = grouped ``Conv``
with one input channel per group; ``prelu`` = the rewrite's nodes (always float: no int8
kernel would run them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: roles computed in float unless told otherwise (``quantize_onnx``, ``facekd quantize``, QAT).
#: The GDC pools a 7x7x512 map into 512 values that its BatchNorm then centres: uint8 noise on
#: its input survives the pooling while much of the signal cancels. Quantising conv_sep's output
#: (the GDC's input) cost the held-back cosine 0.976 -> 0.993 on the legacy MobileFaceNet and
#: 0.853 -> 0.994 on the ReLU student, for no measurable speed (bench_relu_student.py).
DEFAULT_KEEP_FLOAT = ("gdc", "conv_sep")

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


def layer_roles(names, convs, depthwise) -> dict[str, list[str]]:
    """The roles of a face network's layers, from ``names`` in forward order, the ``convs``
    among them and the ``depthwise`` convolutions: ``first`` (first convolution), ``gdc`` (the
    last one: the global depthwise layer of a MobileFaceNet), ``fc`` (everything after it),
    ``embedding`` (``gdc`` + ``fc``), ``conv_sep`` (the convolution before ``gdc``),
    ``depthwise``. One definition for the ONNX graph
    (``node_roles``) and the torch module tree (``qat.simulated_layers``), so the layers kept
    in float while fine-tuning are the ones onnxruntime keeps in float."""
    if not convs:
        raise GraphError("the network has no convolution: no layer roles to assign")
    last = names.index(convs[-1])
    return {"first": [convs[0]], "gdc": [convs[-1]], "fc": list(names[last + 1 :]),
            "embedding": list(names[last:]), "conv_sep": list(convs[-2:-1]),
            "depthwise": list(depthwise)}  # fmt: skip


def node_roles(model) -> dict[str, list[str]]:
    """``{"first", "gdc", "fc", "embedding", "conv_sep", "depthwise", "prelu"}`` -> node names
    (module docstring)."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    roles = layer_roles(
        [n.name for n in nodes], [n.name for n in convs],
        [n.name for n in convs if _is_depthwise(n, inits)],
    )  # fmt: skip
    roles["prelu"] = [n.name for n in nodes if n.name.startswith(REWRITE_PREFIX)]
    return roles


def int8_stored_weights(model, node_names) -> list[str]:
    """Store the weights of the named float ``Conv`` nodes as int8 (weight-only): each weight
    ``W (C_out, C_in/g, kh, kw)`` becomes ``W_q = round(W / s)`` in int8 with one symmetric
    scale per output channel ``s_c = max|W_c| / 127``, and a ``DequantizeLinear`` (axis 0, opset
    >= 13) restores ``s_c * W_q`` in float for the convolution, which still computes in float
    on float activations. Returns the names of the converted nodes.

    Why: layers kept in float for accuracy (the global depthwise layer, ``keep_float``) lose
    their accuracy to *activation* quantisation; their weights quantise per channel with a
    relative error under 1/254 of each channel's largest weight, while their fp32 storage was
    what kept the int8 file under 3x smaller than the fp32 one. Weights shared with another
    node, or given as a graph input, are left as they are."""
    import onnx
    from onnx import helper, numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise GraphError(f"per-channel DequantizeLinear needs opset >= 13, the model has {opset}")
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    wanted, done, new_nodes = set(node_names), [], []
    for node in model.graph.node:
        w = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else None
        if node.name not in wanted or w not in inits or uses[w] != 1:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[w]).astype(np.float32)
        peak = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(weight / scale.reshape(-1, *[1] * (weight.ndim - 1))), -127, 127)
        model.graph.initializer.remove(inits[w])
        model.graph.initializer.extend([
            numpy_helper.from_array(q.astype(np.int8), f"{w}_int8"),
            numpy_helper.from_array(scale, f"{w}_scale"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{w}_zero_point"),
        ])  # fmt: skip
        new_nodes.append(
            helper.make_node("DequantizeLinear", [f"{w}_int8", f"{w}_scale", f"{w}_zero_point"],
                             [f"{w}_dequantized"], name=f"{node.name}/weight_dq", axis=0)
        )  # fmt: skip
        node.input[1] = f"{w}_dequantized"
        new_nodes.append(node)
        done.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    return done
