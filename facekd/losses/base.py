"""The distillation-loss contract (DESIGN.md, "Contracts").

A loss is an ``nn.Module`` with
``forward(student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor`` returning one
unweighted scalar; the Distiller weights and sums the terms. Next to it lives a pure tensor
function that the tests check against hand-computed values.

``requires`` names the teacher fields the loss reads (``"embedding"``, ``"pooled"``,
``"stages"``, ``"logits"``): the teacher cache stores exactly those, and a black-box (ONNX)
teacher that cannot provide one is refused before training starts.

Losses with trainable adapters (FitNets regressors, projections) create them in ``build``,
called once by the Distiller with detached outputs of a dry run, so the adapters are sized by
the real shapes; they are trained with the student and saved apart from it.
"""

from __future__ import annotations

from torch import Tensor, nn

from facekd.types import Batch, ModelOutput

TEACHER_FIELDS = ("embedding", "pooled", "stages", "logits")


class DistillLoss(nn.Module):
    """Base class: declare ``requires``; override ``forward`` (and ``build`` for adapters)."""

    requires: frozenset[str] = frozenset({"embedding"})

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Create shape-dependent adapters from a dry run (default: nothing to build)."""

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        raise NotImplementedError
