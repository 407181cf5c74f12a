"""Triplet distillation: a triplet loss whose margin comes from the teacher (Feng et al.).

Y. Feng, H. Wang, H. Hu, D. T. Yi, "Triplet Distillation for Deep Face Recognition",
arXiv:1905.04457 (ICML 2019 workshop); extended in ICIP 2020, pp. 808-812. Reference code:
david-svitov/margindistillation ("MG", MXNet) ``train/train.py`` L269-325 (METHODS.md §3).

For triplets ``(a, p, n)`` with student distance ``D`` and teacher distance ``T`` (same metric,
both on L2-normalised embeddings; teacher terms carry no gradient)::

    d_i  = max(T(a_i, n_i) - T(a_i, p_i), 0)
    F(d) = (m_max - m_min) / d_max * min(d, d_max) + m_min               in [m_min, m_max]
    L    = 1/N sum_i max(D(a_i, p_i) - D(a_i, n_i) + F(d_i), 0)

``adaptive=False`` is the plain triplet loss (Schroff et al., FaceNet, CVPR 2015) with
``F == margin``; ``m_min == m_max == m`` gives the same loss.

Options (defaults: METHODS §7b, MG's values):

* ``metric``: ``"l2sq"`` MG "L2": ``||u^ - v^||^2 = 2 - 2 cos`` in [0, 4] (default);
  ``"angle"`` MG "cos": ``arccos(cos)`` in [0, pi], with the cosine clamped to
  ``[-1 + 1e-7, 1 - 1e-7]`` (MG clips at +-1; at exactly 1 the arccos gradient is infinite, which
  identical images drawn twice by the P x K sampler would hit); ``"cosine_distance"``: ``1 - cos``.
* ``m_min=0.2``, ``m_max=0.5`` (MG ``Mmin``/``Mmax``; the paper's own values UNVERIFIED).
* ``dmax``: ``"batch"`` (MG: the maximum of ``d`` over the selected triplets of this batch, then
  the clip is a no-op) or a fixed float > 0 (``d`` clipped at it). Guard (OURS, MG has none):
  the divisor is ``max(d_max, eps)``, so a batch with all ``d = 0`` gives ``F = m_min``.
* ``mining`` on the P x K batch (``facekd.data.sampler.PKBatchSampler``; ``batch.labels``):
  ``"all"`` every valid triplet; ``"semihard"`` (default; FaceNet, MG's iterator) those with
  ``D_ap < D_an < D_ap + mining_alpha``; ``"hard"`` batch-hard (Hermans et al., 2017): per anchor
  its farthest positive and nearest negative. Mining distances are always squared L2 of the
  normalised *student* embeddings (detached), whatever ``metric`` (as MG's iterator), and the
  semi-hard window uses the fixed ``mining_alpha=0.35`` (MG ``triplet_alpha``), not ``F(d)``.
  ``"hard"`` picks the same triplets under all three metrics (they are monotone in the cosine).
  Labels < 0 (unlabelled) take part in no triplet.

Where facekd departs from MG: MG mines offline on bags of 7,200 images (400 identities x 18)
embedded by the current student and draws *one random* semi-hard negative per anchor-positive
pair, then trains on batches of 60 such triplets; facekd mines online inside each P x K batch
and averages over *all* selected triplets (deterministic, no RNG). Within a batch this weights an
anchor-positive pair by its number of semi-hard negatives rather than once.

Empty triplet sets (one identity in the batch, no semi-hard negative, all labels -1) give a
zero that is still connected to the student's graph (zero gradients, never NaN).

Shapes: embeddings ``(B, D)``, labels ``(B,)``; pairwise distances ``(B, B)``; the selection
mask is ``(B, B, B)`` booleans (``"all"``/``"semihard"``), the selected triplets ``(N,)`` indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facekd.losses.base import DistillLoss
from facekd.types import Batch, ModelOutput

METRICS = ("l2sq", "angle", "cosine_distance")
MININGS = ("all", "semihard", "hard")
COS_CLAMP = 1e-7  # angle metric: cos clamped to [-1 + COS_CLAMP, 1 - COS_CLAMP]


def check_options(metric, m_min, m_max, dmax, mining, mining_alpha, margin) -> None:
    """Validate the fidelity switches (shared by the function and the module)."""
    if metric not in METRICS:
        raise ValueError(f"unknown triplet metric {metric!r}; valid: {METRICS}")
    if mining not in MININGS:
        raise ValueError(f"unknown triplet mining {mining!r}; valid: {MININGS}")
    if not 0 <= m_min <= m_max:
        raise ValueError(f"need 0 <= m_min <= m_max, got m_min={m_min}, m_max={m_max}")
    if dmax != "batch" and (isinstance(dmax, bool) or not isinstance(dmax, (int, float))):
        raise ValueError(f"dmax must be 'batch' or a positive number, got {dmax!r}")
    if dmax != "batch" and dmax <= 0:
        raise ValueError(f"a fixed dmax must be > 0, got {dmax}")
    if mining_alpha <= 0 or margin < 0:
        raise ValueError(f"need mining_alpha > 0 and margin >= 0, got {mining_alpha}, {margin}")


def _distance_from_cosine(cos: Tensor, metric: str) -> Tensor:
    if metric == "l2sq":
        return (2.0 - 2.0 * cos).clamp_min(0.0)  # ||u^ - v^||^2
    if metric == "angle":
        return torch.acos(cos.clamp(-1.0 + COS_CLAMP, 1.0 - COS_CLAMP))
    return 1.0 - cos


def embedding_distance(x: Tensor, y: Tensor, metric: str = "l2sq") -> Tensor:
    """Row-wise distance ``(N,)`` between ``(N, D)`` embeddings, after L2 normalisation."""
    cos = (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(dim=1)
    return _distance_from_cosine(cos, metric)


def pairwise_distance(e: Tensor, metric: str = "l2sq") -> Tensor:
    """All-pairs distance ``(B, B)`` of ``(B, D)`` embeddings, after L2 normalisation."""
    u = F.normalize(e, dim=1)
    return _distance_from_cosine(u @ u.t(), metric)


def adaptive_margin(
    d: Tensor, m_min: float = 0.2, m_max: float = 0.5, dmax="batch", eps: float = 1e-12
) -> Tensor:
    """``F(d) = m_min + (m_max - m_min) * min(d, d_max) / max(d_max, eps)`` for ``d >= 0``.

    ``dmax="batch"``: ``d_max = max(d)`` (0 for an empty ``d``); a float: fixed, ``d`` clipped.
    """
    d = d.detach()
    if dmax == "batch":
        d_max = d.max() if d.numel() else d.new_zeros(())
    else:
        d_max = d.new_tensor(float(dmax))
    return m_min + (m_max - m_min) * torch.minimum(d, d_max) / d_max.clamp_min(eps)


def triplet_hinge(
    s_ap: Tensor,
    s_an: Tensor,
    t_ap: Tensor | None = None,
    t_an: Tensor | None = None,
    *,
    m_min: float = 0.2,
    m_max: float = 0.5,
    dmax="batch",
    adaptive: bool = True,
    margin: float = 0.35,
    eps: float = 1e-12,
    reduce: bool = True,
) -> Tensor:
    """The loss on ``(N,)`` distances of N triplets (MG's batch layout: explicit triplets).

    ``s_*`` student, ``t_*`` teacher distances (anchor-positive, anchor-negative); the teacher
    ones are needed only when ``adaptive``. ``N = 0`` returns a graph-connected zero.
    ``reduce=False`` returns the ``(N,)`` hinges instead of their mean.
    """
    if adaptive:
        if t_ap is None or t_an is None:
            raise ValueError("adaptive (distillation) margins need teacher distances t_ap, t_an")
        d = (t_an.detach() - t_ap.detach()).clamp_min(0.0)
        m = adaptive_margin(d.to(s_ap.dtype), m_min, m_max, dmax, eps)
    else:
        m = margin
    hinge = (s_ap - s_an + m).clamp_min(0.0)  # (N,)
    if not reduce:
        return hinge
    return hinge.sum() / max(hinge.numel(), 1)


def mine_triplets(
    labels: Tensor, dist: Tensor, mining: str = "semihard", alpha: float = 0.35
) -> tuple[Tensor, Tensor, Tensor]:
    """Indices ``(a, p, n)``, each ``(N,)``, of the triplets selected in a labelled batch.

    ``dist`` ``(B, B)`` is the mining distance (squared L2 of normalised student embeddings in
    ``triplet_distillation_loss``). Ordered by (a, p, n) for ``"all"``/``"semihard"``, by
    anchor for ``"hard"`` (ties: the lowest index).
    """
    dist = dist.detach()
    b = labels.shape[0]
    valid = labels >= 0
    same = labels[:, None] == labels[None, :]
    both = valid[:, None] & valid[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=labels.device)
    pos = same & both & ~eye  # (B, B): a, p
    neg = ~same & both  # (B, B): a, n
    if mining == "hard":
        far_p = dist.masked_fill(~pos, float("-inf")).argmax(dim=1)  # (B,)
        near_n = dist.masked_fill(~neg, float("inf")).argmin(dim=1)  # (B,)
        a = torch.nonzero(pos.any(dim=1) & neg.any(dim=1)).flatten()
        return a, far_p[a], near_n[a]
    mask = pos[:, :, None] & neg[:, None, :]  # (B, B, B): a, p, n
    if mining == "semihard":
        d_ap, d_an = dist[:, :, None], dist[:, None, :]
        mask &= (d_ap < d_an) & (d_an < d_ap + alpha)
    elif mining != "all":
        raise ValueError(f"unknown triplet mining {mining!r}; valid: {MININGS}")
    a, p, n = mask.nonzero(as_tuple=True)
    return a, p, n


def triplet_distillation_loss(
    e_s: Tensor,
    e_t: Tensor | None,
    labels: Tensor,
    *,
    metric: str = "l2sq",
    m_min: float = 0.2,
    m_max: float = 0.5,
    dmax="batch",
    mining: str = "semihard",
    mining_alpha: float = 0.35,
    adaptive: bool = True,
    margin: float = 0.35,
    eps: float = 1e-12,
    stats: dict | None = None,
) -> Tensor:
    """Pure function behind ``TripletDistillation`` (module docstring).

    Args:
        e_s: ``(B, D)`` student embeddings (before normalisation).
        e_t: ``(B, D_t)`` teacher embeddings (detached here); ``None`` allowed when not adaptive.
        labels: ``(B,)`` identity ids, -1 = unlabelled.
        stats: optional dict that receives ``triplets`` (how many were mined) and ``active``
            (the fraction with a positive hinge, i.e. that give a gradient).
    """
    check_options(metric, m_min, m_max, dmax, mining, mining_alpha, margin)
    if e_s.dim() != 2 or labels.shape != (e_s.shape[0],):
        raise ValueError(
            f"need (B, D) embeddings and (B,) labels, got {tuple(e_s.shape)}, {tuple(labels.shape)}"
        )
    if e_s.dtype in (torch.float16, torch.bfloat16):  # distances need float32 under autocast
        e_s = e_s.float()
    d_s = pairwise_distance(e_s, metric)  # (B, B)
    mine = d_s if metric == "l2sq" else pairwise_distance(e_s.detach(), "l2sq")
    a, p, n = mine_triplets(labels, mine, mining, mining_alpha)
    t_ap = t_an = None
    if adaptive:
        if e_t is None or e_t.shape[0] != e_s.shape[0]:
            raise ValueError("triplet distillation needs (B, D_t) teacher embeddings")
        d_t = pairwise_distance(e_t.detach().to(e_s.dtype), metric)  # (B, B)
        t_ap, t_an = d_t[a, p], d_t[a, n]
    hinge = triplet_hinge(
        d_s[a, p],
        d_s[a, n],
        t_ap,
        t_an,
        m_min=m_min,
        m_max=m_max,
        dmax=dmax,
        adaptive=adaptive,
        margin=margin,
        eps=eps,
        reduce=False,
    )  # (N,)
    if stats is not None:
        stats["triplets"] = int(a.numel())
        stats["active"] = float((hinge.detach() > 0).float().mean()) if a.numel() else 0.0
    return hinge.sum() / max(hinge.numel(), 1)


class TripletDistillation(DistillLoss):
    """Triplet loss with teacher-adaptive margins (module docstring); ``adaptive=False`` is the
    plain fixed-margin triplet baseline. Keywords as ``triplet_distillation_loss``; ``margin``
    is used only when ``adaptive=False`` (default 0.35 = ``mining_alpha``, FaceNet's use of
    one alpha for selection and loss)."""

    requires = frozenset({"embedding"})
    needs_pk = True  # mines triplets within the identities of a P x K batch

    def __init__(
        self,
        metric: str = "l2sq",
        m_min: float = 0.2,
        m_max: float = 0.5,
        dmax: str | float = "batch",
        mining: str = "semihard",
        mining_alpha: float = 0.35,
        adaptive: bool = True,
        margin: float = 0.35,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        check_options(metric, m_min, m_max, dmax, mining, mining_alpha, margin)
        self.options = dict(
            metric=metric,
            m_min=float(m_min),
            m_max=float(m_max),
            dmax=dmax if dmax == "batch" else float(dmax),
            mining=mining,
            mining_alpha=float(mining_alpha),
            adaptive=bool(adaptive),
            margin=float(margin),
            eps=float(eps),
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        e_t = teacher.embedding if teacher is not None else None
        stats: dict = {}
        loss = triplet_distillation_loss(
            student.embedding, e_t, batch.labels, stats=stats, **self.options
        )
        self.last_stats = stats
        return loss
