"""FitNets hint learning (Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for
Thin Deep Nets", ICLR 2015, arXiv:1412.6550).

A teacher hidden layer (the *hint* ``u_h``) supervises a student hidden layer (the *guided*
layer ``v_g``) through a trainable regressor ``r`` that maps the guided map onto the hint's
shape::

    mode="paper":  L_HT = 1/2 * mean_b || u_h(x_b) - r(v_g(x_b)) ||_2^2   (sum over C*H*W)
    mode="code":   L_HT = mean over B*C*H*W of (u_h - r(v_g))^2             (F.mse_loss)

``code`` is mdistiller's FitNet (single stage, feature weight 100, CE weight 1); ``paper`` is
Eq. (3) of the paper. Shapes: hint ``(B, C_t, H_t, W_t)`` = ``teacher.stages[teacher_stage]``,
guided ``(B, C_s, H_s, W_s)`` = ``student.stages[student_stage]``.

Taps (METHODS 7a): the paper picks the *middle* layers (a deeper guided layer over-regularises).
Default hint = teacher stage 3 = iResNet ``layer3`` (B, 256, 14, 14 at 112 px; iResNet
``stages = [stem, layer1, layer2, layer3, layer4]``); guided = student stage 2 = MobileFaceNet
``layers[5]`` (B, 128*scale, 14, 14; ``stages = [layers[1], [3], [5], [7]]``).

Regressor (created in ``build`` from the dry-run shapes, trained, saved with the adapters, never
part of the exported student): ``"conv1x1_bn"`` (default, OURS: 1x1 conv C_s -> C_t + BN) or
``"conv1x1"``; ``"conv_valid"`` is the paper's convolutional regressor, a valid (unpadded)
conv whose kernel ``k = H_s - H_t + 1`` maps a larger guided map exactly onto the hint's size.
With the 1x1 regressors a spatial mismatch is resolved by adaptive average pooling of the
larger map (the regressed student map or the teacher hint) to the smaller size (OURS; as
mdistiller does for AT). The paper follows the regressor with the hint layer's non-linearity;
iResNet stage outputs are pre-activation sums with none, so none is applied.

Two-stage training is a schedule, not a loss flag (METHODS 4.2, ``two_stage: true``):
stage 1 trains with the hint only (``ce_weight: 0``, ``losses: [{name: fitnets, weight: 1}]``,
``train.steps`` ~ 2 epochs); layers after the guided one get no gradient from the hint (weight
decay still shrinks them). Stage 2 is a second run whose ``student.name`` is stage 1's
``student.pt`` with the identity loss (``ce_weight: 1``) and optionally Hinton KD. Single-stage
(mdistiller): ``ce_weight: 1`` plus ``{name: fitnets, weight: 100, kwargs: {mode: code}}``.

The helpers ``select_stage``, ``pool_to_match`` and ``conv1x1_adapter`` are shared with the
attention-transfer and FSP losses.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from facekd.losses.base import DistillLoss
from facekd.types import Batch, ModelOutput

MODES = ("code", "paper")
REGRESSORS = ("conv1x1_bn", "conv1x1", "conv_valid")


def select_stage(out: ModelOutput, index: int, role: str) -> Tensor:
    """``out.stages[index]`` or a ``ValueError`` naming the available stages and shapes."""
    shapes = [None if s is None else tuple(s.shape) for s in out.stages]
    if not -len(shapes) <= index < len(shapes):
        raise ValueError(
            f"{role} stage {index} does not exist; available stages (index: shape): "
            f"{dict(enumerate(shapes))}"
        )
    stage = out.stages[index]
    if stage is None:
        raise ValueError(
            f"{role} stage {index} was not provided (a teacher cache without it? add it to "
            f"teacher.cache_stages); available: {dict(enumerate(shapes))}"
        )
    return stage


def pool_to_match(a: Tensor, b: Tensor, pool: str = "avg") -> tuple[Tensor, Tensor]:
    """Adaptive avg/max pooling of the spatially larger map to the smaller ``(H, W)``."""
    pool_fn = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = pool_fn(a, size)
    if tuple(b.shape[-2:]) != size:
        b = pool_fn(b, size)
    return a, b


def conv1x1_adapter(c_in: int, c_out: int, like: Tensor, bn: bool = True) -> nn.Module:
    """1x1 conv (+ BN) ``c_in -> c_out`` on ``like``'s device, float32."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers).to(device=like.device)


def hint_loss(hint: Tensor, regressed: Tensor, mode: str = "code") -> Tensor:
    """FitNets hint loss between equal-shape maps ``(B, C, H, W)`` (see module docstring)."""
    if hint.shape != regressed.shape:
        raise ValueError(
            f"hint {tuple(hint.shape)} and regressed guided map {tuple(regressed.shape)} differ"
        )
    diff = regressed.float() - hint.float()
    if mode == "code":
        return diff.pow(2).mean()
    if mode == "paper":
        return 0.5 * diff.pow(2).flatten(1).sum(1).mean()
    raise ValueError(f"unknown FitNets mode {mode!r}; valid: {MODES}")


class FitNets(DistillLoss):
    """Hint loss with a trainable regressor (see the module docstring).

    Args:
        teacher_stage: index into ``teacher.stages`` of the hint (default 3: iResNet layer3).
        student_stage: index into ``student.stages`` of the guided layer (default 2:
            MobileFaceNet layers[5]).
        regressor: ``"conv1x1_bn"`` | ``"conv1x1"`` | ``"conv_valid"`` (paper).
        mode: ``"code"`` (MSE, mdistiller) | ``"paper"`` (1/2 squared L2, batch mean).
    """

    requires = frozenset({"stages"})

    def __init__(
        self,
        teacher_stage: int = 3,
        student_stage: int = 2,
        regressor: str = "conv1x1_bn",
        mode: str = "code",
    ) -> None:
        super().__init__()
        if regressor not in REGRESSORS:
            raise ValueError(f"unknown FitNets regressor {regressor!r}; valid: {REGRESSORS}")
        if mode not in MODES:
            raise ValueError(f"unknown FitNets mode {mode!r}; valid: {MODES}")
        self.teacher_stage, self.student_stage = int(teacher_stage), int(student_stage)
        self.regressor_kind, self.mode = regressor, mode
        self.regressor: nn.Module | None = None

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        guided = select_stage(student, self.student_stage, "student")
        hint = select_stage(teacher, self.teacher_stage, "teacher")
        c_s, (c_t, h_t, w_t) = guided.shape[1], hint.shape[1:]
        if self.regressor_kind == "conv_valid":
            k_h, k_w = guided.shape[2] - h_t + 1, guided.shape[3] - w_t + 1
            if k_h < 1 or k_w < 1:
                raise ValueError(
                    f"conv_valid regressor needs a guided map at least as large as the hint: "
                    f"student {tuple(guided.shape)} vs teacher {tuple(hint.shape)}"
                )
            self.regressor = nn.Conv2d(c_s, c_t, (k_h, k_w)).to(device=guided.device)
        else:
            bn = self.regressor_kind == "conv1x1_bn"
            self.regressor = conv1x1_adapter(c_s, c_t, guided, bn=bn)

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        if self.regressor is None:
            raise RuntimeError("FitNets.build() was not called (Distiller.prepare sizes it)")
        guided = select_stage(student, self.student_stage, "student")
        hint = select_stage(teacher, self.teacher_stage, "teacher")
        regressed, hint = pool_to_match(self.regressor(guided), hint, "avg")
        return hint_loss(hint, regressed, self.mode)

    def extra_repr(self) -> str:
        return (
            f"teacher_stage={self.teacher_stage}, student_stage={self.student_stage}, "
            f"regressor={self.regressor_kind!r}, mode={self.mode!r}"
        )
