"""1:1 verification metrics on embeddings: the insightface protocol, exact and fast.

Source of the protocol: insightface ``recognition/arcface_torch/eval/verification.py``
(``evaluate``, ``calculate_roc``, ``calculate_accuracy``, ``calculate_val``,
``calculate_val_far``) and METHODS.md section 5.1. Pure numpy on embeddings; extraction lives
in ``facekd.evaluation.embed``.

* Pair ``k`` is embeddings ``2k`` and ``2k+1`` (``.bin`` order) or row ``k`` of ``(emb1, emb2)``.
  Rows are L2-normalised (insightface normalises the flip-summed embeddings), the distance is
  the squared L2 distance ``d = |e1 - e2|^2`` in [0, 4] and a pair is "same" iff ``d < theta``.
* Folds: ``KFold(n_splits=10, shuffle=False)``, i.e. contiguous blocks in pair order (the first
  ``N % 10`` folds one pair longer), or the protocol's own ``folds``. ``n_folds=1`` trains and
  tests on all pairs, as insightface's ``LFold``.
* Accuracy: per fold, the threshold with the best accuracy on the other folds (first maximum =
  smallest threshold) is applied to the held-out fold; mean and population std (``np.std``)
  over folds. ``accuracy_se`` is the LFW README's standard error (sample std / sqrt(k)).
* VAL@FAR (``calculate_val``): per fold the threshold reaching FAR = ``far_target`` on the
  training folds is applied to the test fold; mean VAL, its std, mean FAR.

``thresholds='grid'`` reproduces insightface's numbers (accuracy grid ``arange(0, 4, 0.01)``;
VAL grid ``arange(0, 4, 0.001)`` with the threshold interpolated as legacy SciPy's
``interp1d(far, thr, kind='slinear')`` did; current SciPy refuses the duplicate FAR values,
insightface issue #2152), counted with ``searchsorted`` instead of a loop. ``'exact'``
(default) searches every distinct cut of the sorted training distances (midpoints), which is
optimal, and takes the VAL threshold as the largest one with training FAR <= target (the limit
of the grid rule as the step goes to 0). ``tar_at_far``, ``eer`` and ``auc`` use the ROC of all
pairs (``sklearn.metrics.roc_curve`` on ``-d``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

#: insightface ``evaluate``: accuracy thresholds and VAL thresholds (squared L2 distance)
GRID_ACCURACY = np.arange(0, 4, 0.01)
GRID_VAL = np.arange(0, 4, 0.001)
TAR_FARS = (1e-4, 1e-3, 1e-2, 1e-1)
TAR_MODES = ("nearest", "conservative")
#: what each ``thresholds`` mode of ``verify`` does, in the words reports print
THRESHOLD_SEARCH = {
    "grid": "insightface threshold grid np.arange(0, 4, 0.01) on squared L2 distances "
    "(what published tables use)",
    "exact": "exact search over every cut of the sorted training-fold distances (optimal on "
    "the training folds; on the test fold it may land above or below the grid)",
}


@dataclass
class VerificationResult:
    """Fold statistics (``k`` folds) plus ROC-based numbers on all ``n_pairs`` pairs."""

    accuracy: float
    accuracy_std: float  # np.std over folds (population): insightface's "+-"
    accuracy_se: float  # sample std / sqrt(k): the LFW README's standard error
    fold_accuracy: np.ndarray  # (k,)
    thresholds: np.ndarray  # (k,) distance threshold chosen on each fold's training folds
    val: float  # VAL@FAR: mean over folds
    val_std: float
    far: float  # mean test-fold FAR at the VAL thresholds
    far_target: float
    tar_at_far: dict[float, float]  # pooled ROC, insightface's nearest-point rule
    eer: float
    auc: float
    roc_fpr: np.ndarray = field(repr=False)
    roc_tpr: np.ndarray = field(repr=False)
    roc_thresholds: np.ndarray = field(repr=False)  # distance thresholds (accept d <= t)
    n_pairs: int = 0
    threshold_mode: str = "exact"

    def summary(self, name: str = "") -> str:
        head = f"[{name}] " if name else ""
        return (
            f"{head}accuracy {100 * self.accuracy:.3f} +- {100 * self.accuracy_std:.3f} "
            f"(se {100 * self.accuracy_se:.3f}, {len(self.fold_accuracy)} folds, "
            f"{self.threshold_mode}); VAL {100 * self.val:.2f} +- {100 * self.val_std:.2f} "
            f"@ FAR {self.far:.2e} (target {self.far_target:g}); EER {100 * self.eer:.2f}; "
            f"AUC {self.auc:.5f}"
        )

    def as_dict(self) -> dict:
        """JSON-ready scalars and per-fold lists (no ROC arrays)."""
        scalars = ("accuracy", "accuracy_std", "accuracy_se", "val", "val_std", "far")
        out = {k: float(getattr(self, k)) for k in scalars + ("far_target", "eer", "auc")}
        out["fold_accuracy"] = self.fold_accuracy.tolist()
        out["thresholds"] = self.thresholds.tolist()
        out["tar_at_far"] = {f"{k:g}": v for k, v in self.tar_at_far.items()}
        out.update(n_pairs=self.n_pairs, threshold_mode=self.threshold_mode)
        return out


def _check_finite(name: str, x: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: {bad.sum()} rows contain NaN or inf, e.g. row {bad.argmax()}")
    return x


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64; zero rows stay zero (as sklearn's ``normalize``)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x / np.where(norm > 0, norm, 1.0)


def pair_distances(embeddings, normalize: bool = True) -> np.ndarray:
    """Squared L2 distances ``(N,)`` of ``(2N, D)`` interleaved embeddings or ``(emb1, emb2)``."""
    if (
        isinstance(embeddings, (tuple, list))
        and len(embeddings) == 2
        and np.ndim(embeddings[0]) == 2
    ):
        e1, e2 = (np.asarray(e, dtype=np.float64) for e in embeddings)
        if e1.shape != e2.shape:
            raise ValueError(f"emb1 and emb2 must be (N, D) alike, got {e1.shape} and {e2.shape}")
    else:
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or len(emb) % 2:
            raise ValueError(
                f"embeddings must be (2N, D) with pair k = rows 2k, 2k+1; got shape {emb.shape}"
                + (" (odd number of embeddings)" if emb.ndim == 2 else "")
            )
        e1, e2 = emb[0::2], emb[1::2]
    _check_finite("emb1", e1)
    _check_finite("emb2", e2)
    if normalize:
        e1, e2 = l2_normalize(e1), l2_normalize(e2)
    return np.sum(np.square(e1 - e2), axis=1)


def kfold_ids(n_pairs: int, n_folds: int = 10) -> np.ndarray:
    """``(N,)`` fold of each pair, as ``KFold(n_folds, shuffle=False)``: contiguous blocks."""
    if not 1 <= n_folds <= n_pairs:
        raise ValueError(f"need 1 <= n_folds <= n_pairs, got n_folds={n_folds}, {n_pairs} pairs")
    sizes = np.full(n_folds, n_pairs // n_folds)
    sizes[: n_pairs % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def best_threshold(dist: np.ndarray, issame: np.ndarray, thresholds="exact"):
    """Accuracy-maximising threshold on ``dist`` (first maximum) -> ``(theta, accuracy)``.

    ``thresholds``: ``'exact'`` (every distinct cut of the sorted distances), ``'grid'``
    (insightface ``arange(0, 4, 0.01)``) or an explicit increasing array.
    """
    n, n_neg = len(dist), int(np.count_nonzero(~issame))
    if isinstance(thresholds, str) and thresholds == "exact":
        order = np.argsort(dist, kind="stable")
        d, same = dist[order], issame[order]
        ends = np.flatnonzero(np.r_[d[1:] != d[:-1], True])  # last index of each distinct d
        values = d[ends]
        tp, fp = np.cumsum(same)[ends], np.cumsum(~same)[ends]
        correct = np.r_[n_neg, tp + n_neg - fp]  # cut k accepts the k smallest distinct d
        k = int(np.argmax(correct))
        if k == 0:
            theta = values[0]  # d < values[0]: nothing accepted
        elif k == len(values):
            theta = np.nextafter(values[-1], np.inf)
        else:
            theta = (values[k - 1] + values[k]) / 2
            theta = values[k] if theta <= values[k - 1] else theta  # adjacent floats
        return float(theta), float(correct[k]) / n
    grid = _grid(thresholds, GRID_ACCURACY)
    tp = np.searchsorted(np.sort(dist[issame]), grid, side="left")
    tn = n_neg - np.searchsorted(np.sort(dist[~issame]), grid, side="left")
    acc = (tp + tn).astype(np.float64) / n
    k = int(np.argmax(acc))
    return float(grid[k]), float(acc[k])


def _grid(thresholds, default: np.ndarray) -> np.ndarray:
    if isinstance(thresholds, str):
        if thresholds != "grid":
            raise ValueError(f"thresholds must be 'exact', 'grid' or an array, got {thresholds!r}")
        return default
    grid = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if grid.size == 0 or np.any(np.diff(grid) <= 0):
        raise ValueError("an explicit threshold grid must be non-empty and strictly increasing")
    return grid


def legacy_slinear(x: np.ndarray, y: np.ndarray, x_new: float) -> float:
    """``interp1d(x, y, kind='slinear')(x_new)`` as SciPy evaluated it before refusing
    duplicate ``x``: a degree-1 B-spline with knots ``[x0, x, x_last]``; among equal ``x`` the
    last point is used, and a duplicated last ``x`` evaluated at ``x_last`` gives 0."""
    if not x[0] <= x_new <= x[-1]:
        raise ValueError(f"{x_new} is outside the interpolation range [{x[0]}, {x[-1]}]")
    j = len(x) - 2 if x_new >= x[-1] else int(np.searchsorted(x, x_new, side="right")) - 1
    xa, xb = x[j], x[j + 1]
    if xa == xb:
        return 0.0
    w = 1.0 / (xb - xa)
    return float(y[j] * (w * (xb - x_new)) + y[j + 1] * (w * (x_new - xa)))


def val_threshold(neg_dist: np.ndarray, far_target: float, thresholds="exact") -> float:
    """Threshold giving FAR = ``far_target`` on the negative distances ``neg_dist``.

    ``'exact'``: the largest threshold with FAR <= target (``inf`` when the target is 1).
    ``'grid'``: insightface ``calculate_val``: FAR on ``arange(0, 4, 0.001)``, interpolated with
    ``legacy_slinear``; 0 when the grid never reaches the target.
    """
    neg = np.sort(neg_dist)
    if isinstance(thresholds, str) and thresholds == "exact":
        m = int(np.floor(far_target * len(neg) * (1 + 1e-12)))
        return float(neg[m]) if m < len(neg) else float("inf")
    grid = _grid(thresholds, GRID_VAL)
    far = np.searchsorted(neg, grid, side="left").astype(np.float64) / len(neg)
    return legacy_slinear(far, grid, far_target) if far.max() >= far_target else 0.0


def tar_at_far(fpr, tpr, fars: Sequence[float] = TAR_FARS, mode: str = "nearest") -> dict:
    """TAR at each FAR from ROC arrays (``sklearn.metrics.roc_curve`` order, FPR increasing).

    ``'nearest'`` (insightface ``eval_ijbc.py``): the point minimising ``|fpr - far|``; ties go
    to the later ROC point (insightface flips the arrays before ``min``), i.e. the larger TPR.
    ``'conservative'``: the largest TPR among points with ``fpr <= far``.
    """
    if mode not in TAR_MODES:
        raise ValueError(f"mode must be one of {TAR_MODES}, got {mode!r}")
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    out = {}
    for far in fars:
        if mode == "nearest":
            i = len(fpr) - 1 - int(np.argmin(np.abs(fpr - far)[::-1]))
            out[float(far)] = float(tpr[i])
        else:
            ok = fpr <= far
            out[float(far)] = float(tpr[ok].max()) if ok.any() else 0.0
    return out


def equal_error_rate(fpr, tpr) -> float:
    """EER: where FPR = 1 - TPR, linearly interpolated between the bracketing ROC points."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), 1.0 - np.asarray(tpr, dtype=np.float64)
    gap = fnr - fpr  # non-increasing along the ROC
    i = int(np.argmax(gap <= 0))  # roc_curve starts at (0, 0) and ends at (1, 1): i >= 1
    if i == 0 or gap[i] == 0:
        return float(fpr[i])
    s = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + s * (fpr[i] - fpr[i - 1]))


def _nan_stat(stat, values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(stat(values)) if len(values) else float("nan")


def _pair_labels(issame, n_pairs: int) -> np.ndarray:
    """``issame`` as ``(N,)`` bools, checked: one per pair, booleans or 0/1, both kinds present."""
    same = np.asarray(issame).reshape(-1)
    if len(same) != n_pairs:
        raise ValueError(f"issame has {len(same)} labels for {n_pairs} pairs")
    if same.dtype != bool and not np.isin(same, (0, 1)).all():
        raise ValueError("issame must hold booleans (or 0/1)")
    same = same.astype(bool)
    if same.all() or not same.any():
        raise ValueError("issame needs both matched and mismatched pairs")
    return same


def _pair_folds(n_pairs: int, n_folds: int, folds) -> np.ndarray:
    """``(N,)`` fold id of each pair: ``folds`` as given (checked), else ``kfold_ids``."""
    if folds is None:
        return kfold_ids(n_pairs, n_folds)
    fold = np.asarray(folds).reshape(-1)
    if len(fold) != n_pairs or not np.issubdtype(fold.dtype, np.integer) or fold.min() < 0:
        raise ValueError(f"folds must be {n_pairs} non-negative ints (one per pair)")
    return fold


def _fold_scores(dist: np.ndarray, same: np.ndarray, fold: np.ndarray, thresholds, far_target):
    """Per fold (``k`` distinct ids, sorted): ``(accuracy, threshold, VAL, FAR)`` as ``(k,)``
    arrays, each fold scored with thresholds from the other folds (all pairs when ``k = 1``),
    and the ids of folds whose VAL/FAR are undefined (NaN there)."""
    ids = np.unique(fold)
    acc, theta, val, far = (np.zeros(len(ids)) for _ in range(4))
    undefined: list[int] = []
    for f, fid in enumerate(ids):
        test = fold == fid
        train = ~test if len(ids) > 1 else test
        d_tr, s_tr, d_te, s_te = dist[train], same[train], dist[test], same[test]
        theta[f], _ = best_threshold(d_tr, s_tr, thresholds)
        acc[f] = np.count_nonzero((d_te < theta[f]) == s_te) / len(d_te)
        if s_te.all() or not s_te.any() or s_tr.all():  # insightface divides by zero here
            undefined.append(int(fid))
            val[f] = far[f] = np.nan
            continue
        accept = d_te < val_threshold(d_tr[~s_tr], far_target, thresholds)
        val[f] = np.count_nonzero(accept & s_te) / np.count_nonzero(s_te)
        far[f] = np.count_nonzero(accept & ~s_te) / np.count_nonzero(~s_te)
    return acc, theta, val, far, undefined


def verify(
    embeddings,
    issame,
    n_folds: int = 10,
    folds=None,
    thresholds="exact",
    far_target: float = 1e-3,
    tar_fars: Sequence[float] = TAR_FARS,
    normalize: bool = True,
) -> VerificationResult:
    """Verification accuracy (k-fold), VAL@FAR, TAR@FAR, EER and AUC of ``N`` pairs.

    Args:
        embeddings: ``(2N, D)`` with pair ``k`` = rows ``2k, 2k+1``, or ``(emb1, emb2)``.
        issame: ``(N,)`` bools.
        n_folds: contiguous folds (insightface: 10) when ``folds`` is None.
        folds: optional ``(N,)`` fold id of each pair (e.g. LFW view 2 from ``pairs.txt``).
        thresholds: ``'exact'`` (default), ``'grid'`` (insightface's numbers) or an array.
        far_target: FAR of VAL@FAR (insightface: 1e-3).
        tar_fars: FARs for ``tar_at_far`` (nearest ROC point).
        normalize: L2-normalise rows first (False keeps already-normalised embeddings' bits).
    A fold whose test pairs are all matched or all mismatched (e.g. a fold-major 300 + 300
    ``.bin`` cut into more folds than it has sets) still counts for accuracy; its VAL/FAR are
    NaN and left out of the means, with a warning (insightface divides by zero there).
    """
    if isinstance(thresholds, str) and thresholds not in ("exact", "grid"):
        raise ValueError(f"thresholds must be 'exact', 'grid' or an array, got {thresholds!r}")
    dist = pair_distances(embeddings, normalize)
    same = _pair_labels(issame, len(dist))
    if not 0 < far_target <= 1:
        raise ValueError(f"far_target must be in (0, 1], got {far_target}")
    fold = _pair_folds(len(dist), n_folds, folds)
    acc, theta, val, far, undefined = _fold_scores(dist, same, fold, thresholds, far_target)
    if undefined:
        warnings.warn(
            f"folds {undefined} lack matched or mismatched test pairs (or training negatives): "
            "VAL/FAR averaged over the other folds (NaN if none); accuracy is unaffected",
            stacklevel=2,
        )
    fpr, tpr, roc_thr = roc_curve(same, -dist)
    se = float(np.std(acc, ddof=1) / np.sqrt(len(acc))) if len(acc) > 1 else 0.0
    return VerificationResult(
        accuracy=float(np.mean(acc)),
        accuracy_std=float(np.std(acc)),
        accuracy_se=se,
        fold_accuracy=acc,
        thresholds=theta,
        val=_nan_stat(np.mean, val),
        val_std=_nan_stat(np.std, val),
        far=_nan_stat(np.mean, far),
        far_target=float(far_target),
        tar_at_far=tar_at_far(fpr, tpr, tar_fars),
        eer=equal_error_rate(fpr, tpr),
        auc=float(roc_auc_score(same, -dist)),
        roc_fpr=fpr,
        roc_tpr=tpr,
        roc_thresholds=-roc_thr,
        n_pairs=len(dist),
        threshold_mode=thresholds if isinstance(thresholds, str) else "custom",
    )
