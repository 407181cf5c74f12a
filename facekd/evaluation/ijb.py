"""IJB-B / IJB-C 1:1 template verification on image features (pure numpy, memory-bounded).

Source: insightface ``recognition/arcface_torch/eval_ijbc.py`` (same code in
``recognition/_evaluation_/ijb/ijb_11.py``) with its defaults ``use_flip_test``,
``use_norm_score`` and ``use_detector_score`` all True; METHODS.md section 5.2.

1. Image feature ``f_i`` ``(I, D)``: ``e(x) + e(flip(x))``, **not** normalised -- what
   ``extract_embeddings(model, faces, flip=True, normalize=False)`` returns. (The reference's
   comment says "concat --- F1" but its code adds the two halves, "add --- F2".)
   ``use_norm_score=False`` L2-normalises each ``f_i`` first (the norm is otherwise kept as a
   quality weight).
2. ``use_detector_score``: ``f_i <- s_i * f_i`` with the faceness score ``s_i`` of the landmark
   file (the meta file's last column).
3. Media pooling: images of one template sharing a media id (frames of one video) are averaged.
4. Template pooling: the media vectors of a template are **summed**, then L2-normalised
   (a zero vector stays zero, as ``sklearn.preprocessing.normalize``). Steps 3-4 run as one
   weighted segment sum over images (weight ``1 / images in its media``), so memory is
   ``(templates, D)`` plus one chunk of images, never ``(media, D)``.
5. Score of a template pair: cosine = dot product of the normalised template vectors,
   computed ``chunk_size`` pairs at a time (IJB-C: 15.7 M pairs) so memory stays bounded by
   ``2 * chunk_size * D`` floats; no template-by-template matrix is built.
6. ROC: ``sklearn.metrics.roc_curve(label, score)``; TAR at FAR in ``IJB_FARS`` with
   ``tar_at_far`` (insightface's nearest point by default, or ``'conservative'``) and AUC.

The reference maps unknown template ids to row 0 silently; here they raise ``ValueError``.
Accumulation is in float64 (the reference averages media in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import auc, roc_curve

from facekd.evaluation.verification import TAR_MODES, l2_normalize, tar_at_far

#: the FAR columns of insightface's IJB table
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
CHUNK_SIZE = 65536


@dataclass
class IJBResult:
    """Template-pair scores and the ROC numbers of one IJB 1:1 protocol."""

    tar_at_far: dict[float, float]
    auc: float
    scores: np.ndarray = field(repr=False)  # (P,) cosine per template pair
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    n_templates: int = 0
    n_pairs: int = 0
    mode: str = "nearest"

    def summary(self, name: str = "IJB") -> str:
        cells = "  ".join(f"{far:.0e}: {100 * tar:.2f}" for far, tar in self.tar_at_far.items())
        return f"[{name}] TAR(%) @ FAR ({self.mode}) {cells}  AUC {100 * self.auc:.2f}"

    def as_dict(self) -> dict:
        return {
            "tar_at_far": {f"{k:g}": v for k, v in self.tar_at_far.items()},
            "auc": self.auc,
            "n_templates": self.n_templates,
            "n_pairs": self.n_pairs,
            "mode": self.mode,
        }


def _segment_sum(values, segment, n_segments, weights=None, chunk=CHUNK_SIZE) -> np.ndarray:
    """``out[s] = sum(weights[i] * values[i] for segment[i] == s)``, float64 ``(S, D)``.

    Rows are visited in segment order ``chunk`` at a time, so only ``chunk`` rows are ever
    copied to float64; sums within a chunk use ``np.add.reduceat``.
    """
    order = np.argsort(segment, kind="stable")
    out = np.zeros((n_segments, values.shape[1]))
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        rows = values[idx].astype(np.float64)
        if weights is not None:
            rows *= weights[idx, None]
        keys = segment[idx]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        out[keys[starts]] += np.add.reduceat(rows, starts, axis=0)  # keys[starts] are unique
    return out


def template_features(
    features,
    templates,
    medias,
    faceness=None,
    *,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    chunk_size: int = CHUNK_SIZE,
):
    """Pool image features into L2-normalised template features.

    Args:
        features: ``(I, D)`` flip-summed, unnormalised image features (float32 is fine).
        templates, medias: ``(I,)`` integer template and media id of each image.
        faceness: ``(I,)`` detector scores; required when ``use_detector_score``.
    Returns:
        ``(template_ids (T,) sorted, template_feats (T, D) float64 unit rows)``.
    """
    features = np.asarray(features)
    templates, medias = np.asarray(templates).reshape(-1), np.asarray(medias).reshape(-1)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features must be (I, D) with I > 0, got {features.shape}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(templates) != len(features) or len(medias) != len(features):
        raise ValueError(
            f"{len(features)} features but {len(templates)} template ids and "
            f"{len(medias)} media ids"
        )
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf")
    weights = None
    if use_detector_score:
        if faceness is None:
            raise ValueError("use_detector_score=True needs the faceness scores")
        weights = np.asarray(faceness, dtype=np.float64).reshape(-1)
        if len(weights) != len(features) or not np.isfinite(weights).all():
            raise ValueError(f"faceness must be {len(features)} finite scores")
    if not use_norm_score:
        norms = np.concatenate(  # chunked: no float64 copy of all features
            [
                np.linalg.norm(features[s : s + chunk_size].astype(np.float64), axis=1)
                for s in range(0, len(features), chunk_size)
            ]
        )
        inv = 1.0 / np.where(norms > 0, norms, 1.0)
        weights = inv if weights is None else weights * inv
    # media mean then template sum == one weighted sum over images: weight / (media size)
    _, media_of_image, media_size = np.unique(
        np.stack([templates, medias], 1), axis=0, return_inverse=True, return_counts=True
    )
    share = 1.0 / media_size[media_of_image.reshape(-1)]
    weights = share if weights is None else weights * share
    template_ids, template_of_image = np.unique(templates, return_inverse=True)
    pooled = _segment_sum(
        features, template_of_image.reshape(-1), len(template_ids), weights, chunk_size
    )
    return template_ids, l2_normalize(pooled)


def template_rows(template_ids: np.ndarray, query: np.ndarray, name: str) -> np.ndarray:
    """Row of each id of ``query`` in the sorted ``template_ids``; unknown ids raise."""
    lo, hi = int(template_ids[0]), int(template_ids[-1])
    if lo >= 0 and hi < 16 * len(template_ids) + 1024:  # compact integer ids (IJB): a table
        table = np.zeros(hi + 1, dtype=np.int64)
        table[template_ids] = np.arange(len(template_ids))
        q = np.asarray(query)
        rows = table[np.clip(q, 0, hi).astype(np.int64)]
    else:
        rows = np.searchsorted(template_ids, query).clip(0, len(template_ids) - 1)
    missing = template_ids[rows] != query
    if missing.any():
        raise ValueError(
            f"{name}: {np.unique(query[missing]).size} template ids have no image, "
            f"e.g. {np.unique(query[missing])[:5].tolist()}"
        )
    return rows


def pair_scores(
    template_ids, template_feats, t1, t2, chunk_size: int = CHUNK_SIZE, tile: int = 2048
):
    """Cosine score ``(P,)`` float64 of each template pair ``(t1[p], t2[p])``, memory-bounded.

    Dense protocols (IJB-C: 15.6M pairs over 23k templates) are scored in tiles: pairs are
    bucketed by their first template's row (a linear-time radix sort), each block of ``tile``
    templates is multiplied with every template in one BLAS product ``(tile, D) @ (D, T)`` and
    the needed entries are picked out, so features are read once per tile instead of once per
    pair (peak memory ``tile * T`` scores). Sparse pair lists fall back to gathering
    ``chunk_size`` pairs at a time.
    """
    if chunk_size < 1 or tile < 1:
        raise ValueError(f"chunk_size and tile must be >= 1, got {chunk_size}, {tile}")
    t1, t2 = np.asarray(t1).reshape(-1), np.asarray(t2).reshape(-1)
    if len(t1) != len(t2):
        raise ValueError(f"t1 and t2 differ in length: {len(t1)} vs {len(t2)}")
    r1 = template_rows(template_ids, t1, "t1")
    r2 = template_rows(template_ids, t2, "t2")
    scores = np.empty(len(t1))
    n_templates = len(template_feats)
    # measured on 2 CPU cores: gathering costs ~1.6 us per pair, the full (T, T) product ~7 ns
    # per template pair, so tiles win once more than ~1% of all template pairs are scored
    if len(t1) * 100 < n_templates**2:
        for s in range(0, len(t1), chunk_size):
            a, b = template_feats[r1[s : s + chunk_size]], template_feats[r2[s : s + chunk_size]]
            scores[s : s + chunk_size] = np.einsum("ij,ij->i", a, b)
        return scores
    n_tiles = -(-n_templates // tile)
    key = (r1 // tile).astype(np.uint16 if n_tiles < 2**16 else np.int64)
    order = np.argsort(key, kind="stable")  # radix sort for uint16 keys: linear time
    bounds = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=n_tiles))])
    feats_t = np.ascontiguousarray(template_feats.T)
    for k in range(n_tiles):
        if bounds[k] == bounds[k + 1]:
            continue
        block = template_feats[k * tile : (k + 1) * tile] @ feats_t  # (tile, T) cosines
        idx = order[bounds[k] : bounds[k + 1]]
        scores[idx] = block[r1[idx] - k * tile, r2[idx]]
    return scores


def ijb_metrics(
    labels, scores, fars: Sequence[float] = IJB_FARS, mode: str = "nearest", n_templates: int = 0
) -> IJBResult:
    """ROC, TAR@FAR (``tar_at_far`` rule ``mode``) and AUC of pair ``scores`` (``(P,)``, higher
    = more similar) with ``labels`` 1 (genuine) / 0 (impostor); e.g. saved insightface scores."""
    if mode not in TAR_MODES:
        raise ValueError(f"mode must be one of {TAR_MODES}, got {mode!r}")
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores).reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    if not np.isin(labels, (0, 1)).all() or labels.min() == labels.max():
        raise ValueError("labels must be 0/1 with both genuine and impostor pairs")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    fpr, tpr, _ = roc_curve(labels, scores)
    return IJBResult(
        tar_at_far=tar_at_far(fpr, tpr, fars, mode),
        auc=float(auc(fpr, tpr)),
        scores=scores,
        fpr=fpr,
        tpr=tpr,
        n_templates=n_templates,
        n_pairs=len(scores),
        mode=mode,
    )


def evaluate_ijb(
    features,
    templates,
    medias,
    t1,
    t2,
    labels,
    faceness=None,
    *,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
    fars: Sequence[float] = IJB_FARS,
    mode: str = "nearest",
    chunk_size: int = CHUNK_SIZE,
) -> IJBResult:
    """IJB-B/C 1:1: pool ``features`` into templates, score the pairs, TAR@FAR and AUC.

    Args:
        features, templates, medias, faceness: per image, see ``template_features``.
        t1, t2, labels: ``(P,)`` template pairs and 1 (genuine) / 0 (impostor).
        fars: FAR columns (default ``IJB_FARS``); ``mode``: ``'nearest'`` (insightface) or
            ``'conservative'`` (largest TAR with FPR <= FAR), see ``tar_at_far``.
    """
    if mode not in TAR_MODES:
        raise ValueError(f"mode must be one of {TAR_MODES}, got {mode!r}")
    if len(np.asarray(labels).reshape(-1)) != len(np.asarray(t1).reshape(-1)):
        raise ValueError(f"{len(labels)} labels for {len(np.asarray(t1).reshape(-1))} pairs")
    ids, feats = template_features(
        features,
        templates,
        medias,
        faceness,
        use_norm_score=use_norm_score,
        use_detector_score=use_detector_score,
        chunk_size=chunk_size,
    )
    scores = pair_scores(ids, feats, t1, t2, chunk_size)
    return ijb_metrics(labels, scores, fars, mode, n_templates=len(ids))
