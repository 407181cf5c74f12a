"""Embedding mimic: the student regresses the teacher's face embedding.

The simplest feature-level distillation for face models; the regression target is the
teacher's embedding of the same face (from ``Batch.teacher_images`` when a high-resolution
view is given).

``mode="cosine"`` (default): ``L = mean_b (1 - cos(e_s_b, e_t_b))`` — scale-free, what
verification measures. ``mode="mse"``: ``L = mean_b ||e_s_b / |e_s_b| - e_t_b / |e_t_b| ||^2``
on L2-normalised embeddings (= 2 * cosine loss, kept for users of that convention).
``mode="raw_mse"``: mean squared error on unnormalised embeddings, averaged over dimensions.
Shapes: ``(B, D)`` student and teacher embeddings with equal D.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from facekd.losses.base import DistillLoss
from facekd.types import Batch, ModelOutput

MODES = ("cosine", "mse", "raw_mse")


def embedding_mimic_loss(e_s: Tensor, e_t: Tensor, mode: str = "cosine") -> Tensor:
    """Pure function behind ``EmbeddingMimic``; ``e_s``, ``e_t`` are ``(B, D)``."""
    if e_s.shape != e_t.shape:
        raise ValueError(
            f"embedding mimic needs equal shapes, got student {tuple(e_s.shape)} and teacher "
            f"{tuple(e_t.shape)}; build the student with num_features={e_t.shape[-1]}"
        )
    if mode == "cosine":
        return (1.0 - F.cosine_similarity(e_s, e_t.to(e_s.dtype), dim=1)).mean()
    if mode == "mse":
        return (F.normalize(e_s, dim=1) - F.normalize(e_t, dim=1)).pow(2).sum(1).mean()
    if mode == "raw_mse":
        return F.mse_loss(e_s, e_t.to(e_s.dtype))
    raise ValueError(f"unknown embedding mimic mode {mode!r}; valid: {MODES}")


class EmbeddingMimic(DistillLoss):
    """Student embedding regresses the teacher embedding (see module docstring)."""

    requires = frozenset({"embedding"})

    def __init__(self, mode: str = "cosine") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown embedding mimic mode {mode!r}; valid: {MODES}")
        self.mode = mode

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        return embedding_mimic_loss(student.embedding, teacher.embedding, self.mode)
