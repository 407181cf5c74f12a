"""Classification heads for face training: ArcFace, CosFace, plain softmax, with Partial FC.

A head maps embeddings ``(B, D)`` and labels ``(B,)`` (int64, ``-1`` = unlabelled) to a
``HeadOutput`` over ``C'`` logit columns (``C' = num_classes`` unless Partial FC samples):

* ``logits (B, C')``: ``s * cos(theta_j)`` with no margin (Hinton KD, accuracy);
* ``margin_logits (B, C')``: the margin applied at the target column (what CE trains on);
* ``targets (B,)``: the labels in the column space (``-1`` kept), ``classes (C',)`` the class
  ids of the columns (sorted), or ``None`` when the columns are all classes in order.

Class centres ``W (C, D)`` and embeddings are L2-normalised at use. The cosine and the margin
are computed in float32 with autocast disabled, so fp16/bf16 training cannot overflow or lose
the precision ``arccos`` needs near 1 (numerics, not device handling).

Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine",
ICCVW 2021; "Killing Two Birds with One Stone: Efficient and Robust Training of Face
Recognition CNNs by Partial FC", CVPR 2022) is an option of every head (``partial_fc=True``):
in training mode each forward keeps all classes present in the batch plus uniformly random
other classes, ``max(#positives, ceil(sample_rate * C))`` columns in all, and remaps targets.
In eval mode, or with ``sample_rate=1``, all classes are used. arcface_torch samples
``int(sample_rate * C)`` per rank; we take the ceiling on a single process. Negatives come
from a private ``torch.Generator`` reseeded from ``(seed, sample_step)``; ``sample_step`` is
a buffer in the state dict, so a resumed run draws the same sets without touching the global
RNG. Unsampled centres get no gradient but an optimiser with momentum/weight decay still moves
them (as in arcface_torch's PartialFC_V2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FALLBACKS = ("cosface", "easy", "none")


@dataclass
class HeadOutput:
    """See the module docstring: ``logits``, ``margin_logits`` ``(B, C')``; ``targets (B,)``."""

    logits: Tensor
    margin_logits: Tensor
    targets: Tensor
    classes: Tensor | None = None


class ClassifierHead(nn.Module):
    """Shared machinery: validation, deterministic init, Partial FC, the CE loss.

    Args:
        num_classes: ``C``, number of identities.
        embedding_size: ``D``, embedding dimension.
        partial_fc: sample class centres in training mode (see the module docstring).
        sample_rate: fraction of classes per step with ``partial_fc``, in (0, 1]; default 0.1.
        seed: seeds the weight init (``N(0, 0.01)``, as arcface_torch) and the sampling.
    """

    #: registry name and the keyword arguments that rebuild this head (set by build_head)
    arch: str = ""
    arch_kwargs: dict

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        *,
        partial_fc: bool = False,
        sample_rate: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.partial_fc, self.sample_rate, self.seed = bool(partial_fc), float(sample_rate), seed
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(
            torch.empty(num_classes, embedding_size).normal_(0.0, 0.01, generator=gen)
        )
        self.bias: nn.Parameter | None = None  # only the softmax head has one
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))

    def _scores(self, x: Tensor, w: Tensor, b: Tensor | None, targets: Tensor):
        """``(logits, margin_logits)``, each ``(B, C')``, from float32 inputs."""
        raise NotImplementedError

    def _check(self, embedding: Tensor, labels: Tensor | None) -> Tensor:
        if embedding.dim() != 2 or embedding.shape[1] != self.embedding_size:
            raise ValueError(
                f"{type(self).__name__} expects embeddings (B, {self.embedding_size}), got "
                f"{tuple(embedding.shape)}; build it with embedding_size={embedding.shape[-1]}"
            )
        batch = embedding.shape[0]
        if labels is None:
            return torch.full((batch,), -1, dtype=torch.long, device=embedding.device)
        if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"labels must be integer ids of shape ({batch},), got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
        labels = labels.long()
        if bool(((labels < -1) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"labels must be in [-1, {self.num_classes - 1}] (num_classes="
                f"{self.num_classes}), got min {int(labels.min())}, max {int(labels.max())}"
            )
        return labels

    def _check_classes(self, classes: Tensor) -> Tensor:
        if (
            classes.dim() != 1
            or classes.numel() == 0
            or bool(
                (classes[1:] <= classes[:-1]).any()
                | (classes[0] < 0)
                | (classes[-1] >= self.num_classes)
            )
        ):
            raise ValueError(
                f"classes must be a non-empty 1-D tensor of sorted, unique class ids in "
                f"[0, {self.num_classes - 1}], got {tuple(classes.shape)}"
            )
        return classes

    @torch.no_grad()
    def sample_classes(self, labels: Tensor) -> Tensor | None:
        """Sorted class ids ``(C',)``: every positive of ``labels`` plus random negatives.

        Returns ``None`` when the sample would be every class. Advances ``sample_step``.
        """
        positives = torch.unique(labels[labels >= 0])  # sorted
        k = max(positives.numel(), math.ceil(self.sample_rate * self.num_classes))
        if k >= self.num_classes:
            return None
        gen = torch.Generator(device=self.weight.device)
        gen.manual_seed(self.seed * 1_000_003 + int(self.sample_step))
        self.sample_step += 1
        scores = torch.rand(self.num_classes, generator=gen, device=self.weight.device)
        scores[positives] = 2.0  # positives outrank every uniform score in [0, 1)
        return scores.topk(k, sorted=False).indices.sort().values

    def forward(
        self, embedding: Tensor, labels: Tensor | None = None, classes: Tensor | None = None
    ) -> HeadOutput:
        """Logits of ``embedding (B, D)`` for ``labels (B,)`` (``None``: all unlabelled).

        ``classes``: optional sorted unique class ids ``(C',)`` to score instead of sampling
        (e.g. a teacher head scored on the student's ``HeadOutput.classes``); labels outside
        them become target ``-1``.
        """
        labels = self._check(embedding, labels)
        if classes is not None:
            classes = self._check_classes(classes.to(device=labels.device, dtype=torch.long))
        elif self.partial_fc and self.training and self.sample_rate < 1:
            classes = self.sample_classes(labels)
        weight, bias, targets = self.weight, self.bias, labels
        if classes is not None:
            weight, bias = weight[classes], None if bias is None else bias[classes]
            pos = torch.searchsorted(classes, labels).clamp_max(classes.numel() - 1)
            targets = torch.where(classes[pos] == labels, pos, torch.full_like(labels, -1))
        with torch.autocast(device_type=embedding.device.type, enabled=False):
            logits, margin_logits = self._scores(
                embedding.float(), weight.float(), None if bias is None else bias.float(), targets
            )
        return HeadOutput(logits, margin_logits, targets, classes)

    @staticmethod
    def loss(out: HeadOutput) -> Tensor:
        """Cross-entropy on ``margin_logits``, mean over labelled rows (0 if there are none)."""
        ce = F.cross_entropy(out.margin_logits, out.targets, ignore_index=-1, reduction="sum")
        return ce / (out.targets >= 0).sum().clamp_min(1)

    def extra_repr(self) -> str:
        pfc = f", partial_fc=True, sample_rate={self.sample_rate}" if self.partial_fc else ""
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}{pfc}"


class CosineHead(ClassifierHead):
    """``s * cos(theta)`` logits; subclasses define the target-class cosine ``psi(cos)``."""

    def __init__(self, num_classes: int, embedding_size: int = 512, *, scale: float, **kw):
        super().__init__(num_classes, embedding_size, **kw)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)

    def _target(self, cos_y: Tensor) -> Tensor:
        raise NotImplementedError

    def _scores(self, x: Tensor, w: Tensor, b: Tensor | None, targets: Tensor):
        cos = F.linear(F.normalize(x, dim=1), F.normalize(w, dim=1)).clamp(-1.0, 1.0)  # (B, C')
        col = targets.clamp_min(0)[:, None]  # (B, 1); unlabelled rows rewrite column 0 as is
        cos_y = cos.gather(1, col).squeeze(1)  # (B,)
        psi = torch.where(targets >= 0, self._target(cos_y), cos_y)
        return self.scale * cos, self.scale * cos.scatter(1, col, psi[:, None])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"


class ArcFace(CosineHead):
    """Additive angular margin (Deng et al., "ArcFace", CVPR 2019).

    ``margin_logits[i, j] = s * cos(theta_ij + m * [j = y_i])``; defaults ``s=64, m=0.5``,
    ``0 <= m < pi``.

    ``fallback`` chooses the target logit where ``cos(theta + m)`` stops decreasing in theta:
      * ``"cosface"`` (default, the paper's released code and the original arcface_torch
        ``ArcFace``): for ``theta_y > pi - m`` use ``cos(theta_y) - m * sin(m)``, a CosFace-like
        margin that keeps the target logit monotonic in theta;
      * ``"easy"`` (the "easy margin" switch there): margin only where ``cos(theta_y) > 0``;
      * ``"none"``: ``cos(theta_y + m)`` everywhere (today's arcface_torch CombinedMarginLoss).
    ``straight_through=True`` computes the margin on the detached cosine and adds the
    difference, so the forward value is unchanged but the gradient is the plain cosine's, as
    CombinedMarginLoss does by editing logits in place under ``no_grad``. That code is
    ``fallback="none", straight_through=True``; the default follows the paper's formula.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        *,
        scale: float = 64.0,
        margin: float = 0.5,
        fallback: str = "cosface",
        straight_through: bool = False,
        **kw,
    ) -> None:
        super().__init__(num_classes, embedding_size, scale=scale, **kw)
        if not 0.0 <= margin < math.pi:
            raise ValueError(f"ArcFace margin must be in [0, pi) radians, got {margin!r}")
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown ArcFace fallback {fallback!r}; valid: {FALLBACKS}")
        self.margin, self.fallback = float(margin), fallback
        self.straight_through = bool(straight_through)

    def _target(self, cos_y: Tensor) -> Tensor:
        c = cos_y.detach() if self.straight_through else cos_y
        m = self.margin
        sin = (1.0 - c * c).clamp_min(1e-12).sqrt()
        psi = c * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        if self.fallback == "cosface":
            psi = torch.where(c > math.cos(math.pi - m), psi, c - m * math.sin(m))
        elif self.fallback == "easy":
            psi = torch.where(c > 0, psi, c)
        return cos_y + (psi - c) if self.straight_through else psi


class CosFace(CosineHead):
    """Additive cosine margin (Wang et al., "CosFace", CVPR 2018; AM-softmax, Wang et al. 2018).

    ``margin_logits[i, j] = s * (cos(theta_ij) - m * [j = y_i])``; defaults ``s=64, m=0.4``
    (arcface_torch's CosFace; the paper used ``s=64, m=0.35``), ``0 <= m <= 1``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        *,
        scale: float = 64.0,
        margin: float = 0.4,
        **kw,
    ) -> None:
        super().__init__(num_classes, embedding_size, scale=scale, **kw)
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"CosFace margin must be in [0, 1], got {margin!r}")
        self.margin = float(margin)

    def _target(self, cos_y: Tensor) -> Tensor:
        return cos_y - self.margin


class SoftmaxHead(ClassifierHead):
    """Plain linear classifier: ``logits = margin_logits = x W^T + b`` (no normalisation).

    ``bias=True`` by default; ``W ~ N(0, 0.01)``, ``b = 0``. Partial FC samples rows of both.
    """

    def __init__(self, num_classes: int, embedding_size: int = 512, *, bias: bool = True, **kw):
        super().__init__(num_classes, embedding_size, **kw)
        if bias:
            self.bias = nn.Parameter(torch.zeros(num_classes))

    def _scores(self, x: Tensor, w: Tensor, b: Tensor | None, targets: Tensor):
        logits = F.linear(x, w, b)  # (B, C')
        return logits, logits


#: name -> head class; ``build_head(name, num_classes=..., embedding_size=..., ...)``
HEADS: dict[str, type[ClassifierHead]] = {
    "arcface": ArcFace,
    "cosface": CosFace,
    "softmax": SoftmaxHead,
}


def build_head(name: str, **kwargs) -> ClassifierHead:
    """Build a registered head; the head remembers ``arch`` and ``arch_kwargs``."""
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; valid names: {', '.join(sorted(HEADS))}")
    try:
        head = HEADS[name](**kwargs)
    except TypeError as err:  # an unknown or missing keyword: say which head refused it
        raise TypeError(f"build_head({name!r}): {err}") from None
    head.arch, head.arch_kwargs = name, dict(kwargs)
    return head


__all__ = [
    "FALLBACKS",
    "HEADS",
    "ArcFace",
    "ClassifierHead",
    "CosFace",
    "CosineHead",
    "HeadOutput",
    "SoftmaxHead",
    "build_head",
]
