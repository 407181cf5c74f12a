"""Quantisation-aware fine-tuning through distillation: the fp32 model is its own teacher.

For when post-training quantisation (``facekd.deploy.quantize``) loses too much: the model's
weights are fine-tuned while its forward pass *simulates* the int8 graph onnxruntime will run,
so that they settle where rounding costs the least (Jacob et al., CVPR 2018); the target is the
fp32 model's own embedding (distillation into the quantised net: Mishra & Marr, ICLR 2018
"Apprentice"), so no labels are needed and any aligned faces will do.

What is simulated, per layer, is what ``quantize.py``'s QDQ recipe does to it:

* BatchNorm is folded into its convolution first (``evaluation.embed.fold_batchnorm``):
  onnxruntime's pre-processing fuses them, so the int8 weights are the folded ones.
* Weights: symmetric per output channel, ``s_c = max|W_c| / 127``,
  ``W_q = clamp(round(W / s_c), -127, 127)`` (``graph.int8_stored_weights`` does the same).
* Activations: the input and the output of every quantised ``Conv2d`` / ``Linear``, uint8 per
  tensor. Ranges are onnxruntime's for the same ``method``, measured on the faces with the start
  weights and then fixed: ``percentile`` takes ``t`` = the ``percentile`` of ``|x|`` (2048-bin
  histogram), ``[lo, hi] = [max(-t, min x), min(t, max x)]``; ``minmax`` takes
  ``[min x, max x]``; ``entropy`` is simulated by ``percentile``. Then, as onnxruntime,
  ``lo <= 0 <= hi``, ``scale = (hi - lo) / 255`` and ``zero_point = round(-lo / scale)``.
* Residual additions: onnxruntime's QDQ graph quantises every ``Add`` (``QLinearAdd``), so
  the output of each block whose forward ends in one (a module flagged ``residual = True``:
  MobileFaceNet's ``DepthWise``) is rounded to uint8 too, its range measured as above.
* ``keep_float`` layers (``quantize.ROLES``): weights only, they compute in float. PReLU stays
  float (``quantize`` excludes it, as onnxruntime would run it between dequantise/quantise).

Rounding passes gradients straight through inside the range, zero outside (the straight-through
estimator of Bengio et al. 2013, as ``torch.fake_quantize_*`` implement it).

Objective: ``L = mean_i (1 - cos(f_q(x_i), f(x_i)))`` over a random half of the faces flipped;
``f`` the fp32 model, ``f_q`` the simulated-int8 one; Adam, ``lr`` with cosine decay to 0.
Defaults: 300 steps of 32 faces, lr 5e-5. The result is a plain fp32 module (BN folded) that
onnxruntime then quantises as usual: the int8 file it writes is what gets measured.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from facekd.deploy.graph import DEFAULT_KEEP_FLOAT

BINS = 2048  # onnxruntime's histogram size for percentile calibration


@dataclass(frozen=True)
class QatSettings:
    """Quantisation-aware fine-tuning (module docstring); ``faces`` training faces are drawn
    from the calibration source with ``seed``, never the held-back ones."""

    steps: int = 300
    lr: float = 5e-5
    batch_size: int = 32
    faces: int = 2048
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.faces < 2 or not self.lr > 0:
            raise ValueError(f"QAT needs steps, batch_size >= 1, faces >= 2, lr > 0: {self}")


def simulated_layers(model: nn.Module, keep_float=DEFAULT_KEEP_FLOAT) -> dict[str, bool]:
    """``{module name: quantise its activations too}`` for every ``Conv2d`` / ``Linear``, in
    forward order; the roles are ``graph.layer_roles``' (as for the ONNX graph), read from the
    module tree."""
    from facekd.deploy.graph import GraphError, layer_roles

    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs = [n for n in names if isinstance(model.get_submodule(n), nn.Conv2d)]
    depthwise = [n for n in convs if _is_depthwise(model.get_submodule(n))]
    try:
        roles = layer_roles(names, convs, depthwise)
    except GraphError:
        raise ValueError("quantisation-aware fine-tuning needs a model with convolutions") from None
    kept = {n for role in keep_float for n in roles[role]}
    return {n: n not in kept for n in names}


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.weight.shape[1] == 1


def _fake_weight(w: torch.Tensor) -> torch.Tensor:
    peak = w.detach().reshape(w.shape[0], -1).abs().amax(1)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak)).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """onnxruntime's uint8 ``(scale, zero_point)`` for the range ``[lo, hi]`` (0 included)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return float(scale), int(min(255, max(0, round(-lo / scale))))


class SimulatedInt8(nn.Module):
    """A ``Conv2d`` / ``Linear`` whose weight, and (given ``qin``/``qout``) input and output,
    pass through int8 rounding in the forward pass; ``layer`` keeps the fp32 weights."""

    def __init__(self, layer: nn.Module, qin=None, qout=None) -> None:
        super().__init__()
        self.layer, self.qin, self.qout = layer, qin, qout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qin is not None:
            x = torch.fake_quantize_per_tensor_affine(x, *self.qin, 0, 255)
        w, layer = _fake_weight(self.layer.weight), self.layer
        if isinstance(layer, nn.Conv2d):
            y = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation,
                         layer.groups)  # fmt: skip
        else:
            y = F.linear(x, w, layer.bias)
        if self.qout is not None:
            y = torch.fake_quantize_per_tensor_affine(y, *self.qout, 0, 255)
        return y


@torch.no_grad()
def activation_ranges(model, x, names, method="percentile", percentile=99.99, batch=64):
    """``{name: ((scale, zp) of the input, (scale, zp) of the output)}`` measured on ``x``
    with onnxruntime's calibration rule for ``method`` (module docstring)."""
    layers = {n: model.get_submodule(n) for n in names}
    stats = {(n, k): [math.inf, -math.inf, 0.0, None] for n in names for k in (0, 1)}

    def run(fill):
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: fill(n, i[0], o))
                 for n, m in layers.items()]  # fmt: skip
        try:
            for i in range(0, len(x), batch):
                model(x[i : i + batch])
        finally:
            for h in hooks:
                h.remove()

    def extremes(n, inp, out):
        for k, t in enumerate((inp, out)):
            s = stats[n, k]
            s[0], s[1] = min(s[0], t.min().item()), max(s[1], t.max().item())
            s[2] = max(s[2], t.abs().max().item())

    def histogram(n, inp, out):
        for k, t in enumerate((inp, out)):
            s = stats[n, k]
            h = torch.histc(t.abs().float(), BINS, 0.0, s[2] or 1.0)
            s[3] = h if s[3] is None else s[3] + h

    run(extremes)
    if method != "minmax":
        run(histogram)
    ranges = {}
    for n in names:
        pair = []
        for k in (0, 1):
            lo, hi, peak, hist = stats[n, k]
            if method != "minmax":
                cdf = (hist.cumsum(0) / hist.sum()).numpy()
                t = float(np.linspace(0.0, peak or 1.0, BINS + 1)[
                    min(np.searchsorted(cdf, percentile / 100.0), BINS)])  # fmt: skip
                lo, hi = max(-t, lo), min(t, hi)
            pair.append(uint8_params(lo, hi))
        ranges[n] = tuple(pair)
    return ranges


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the modules whose output is a residual addition (``residual = True``)."""
    return [n for n, m in model.named_modules() if getattr(m, "residual", None) is True]


def simulate_int8(model, x, keep_float=DEFAULT_KEEP_FLOAT, method="percentile", percentile=99.99):
    """Make ``model`` (BatchNorm folded) compute as the int8 graph, in place: every
    ``simulated_layers`` layer wrapped in ``SimulatedInt8`` and every residual block's output
    fake-quantised, with ranges measured on ``x`` (module docstring). Returns ``undo()``,
    which restores the plain layers and removes the hooks; and the count of each kind."""
    layers = simulated_layers(model, keep_float)
    rule = "minmax" if method == "minmax" else "percentile"
    acts = [n for n, a in layers.items() if a]
    adds = residual_blocks(model)
    ranges = activation_ranges(model, x, acts + adds, rule, percentile)
    for name, act in layers.items():
        qin, qout = ranges[name] if act else (None, None)
        _swap(model, name, SimulatedInt8(model.get_submodule(name), qin, qout))
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, i, o, q=ranges[n][1]: torch.fake_quantize_per_tensor_affine(o, *q, 0, 255)
        )
        for n in adds
    ]

    def undo() -> None:
        for h in hooks:
            h.remove()
        for name in layers:
            _swap(model, name, model.get_submodule(name).layer)

    counts = {"simulated_layers": len(layers), "int8_activation_layers": len(acts),
              "int8_residual_additions": len(adds)}  # fmt: skip
    return undo, counts


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def _embed(model: nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def _cosine(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    return F.cosine_similarity(_embed(model, x), target).mean().item()


def finetune(
    model: nn.Module,
    faces: np.ndarray,
    settings: QatSettings = QatSettings(),
    *,
    keep_float=DEFAULT_KEEP_FLOAT,
    method: str = "percentile",
    percentile: float = 99.99,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Fine-tune a copy of ``model`` under simulated int8 toward ``model``'s own embeddings of
    ``faces`` (``(N, S, S, 3)`` uint8 RGB aligned crops); returns ``(the tuned fp32 module with
    BatchNorm folded, log)``. The log gives the settings, the activation ranges' count, the
    loss every 25 steps and the simulated-int8 cosine to fp32 on up to 256 of the faces before
    and after. ``model`` is untouched. Raises ``FloatingPointError`` on a non-finite loss."""
    from facekd.deploy.calibration import to_input
    from facekd.evaluation.embed import fold_batchnorm

    teacher = copy.deepcopy(model).float().eval()
    student = fold_batchnorm(copy.deepcopy(teacher))
    x = torch.from_numpy(to_input(faces))
    target = torch.stack([_embed(teacher, x), _embed(teacher, x.flip(3))])  # (2, N, D)
    undo, counts = simulate_int8(student, x[:512], keep_float, method, percentile)
    params = [p for p in student.parameters()]
    for p in params:
        p.requires_grad_(True)
    probe = slice(0, min(256, len(x)))
    log = {"settings": asdict(settings), **counts, "loss": [],
           "cosine_before": _cosine(student, x[probe], target[0, probe])}  # fmt: skip
    opt = torch.optim.Adam(params, lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / settings.steps))
    )
    gen = torch.Generator().manual_seed(settings.seed)
    for step in tqdm(range(settings.steps), desc="qat", disable=not progress):
        idx = torch.randint(len(x), (min(settings.batch_size, len(x)),), generator=gen)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        batch = torch.where(flip[:, None, None, None], x[idx].flip(3), x[idx])
        loss = (1 - F.cosine_similarity(student(batch), target[flip.long(), idx])).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"QAT loss is {loss.item()} at step {step}; lower --qat-lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == settings.steps - 1:
            log["loss"].append([step, round(loss.item(), 6)])
    log["cosine_after"] = _cosine(student, x[probe], target[0, probe])
    undo()
    for p in params:
        p.requires_grad_(False)
    return student.eval(), log


def qat_fp32_onnx(model, calibration, held_ids, out, settings: QatSettings, *, size: int,
                  keep_float, method, percentile, progress=True) -> dict:  # fmt: skip
    """``finetune`` ``model`` (anything ``load_backbone`` reads, an ``.onnx`` included, or a
    module) on ``settings.faces`` faces of ``calibration`` minus ``held_ids``, then export
    the tuned fp32 model to ``out`` (``facekd.deploy.export``, parity-checked); returns the
    fine-tuning log."""
    from facekd.deploy.calibration import CalibrationError, load_faces
    from facekd.deploy.export import export_onnx
    from facekd.models.checkpoints import load_backbone

    net = model if isinstance(model, nn.Module) else load_backbone(str(model))
    if getattr(net, "input_size", size) != size:
        raise ValueError(f"the QAT model takes {net.input_size}-px faces, the ONNX model {size}")
    faces, ids = load_faces(calibration, settings.faces + len(held_ids), settings.seed + 1,
                            size, progress)  # fmt: skip
    keep = ~np.isin(ids, np.asarray(held_ids))
    if keep.sum() < 2:
        raise CalibrationError(f"{calibration}: fewer than 2 faces left for QAT")
    tuned, log = finetune(net, faces[keep][: settings.faces], settings, keep_float=keep_float,
                          method=method, percentile=percentile, progress=progress)  # fmt: skip
    name = type(model).__name__ if isinstance(model, nn.Module) else str(model)
    export_onnx(tuned, out, source=f"facekd QAT of {name}")
    log["ids"] = ids[keep][: settings.faces].tolist()  # positions in the source's own order
    return log
