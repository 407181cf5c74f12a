"""High-to-low resolution pooling-feature transfer (Karlekar et al., 2019).

J. Karlekar, J. Feng, Z. S. Wong, S. Pranata, "Deep Face Recognition Model Compression via
Knowledge Transfer and Distillation", arXiv:1906.00619. A teacher trained at a high input
resolution supervises a student that sees the *same face* down-sampled: the student's
pooling-layer feature on the low-resolution view regresses the teacher's pooling-layer
feature on the high-resolution view (METHODS.md §2).

Data flow: ``batch.images`` is the low-resolution student view (``data.student_size``),
``batch.teacher_images`` the high-resolution view; the Distiller runs the teacher on
``batch.teacher_view`` (or reads its cache), so this loss only compares the two pooled features.
``pooled`` is ``GAP(last conv map)`` (iResNet ``bn2`` output, MobileFaceNet ``conv_sep``
output), ``(B, C)`` whatever the resolution (METHODS §2.4, §7d.3).

Loss, for ``p_s = adapter(pooled_s)`` and ``p_t = pooled_t`` of shape ``(B, C)``::

    distance="mse_normalised" (default, OURS):  L = 1/B sum_b || p_s/|p_s| - p_t/|p_t| ||^2
                                                  = 1/B sum_b (2 - 2 cos(p_s_b, p_t_b))  in [0, 4]
    distance="raw_l2"   (paper-literal reading): L = 1/B sum_b || p_s_b - p_t_b ||^2

Both are summed over the C dimensions and averaged over the batch (a per-element mean would
divide them by C = 512 and make lambda=1 negligible next to the identity loss). The paper's
exact distance and lambda are UNVERIFIED (only the abstract was readable): the raw L2 follows
the paper's "regression of the pooling layer"; the normalised default is scale-free, so it also
works across architectures whose pooled features differ in scale (METHODS §7d.4).

Adapter (``adapter="auto"``, default): when ``C_s != C_t`` a trainable ``nn.Linear(C_s, C_t)``
(with bias) maps the student feature, created in ``build()`` from dry-run shapes; it is owned
by the loss, trained with the student and saved apart from it. The paper keeps the teacher's
architecture (equal C), so no adapter is created then. ``"linear"`` always creates one,
``"none"`` refuses mismatched widths.

Schedule (METHODS §2.5 / §7b, all OURS): see ``HRLRSchedule``. ``init="kt"`` is a student
initialisation (``facekd.models.transfer.knowledge_transfer``), not part of this loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.losses.base import DistillLoss
from facekd.types import Batch, ModelOutput

DISTANCES = ("mse_normalised", "raw_l2")
ADAPTERS = ("auto", "linear", "none")


def pooling_transfer_loss(p_s: Tensor, p_t: Tensor, distance: str = "mse_normalised") -> Tensor:
    """Pure function behind ``PoolingTransfer``; ``p_s``, ``p_t`` are ``(B, C)`` pooled features.

    The teacher feature is detached (it is a regression target). See the module docstring.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown pooling-transfer distance {distance!r}; valid: {DISTANCES}")
    if p_s.dim() != 2 or p_s.shape != p_t.shape:
        raise ValueError(
            "pooling transfer needs (B, C) student and teacher features of equal shape, got "
            f"student {tuple(p_s.shape)} and teacher {tuple(p_t.shape)} (use an adapter)"
        )
    if p_s.dtype in (torch.float16, torch.bfloat16):  # compare in float32 under autocast
        p_s = p_s.float()
    p_t = p_t.detach().to(p_s.dtype)
    if distance == "mse_normalised":
        p_s, p_t = F.normalize(p_s, dim=1), F.normalize(p_t, dim=1)
    return (p_s - p_t).pow(2).sum(dim=1).mean()  # (B,) squared distances -> batch mean


class PoolingTransfer(DistillLoss):
    """Student pooled feature (low-res view) regresses the teacher's (high-res view).

    Args:
        distance: ``"mse_normalised"`` (default) or ``"raw_l2"`` (see the module docstring).
        adapter: ``"auto"`` (default: a ``Linear(C_s, C_t)`` only when the widths differ),
            ``"linear"`` (always) or ``"none"`` (widths must match).
    """

    requires = frozenset({"pooled"})

    def __init__(self, distance: str = "mse_normalised", adapter: str = "auto") -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"unknown pooling-transfer distance {distance!r}; valid: {DISTANCES}")
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown pooling-transfer adapter {adapter!r}; valid: {ADAPTERS}")
        self.distance = distance
        self.adapter_mode = adapter
        self.adapter: nn.Linear | None = None

    @staticmethod
    def _pooled(out: ModelOutput, who: str) -> Tensor:
        if out.pooled is None:
            hint = "; rebuild the teacher cache with 'pooled'" if who == "teacher" else ""
            raise ValueError(
                f"pooling transfer needs the {who}'s pooled feature (ModelOutput.pooled, "
                f"GAP of the last conv map) but it is None{hint}"
            )
        return out.pooled

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Size the adapter from a dry run: ``Linear(C_s, C_t)`` when needed (see ``adapter``)."""
        c_s = self._pooled(student, "student").shape[1]
        c_t = self._pooled(teacher, "teacher").shape[1]
        if self.adapter is not None:
            if (self.adapter.in_features, self.adapter.out_features) != (c_s, c_t):
                raise ValueError(
                    f"adapter built for {self.adapter.in_features}->{self.adapter.out_features}, "
                    f"dry run says {c_s}->{c_t}"
                )
            return
        if self.adapter_mode == "linear" or (self.adapter_mode == "auto" and c_s != c_t):
            p = self._pooled(student, "student")
            self.adapter = nn.Linear(c_s, c_t).to(device=p.device, dtype=p.dtype)
        elif c_s != c_t:
            raise ValueError(
                f"student pooled width {c_s} != teacher pooled width {c_t} and adapter='none'; "
                "use adapter='auto' or a student with the teacher's width"
            )

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        p_s = self._pooled(student, "student")
        p_t = self._pooled(teacher, "teacher")
        if self.adapter is not None:
            p_s = self.adapter(p_s)
        elif p_s.shape[1] != p_t.shape[1] or self.adapter_mode == "linear":
            raise RuntimeError(
                f"pooled widths {p_s.shape[1]} (student) and {p_t.shape[1]} (teacher) need the "
                "adapter, which is created by build(): call Distiller.prepare(batch) first"
            )
        return pooling_transfer_loss(p_s, p_t, self.distance)


@dataclass(frozen=True)
class HRLRSchedule:
    """The facekd HR->LR recipe (METHODS §2.5, §7b; OURS, the paper's values are UNVERIFIED).

    Attributes:
        teacher_res: teacher input side (the aligned crop, ``data.image_size``).
        student_res: student input side (``data.student_size``; the student is built with
            ``input_size=student_res`` by ``facekd.engine.builder``; do not repeat it in
            ``student.kwargs``).
        init: ``"kt"`` (student weights from a same-architecture teacher via
            ``facekd.models.transfer.build_kt_student``, then fine-tune at ``lr_kt``) or
            ``"scratch"`` (fresh student at ``lr``).
        distance: ``PoolingTransfer(distance=...)``.
        lam: weight of the pooled term (``losses[i].weight``); the identity loss keeps
            ``ce_weight=1``.
        head: low-res IResNet students use the resolution-free ``head="gap"`` (GAP -> Linear
            -> BN1d); MobileFaceNet keeps its GDC with a ``ceil(student_res / 16)`` kernel.
        lr, lr_kt: SGD learning rates from scratch / after KT (ArcFace recipe; fine-tuning).

    ``to_config()`` gives the ExperimentConfig overrides (a nested dict, YAML-ready).
    """

    teacher_res: int = 112
    student_res: int = 56
    init: Literal["kt", "scratch"] = "kt"
    distance: str = "mse_normalised"
    lam: float = 1.0
    head: str = "gap"
    lr: float = 0.1
    lr_kt: float = 0.01

    def __post_init__(self) -> None:
        if not 16 <= self.student_res <= self.teacher_res:
            raise ValueError(
                f"need 16 <= student_res <= teacher_res, got {self.student_res}, {self.teacher_res}"
            )
        if self.init not in ("kt", "scratch"):
            raise ValueError(f"init must be 'kt' or 'scratch', got {self.init!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; valid: {DISTANCES}")

    def to_config(self, student_arch: str = "iresnet50", kt_checkpoint: str = "") -> dict:
        """ExperimentConfig overrides. With ``init="kt"`` the student is ``kt_checkpoint``
        (a file written by ``save_backbone(build_kt_student(...)[0], path)``)."""
        kwargs = {"head": self.head} if student_arch.startswith("iresnet") else {}
        if self.init == "kt" and not kt_checkpoint:
            raise ValueError("init='kt' needs kt_checkpoint (the KT-initialised student file)")
        name = kt_checkpoint if self.init == "kt" else student_arch
        return {
            "student": {"name": name, "kwargs": {} if self.init == "kt" else kwargs},
            "data": {"image_size": self.teacher_res, "student_size": self.student_res},
            "losses": [
                {
                    "name": "pooling_transfer",
                    "weight": self.lam,
                    "kwargs": {"distance": self.distance},
                }
            ],
            "train": {"lr": self.lr_kt if self.init == "kt" else self.lr},
        }
