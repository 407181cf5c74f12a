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

Three declarations let the experiment builder serve a loss without knowing its name:
``needs_pk`` (the loss mines within identities, so batches must be P identities x K images:
the shuffled sampler is refused), ``student_kwargs()`` (keyword arguments the student should
be built with unless the config says otherwise, e.g. a K-wide embedding for neuron selection)
and ``check_teacher(fingerprint)`` (refuse pre-fitted state made from another teacher). A loss
may publish diagnostics of its last call in ``last_stats`` (``{name: number}``); the Distiller
logs them as ``stats/<loss>/<name>``.
"""

from __future__ import annotations

from torch import Tensor, nn

from facekd.types import Batch, ModelOutput

TEACHER_FIELDS = ("embedding", "pooled", "stages", "logits")


class DistillLoss(nn.Module):
    """Base class: declare ``requires``; override ``forward`` (and ``build`` for adapters)."""

    requires: frozenset[str] = frozenset({"embedding"})
    needs_pk: bool = False
    last_stats: dict | None = None

    def student_kwargs(self) -> dict:
        """Keyword arguments for the student's constructor this loss needs (default none)."""
        return {}

    def check_teacher(self, fingerprint: str) -> None:
        """Refuse a teacher (``facekd.teachers.cache.fingerprint_module``) that pre-fitted state
        was not made from (default: any teacher serves)."""

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Create shape-dependent adapters from a dry run (default: nothing to build)."""

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        raise NotImplementedError
