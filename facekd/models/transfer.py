"""Knowledge-transfer (KT) initialisation of a low-resolution student from its teacher.

Karlekar, Feng, Wong, Pranata, "Deep Face Recognition Model Compression via Knowledge Transfer
and Distillation", arXiv:1906.00619 (METHODS.md §2.2 step 2, §2.4): the student keeps the
teacher's architecture and only its input resolution changes, so every convolution, BatchNorm
and PReLU tensor is copied bit-exactly; training then continues at the low resolution (KT), or
with the pooled-feature loss as well (KT+KD, ``facekd.losses.pooling_transfer``).

Only the layer that is sized for the last feature map's side ``s = ceil(input_size / 16)``
(7 at 112, 4 at 56, 2 at 32) can differ:

* iResNet ``head="fc"``: ``fc.weight`` is ``(D, C*s*s)``. ``head="gap"``: ``(D, C)``, i.e.
  ``s = 1``; a gap student of a gap teacher copies it directly.
* MobileFaceNet: the GDC depthwise kernel ``features.layers.0.layers.0.weight`` ``(C, 1, s, s)``;
  with ``head="fc"`` (Espressif's ``mbf``, e.g. imported from ONNX) ``features.fc.weight``
  ``(D, C*s*s)``, treated as iResNet's ``fc`` (re-initialised as the constructor does, or
  resized).

``fc="reinit"`` (default): that layer is re-initialised as the model's constructor does
(iResNet ``fc``: PyTorch's Linear init, weight and bias; GDC: Kaiming fan-out) and learnt at the
new resolution; the paper's FCN keeps no resolution-specific layer, so nothing is lost there.
``fc="resize"`` (OURS, not from the paper): the teacher's weight viewed as ``(D, C, s_t, s_t)``
(GDC: ``(C, 1, s_t, s_t)``) is resampled to ``(.., s_s, s_s)`` by adaptive average pooling and
multiplied by ``s_t**2 / s_s**2``, so the sum of each spatial kernel, hence the response to a
spatially constant map, is preserved: exactly when one side divides the other evenly (e.g.
7 -> 1, i.e. ``fc`` teacher -> ``gap`` student, and 1 -> s), approximately otherwise (7 -> 4
uses overlapping bins). Every other tensor (biases, embedding BatchNorm1d and its running
statistics, GDC BatchNorm and Linear) is copied.

A MobileFaceNet student with ``activation="relu"`` from a PReLU teacher (the
quantisation-friendly variant, issue 18) is the same architecture less the PReLU slopes: every
other tensor is copied and the slopes are reported as ``dropped``. The start is then the
teacher with each ``max(0, x) + a * min(0, x)`` cut to ``max(0, x)``; exact where ``a = 0``.

Cross-architecture KT (iResNet-100 -> MobileFaceNet, or a different depth / width / embedding
size) is impossible and raises ``TransferError`` listing the mismatched keys; METHODS §2.4:
"KT" then means initialising the student from the *same* architecture trained at 112 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.models import build_backbone
from facekd.models.base import FaceBackbone
from facekd.models.iresnet import IResNet
from facekd.models.mobilefacenet import FCHead, MobileFaceNet

FC_MODES = ("reinit", "resize")
#: the state-dict key of the one resolution-dependent weight of each architecture
GDC_KEY = "features.layers.0.layers.0.weight"
FC_HEAD_KEY = "features.fc.weight"
RESOLUTION_KEYS = {IResNet: "fc.weight", MobileFaceNet: GDC_KEY}


def _resolution_key(model: FaceBackbone) -> str | None:
    if isinstance(model, MobileFaceNet) and isinstance(model.features, FCHead):
        return FC_HEAD_KEY
    return RESOLUTION_KEYS.get(type(model))


def _flat_fc(model: FaceBackbone) -> bool:
    """Whether the resolution-dependent weight is a Linear ``(D, C*s*s)``."""
    return isinstance(model, IResNet) or _resolution_key(model) == FC_HEAD_KEY


class TransferError(ValueError):
    """Student and teacher are not the same architecture (the message lists the keys)."""


@dataclass
class TransferReport:
    """What ``knowledge_transfer`` did to each state-dict key of the student."""

    copied: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    #: teacher PReLU slopes with no place in a ReLU student
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        dropped = f"; dropped {len(self.dropped)} PReLU slopes (ReLU student)" * bool(self.dropped)
        return (
            f"KT: copied {len(self.copied)} tensors bit-exactly; resized {self.resized or '-'}; "
            f"re-initialised {self.reinitialised or '-'}{dropped}"
        )


def _prelu_slopes_of_relus(student: nn.Module, teacher: nn.Module, keys) -> list[str]:
    """The teacher ``keys`` that are PReLU slopes whose module is a ReLU in the student."""
    modules_s, modules_t = dict(student.named_modules()), dict(teacher.named_modules())
    return [
        k for k in keys
        if k.endswith(".weight")
        and isinstance(modules_t.get(k.rpartition(".")[0]), nn.PReLU)
        and isinstance(modules_s.get(k.rpartition(".")[0]), nn.ReLU)
    ]  # fmt: skip


def resample_spatial(weight: Tensor, size: int) -> Tensor:
    """``(N, C, s_t, s_t) -> (N, C, size, size)``: adaptive average pooling x ``s_t**2/size**2``.

    Keeps each kernel's sum (the response to a constant map): exactly when one side divides
    the other, approximately otherwise. Works in float64, returns ``weight``'s dtype.
    """
    s_t = weight.shape[-1]
    out = F.adaptive_avg_pool2d(weight.double(), (size, size)) * (s_t * s_t / (size * size))
    return out.to(weight.dtype)


def _spatial_view(model: FaceBackbone, w: Tensor) -> Tensor:
    """The resolution-dependent weight as ``(N, C, s, s)``."""
    if _flat_fc(model):
        if isinstance(model, IResNet):
            c = model.bn2.num_features
        else:
            c = model.features.conv.layers[0].out_channels
        side = math.isqrt(w.shape[1] // c)
        return w.reshape(w.shape[0], c, side, side)  # (D, C*s*s) -> (D, C, s, s)
    return w  # GDC: already (C, 1, s, s)


def _reinit(model: FaceBackbone) -> list[str]:
    """Re-initialise the resolution-dependent layer as the constructor does; its keys."""
    if isinstance(model, IResNet):
        model.fc.reset_parameters()
        return ["fc.weight", "fc.bias"]
    if _resolution_key(model) == FC_HEAD_KEY:  # bias-free Linear, Kaiming as constructed
        nn.init.kaiming_normal_(model.features.fc.weight, mode="fan_out", nonlinearity="relu")
        return [FC_HEAD_KEY]
    conv = model.features.layers[0].layers[0]
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return [GDC_KEY]


def _mismatch_error(student, teacher, missing, unexpected, wrong) -> TransferError:
    def listing(title: str, items: list[str]) -> str:
        more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:12]) + more

    names = [
        f"{getattr(m, 'arch', '') or type(m).__name__} {getattr(m, 'arch_kwargs', {})}"
        for m in (student, teacher)
    ]
    return TransferError(
        f"knowledge transfer needs the same architecture (only input_size may differ); "
        f"student {names[0]} vs teacher {names[1]}:"
        + (listing("student keys missing in the teacher", missing) if missing else "")
        + (listing("teacher keys unknown to the student", unexpected) if unexpected else "")
        + (listing("wrong shapes", wrong) if wrong else "")
        + "\nCross-architecture KT is impossible; initialise the student from the same "
        "architecture trained at the teacher resolution (METHODS §2.4), or train it from "
        "scratch with the pooling_transfer loss (KD)."
    )


@torch.no_grad()
def knowledge_transfer(
    student: FaceBackbone, teacher: FaceBackbone, fc: str = "reinit"
) -> TransferReport:
    """Copy ``teacher``'s weights into ``student`` in place (same architecture, any resolution).

    Args:
        student: the low-resolution model (e.g. ``input_size=56``), modified in place.
        teacher: the same registry architecture at the teacher resolution; not modified.
        fc: ``"reinit"`` (default) or ``"resize"`` for the resolution-dependent layer (module
            docstring). Layers whose shapes already agree are always copied.

    Returns:
        a ``TransferReport`` of copied / resized / re-initialised student keys.

    Raises:
        TransferError: different architectures (lists missing, unexpected, wrong-shape keys).
    """
    if fc not in FC_MODES:
        raise ValueError(f"unknown fc mode {fc!r}; valid: {FC_MODES}")
    arch_s, arch_t = getattr(student, "arch", ""), getattr(teacher, "arch", "")
    key = _resolution_key(student)
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    missing = [k for k in s_sd if k not in t_sd]
    unexpected = [k for k in t_sd if k not in s_sd]
    dropped = _prelu_slopes_of_relus(student, teacher, unexpected)
    unexpected = [k for k in unexpected if k not in dropped]
    wrong = [
        f"{k}: teacher {tuple(t_sd[k].shape)} vs student {tuple(v.shape)}"
        for k, v in s_sd.items()
        if k in t_sd and k != key and v.shape != t_sd[k].shape
    ]
    if key is not None and key in s_sd and key in t_sd:
        # the resolution-dependent weight must agree in everything but its spatial side
        shapes = [
            tuple(_spatial_view(m, sd[key]).shape[:2])
            for m, sd in ((student, s_sd), (teacher, t_sd))
        ]
        if shapes[0] != shapes[1]:
            wrong.append(
                f"{key}: teacher {tuple(t_sd[key].shape)} vs student {tuple(s_sd[key].shape)}"
            )
    if (arch_s and arch_t and arch_s != arch_t) or type(student) is not type(teacher):
        wrong.insert(
            0,
            f"architecture: teacher {arch_t or type(teacher).__name__} vs "
            f"student {arch_s or type(student).__name__}",
        )
    if key is None or missing or unexpected or wrong:
        raise _mismatch_error(student, teacher, missing, unexpected, wrong)

    report = TransferReport(dropped=dropped)
    new_sd = dict(s_sd)
    if s_sd[key].shape != t_sd[key].shape:
        if fc == "reinit":
            report.reinitialised = _reinit(student)
            new_sd.update(
                {k: v for k, v in student.state_dict().items() if k in report.reinitialised}
            )
        else:
            side = _spatial_view(student, s_sd[key]).shape[-1]
            resized = resample_spatial(_spatial_view(teacher, t_sd[key]), side)
            new_sd[key] = resized.reshape(s_sd[key].shape)
            report.resized = [key]
    for k in s_sd:
        if k not in report.resized and k not in report.reinitialised:
            new_sd[k] = t_sd[k]
            report.copied.append(k)
    student.load_state_dict(new_sd, strict=True)
    return report


def build_kt_student(
    teacher: FaceBackbone, input_size: int, fc: str = "reinit", **overrides
) -> tuple[FaceBackbone, TransferReport]:
    """A student of ``teacher``'s registry architecture at ``input_size``, KT-initialised.

    ``overrides`` change constructor keywords that do not alter the tensors' shapes, e.g.
    ``head="gap"`` for a resolution-free iResNet student (METHODS §2.4). Save the result with
    ``facekd.models.checkpoints.save_backbone`` and use the file as ``student.name``.
    """
    if not getattr(teacher, "arch", ""):
        raise TransferError("the teacher has no registry name (arch); build or load it by name")
    kwargs = {**teacher.arch_kwargs, "input_size": input_size, **overrides}
    student = build_backbone(teacher.arch, **kwargs)
    return student, knowledge_transfer(student, teacher, fc=fc)


__all__ = [
    "FC_MODES",
    "TransferError",
    "TransferReport",
    "build_kt_student",
    "knowledge_transfer",
    "resample_spatial",
]
