"""Activation-based attention transfer (Zagoruyko & Komodakis, "Paying More Attention to
Attention: Improving the Performance of Convolutional Neural Networks via Attention
Transfer", ICLR 2017, arXiv:1612.03928).

Spatial attention of a map ``A (B, C, H, W)``: ``F(A) = sum_c |A_c|^p`` (p = 2), flattened to
``Q (B, H*W)`` and L2-normalised, ``q = Q / ||Q||_2``. Per (teacher, student) stage pair j::

    mode="code":   L_j = mean over B*H*W of (q_S - q_T)^2        (authors' utils.py, mdistiller)
    mode="paper":  L_j = 1/B * sum_b || q_S[b] - q_T[b] ||_2     (Eq. 2: a norm, not squared)
    L = sum_j w_j * L_j                                           (w_j = ``pair_weights``, 1)

Paper vs code (torchdistill ``ATLoss(mode='paper'|'code')``, attention-transfer issue #34):
the paper's Eq. (2) is ``beta/2 * sum_j || q_S^j - q_T^j ||_p`` (a norm), the authors' code
squares the difference and averages it over batch and positions, and uses the channel *mean*
(``A.pow(2).mean(1)``) instead of the sum; the mean vs sum is irrelevant after normalising
(both modes here use the sum). The code also uses ``A.pow(p)`` without ``|.|``, equal for
p = 2. ``paper`` follows torchdistill: Euclidean norm per sample, summed over the batch and
divided by B. The paper sets ``beta = 10^3`` divided by (elements of the attention map x batch
size) per layer [UNVERIFIED wording]; per-layer ``pair_weights`` can express that.
The loss is unweighted: the config weight carries beta / 2 (authors: 500) or mdistiller's
1000 (METHODS 7b: ``weight: 1000``).

Pairs (METHODS 7a): teacher iResNet ``layer1..4`` = stages 1..4 (56/28/14/7 px at 112) with
student MobileFaceNet ``layers[1], [3], [5], [7]`` = stages 0..3 (same sizes): default
``pairs = [(1, 0), (2, 1), (3, 2), (4, 3)]`` (teacher_stage, student_stage). Channel-free:
no adapters, any channel counts. Spatial mismatch: the larger *feature map* is adaptive-
average-pooled to the smaller size before the attention map (mdistiller ``AT.py``; OURS for
faces). Shapes: stage maps ``(B, C_i, H_i, W_i)``; attention maps ``(B, H*W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facekd.losses.base import DistillLoss
from facekd.losses.fitnets import pool_to_match, select_stage
from facekd.types import Batch, ModelOutput

MODES = ("code", "paper")
DEFAULT_PAIRS = ((1, 0), (2, 1), (3, 2), (4, 3))


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """``normalize(sum_c |A_c|^p)`` flattened: ``(B, C, H, W) -> (B, H*W)``."""
    att = feat.float().abs().pow(p).sum(dim=1).flatten(1)  # (B, H*W)
    return F.normalize(att, dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0, mode: str = "code") -> Tensor:
    """Attention-transfer distance for one stage pair (larger map pooled to the smaller)."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"batch sizes differ: {tuple(f_s.shape)} vs {tuple(f_t.shape)}")
    f_s, f_t = pool_to_match(f_s, f_t, "avg")
    diff = attention_map(f_s, p) - attention_map(f_t, p)  # (B, H*W)
    if mode == "code":
        return diff.pow(2).mean()
    if mode == "paper":
        return diff.norm(dim=1).sum() / diff.shape[0]
    raise ValueError(f"unknown attention-transfer mode {mode!r}; valid: {MODES}")


def _pairs(pairs) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple((int(t), int(s)) for t, s in pairs)
    except (TypeError, ValueError):
        raise ValueError(
            f"pairs must be a list of (teacher_stage, student_stage) integer pairs, got {pairs!r}"
        ) from None
    if not out:
        raise ValueError("pairs must not be empty")
    return out


def check_pair_weights(weights, n: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * n
    weights = tuple(float(w) for w in weights)
    if len(weights) != n or any(w < 0 for w in weights):
        raise ValueError(f"pair_weights must be {n} non-negative numbers, got {weights!r}")
    return weights


class AttentionTransfer(DistillLoss):
    """Attention transfer over stage pairs (see the module docstring).

    Args:
        pairs: ``[(teacher_stage, student_stage), ...]`` indices into ``stages``.
        p: exponent of the attention map (paper and code: 2).
        mode: ``"code"`` (squared, averaged; default) | ``"paper"`` (Euclidean norm).
        pair_weights: optional per-pair weights (default 1 each).
    """

    requires = frozenset({"stages"})

    def __init__(
        self,
        pairs=DEFAULT_PAIRS,
        p: float = 2.0,
        mode: str = "code",
        pair_weights=None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown attention-transfer mode {mode!r}; valid: {MODES}")
        if not p > 0:
            raise ValueError(f"p must be > 0, got {p!r}")
        self.pairs = _pairs(pairs)
        self.pair_weights = check_pair_weights(pair_weights, len(self.pairs))
        self.p, self.mode = float(p), mode

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """Nothing to train; checks that every paired stage exists (clear error otherwise)."""
        for t, s in self.pairs:
            select_stage(teacher, t, "teacher")
            select_stage(student, s, "student")

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        total = student.embedding.new_zeros((), dtype=torch.float32)
        for (t, s), w in zip(self.pairs, self.pair_weights, strict=True):
            f_t = select_stage(teacher, t, "teacher")
            f_s = select_stage(student, s, "student")
            total = total + w * at_loss(f_s, f_t, self.p, self.mode)
        return total

    def extra_repr(self) -> str:
        return f"pairs={list(self.pairs)}, p={self.p}, mode={self.mode!r}"
