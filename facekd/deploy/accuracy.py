"""Verification accuracy of an fp32 model, its int8 version, and the two mixed.

Mixed use is how int8 models meet galleries in practice: the gallery was enrolled once with
the fp32 model and only new probes run in int8. For a ``.bin`` pair ``(a, b)`` the mixed score
compares ``a`` embedded by the fp32 model (the gallery side) with ``b`` embedded by the int8
model (the probe side). Every number uses facekd's one extraction path
(``facekd.evaluation.embed.extract_embeddings``: flip-sum, L2-normalised) and the
insightface 10-fold protocol (``facekd.evaluation.verification.verify``) over the pair set's
own folds, else 10 contiguous blocks; ``grid`` is insightface's threshold grid (the published
numbers), ``exact`` searches every cut.
"""

from __future__ import annotations

import numpy as np

PAIRINGS = ("fp32", "int8", "fp32_gallery_int8_probe")


def held_out_pairs(pairs: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Boolean mask of the pairs whose two images are both outside ``used`` (image indices)."""
    return ~np.isin(pairs, used).any(axis=1)


def _verify(a, b, issame, folds) -> dict:
    from facekd.evaluation.verification import verify

    out = {}
    for search in ("grid", "exact"):
        r = verify((a, b), issame, folds=folds, thresholds=search)
        out[search] = {"accuracy": r.accuracy, "accuracy_std": r.accuracy_std}
    return out


def pair_accuracies(pair_set, fp32, int8, mask: np.ndarray | None = None) -> dict:
    """``{pairing: {"grid"|"exact": {accuracy, accuracy_std}}, "pairs": n}`` for ``PAIRINGS``.

    ``fp32`` / ``int8``: anything ``extract_embeddings`` takes (``.onnx`` paths, sessions,
    torch modules). ``mask``: the pairs to score (default all), e.g. ``held_out_pairs``.
    """
    from facekd.evaluation.embed import extract_embeddings

    ps = pair_set
    keep = np.ones(len(ps), bool) if mask is None else np.asarray(mask, bool)
    if keep.sum() < 20:
        raise ValueError(f"{ps.name}: only {int(keep.sum())} pairs left to score")
    pairs, issame = ps.pairs[keep], ps.issame[keep]
    folds = ps.folds[keep] if ps.n_folds else None
    images = np.unique(pairs)
    embs = {}
    for kind, model in (("fp32", fp32), ("int8", int8)):
        emb = extract_embeddings(model, [ps.images[i] for i in images], progress=False)
        embs[kind] = dict(zip(images.tolist(), emb, strict=True))
    side = {k: [np.stack([e[i] for i in pairs[:, c]]) for c in (0, 1)] for k, e in embs.items()}
    return {
        "pairs": int(len(pairs)),
        "fp32": _verify(*side["fp32"], issame, folds),
        "int8": _verify(*side["int8"], issame, folds),
        "fp32_gallery_int8_probe": _verify(side["fp32"][0], side["int8"][1], issame, folds),
    }


def summary_line(name: str, acc: dict, search: str = "grid") -> str:
    """``lfw: fp32 99.57 %, int8 99.50 % (-0.07), fp32 gallery / int8 probe 99.53 % (-0.03)``."""
    base = acc["fp32"][search]["accuracy"]
    parts = [f"fp32 {100 * base:.2f} %"]
    for key, label in (("int8", "int8"), ("fp32_gallery_int8_probe", "fp32 gallery / int8 probe")):
        a = acc[key][search]["accuracy"]
        parts.append(f"{label} {100 * a:.2f} % ({100 * (a - base):+.2f})")
    return f"{name} ({acc['pairs']} pairs, {search}): " + ", ".join(parts)
