"""Flow of solution procedure (FSP) matrices (Yim, Joo, Bae, Kim, "A Gift from Knowledge
Distillation: Fast Optimization, Network Minimization and Transfer Learning", CVPR 2017).

For two maps of one network with equal spatial size, ``F1 (B, m, h, w)`` and ``F2 (B, n, h, w)``::

    G[b, i, j] = 1/(h*w) * sum_{s,t} F1[b, i, s, t] * F2[b, j, s, t]       G: (B, m, n)
    (batched: F1.flatten(2) @ F2.flatten(2).transpose(1, 2) / (h*w))

    mode="paper": L = 1/B * sum_b sum_i lambda_i * || G_T^i[b] - G_S^i[b] ||_F^2   (squared)
    mode="code":  L = 1/B * sum_i lambda_i * sum_{b,j} || G_S^i[b, :, j] - G_T^i[b, :, j] ||_2

``paper`` is the paper's squared Frobenius distance with equal ``lambda_i`` (METHODS 4.4, 7d.9);
``code`` reproduces torchdistill's ``FSPLoss`` (column norms, not squared, summed), the common
public implementation (the authors released none). The paper trains in two stages (FSP only,
then the task loss): a schedule, as for FitNets (``ce_weight: 0`` then a second run).

Taps (OURS, METHODS 4.4): the paper pairs the input and output of each residual stage. facekd
reads maps from ``ModelOutput.stages`` (stage outputs only), so a stage's input is the previous
stage's output, and the default pairs are ``((t_in, t_out), (s_in, s_out))``::

    ((1, 2), (0, 1))   iResNet layer1 -> layer2   | MobileFaceNet layers[1] -> layers[3]  (28 px)
    ((2, 3), (1, 2))   iResNet layer2 -> layer3   | MobileFaceNet layers[3] -> layers[5]  (14 px)
    ((3, 4), (2, 3))   iResNet layer3 -> layer4   | MobileFaceNet layers[5] -> layers[7]  ( 7 px)

Within a pair the input map is larger (stride 2): the larger map is adaptive-max-pooled to the
smaller size (torchdistill's rule; ``pool="avg"`` available), since G needs equal h*w. METHODS'
table taps the first-block output instead (same size, no pooling), which ``stages`` does not
expose. Teacher and student G must have equal (m, n): where channels differ a 1x1 conv + BN
adapter maps the *student* map to the teacher's channel count (e.g. mbf 128 -> iResNet 64
channels at layer1; 256 -> 512 at layer4), created in ``build`` from the dry run, applied before
pooling, trained and saved with the adapters, discarded after training. Teacher and student
spatial sizes may differ (G does not depend on h, w). G is computed in float32 with autocast
off (a bf16 Gram of 3136-pixel maps is too coarse for a difference of Grams).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facekd.losses.attention import check_pair_weights
from facekd.losses.base import DistillLoss
from facekd.losses.fitnets import conv1x1_adapter, pool_to_match, select_stage
from facekd.types import Batch, ModelOutput

MODES = ("paper", "code")
POOLS = ("max", "avg")
DEFAULT_PAIRS = (((1, 2), (0, 1)), ((2, 3), (1, 2)), ((3, 4), (2, 3)))


def fsp_matrix(f1: Tensor, f2: Tensor, pool: str = "max") -> Tensor:
    """FSP matrix ``(B, m, n)`` of ``f1 (B, m, h1, w1)`` and ``f2 (B, n, h2, w2)``."""
    f1, f2 = pool_to_match(f1.float(), f2.float(), pool)
    hw = f1.shape[2] * f1.shape[3]
    with torch.autocast(f1.device.type, enabled=False):  # float32 Gram (numerics)
        return torch.bmm(f1.flatten(2), f2.flatten(2).transpose(1, 2)) / hw  # (B,m,HW)@(B,HW,n)


def fsp_distance(g_s: Tensor, g_t: Tensor, mode: str = "paper") -> Tensor:
    """Distance between FSP matrices ``(B, m, n)`` for one pair (see the module docstring)."""
    if g_s.shape != g_t.shape:
        raise ValueError(f"FSP matrices differ: student {tuple(g_s.shape)}, teacher {g_t.shape}")
    diff = g_s - g_t
    if mode == "paper":
        return diff.pow(2).sum(dim=(1, 2)).mean()
    if mode == "code":
        return diff.norm(dim=1).sum() / diff.shape[0]
    raise ValueError(f"unknown FSP mode {mode!r}; valid: {MODES}")


def _pairs(pairs) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    try:
        out = tuple(((int(t[0]), int(t[1])), (int(s[0]), int(s[1]))) for t, s in pairs)
    except (TypeError, ValueError, IndexError):
        raise ValueError(
            "pairs must be [((teacher_in, teacher_out), (student_in, student_out)), ...] "
            f"stage indices, got {pairs!r}"
        ) from None
    if not out:
        raise ValueError("pairs must not be empty")
    return out


class FSP(DistillLoss):
    """FSP-matrix distillation with student channel adapters (see the module docstring).

    Args:
        pairs: ``[((t_in, t_out), (s_in, s_out)), ...]`` stage indices.
        mode: ``"paper"`` (squared Frobenius; default) | ``"code"`` (torchdistill).
        pool: ``"max"`` | ``"avg"``: pooling of the larger map of a pair to the smaller.
        pair_weights: the ``lambda_i`` (default 1 each, as in the paper).
    """

    requires = frozenset({"stages"})

    def __init__(
        self, pairs=DEFAULT_PAIRS, mode: str = "paper", pool: str = "max", pair_weights=None
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown FSP mode {mode!r}; valid: {MODES}")
        if pool not in POOLS:
            raise ValueError(f"unknown FSP pool {pool!r}; valid: {POOLS}")
        self.pairs = _pairs(pairs)
        self.pair_weights = check_pair_weights(pair_weights, len(self.pairs))
        self.mode, self.pool = mode, pool
        self.adapters = nn.ModuleDict()
        self._built = False

    def build(self, student: ModelOutput, teacher: ModelOutput) -> None:
        """One 1x1 conv + BN per student map whose channels differ from its teacher map."""
        for i, ((t_in, t_out), (s_in, s_out)) in enumerate(self.pairs):
            for side, t, s in (("in", t_in, s_in), ("out", t_out, s_out)):
                f_t = select_stage(teacher, t, "teacher")
                f_s = select_stage(student, s, "student")
                if f_s.shape[1] != f_t.shape[1]:
                    self.adapters[f"p{i}_{side}"] = conv1x1_adapter(f_s.shape[1], f_t.shape[1], f_s)
        self._built = True

    def _student_map(self, student: ModelOutput, index: int, key: str) -> Tensor:
        f = select_stage(student, index, "student")
        return self.adapters[key](f) if key in self.adapters else f

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        if not self._built:
            raise RuntimeError("FSP.build() was not called (Distiller.prepare sizes it)")
        total = student.embedding.new_zeros((), dtype=torch.float32)
        for i, (((t_in, t_out), (s_in, s_out)), w) in enumerate(
            zip(self.pairs, self.pair_weights, strict=True)
        ):
            g_t = fsp_matrix(
                select_stage(teacher, t_in, "teacher"),
                select_stage(teacher, t_out, "teacher"),
                self.pool,
            )
            g_s = fsp_matrix(
                self._student_map(student, s_in, f"p{i}_in"),
                self._student_map(student, s_out, f"p{i}_out"),
                self.pool,
            )
            total = total + w * fsp_distance(g_s, g_t, self.mode)
        return total

    def extra_repr(self) -> str:
        return f"pairs={[list(map(list, p)) for p in self.pairs]}, mode={self.mode!r}"
