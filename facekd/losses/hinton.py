"""Soft-target distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", NIPS 2014 Deep Learning Workshop, arXiv:1503.02531).

Tempered softmax ``q_i = exp(z_i / T) / sum_j exp(z_j / T)`` of teacher and student logits.

``mode="hinton"`` (default) returns the soft term only::

    L_soft = T^2 * KL(q_T^(T) || q_S^(T))
           = T^2 * mean_b sum_c q_T[b,c] * (log q_T[b,c] - log q_S[b,c])

KL (``reduction='batchmean'``: sum over classes, mean over the batch) instead of the
cross-entropy with soft targets: they differ by the teacher entropy, constant in the student,
so the gradients are identical and the term is 0 when the logits agree (mdistiller ``kd_loss``,
torchdistill ``KDLoss``). The factor ``T^2`` keeps the soft gradients' size independent of T:
``d KL / d z_S = (q_S - q_T) / T ~ (z_S - z_T) / (C T^2)`` for large T and zero-mean logits.
The paper's hard term ``alpha * CE(y, q_S^(1))`` is the Distiller's identity loss: for faces
that is the margin head (ArcFace) loss, weighted by ``ce_weight``. mdistiller's defaults
``T=4``, CE weight 0.1, KD weight 0.9 (METHODS 7b) read ``ce_weight: 0.1`` and
``losses: [{name: hinton, weight: 0.9, kwargs: {T: 4}}]``.

``mode="seed_fusion"`` computes the label-fusion recipe of the project's source notes
("Target = a * hard_target + b * soft_target, a + b = 1, recommended a = 0.1, b = 0.9"; the
student's softmax uses the teacher's temperature, T = 20 in the notes, T = 1 when deployed)::

    target[b] = a * onehot(y_b) + b * q_T^(T)[b]          (onehot = 0 for unlabelled y_b = -1)
    L_fusion  = mean_b -sum_c target[b,c] * log q_S^(T)[b,c]
              = a * CE(y, q_S^(T)) + b * CE(q_T^(T), q_S^(T))     (CE is linear in the target)

It differs from ``hinton`` in three ways, all deliberate: the hard term is *inside* the loss
and at temperature T (not T = 1), nothing is multiplied by ``T^2``, and the soft part is a
cross-entropy, so the value includes ``b * H(q_T^(T))`` and is not 0 when the logits agree.
Run it with ``ce_weight: 0`` for the notes' recipe, or keep the margin loss as an extra term.

Face specifics (METHODS 4.1): logits are the heads' ``s * cos(theta)`` without margin, over a
class set shared by teacher and student. Under Partial FC the student scores a sampled,
sorted column subset ``student.classes``; the teacher's logits over all classes are restricted
to those columns (``teacher.logits[:, student.classes]``) and the hard labels are remapped to
column positions (a label outside the sample counts as unlabelled). Shapes: ``(B, C)`` logits,
``(B,)`` labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facekd.losses.base import DistillLoss
from facekd.types import Batch, ModelOutput

MODES = ("hinton", "seed_fusion")


def hinton_kd_loss(logits_s: Tensor, logits_t: Tensor, T: float = 4.0) -> Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, batch mean; logits ``(B, C)``."""
    if logits_s.shape != logits_t.shape:
        raise ValueError(
            f"student and teacher logits disagree: {tuple(logits_s.shape)} vs "
            f"{tuple(logits_t.shape)}"
        )
    log_q_s = F.log_softmax(logits_s.float() / T, dim=1)
    log_q_t = F.log_softmax(logits_t.float() / T, dim=1)
    kl = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return kl * (T * T)


def seed_fusion_loss(
    logits_s: Tensor,
    logits_t: Tensor,
    targets: Tensor,
    T: float = 20.0,
    a: float = 0.1,
    b: float = 0.9,
) -> Tensor:
    """Cross-entropy of ``softmax(z_s / T)`` against ``a * onehot(targets) + b * softmax(z_t / T)``.

    ``targets (B,)`` are column indices into the logits; ``-1`` rows get no hard part.
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(
            f"student and teacher logits disagree: {tuple(logits_s.shape)} vs "
            f"{tuple(logits_t.shape)}"
        )
    q_t = F.softmax(logits_t.float() / T, dim=1)  # (B, C)
    labelled = targets >= 0
    hard = F.one_hot(targets.clamp_min(0), logits_s.shape[1]).to(q_t.dtype)
    hard = hard * labelled.unsqueeze(1)  # (B, C), zero rows for unlabelled faces
    target = a * hard + b * q_t
    log_q_s = F.log_softmax(logits_s.float() / T, dim=1)
    return -(target * log_q_s).sum(dim=1).mean()


def column_targets(labels: Tensor, classes: Tensor | None) -> Tensor:
    """Class ids -> logit column indices (Partial FC: positions in sorted ``classes``; else -1)."""
    if classes is None:
        return labels
    classes = classes.to(labels.device)
    pos = torch.searchsorted(classes, labels).clamp_max(classes.numel() - 1)
    return torch.where((classes[pos] == labels) & (labels >= 0), pos, torch.full_like(labels, -1))


def aligned_logits(student: ModelOutput, teacher: ModelOutput) -> tuple[Tensor, Tensor]:
    """Student and teacher logits over the same columns (Partial FC handled), ``(B, C')`` each."""
    if student.logits is None:
        raise ValueError(
            "Hinton KD needs student logits: configure a margin head (the Distiller fills "
            "student.logits from it)"
        )
    if teacher.logits is None:
        raise ValueError("Hinton KD needs teacher logits: give the Distiller a teacher_head")
    logits_t = teacher.logits
    if student.classes is not None:
        if teacher.classes is None:
            logits_t = logits_t[:, student.classes.to(logits_t.device)]
        elif not torch.equal(teacher.classes.cpu(), student.classes.cpu()):
            raise ValueError("teacher and student logits cover different sampled classes")
    elif teacher.classes is not None:
        raise ValueError("teacher logits cover sampled classes but the student's cover all")
    if logits_t.shape != student.logits.shape:
        raise ValueError(
            f"teacher logits {tuple(logits_t.shape)} vs student logits "
            f"{tuple(student.logits.shape)}: teacher and student heads must share the class "
            f"set (num_classes)"
        )
    return student.logits, logits_t


class HintonKD(DistillLoss):
    """Soft-target KD on margin-free logits (see the module docstring).

    Args:
        T: temperature (mdistiller default 4; the source notes use 20 with ``seed_fusion``).
        mode: ``"hinton"`` (``T^2``-scaled KL soft term only; the Distiller adds the identity
            loss with ``ce_weight``) or ``"seed_fusion"`` (label fusion ``a * hard + b * soft``
            at temperature T, no ``T^2``).
        a, b: hard / soft weights of ``seed_fusion`` (notes: 0.1 / 0.9, ``a + b = 1``);
            ignored by ``hinton``.
    """

    requires = frozenset({"logits"})

    def __init__(self, T: float = 4.0, mode: str = "hinton", a: float = 0.1, b: float = 0.9):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown Hinton KD mode {mode!r}; valid: {MODES}")
        if not T > 0:
            raise ValueError(f"temperature T must be > 0, got {T!r}")
        if a < 0 or b < 0 or a + b <= 0:
            raise ValueError(f"label-fusion weights need a, b >= 0 and a + b > 0; got {a}, {b}")
        self.T, self.mode, self.a, self.b = float(T), mode, float(a), float(b)

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        logits_s, logits_t = aligned_logits(student, teacher)
        if self.mode == "hinton":
            return hinton_kd_loss(logits_s, logits_t, self.T)
        targets = column_targets(batch.labels.to(logits_s.device), student.classes)
        return seed_fusion_loss(logits_s, logits_t, targets, self.T, self.a, self.b)

    def extra_repr(self) -> str:
        fusion = f", a={self.a}, b={self.b}" if self.mode == "seed_fusion" else ""
        return f"T={self.T}, mode={self.mode!r}{fusion}"
