"""The two types every stage of facekd agrees on (see DESIGN.md, "Contracts").

``Batch`` flows from the data layer into models and losses; ``ModelOutput`` flows from a
backbone (and optionally a margin head) into the distillation losses and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


def _check_images(name: str, images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"Batch.{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"Batch.{name} must have shape (B, 3, H, W) (RGB, normalised to [-1, 1]); "
            f"got {tuple(images.shape)}"
        )


@dataclass
class Batch:
    """One mini-batch of aligned faces.

    Attributes:
        images: ``(B, 3, H, W)`` float, RGB, normalised as ``(x / 255 - 0.5) / 0.5``.
        labels: ``(B,)`` int64 identity ids; ``-1`` marks an unlabelled face.
        teacher_images: optional ``(B, 3, H_t, W_t)`` view for the teacher, e.g. the
            high-resolution face in high-to-low resolution transfer (Karlekar et al., 2019).
            When ``None`` the teacher sees ``images``.
        index: optional ``(B,)`` int64 data-set indices (keys into a teacher cache).
        flipped: optional ``(B,)`` bool, True where the face was mirrored by augmentation
            (a teacher cache then returns the teacher's output on the mirrored face).
        teacher: optional teacher outputs of these faces fetched with the batch (a teacher
            cache's rows, read by the data loader's workers instead of the training thread).
    """

    images: Tensor
    labels: Tensor
    teacher_images: Tensor | None = None
    index: Tensor | None = None
    flipped: Tensor | None = None
    teacher: ModelOutput | None = None

    def __post_init__(self) -> None:
        _check_images("images", self.images)
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"Batch.labels must have shape (B,) = ({self.images.shape[0]},); "
                f"got {tuple(self.labels.shape)}"
            )
        if self.teacher_images is not None:
            _check_images("teacher_images", self.teacher_images)
            if self.teacher_images.shape[0] != self.images.shape[0]:
                raise ValueError(
                    "Batch.teacher_images and Batch.images disagree on the batch size: "
                    f"{self.teacher_images.shape[0]} vs {self.images.shape[0]}"
                )
        if self.index is not None and tuple(self.index.shape) != (self.images.shape[0],):
            raise ValueError(
                f"Batch.index must have shape (B,) = ({self.images.shape[0]},); "
                f"got {tuple(self.index.shape)}"
            )

        if self.flipped is not None and tuple(self.flipped.shape) != (self.images.shape[0],):
            raise ValueError(
                f"Batch.flipped must have shape (B,) = ({self.images.shape[0]},); "
                f"got {tuple(self.flipped.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def teacher_view(self) -> Tensor:
        """The images the teacher should see: ``teacher_images`` if given, else ``images``."""
        return self.images if self.teacher_images is None else self.teacher_images

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: (
                v.to(device, non_blocking=non_blocking)
                if isinstance(v, (Tensor, ModelOutput))
                else v
            )
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return replace(self, **moved)


@dataclass
class ModelOutput:
    """What a backbone (optionally followed by a head) says about a batch.

    Attributes:
        embedding: ``(B, D)`` face embedding *before* L2 normalisation.
        stages: stage feature maps ``(B, C_i, H_i, W_i)``, stem first, last stage last.
        pooled: ``(B, C)`` the pooling-layer feature (the input of the embedding layer after
            global pooling / flattening), used by pooling-feature transfer.
        logits: optional ``(B, N)`` cosine logits without margin, filled by a head.
        margin_logits: optional ``(B, N)`` logits with the margin applied and scaled (training).
        classes: optional ``(N,)`` class ids of the logit columns when the head sampled a
            subset (Partial FC); ``None`` means all classes in order.
    """

    embedding: Tensor
    stages: list[Tensor] = field(default_factory=list)
    pooled: Tensor | None = None
    logits: Tensor | None = None
    margin_logits: Tensor | None = None
    classes: Tensor | None = None

    def _map(self, fn) -> ModelOutput:
        def f(t):
            return None if t is None else fn(t)

        return ModelOutput(
            embedding=fn(self.embedding),
            stages=[f(s) for s in self.stages],
            pooled=f(self.pooled),
            logits=f(self.logits),
            margin_logits=f(self.margin_logits),
            classes=self.classes,
        )

    def detach(self) -> ModelOutput:
        """A copy whose tensors are cut from the autograd graph."""
        return self._map(Tensor.detach)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ModelOutput:
        """A copy with every tensor (``classes`` included) moved to ``device``."""
        out = self._map(lambda t: t.to(device, non_blocking=non_blocking))
        out.classes = None if self.classes is None else self.classes.to(device)
        return out
