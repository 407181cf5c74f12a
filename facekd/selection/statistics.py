"""Per-neuron statistics behind the neuron-selection energy (METHODS.md §1.5, §1.6).

Luo, Zhu, Liu, Wang, Tang, "Face Model Compression by Distilling Knowledge from Neurons",
AAAI 2016. All inputs are teacher activations ``a`` of shape ``(N, D)`` (N images, D neurons),
float64; every function is vectorised over neurons.

* ``threshold_balanced_accuracy``: a 1-D threshold classifier per neuron, fitted on a train
  split (best balanced accuracy over all cuts between distinct sorted values and both
  polarities), scored by balanced accuracy on a held-out split [OURS: threshold rather than
  1-D logistic regression; both are allowed by METHODS §1.5].
* ``attribute_scores``: ``s_i = mean_k max(0, 2 acc_ik - 1)`` over a group of attributes
  [OURS: held-out accuracies below chance are clipped to 0 so that s is in [0, 1]].
* ``identity_scores`` (fallback, METHODS §1.6 [OURS]): ANOVA ``F_i`` over identities,
  ``s_IA = rank_normalise(log F)``, ``s_NA = SS_within / SS_total``.
* ``inhibition_rate``: firing rate ``mean_x 1[a > eps]`` (ReLU teachers) or the relative-std
  measure ``min(1, std_i / (tau median_j std_j))`` for signed (BN) embeddings [OURS].
* ``abs_correlation``: ``|corr(a_i, a_j)|`` with a zero diagonal; constant neurons have
  correlation 0 with everything.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

#: elements per (N, chunk) work array in ``threshold_balanced_accuracy``
_CHUNK_ELEMENTS = 1 << 22


def _sorted_cuts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``x`` ``(d, N)``: sort order, sorted values, and which of the N+1 cuts are valid."""
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    valid = np.ones((x.shape[0], x.shape[1] + 1), dtype=bool)
    valid[:, 1:-1] = xs[:, 1:] > xs[:, :-1]  # a cut between equal values is not a threshold
    return order, xs, valid


def _fit_and_score(order, xs, valid, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray):
    d, n = xs.shape  # neurons on axis 0: the cumulative sums run over contiguous memory
    pos = int(y_tr.sum())
    pos_below = np.zeros((d, n + 1), dtype=np.int32)
    np.cumsum(y_tr[order], axis=1, dtype=np.int32, out=pos_below[:, 1:])
    neg_below = np.arange(n + 1) - pos_below
    # rule "positive iff a > t" with the cut after the j smallest values
    ba = 0.5 * ((pos - pos_below) / pos + neg_below / (n - pos))  # (d, N+1)
    j = np.argmax(np.where(valid, np.abs(ba - 0.5), -1.0), axis=1)  # first best cut
    rows = np.arange(d)
    upward = ba[rows, j] >= 0.5  # else the flipped rule "positive iff a <= t"
    lo = xs[rows, np.maximum(j - 1, 0)]
    hi = xs[rows, np.minimum(j, n - 1)]
    t = np.where(j == 0, -np.inf, np.where(j == n, np.inf, 0.5 * (lo + hi)))
    pred = (x_te > t[:, None]) == upward[:, None]  # (d, N_te)
    tpr = (pred & y_te).sum(1) / y_te.sum()
    tnr = (~pred & ~y_te).sum(1) / (~y_te).sum()
    return 0.5 * (tpr + tnr)


def threshold_balanced_accuracy(
    x_tr: np.ndarray, labels_tr: np.ndarray, x_te: np.ndarray, labels_te: np.ndarray
) -> np.ndarray:
    """Held-out balanced accuracy ``(A, D)`` of per-neuron threshold classifiers.

    ``x_tr`` ``(N_tr, D)``, ``labels_tr`` ``(N_tr, A)`` bool, ``x_te`` ``(N_te, D)``,
    ``labels_te`` ``(N_te, A)`` bool. Every attribute needs both classes in both splits.
    A constant neuron has no valid threshold and scores exactly 0.5.
    """
    n, d = x_tr.shape
    num_attr = labels_tr.shape[1]
    out = np.empty((num_attr, d))
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, d, step):
        sl = slice(start, min(start + step, d))
        order, xs, valid = _sorted_cuts(np.ascontiguousarray(x_tr[:, sl].T))
        te = np.ascontiguousarray(x_te[:, sl].T)
        for k in range(num_attr):
            out[k, sl] = _fit_and_score(order, xs, valid, labels_tr[:, k], te, labels_te[:, k])
    return out


def holdout_split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) index split of ``range(n)`` from ``seed``."""
    perm = np.random.default_rng(seed).permutation(n)
    n_te = int(round(holdout * n))
    if n_te < 1 or n_te >= n:
        raise ValueError(f"holdout={holdout} leaves an empty split of {n} samples")
    return np.sort(perm[n_te:]), np.sort(perm[:n_te])


def attribute_scores(
    a: np.ndarray, labels: np.ndarray, holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-attribute usable flag ``(A,)`` and scores ``max(0, 2 acc - 1)`` ``(A, D)``.

    An attribute is unusable (flag False, scores 0) when a split lacks one of its classes.
    """
    tr, te = holdout_split(a.shape[0], holdout, seed)
    y = labels.astype(bool)
    usable = np.logical_and.reduce([y[s].any(0) & ~y[s].all(0) for s in (tr, te)])
    scores = np.zeros((y.shape[1], a.shape[1]))
    if usable.any():
        acc = threshold_balanced_accuracy(a[tr], y[tr][:, usable], a[te], y[te][:, usable])
        scores[usable] = np.maximum(0.0, 2.0 * acc - 1.0)
    return usable, scores


def rank_normalise(x: np.ndarray) -> np.ndarray:
    """Average ranks mapped linearly onto [0, 1] (smallest 0, largest 1)."""
    r = rankdata(x, method="average")
    return (r - 1.0) / max(len(x) - 1, 1)


def identity_scores(a: np.ndarray, identity: np.ndarray) -> dict[str, np.ndarray]:
    """Fallback IA/NA proxies from identity labels (METHODS §1.6) [OURS].

    Uses identities with at least 2 images (at least 2 such identities are required).
    ``F_i = (SS_between / (G - 1)) / (SS_within / (N - G))`` (one-way ANOVA; 0/0 := 0,
    x/0 := inf), ``s_IA = rank_normalise(log F)`` (ranks are those of F: log is monotone),
    ``s_NA = SS_within / SS_total`` (0 for a constant neuron). Returns ``s_ia``, ``s_na``,
    ``f`` and ``kept`` (boolean mask of the samples used).
    """
    ids, inv, counts = np.unique(identity, return_inverse=True, return_counts=True)
    kept = counts[inv] >= 2
    if (counts >= 2).sum() < 2:
        raise ValueError(
            "identity_fallback needs at least 2 identities with at least 2 images each; "
            f"got {(counts >= 2).sum()} of {len(ids)} identities"
        )
    x = a[kept]
    _, g, n_g = np.unique(identity[kept], return_inverse=True, return_counts=True)
    n, num_groups = x.shape[0], len(n_g)
    order = np.argsort(g, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n_g)[:-1]])
    means = np.add.reduceat(x[order], starts, axis=0) / n_g[:, None]  # (G, D)
    ss_between = (n_g[:, None] * (means - x.mean(0)) ** 2).sum(0)
    ss_within = ((x - means[g]) ** 2).sum(0)
    ss_total = ss_between + ss_within
    ms_b, ms_w = ss_between / (num_groups - 1), ss_within / (n - num_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(ms_w > 0, ms_b / ms_w, np.where(ms_b > 0, np.inf, 0.0))
        s_na = np.where(ss_total > 0, ss_within / ss_total, 0.0)
        log_f = np.log(f)
    return {"s_ia": rank_normalise(log_f), "s_na": s_na, "f": f, "kept": kept}


def inhibition_rate(a: np.ndarray, signed: bool, eps: float, tau: float) -> np.ndarray:
    """``rho_i`` in [0, 1]: 1 = active neuron, 0 = inhibitive (observation 3)."""
    if not signed:
        return (a > eps).mean(axis=0)
    std = a.std(axis=0)
    ref = tau * np.median(std)
    if ref <= 0:  # more than half the neurons are constant: live/dead only
        return (std > 0).astype(np.float64)
    return np.minimum(1.0, std / ref)


def abs_correlation(a: np.ndarray) -> np.ndarray:
    """``W_ij = |corr_x(a_i, a_j)|`` ``(D, D)``, zero diagonal, 0 for constant neurons."""
    z = a - a.mean(axis=0)
    std = np.sqrt((z**2).mean(axis=0))
    live = std > 0
    z[:, live] /= std[live]
    z[:, ~live] = 0.0
    w = np.abs(np.clip(z.T @ z / a.shape[0], -1.0, 1.0))
    np.fill_diagonal(w, 0.0)
    return w
