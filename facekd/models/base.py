"""The backbone contract shared by every facekd face model (DESIGN.md, "Contracts").

A backbone maps aligned faces ``(B, 3, H, W)`` in [-1, 1] to an embedding ``(B, D)``:

* ``forward(x) -> (B, D)``: pure and exportable (no dicts, no flags);
* ``forward_features(x) -> ModelOutput``: the same embedding plus the stage maps (stem first)
  and the pooled feature ``GAP(last conv map)``; ``forward(x) == forward_features(x).embedding``.

Subclasses implement ``_body(x) -> (stages, last_map)`` and ``_head(last_map) -> embedding``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from facekd.types import ModelOutput


def stride2_size(size: int, times: int) -> int:
    """Spatial size after ``times`` 3x3 / stride-2 / pad-1 convolutions: ceil(size / 2**times)."""
    for _ in range(times):
        size = math.floor((size + 2 - 3) / 2) + 1
    return size


def check_input_size(input_size: int, minimum: int = 16) -> int:
    if not isinstance(input_size, int) or input_size < minimum:
        raise ValueError(
            f"input_size must be an int >= {minimum} (square faces), got {input_size!r}"
        )
    return input_size


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says why and what to do (raised by
    ``facekd.models.checkpoints`` and the ONNX importer; defined here, below both)."""


class FaceBackbone(nn.Module):
    """Base class: the forward / forward_features contract on top of ``_body`` and ``_head``."""

    #: registry name and the keyword arguments that rebuild this model (set by build_backbone)
    arch: str = ""
    arch_kwargs: dict
    input_size: int
    num_features: int

    def _body(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        raise NotImplementedError

    def _head(self, last_map: Tensor) -> Tensor:
        raise NotImplementedError

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects (B, 3, H, W) RGB faces, got {tuple(x.shape)}"
            )
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"{type(self).__name__} was built for {self.input_size}x{self.input_size} inputs "
                f"(its embedding layer is sized for that), got {x.shape[-2]}x{x.shape[-1]}; "
                f"build it with input_size={x.shape[-1]} or resize the faces"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self._head(self._body(x)[1])

    def forward_features(self, x: Tensor) -> ModelOutput:
        self._check(x)
        stages, last_map = self._body(x)
        return ModelOutput(
            embedding=self._head(last_map),
            stages=stages,
            pooled=last_map.mean(dim=(2, 3)),  # (B, C): global average pooling
        )
