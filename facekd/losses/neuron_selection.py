"""Neuron-selection distillation: the student regresses K selected teacher neurons.

Luo, Zhu, Liu, Wang, Tang, "Face Model Compression by Distilling Knowledge from Neurons",
AAAI 2016 (METHODS.md §1.3). The knowledge is the teacher's top hidden layer restricted to
the neurons chosen by ``facekd.selection.select_neurons``: with ``t = h_T[:, indices]``

    loss="mse_half" (default):  L = 1/(2B) sum_b ||f_S(x_b) - t(x_b)||^2
    loss="mse":                 L = 1/(B K) sum_b ||f_S(x_b) - t(x_b)||^2   (F.mse_loss)
    loss="cosine":              L = mean_b (1 - cos(f_S(x_b), t(x_b)))      [OURS]

Shapes: student ``(B, K)``, teacher ``(B, D)``, ``indices`` ``(K,)`` long. The squared-L2
mimic is the standard form; the paper's normalisation constant is UNVERIFIED, ``mse_half``
follows METHODS §1.3.

The paper's student outputs K units directly (MobileID: ``ip3`` with 422 outputs) and that is
the faithful setup here, and the default: ``student_kwargs()`` asks the experiment builder for
a student with ``num_features=K`` (its embedding *is* the K-d target, used as the face
descriptor at test time) unless the config sets ``student.kwargs.num_features`` itself. With
the iResNet BN embedding as teacher layer the target is signed, so the student has no output
ReLU (METHODS §1.7 [OURS]). Only with ``adapter=True`` [OURS] may a student whose embedding
has ``D_s != K`` dimensions train through a ``nn.Linear(D_s, K)`` built in ``build``; the
adapter belongs to the loss (saved with the adapters, not with the student).

The selection is pre-fitted state: ``indices`` and ``k`` are registered buffers, saved in the
loss's ``state_dict`` and restored from it. A selection file records the fingerprint of the
teacher it was made from (``facekd.selection.run_selection``); ``check_teacher`` refuses any
other teacher, whose neuron ``j`` means something else.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.losses.base import DistillLoss
from facekd.selection import NeuronSelection
from facekd.types import Batch, ModelOutput

LOSSES = ("mse_half", "mse", "cosine")


def neuron_selection_loss(
    student_k: Tensor, teacher_full: Tensor, indices: Tensor, loss: str = "mse_half"
) -> Tensor:
    """Pure function behind ``NeuronSelectionLoss`` (module docstring for the formulas).

    ``student_k`` ``(B, K)``, ``teacher_full`` ``(B, D)``, ``indices`` ``(K,)`` long in [0, D).
    """
    if student_k.dim() != 2 or teacher_full.dim() != 2 or indices.dim() != 1:
        raise ValueError(
            "neuron selection loss needs student (B, K), teacher (B, D) and indices (K,); got "
            f"{tuple(student_k.shape)}, {tuple(teacher_full.shape)}, {tuple(indices.shape)}"
        )
    if student_k.shape[1] != indices.numel() or student_k.shape[0] != teacher_full.shape[0]:
        raise ValueError(
            f"student output {tuple(student_k.shape)} does not match {indices.numel()} selected "
            f"neurons of a teacher batch {tuple(teacher_full.shape)}"
        )
    target = teacher_full.index_select(1, indices.to(teacher_full.device)).to(student_k.dtype)
    if loss == "mse_half":
        return 0.5 * (student_k - target).pow(2).sum(dim=1).mean()
    if loss == "mse":
        return F.mse_loss(student_k, target)
    if loss == "cosine":
        return (1.0 - F.cosine_similarity(student_k, target, dim=1)).mean()
    raise ValueError(f"unknown neuron selection loss {loss!r}; valid: {LOSSES}")


class NeuronSelectionLoss(DistillLoss):
    """The student (or its adapter) regresses the selected teacher neurons.

    Args:
        selection: a ``NeuronSelection`` or the path of its ``selection.json``.
        indices: the selected neuron indices (instead of ``selection``); the student's output
            unit ``j`` regresses teacher neuron ``indices[j]``.
        loss: ``"mse_half"`` (default, METHODS §1.3) | ``"mse"`` | ``"cosine"``.
        adapter: allow a ``Linear(D_s, K)`` adapter when the student embedding is not K-d
            [OURS]; default False (the paper's K-wide student): such a student is refused at
            ``build``.
    """

    requires = frozenset({"embedding"})

    def __init__(
        self,
        selection: NeuronSelection | str | os.PathLike | None = None,
        indices=None,
        loss: str = "mse_half",
        adapter: bool = False,
    ) -> None:
        super().__init__()
        if (selection is None) == (indices is None):
            raise ValueError("give exactly one of selection= (or its JSON path) and indices=")
        if loss not in LOSSES:
            raise ValueError(f"unknown neuron selection loss {loss!r}; valid: {LOSSES}")
        if not isinstance(adapter, bool):
            raise ValueError(f"adapter must be True or False, got {adapter!r}")
        self.teacher_dim: int | None = None
        self.teacher_fingerprint: str | None = None
        self.source = "indices"
        if selection is not None:
            if not isinstance(selection, NeuronSelection):
                self.source = os.fspath(selection)
                selection = NeuronSelection.from_json(selection)
            else:
                self.source = "the given NeuronSelection"
            indices, self.teacher_dim = selection.indices.tolist(), selection.dim
            self.teacher_fingerprint = (selection.meta or {}).get("teacher")
        idx = torch.as_tensor(indices)
        if (
            idx.dim() != 1
            or idx.numel() == 0
            or idx.dtype.is_floating_point
            or idx.dtype == torch.bool
        ):
            raise ValueError(f"indices must be a non-empty 1-D integer sequence, got {indices!r}")
        idx = idx.long()
        if int(idx.min()) < 0 or idx.unique().numel() != idx.numel():
            raise ValueError("indices must be non-negative and unique")
        self.loss = loss
        self.allow_adapter = adapter
        self.register_buffer("indices", idx)
        self.register_buffer("k", torch.tensor(idx.numel(), dtype=torch.long))
        self.adapter: nn.Linear | None = None

    def student_kwargs(self) -> dict:
        """The paper's student: its embedding is the K selected neurons (no adapter)."""
        return {} if self.allow_adapter else {"num_features": int(self.k)}

    def check_teacher(self, fingerprint: str) -> None:
        """Refuse a teacher other than the one the selection was made from."""
        if self.teacher_fingerprint is not None and fingerprint != self.teacher_fingerprint:
            raise ValueError(
                f"the neuron selection {self.source} was made from teacher "
                f"{self.teacher_fingerprint[:16]}..., but this run's teacher is "
                f"{fingerprint[:16]}...; neuron j of another teacher means something else: "
                "rerun facekd select-neurons with this teacher"
            )

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Check the teacher layer against the selection; add the adapter if one is needed."""
        d_t, d_s, k = teacher.embedding.shape[1], student.embedding.shape[1], int(self.k)
        if self.teacher_dim is not None and d_t != self.teacher_dim:
            raise ValueError(
                f"the selection was made on a {self.teacher_dim}-d teacher layer but the "
                f"teacher embedding has {d_t} dimensions; rerun the selection for this teacher"
            )
        if int(self.indices.max()) >= d_t:
            raise ValueError(
                f"selected neuron {int(self.indices.max())} does not exist in a {d_t}-d "
                "teacher embedding"
            )
        if d_s == k or self.adapter is not None:
            return
        if not self.allow_adapter:
            raise ValueError(
                f"the student embedding has {d_s} dimensions but {k} neurons are selected; "
                f"build the student with num_features={k} (the paper's setup) or allow "
                "adapter=True"
            )
        self.adapter = nn.Linear(d_s, k).to(student.embedding.device)

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        out = student.embedding
        if self.adapter is not None:
            out = self.adapter(out)
        elif out.shape[1] != int(self.k):
            raise ValueError(
                f"student embedding has {out.shape[1]} dimensions, {int(self.k)} neurons are "
                f"selected: build the student with num_features={int(self.k)} or call build()"
            )
        return neuron_selection_loss(out, teacher.embedding.detach(), self.indices, self.loss)
