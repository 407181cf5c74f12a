"""Relational distillation on embeddings: DarkRank and RKD.

**DarkRank** (Chen, Wang, Zhang, "DarkRank: Accelerating Deep Metric Learning via Cross Sample
Similarities Transfer", AAAI 2018, arXiv:1707.01220). Every sample of the batch is a query q;
its similarity to another sample i is, on L2-normalised embeddings ``e^ = e / ||e||``::

    S(q, i) = -alpha * d(e^_q, e^_i)^beta,   d = ||e^_q - e^_i||_2 ("l2") or 1 - cos ("cos")

The teacher's ranking ``pi_T(q)`` sorts the other samples (the query excluded) by descending
teacher score and keeps the top ``list_len``. Plackett-Luce probability of an order ``pi`` of
that list under scores S (denominators over the list only, as both re-implementations do)::

    log P(pi | S) = sum_k [ S_pi(k) - log sum_{l >= k} exp S_pi(l) ]     (logcumsumexp, stable)

    variant="hard" (ListMLE):  L = mean_q -log P(pi_T(q) | S_student)
    variant="soft" (ListNet):  L = mean_q sum_{pi in perms(list)} P_T(pi) log(P_T(pi) / P_S(pi)),
                               P_T(pi) = P(pi | S_teacher), P_S(pi) = P(pi | S_student)

``soft`` sums over all ``list_len!`` orders, so ``list_len <= 6`` (720). Defaults alpha = 3,
beta = 3, list_len = 4 follow two public re-implementations (an MXNet Gluon ``DarkRankLoss``
and a PyTorch ``DarkRankLoss``; paper values UNVERIFIED); they disagree on whether the list
length counts the query (the MXNet hard loss ranks 3 neighbours, its soft loss 4): here
``list_len`` counts neighbours, query excluded, as the PyTorch one. ``list_len=None`` ranks all
B - 1 other samples (``hard`` only: the full-list ListMLE, linear cost). The paper adds DarkRank
to the student's own metric losses; facekd: weight 1 on top of ArcFace (METHODS 4.5, 7d.10).

**RKD** (Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019) on raw embeddings
``t (B, D_t)`` (teacher) and ``s (B, D_s)`` (student, any D)::

    psi_D(i, j)    = ||x_i - x_j||_2 / mu,   mu = mean of the non-zero pairwise distances
    psi_A(i, j, k) = < (x_i - x_j) / ||x_i - x_j||, (x_k - x_j) / ||x_k - x_j|| >
    L = dist_weight * Huber(psi_D^S, psi_D^T) + angle_weight * Huber(psi_A^S, psi_A^T)

Huber = ``smooth_l1`` (delta 1) *averaged* over all B^2 pairs and B^3 triplets (degenerate ones
included, 0 on both sides), as mdistiller ``RKD.py``; the paper *sums* over pairs/triplets.
Defaults (mdistiller, METHODS 7b): ``dist_weight=25``, ``angle_weight=50``, ``squared=False``,
``eps=1e-12``; the paper used (1, 2) for metric learning [UNVERIFIED]. Both terms are invariant
to a global scale (and rotation) of either embedding. Memory: the angle term holds (B, B, D)
differences and (B, B, B) angles. Gram products of both losses run in float32 with autocast
off (bf16 ``1 - cos`` cannot resolve near neighbours).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from facekd.losses.base import DistillLoss
from facekd.types import Batch, ModelOutput

VARIANTS = ("hard", "soft")
METRICS = ("l2", "cos")
MAX_SOFT_LIST = 6


def _upcast(x: Tensor) -> Tensor:
    """Half precision -> float32 (losses are computed in float32 or float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def full_precision(x: Tensor):
    """Autocast off for Gram products: bf16 ``1 - cos`` loses the near neighbours that ranks
    and distances are made of (numerics, as in the heads; not device handling)."""
    return torch.autocast(x.device.type, enabled=False)


def darkrank_scores(emb: Tensor, alpha: float = 3.0, beta: float = 3.0, metric: str = "l2"):
    """``S = -alpha * d^beta`` between L2-normalised rows: ``(B, D) -> (B, B)``."""
    e = F.normalize(_upcast(emb), dim=1)
    with full_precision(e):
        cos = e @ e.t()  # (B, B)
    if metric == "l2":
        d = (2.0 - 2.0 * cos).clamp_min(1e-12).sqrt()
    elif metric == "cos":
        d = (1.0 - cos).clamp_min(1e-12)
    else:
        raise ValueError(f"unknown DarkRank metric {metric!r}; valid: {METRICS}")
    return -alpha * d.pow(beta)


def plackett_luce_log_prob(ranked: Tensor) -> Tensor:
    """``log P(order | scores)`` for scores given in rank order along the last dim."""
    tail = torch.logcumsumexp(ranked.flip(-1), dim=-1).flip(-1)  # log sum_{l >= k} exp s_l
    return (ranked - tail).sum(-1)


def teacher_ranking(scores_t: Tensor, list_len: int | None) -> Tensor:
    """Indices ``(B, L)`` of each query's top-L neighbours by teacher score, query excluded."""
    b = scores_t.shape[0]
    if b < 2:
        raise ValueError("DarkRank needs a batch of at least 2 samples")
    length = b - 1 if list_len is None else min(list_len, b - 1)
    eye = torch.eye(b, dtype=torch.bool, device=scores_t.device)
    masked = scores_t.detach().masked_fill(eye, float("-inf"))
    return masked.argsort(dim=1, descending=True, stable=True)[:, :length]


def darkrank_loss(
    emb_s: Tensor,
    emb_t: Tensor,
    variant: str = "hard",
    alpha: float = 3.0,
    beta: float = 3.0,
    list_len: int | None = 4,
    metric: str = "l2",
) -> Tensor:
    """DarkRank on embeddings ``(B, D_s)``, ``(B, D_t)`` (see the module docstring)."""
    if emb_s.shape[0] != emb_t.shape[0]:
        raise ValueError(f"batch sizes differ: {tuple(emb_s.shape)} vs {tuple(emb_t.shape)}")
    emb_s = _upcast(emb_s)
    s_s = darkrank_scores(emb_s, alpha, beta, metric)
    s_t = darkrank_scores(emb_t.detach().to(emb_s.dtype), alpha, beta, metric)
    rank = teacher_ranking(s_t, list_len)  # (B, L)
    ranked_s = s_s.gather(1, rank)  # (B, L) student scores in the teacher's order
    if variant == "hard":
        return -plackett_luce_log_prob(ranked_s).mean()
    if variant != "soft":
        raise ValueError(f"unknown DarkRank variant {variant!r}; valid: {VARIANTS}")
    length = rank.shape[1]
    if length > MAX_SOFT_LIST:
        raise ValueError(f"soft DarkRank enumerates list_len! orders; list_len <= {MAX_SOFT_LIST}")
    perms = torch.tensor(list(itertools.permutations(range(length))), device=rank.device)
    ranked_t = s_t.gather(1, rank)
    logp_t = plackett_luce_log_prob(ranked_t[:, perms])  # (B, L!)
    logp_s = plackett_luce_log_prob(ranked_s[:, perms])  # (B, L!)
    return (logp_t.exp() * (logp_t - logp_s)).sum(1).mean()


class DarkRank(DistillLoss):
    """DarkRank cross-sample similarity transfer (see the module docstring).

    Args:
        variant: ``"hard"`` (ListMLE, default) | ``"soft"`` (KL over all orders).
        alpha, beta: score ``-alpha * d^beta`` (3, 3).
        list_len: neighbours ranked per query, query excluded (4); ``None``: all (hard only).
        metric: ``"l2"`` (Euclidean on normalised embeddings) | ``"cos"`` (1 - cosine).
    """

    requires = frozenset({"embedding"})

    def __init__(
        self,
        variant: str = "hard",
        alpha: float = 3.0,
        beta: float = 3.0,
        list_len: int | None = 4,
        metric: str = "l2",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown DarkRank variant {variant!r}; valid: {VARIANTS}")
        if metric not in METRICS:
            raise ValueError(f"unknown DarkRank metric {metric!r}; valid: {METRICS}")
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"alpha and beta must be > 0, got {alpha}, {beta}")
        if list_len is not None and int(list_len) < 1:
            raise ValueError(f"list_len must be >= 1 or None, got {list_len!r}")
        if variant == "soft" and (list_len is None or list_len > MAX_SOFT_LIST):
            raise ValueError(f"soft DarkRank needs 1 <= list_len <= {MAX_SOFT_LIST}")
        self.variant, self.metric = variant, metric
        self.alpha, self.beta = float(alpha), float(beta)
        self.list_len = None if list_len is None else int(list_len)

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        return darkrank_loss(
            student.embedding,
            teacher.embedding,
            self.variant,
            self.alpha,
            self.beta,
            self.list_len,
            self.metric,
        )

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, alpha={self.alpha}, beta={self.beta}, "
            f"list_len={self.list_len}, metric={self.metric!r}"
        )


def pairwise_distances(x: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """Euclidean distances ``(B, D) -> (B, B)`` with a zero diagonal (mdistiller ``_pdist``)."""
    sq = x.pow(2).sum(dim=1)
    with full_precision(x):
        gram = x @ x.t()  # (B, B)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * gram).clamp_min(eps)
    if not squared:
        d = d.sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def rkd_distance_loss(f_s: Tensor, f_t: Tensor, squared: bool = False, eps: float = 1e-12):
    """Huber between mean-normalised pairwise distances (scale-invariant)."""
    f_s = _upcast(f_s)
    d_t = pairwise_distances(f_t.detach().to(f_s.dtype), squared, eps)
    d_t = d_t / d_t[d_t > 0].mean()
    d_s = pairwise_distances(f_s, squared, eps)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def _angles(x: Tensor) -> Tensor:
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # (B, B, D): x_j - x_i
    with full_precision(x):
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # (B*B*B,)


def rkd_angle_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Huber between the cosines of all triplet angles ``(B^3,)`` (scale-invariant)."""
    f_s = _upcast(f_s)
    return F.smooth_l1_loss(_angles(f_s), _angles(f_t.detach().to(f_s.dtype)))


def rkd_loss(
    f_s: Tensor,
    f_t: Tensor,
    dist_weight: float = 25.0,
    angle_weight: float = 50.0,
    squared: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """``dist_weight * L_D + angle_weight * L_A`` on ``(B, D_s)``, ``(B, D_t)`` features."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"batch sizes differ: {tuple(f_s.shape)} vs {tuple(f_t.shape)}")
    if f_s.shape[0] < 2:
        raise ValueError("RKD needs a batch of at least 2 samples")
    f_s = _upcast(f_s).flatten(1)
    f_t = f_t.detach().flatten(1).to(f_s.dtype)
    loss = _upcast(f_s).new_zeros(())
    if dist_weight:
        loss = loss + dist_weight * rkd_distance_loss(f_s, f_t, squared, eps)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(f_s, f_t)
    return loss


class RKD(DistillLoss):
    """Relational KD (distance + angle) on embeddings (see the module docstring)."""

    requires = frozenset({"embedding"})

    def __init__(
        self,
        dist_weight: float = 25.0,
        angle_weight: float = 50.0,
        squared: bool = False,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if dist_weight < 0 or angle_weight < 0 or dist_weight + angle_weight == 0:
            raise ValueError(
                f"RKD weights must be >= 0 and not both 0, got {dist_weight}, {angle_weight}"
            )
        self.dist_weight, self.angle_weight = float(dist_weight), float(angle_weight)
        self.squared, self.eps = bool(squared), float(eps)

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> Tensor:
        return rkd_loss(
            student.embedding,
            teacher.embedding,
            self.dist_weight,
            self.angle_weight,
            self.squared,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"dist_weight={self.dist_weight}, angle_weight={self.angle_weight}"
