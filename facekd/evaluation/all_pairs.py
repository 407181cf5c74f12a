"""All-pairs verification: TAR at a low FAR over every pair of a set's faces.

A 10-fold pair protocol is saturated for good models: LFW-mini's 1,200 pairs leave the teacher
4 errors, so an int8 or distillation loss of real size does not show. Every mated and non-mated
pair of the set's ``M`` distinct faces gives ``M (M - 1) / 2`` comparisons (LFW-mini: 1,583
faces, about 1.25 million, of which ~4k mated), enough to read TAR at FAR = 1e-4 (IJB-style
1:1 on images instead of templates).

Definitions (cosine similarity ``s = <e_i, e_j>`` of L2-normalised embeddings, ``i < j``;
mated when the identities are equal):

* ``n_imp`` impostor scores sorted in decreasing order ``z_0 >= z_1 >= ...``;
  ``K = floor(FAR * n_imp)`` impostors may be accepted, so the threshold is ``t = z_K`` and a
  pair is accepted iff ``s > t`` (the observed FAR is then ``<= FAR``; with no ties exactly
  ``K / n_imp``). ``TAR = #{mated s > t} / n_mated``. This is the "conservative" point of the
  ROC (``facekd.evaluation.verification.tar_at_far(mode='conservative')``: the largest TPR
  whose FPR does not exceed the target), computed by counting instead of a curve.
* A FAR below ``1 / n_imp`` cannot be measured on the set: its TAR is NaN, not a guess.

Memory: scores are built in row blocks as float64; 3 M pairs (a 2,600-face set) take ~25 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facekd.evaluation.verification import l2_normalize

ALL_PAIRS_FARS = (1e-3, 1e-4)


@dataclass
class AllPairsResult:
    """TAR per FAR on all pairs, with the thresholds and the pair counts behind them."""

    tar_at_far: dict[float, float]
    threshold: dict[float, float]  # cosine; accept iff s > threshold
    n_mated: int
    n_impostor: int
    n_images: int
    n_identities: int

    def to_dict(self) -> dict:
        return {
            "tar_at_far": {f"{k:g}": v for k, v in self.tar_at_far.items()},
            "threshold": {f"{k:g}": v for k, v in self.threshold.items()},
            "n_mated": self.n_mated,
            "n_impostor": self.n_impostor,
            "n_images": self.n_images,
            "n_identities": self.n_identities,
        }


def all_pair_scores(embeddings, identities: Sequence, block: int = 1024):
    """``(mated scores, impostor scores)``: cosine of every ``i < j`` pair, float64."""
    emb = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    ids = np.unique(np.asarray([str(x) for x in identities]), return_inverse=True)[1]
    if len(ids) != len(emb):
        raise ValueError(f"{len(identities)} identities for {len(emb)} embeddings")
    mated, impostor = [], []
    for start in range(0, len(emb) - 1, block):
        rows = slice(start, min(start + block, len(emb)))
        sims = emb[rows] @ emb.T  # (b, M)
        same = ids[rows, None] == ids[None, :]
        col = np.arange(len(emb))[None, :]
        upper = col > np.arange(rows.start, rows.stop)[:, None]  # j > i only
        mated.append(sims[upper & same])
        impostor.append(sims[upper & ~same])
    return np.concatenate(mated), np.concatenate(impostor)


def all_pairs_tar(
    embeddings, identities: Sequence, fars: Sequence[float] = ALL_PAIRS_FARS
) -> AllPairsResult:
    """TAR at each FAR over all pairs of ``embeddings (M, D)`` with ``identities (M,)``.

    Raises ``ValueError`` when the set has no mated or no non-mated pair."""
    mated, impostor = all_pair_scores(embeddings, identities)
    if not len(mated) or not len(impostor):
        raise ValueError(
            f"all-pairs TAR needs mated and non-mated pairs: {len(mated)} mated, "
            f"{len(impostor)} non-mated"
        )
    desc = np.sort(impostor)[::-1]
    tar, thr = {}, {}
    for far in fars:
        if not 0 < far <= 1:
            raise ValueError(f"FAR must be in (0, 1], got {far}")
        k = int(np.floor(far * len(desc) * (1 + 1e-12)))
        if far * len(desc) < 1:  # not one impostor may be accepted: unmeasurable here
            tar[float(far)], thr[float(far)] = float("nan"), float("nan")
            continue
        t = float(desc[k]) if k < len(desc) else -np.inf
        thr[float(far)] = t
        tar[float(far)] = float(np.count_nonzero(mated > t) / len(mated))
    n_ids = len(set(str(x) for x in identities))
    return AllPairsResult(tar, thr, len(mated), len(impostor), len(embeddings), n_ids)
