"""InsightFace's legacy MXNet face models, read with numpy + json (no mxnet) into facekd modules.

A legacy model is ``<prefix>-symbol.json`` (the graph) plus ``<prefix>-<epoch:04d>.params``,
an MXNet NDArray list (``NDArray::Save`` in mxnet src/ndarray/ndarray.cc), little-endian:
``u64 0x112, u64 0, u64 n``, then ``n`` arrays, ``u64 n``, ``n`` names (``u64 len`` + bytes,
``arg:<name>`` / ``aux:<name>``). An array is ``u32 magic`` (0xF993FAC9 v2 / 0xF993FACA v3:
then ``i32 storage type``, 0 = dense, the only one supported; 0xF993FAC8 v1; any other value is
the v0 ``ndim``), the shape (``i32 ndim`` + ``i64`` dims; v0: ``u32`` dims) and, unless the
array is empty (ndim 0; v3: -1), ``i32 dev_type, i32 dev_id, i32 dtype flag`` and the C-order data.

The graph supplies what the weights lack: BatchNorm ``eps`` (MXNet default 1e-3 when absent;
it is folded into ``running_var`` as ``var + eps_mxnet - eps_torch``, so the state dict alone
reproduces MXNet through ``save_backbone``, rebuilds and ONNX export, where a module attribute
``eps`` would be lost), ``fix_gamma`` (default True: gamma is 1 whatever is stored), the
embedding size, and the in-graph input normalisation ``(data - 127.5) * 0.0078125``. facekd
feeds ``(x - 127.5) / 127.5``, so the factor ``127.5 * 0.0078125`` is folded into the first
convolution (exact: it is linear and its zero padding is zero in both scales). Input is RGB.

Two families map onto facekd (sizes read from the weight shapes):

* fmobilefacenet ("y1", GDC output) -> ``MobileFaceNet``: ``conv_1``, ``conv_2_dw``, ``dconv_23``,
  ``res_3_block{i}``, ``dconv_34``, ``res_4_*``, ``dconv_45``, ``res_5_*`` -> ``layers.0 .. 7``
  (residual blocks -> ``.layers.i``; ``_conv_sep/_conv_dw/_conv_proj`` -> ``.layers.0/1/2``;
  ``_conv2d/_batchnorm/_relu`` -> ``.layers.0/1/2``), ``conv_6sep`` -> ``conv_sep``,
  ``conv_6dw7_7`` -> ``features.layers.0``, FC ``pre_fc1`` -> ``features.layers.2`` (bias-free
  here: its bias b goes into the next BN, ``BN(Wx + b) == BN'(Wx)`` with ``mean' = mean - b``),
  BN ``fc1`` -> ``features.layers.3``.
* fresnet LResNet-E-IR (``version_unit=3, version_input=1``, output "E") -> ``IResNet``:
  ``conv0/bn0/relu0`` -> ``conv1/bn1/prelu``; ``stage{s}_unit{u}_`` + ``bn1, conv1, bn2, relu1,
  conv2, bn3, conv1sc, sc`` -> ``layer{s}.{u-1}.`` + ``bn1, conv1, bn2, prelu, conv2, bn3,
  downsample.0, downsample.1``; ``bn1`` -> ``bn2``, ``pre_fc1`` -> ``fc``, ``fc1`` -> ``features``.

Training-classifier arrays (``fc7*``) are ignored; any other array left unused, or any model
entry left unfilled, raises ``ValueError`` listing them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facekd.models import build_backbone
from facekd.models.base import FaceBackbone
from facekd.models.iresnet import IRESNET_LAYERS
from facekd.models.mxnet_params import read_ndarray_file  # noqa: F401 - re-exported

MXNET_BN_EPS = 1e-3  # mx.sym.BatchNorm's default; insightface sets 2e-5 on some layers only
FACEKD_SCALE = 127.5  # facekd input = (pixel - 127.5) / 127.5
#: data-path ops: name (lower case, no "_", so MXNet 0.x "_MinusScalar" matches) -> affine
_SCALAR_OPS = {
    "minusscalar": lambda g, o, s: (g, o - s),
    "plusscalar": lambda g, o, s: (g, o + s),
    "mulscalar": lambda g, o, s: (g * s, o * s),
    "divscalar": lambda g, o, s: (g / s, o / s),
    "identity": lambda g, o, s: (g, o),
    "copy": lambda g, o, s: (g, o),
}


@dataclass(frozen=True)
class SymbolNode:
    """One graph node: ``op`` ("null" for variables), ``name``, string ``attrs``, input ids."""

    op: str
    name: str
    attrs: dict[str, str]
    inputs: tuple[int, ...]


@dataclass
class LegacySymbol:
    """A parsed ``-symbol.json``: nodes, and the data-path normalisation found in it."""

    path: Path
    nodes: list[SymbolNode]
    preprocess: list[tuple[str, float]] = field(default_factory=list)  # (op, scalar) in order
    input_scale: float = 1.0  # the graph's first op sees (pixel - 127.5) * input_scale
    first_op: str = ""  # the name of that op

    def op(self, name: str) -> SymbolNode | None:
        return next((n for n in self.nodes if n.name == name and n.op != "null"), None)

    def params(self, node: SymbolNode) -> list[str]:
        """Weight arrays feeding ``node`` in MXNet argument order (conv: weight [, bias])."""
        return [self.nodes[i].name for i in node.inputs[1:] if self.nodes[i].op == "null"]

    def batchnorm(self, node: SymbolNode) -> tuple[float, bool]:
        """``(eps, fix_gamma)`` of a BatchNorm, with MXNet's defaults (1e-3, True)."""
        eps = float(node.attrs.get("eps", MXNET_BN_EPS))
        return eps, node.attrs.get("fix_gamma", "True").lower() in ("true", "1")

    @property
    def embedding_size(self) -> int:
        """``num_hidden`` of the last FullyConnected (0 if none)."""
        fcs = [n for n in self.nodes if n.op == "FullyConnected"]
        return int(fcs[-1].attrs["num_hidden"]) if fcs else 0


def read_symbol(path: str | os.PathLike) -> LegacySymbol:
    """Parse an MXNet ``-symbol.json`` and check its input normalisation.

    Attributes sit under ``attrs`` (MXNet >= 1.0), ``attr`` or ``param`` (older); they are
    merged. Raises ``ValueError`` unless the scalar ops after ``data`` compute
    ``(data - 127.5) * s`` with ``s`` within 1% of 1/127.5 (insightface: s = 1/128).
    """
    path = Path(path)
    try:
        nodes = [
            SymbolNode(
                n["op"],
                n["name"],
                {**n.get("param", {}), **n.get("attr", {}), **n.get("attrs", {})},
                tuple(int(i[0]) for i in n.get("inputs", [])),
            )
            for n in json.loads(path.read_text())["nodes"]
        ]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{path}: not an MXNet symbol JSON file: {err!r}") from None
    sym = LegacySymbol(path, nodes)
    cur = next((i for i, n in enumerate(nodes) if n.op == "null" and n.name == "data"), None)
    if cur is None:
        raise ValueError(f"{path}: the graph has no 'data' input")
    gain, offset, users = 1.0, 0.0, []  # the data path so far computes gain * pixel + offset
    while len(users := [i for i, n in enumerate(nodes) if n.inputs[:1] == (cur,)]) == 1:
        kind = nodes[users[0]].op.lower().replace("_", "")
        if kind not in _SCALAR_OPS:
            break
        cur, node = users[0], nodes[users[0]]
        scalar = float(node.attrs.get("scalar", "nan"))
        gain, offset = _SCALAR_OPS[kind](gain, offset, scalar)
        sym.preprocess += [(node.op, scalar)] if "scalar" in kind else []
    sym.first_op = nodes[users[0]].name if len(users) == 1 else ""
    if not (gain and abs(-offset / gain - 127.5) < 1e-3 and abs(gain * FACEKD_SCALE - 1) < 0.01):
        raise ValueError(
            f"{path}: the graph normalises its input with {sym.preprocess or 'no ops'} "
            f"before {sym.first_op or 'several ops'!r} "
            f"(pixel * {gain:g} + {offset:g}); facekd supports only (pixel - 127.5) * ~1/127.5, "
            "insightface's legacy convention"
        )
    sym.input_scale = gain
    return sym


class _Converter:
    """Fills a facekd state dict from MXNet arrays layer by layer, tracking what was used."""

    def __init__(self, arrays: dict[str, np.ndarray], sym: LegacySymbol) -> None:
        self.arrays, self.sym = arrays, sym
        self.state: dict[str, torch.Tensor] = {}
        self.eps: dict[str, float] = {}  # torch BN module -> MXNet eps
        self.used: set[str] = set()
        self.missing: list[str] = []  # layers / arrays the mapping expected but did not find
        self.carry: np.ndarray | float = 0.0  # a dropped FC bias, folded into the next BN

    def __call__(self, key: str, layer: str, keep_bias: bool = True) -> None:
        """Map the MXNet op ``layer`` onto the torch module ``key`` (roles from the op type)."""
        node = self.sym.op(layer)
        names = self.sym.params(node) if node else []
        if node is None or any(n not in self.arrays for n in names):
            self.missing.append(layer)
            return
        self.used.update(names)
        p = [self.arrays[n] for n in names]
        roles = ["weight", "bias"]
        if node.op == "BatchNorm":
            roles += ["running_mean", "running_var"]
            eps, fix_gamma = self.sym.batchnorm(node)
            self.eps[key] = eps
            p[0] = np.ones_like(p[0]) if fix_gamma else p[0]
            p[2], self.carry = p[2] - self.carry, 0.0  # BN(Wx + b) == BN'(Wx), mean' = mean - b
        elif node.op == "FullyConnected" and not keep_bias and len(p) == 2:
            self.carry = p.pop()
        elif node.op == "Convolution" and layer == self.sym.first_op:
            p[0] = p[0] * (self.sym.input_scale * FACEKD_SCALE)  # see the module docstring
        for role, value in zip(roles, p, strict=False):
            self.state[f"{key}.{role}"] = torch.from_numpy(np.asarray(value, np.float32))

    def block(self, key: str, layer: str, act: bool = True) -> None:
        """fmobilefacenet ``Conv`` / ``Linear`` (conv -> BN [-> PReLU]) = facekd ``ConvBlock``."""
        for i, part in enumerate(("conv2d", "batchnorm", "relu")[: 3 if act else 2]):
            self(f"{key}.layers.{i}", f"{layer}_{part}")

    def bottleneck(self, key: str, layer: str) -> None:
        """fmobilefacenet ``DResidual`` / residual block = facekd ``DepthWise``."""
        for j, part in enumerate(("conv_sep", "conv_dw", "conv_proj")):
            self.block(f"{key}.layers.{j}", f"{layer}_{part}", act=part != "conv_proj")

    def head(self) -> tuple[str, str]:
        """(FC, BN) layer names of the embedding: the FullyConnected that feeds a BatchNorm."""
        for i, node in enumerate(self.sym.nodes):
            users = [n for n in self.sym.nodes if n.inputs[:1] == (i,)]
            if node.op == "FullyConnected" and users and users[0].op == "BatchNorm":
                return node.name, users[0].name
        raise ValueError(f"{self.sym.path}: no FullyConnected -> BatchNorm embedding head")

    def dim(self, layer: str, axis: int = 0) -> int:
        """A dimension of the first weight of ``layer``, read from the arrays."""
        node = self.sym.op(layer)
        name = self.sym.params(node)[0] if node and self.sym.params(node) else ""
        if name not in self.arrays:
            raise ValueError(f"{self.sym.path}: layer {layer!r} or its weight is missing")
        return int(self.arrays[name].shape[axis])

    def count(self, pattern: str) -> int:
        return len({m[1] for n in self.sym.nodes if (m := re.fullmatch(pattern, n.name))})


def _mobilefacenet(cv: _Converter) -> FaceBackbone:
    fc, bn = cv.head()
    stem, inner = cv.dim("conv_1_conv2d"), cv.dim("dconv_23_conv_sep_conv2d")
    first = 1 if cv.sym.op("conv_2_dw_conv2d") else cv.count(r"res_2_block(\d+)_.*")
    blocks = (first, *(cv.count(rf"res_{s}_block(\d+)_.*") for s in (3, 4, 5)))
    model = build_backbone(  # outer widths are 64 * scale, inner widths 128 * width
        "mobilefacenet",
        num_features=cv.dim(fc),
        blocks=blocks,
        scale=round(2 * stem / inner),
        width=inner / 128,
        input_size=cv.dim("conv_6dw7_7_conv2d", -1) * 16,  # GDC kernel = side / 16
    )
    cv.block("layers.0", "conv_1")
    if first == 1:
        cv.block("layers.1", "conv_2_dw")
    for i, res, down in ((1, "res_2", ""), (3, "res_3", "dconv_23"), (5, "res_4", "dconv_34"),
                         (7, "res_5", "dconv_45")):  # fmt: skip
        if down:
            cv.bottleneck(f"layers.{i - 1}", down)
        for b in range(blocks[i // 2] if i > 1 or first > 1 else 0):
            cv.bottleneck(f"layers.{i}.layers.{b}", f"{res}_block{b}")
    cv.block("conv_sep", "conv_6sep")
    cv.block("features.layers.0", "conv_6dw7_7", act=False)
    cv("features.layers.2", fc, keep_bias=False)  # facekd's Linear has no bias: fold it
    cv("features.layers.3", bn)
    return model


#: facekd IBasicBlock module <- fresnet residual_unit_v3 layer suffix
_IR_UNIT = [("bn1", "bn1"), ("conv1", "conv1"), ("bn2", "bn2"), ("prelu", "relu1"),
            ("conv2", "conv2"), ("bn3", "bn3"),
            ("downsample.0", "conv1sc"), ("downsample.1", "sc")]  # fmt: skip


def _lresnet(cv: _Converter) -> FaceBackbone:
    fc, bn = cv.head()
    units = tuple(cv.count(rf"stage{s}_unit(\d+)_.*") for s in range(1, 5))
    names = [name for name, layers in IRESNET_LAYERS.items() if layers == units]
    if not names or any(n.op == "Pooling" for n in cv.sym.nodes):  # GAP output: not ours
        raise ValueError(
            f"{cv.sym.path}: LResNet with {units} units per stage or a pooled output has no "
            f"facekd iResNet (supported: output 'E' and {IRESNET_LAYERS})"
        )
    side = round((cv.dim(fc, 1) / cv.dim("bn1")) ** 0.5)  # FC input = C * side * side
    model = build_backbone(
        names[0], num_features=cv.dim(fc), width=cv.dim("conv0") / 64, input_size=side * 16
    )
    for key, layer in (("conv1", "conv0"), ("bn1", "bn0"), ("prelu", "relu0")):
        cv(key, layer)
    for s, n_units in enumerate(units, start=1):
        for u in range(1, n_units + 1):  # only unit 1 (stride 2, wider) has a projection
            for ours, theirs in _IR_UNIT[: 8 if u == 1 else 6]:
                cv(f"layer{s}.{u - 1}.{ours}", f"stage{s}_unit{u}_{theirs}")
    for key, layer in (("bn2", "bn1"), ("fc", fc), ("features", bn)):
        cv(key, layer)
    return model


def _resolve(source: str | os.PathLike, epoch: int) -> tuple[Path, Path]:
    """(symbol, params) paths from a prefix, a ``-symbol.json``, a ``.params`` or a folder."""
    text = str(source)
    if Path(text).is_dir():
        found = sorted(Path(text).glob("*-symbol.json"))
        if len(found) != 1:
            raise FileNotFoundError(f"{text}: expected one *-symbol.json, found {len(found)}")
        text = str(found[0])
    if text.endswith(".params"):
        return Path(re.sub(r"-\d+\.params$", "-symbol.json", text)), Path(text)
    prefix = text.removesuffix("-symbol.json")
    return Path(f"{prefix}-symbol.json"), Path(f"{prefix}-{epoch:04d}.params")


def load_mxnet_legacy(prefix_or_symbol_path: str | os.PathLike, epoch: int = 0) -> FaceBackbone:
    """Convert a legacy InsightFace MXNet model into a facekd backbone, in eval mode.

    Args:
        prefix_or_symbol_path: ``.../model`` (the prefix), ``.../model-symbol.json``,
            ``.../model-0000.params`` or the folder holding one ``*-symbol.json``.
        epoch: which ``<prefix>-<epoch:04d>.params`` to read (unused for a ``.params`` path).

    Returns a ``MobileFaceNet`` (fmobilefacenet) or ``IResNet`` (LResNet-E-IR) mapping
    ``(B, 3, H, W)`` RGB in [-1, 1] to ``(B, D)``, equal to the MXNet graph fed the same RGB
    pixels; ``model.arch`` / ``model.arch_kwargs`` rebuild it. Raises ``ValueError`` when the
    files do not map one to one (listing the arrays and entries) and ``FileNotFoundError``.
    """
    sym_path, params_path = _resolve(prefix_or_symbol_path, epoch)
    for p in (sym_path, params_path):
        if not p.is_file():
            near = sorted(x.name for x in p.parent.glob("*.params")) if p.parent.is_dir() else []
            raise FileNotFoundError(f"{p} not found (from {str(prefix_or_symbol_path)!r}); {near=}")
    sym = read_symbol(sym_path)
    arrays = read_ndarray_file(params_path)
    arrays = {k: v for k, v in arrays.items() if not k.startswith("fc7")}  # training classifier
    cv = _Converter(arrays, sym)
    if sym.op("conv_1_conv2d") and sym.op("conv_6sep_conv2d"):
        model = _mobilefacenet(cv)
    elif sym.op("conv0") and sym.op("stage1_unit1_conv1"):
        model = _lresnet(cv)
    else:
        first = [n.name for n in sym.nodes if n.op != "null"][:6]
        raise ValueError(f"{sym_path}: not a legacy fmobilefacenet / LResNet-IR graph: {first}")
    state = model.state_dict()
    problems = {
        "MXNet layers missing or incomplete": cv.missing,
        "source arrays left unmapped": sorted(set(arrays) - cv.used),
        "model entries left unfilled": [
            k for k in state if k not in cv.state and not k.endswith("num_batches_tracked")
        ],
        "entries the model lacks or has in another shape": [
            f"{k} {tuple(v.shape)} vs {tuple(state[k].shape) if k in state else 'absent'}"
            for k, v in cv.state.items()
            if k not in state or v.shape != state[k].shape
        ],
    }
    if any(problems.values()):
        why = "\n".join(f"  {t} ({len(v)}): {', '.join(v[:20])}" for t, v in problems.items() if v)
        raise ValueError(f"{sym_path}: cannot map onto {model.arch} {model.arch_kwargs}:\n{why}")
    for key, eps in cv.eps.items():  # BN divides by sqrt(var + eps): fold MXNet's eps into var
        var = cv.state[f"{key}.running_var"].double() + eps - model.get_submodule(key).eps
        cv.state[f"{key}.running_var"] = var.float()
    model.load_state_dict({**state, **cv.state}, strict=True)
    return model.eval()
