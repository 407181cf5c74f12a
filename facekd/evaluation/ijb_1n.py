"""IJB-B / IJB-C 1:N identification: closed-set CMC and open-set TPIR@FPIR on templates.

Protocol: Maze et al., *IARPA Janus Benchmark-C: Face Dataset and Protocol*, ICB 2018
(section 5.2, "mixed media" probes searched against the two disjoint galleries G1 and G2);
NIST FRVT 1:N for the open-set terms (Grother et al., NISTIR 8271). Lists:
``facekd.data.ijb.read_1n_list`` (``ijbc_1N_gallery_G1.csv``, ``_G2.csv``,
``ijbc_1N_probe_mixed.csv``; IJB-B: ``S1`` / ``S2``).

1. Templates exactly as the 1:1 protocol pools them (``facekd.evaluation.ijb.
   template_features``: flip-sum features, faceness-weighted, media-averaged, template-summed,
   L2-normalised), as insightface ``recognition/_evaluation_/ijb/ijb_1n.py`` does.
2. Closed set (insightface's numbers): gallery = G1 ∪ G2, every probe mated; CMC at
   ``ranks`` (rank-1 / 5 / 10).
3. Open set (the IJB-C paper's): each gallery on its own; probes whose subject is in the
   other gallery are non-mated; ``tpir_at_fpir`` at ``fpirs`` (rank 1), per gallery and the
   mean over the two.

insightface's own "TPIR@FAR" differs from the FRVT definition (its threshold lets
``ceil(far * n_probes)`` impostor *scores* over all probe-gallery pairs of the closed set pass,
not non-mated *searches*, and a mate above it counts at any rank); we report the FRVT / IJB-C
definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facekd.evaluation.identification import IJB_FPIRS, cmc, tpir_at_fpir
from facekd.evaluation.ijb import template_features, template_rows

RANKS = (1, 5, 10)


def _subset(ids, feats, templates, name):
    return feats[template_rows(ids, np.asarray(templates), name)]


def evaluate_ijb_1n(
    features,
    templates,
    medias,
    faceness,
    galleries: dict[str, tuple[np.ndarray, np.ndarray]],
    probes: tuple[np.ndarray, np.ndarray],
    fpirs: Sequence[float] = IJB_FPIRS,
    ranks: Sequence[int] = RANKS,
) -> dict:
    """IJB 1:N numbers from per-image ``features`` (see module docstring).

    Args:
        features, templates, medias, faceness: per image, as ``evaluate_ijb``.
        galleries: ``{"G1": (template ids, subject ids), "G2": ...}`` (``read_1n_list``).
        probes: ``(template ids, subject ids)`` of the probe list.
    Returns:
        ``{"cmc": {rank: rate}, "open_set": {gallery: {fpir: {...}}}, "tpir@fpir": {fpir:
        mean TPIR over galleries}, "n_probes", "n_gallery"}``.
    """
    ids, feats = template_features(features, templates, medias, faceness)
    p_t, p_s = probes
    p_feats = _subset(ids, feats, p_t, "probe")
    g_feats = {g: _subset(ids, feats, t, g) for g, (t, _) in galleries.items()}
    all_s = np.concatenate([s for _, s in galleries.values()])
    all_f = np.concatenate(list(g_feats.values()))
    scores = p_feats @ all_f.T  # (probes, G1 + G2)
    known = np.isin(p_s, all_s)
    if not known.all():
        raise ValueError(f"{int((~known).sum())} probe subjects are in neither gallery")
    curve = cmc(scores, p_s, all_s, max_rank=max(ranks))
    open_set = {}
    for g, (_, subjects) in galleries.items():
        open_set[g] = tpir_at_fpir(p_feats @ g_feats[g].T, p_s, subjects, fpirs)
    mean = {f: float(np.mean([open_set[g][f]["tpir"] for g in galleries])) for f in fpirs}
    return {
        "cmc": {r: float(curve[r - 1]) for r in ranks},
        "open_set": open_set,
        "tpir@fpir": mean,
        "n_probes": len(p_t),
        "n_gallery": {g: len(t) for g, (t, _) in galleries.items()},
    }
