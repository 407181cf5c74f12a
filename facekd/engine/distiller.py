"""The Distiller: student + margin head + weighted distillation losses + a frozen teacher.

``Distiller(batch) -> {"loss": total, "ce": ..., "kd/<name>": ...}``: every term unweighted,
the total weighted (``ce_weight * ce + sum_i w_i * kd_i``), so each term can be logged.

The teacher is frozen: its parameters never require gradients, it runs under
``torch.no_grad()``, it stays in ``eval()`` when the Distiller is put in ``train()`` (BatchNorm
statistics untouched), and it is not a submodule that DDP or an optimizer could see. Its
outputs come from a ``TeacherCache`` when one is given (no teacher forward at all) or from
running it online on ``batch.teacher_view`` (the high-resolution view when there is one).

Baseline students (no teacher, no losses) and teacher training (the "student" is the big
model) run through the same class: the Trainer never asks which method it is running.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from facekd.losses.base import DistillLoss
from facekd.types import Batch, ModelOutput

log = logging.getLogger(__name__)


def _to_float(out: ModelOutput) -> ModelOutput:
    def f(t):
        return None if t is None else t.float()

    return ModelOutput(
        embedding=f(out.embedding),
        stages=[f(s) for s in out.stages],
        pooled=f(out.pooled),
        logits=f(out.logits),
    )


def check_logit_scales(head, teacher, teacher_head) -> None:
    """Refuse teacher and student logits ``s * cos`` of different scales (see ``Distiller``)."""
    student_scale = getattr(head, "scale", None)
    scales = {}
    if getattr(teacher_head, "scale", None) is not None:
        scales["teacher head"] = float(teacher_head.scale)
    for i, member_head in enumerate(getattr(teacher, "heads", None) or []):
        if getattr(member_head, "scale", None) is not None:
            scales[f"ensemble member {i} head"] = float(member_head.scale)
    wrong = {k: v for k, v in scales.items() if student_scale is not None and v != student_scale}
    if wrong:
        named = ", ".join(f"{k} s={v:g}" for k, v in wrong.items())
        raise ValueError(
            f"teacher and student logits have different scales ({named}; student head "
            f"s={student_scale:g}): soft targets at temperature T would compare distributions "
            "of different sharpness. Fit the teacher head at the student's scale "
            "(teacher.head_fit.kwargs.scale, the default when unset) or change head.kwargs.scale"
        )


class Distiller(nn.Module):
    """Args:
    student: backbone being trained (``forward_features``).
    head: margin head for the identity loss, or ``None`` (distillation losses only).
    losses: ``{name: DistillLoss}``; adapters they own train with the student.
    weights: ``{name: weight}`` (default 1.0 each).
    teacher: frozen backbone, or any module with ``forward_features`` (e.g. an ensemble).
    teacher_head: head whose margin-free logits fill ``teacher.logits`` (Hinton KD).
    teacher_cache: precomputed teacher outputs looked up by ``batch.index``.
    ce_weight: weight of the identity (cross-entropy) term.
    teacher_bf16: run the online teacher under bf16 autocast (its outputs are cast back to
        float32); with a channels_last teacher this is ~3x faster on recent CPUs.

    With a logit loss (Hinton) the teacher's ``s * cos`` logits (``teacher_head``, or an
    online ensemble's member heads) must have the student head's ``scale``: the temperature
    divides both logit sets, so ``s_t != s_s`` would distil a sharper or flatter distribution.

    Besides the loss terms, ``forward`` returns ``stats/<loss>/<name>`` diagnostics a loss
    publishes in ``last_stats`` (e.g. mined triplets and the active fraction); they are logged,
    never added to the total.
    """

    def __init__(
        self,
        student: nn.Module,
        head: nn.Module | None = None,
        losses: dict[str, DistillLoss] | None = None,
        weights: dict[str, float] | None = None,
        teacher: nn.Module | None = None,
        teacher_head: nn.Module | None = None,
        teacher_cache=None,
        ce_weight: float = 1.0,
        teacher_bf16: bool = False,
    ) -> None:
        super().__init__()
        losses = losses or {}
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(losses))
        if unknown:
            raise ValueError(f"weights given for losses that are not configured: {unknown}")
        if losses and teacher is None and teacher_cache is None:
            raise ValueError(
                f"distillation losses {sorted(losses)} need a teacher or a teacher cache"
            )
        if head is None and not losses:
            raise ValueError("nothing to train: give a head (identity loss) or losses")
        self.student = student
        self.head = head
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}
        self.ce_weight = float(ce_weight)
        self.teacher_bf16 = bool(teacher_bf16)
        # kept out of the module tree: no optimizer, DDP or state_dict ever sees the teacher
        self.__dict__["teacher"] = teacher
        self.__dict__["teacher_head"] = teacher_head
        self.teacher_cache = teacher_cache
        if teacher is not None:
            from facekd.teachers import check_teacher_serves

            if teacher_cache is None:
                check_teacher_serves(teacher, losses, has_head=teacher_head is not None)
            teacher.eval().requires_grad_(False)
        if teacher_head is not None:
            teacher_head.eval().requires_grad_(False)
        self.requires = frozenset().union(*(loss.requires for loss in losses.values()))
        if "logits" in self.requires:
            check_logit_scales(head, teacher, teacher_head)
        if teacher_cache is not None:
            missing = self.requires - set(teacher_cache.fields) - {"logits"}
            if missing:
                raise ValueError(
                    f"the teacher cache holds {sorted(teacher_cache.fields)} but the losses "
                    f"need {sorted(missing)} too; rebuild it with those fields"
                )

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never leaves eval mode
        return self

    @torch.no_grad()
    def teacher_outputs(self, batch: Batch) -> ModelOutput:
        """The teacher's view of the batch, from the cache or an online forward pass."""
        if batch.teacher is not None:  # the cache's rows, fetched by the loader's workers
            out = batch.teacher
        elif self.teacher_cache is not None:
            if batch.index is None:
                raise ValueError("a teacher cache needs Batch.index (data-set indices)")
            out = self.teacher_cache.lookup(
                batch.index, device=batch.images.device, flipped=batch.flipped
            )
        else:
            view = batch.teacher_view
            with torch.autocast(view.device.type, dtype=torch.bfloat16, enabled=self.teacher_bf16):
                out = self.teacher.forward_features(view)
            out = _to_float(out)
        if "logits" in self.requires and out.logits is None:  # ensembles bring their own
            if self.teacher_head is None:
                raise ValueError("a loss needs teacher logits but no teacher_head was given")
            out.logits = self.teacher_head(out.embedding.float(), None).logits
        return out.detach()

    def _identity_loss(self, out: ModelOutput, labels: Tensor) -> Tensor:
        head_out = self.head(out.embedding, labels)
        out.logits, out.margin_logits = head_out.logits, head_out.margin_logits
        out.classes = head_out.classes  # Partial FC: the sampled columns, for logit-level KD
        return self.head.loss(head_out)

    @torch.no_grad()
    def prepare(self, batch: Batch) -> None:
        """Dry run: lets losses size their adapters from real shapes (call before the optimizer)."""
        was_training = self.training
        self.eval()
        student = self.student.forward_features(batch.images)
        teacher = self.teacher_outputs(batch) if len(self.losses) else None
        for loss in self.losses.values():
            loss.build(student.detach(), teacher)
        self.train(was_training)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        student = self.student.forward_features(batch.images)
        terms: dict[str, Tensor] = {}
        total = student.embedding.new_zeros(())
        if self.head is not None:
            terms["ce"] = self._identity_loss(student, batch.labels)
            total = total + self.ce_weight * terms["ce"]
        if len(self.losses):
            teacher = self.teacher_outputs(batch)
            for name, loss in self.losses.items():
                terms[f"kd/{name}"] = loss(student, teacher, batch)
                total = total + self.weights[name] * terms[f"kd/{name}"]
                for key, value in (getattr(loss, "last_stats", None) or {}).items():
                    terms[f"stats/{name}/{key}"] = torch.as_tensor(value).detach().float()
        return {"loss": total, **terms}

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers owned by the losses (saved apart from the student)."""
        return self.losses.state_dict()
