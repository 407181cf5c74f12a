"""1:N identification metrics on a probe-by-gallery score matrix (pure numpy).

Scores are similarities (higher = more alike, e.g. cosines of L2-normalised templates), shape
``(P, G)``: probe ``p`` against gallery entry ``g``. Every gallery label must be unique (one
template per identity, as ``facekd enroll`` builds and as IJB-C's galleries are); a probe is
*mated* when its label is in the gallery and *non-mated* otherwise.

* Rank of a mated probe: ``1 + #{non-mate entries g : s[p, g] >= s[p, mate]}``. A tie counts
  against the probe (a tie is not a win), so the rank never depends on the gallery's order.
* CMC (cumulative match characteristic, closed set): ``CMC(r)`` = fraction of mated probes
  whose rank is ``<= r``; rank-1 identification rate = ``CMC(1)``.
* Open set, after NIST FRVT 1:N (Grother, Ngan, Hanaoka, NISTIR 8271, 2019, section 3) and
  the IJB-C protocol (Maze et al., *IARPA Janus Benchmark-C*, ICB 2018, section 5.2):
  ``FPIR(T)`` = fraction of non-mated searches whose best score is ``>= T``;
  ``TPIR(T, R)`` = fraction of mated searches whose mate is at rank ``<= R`` **and** scores
  ``>= T`` (``1 - FNIR``). ``TPIR@FPIR=f`` takes ``T = threshold_at_rate(top non-mated
  scores, f)``: the smallest threshold whose FPIR is ``<= f``.
* ``threshold_at_rate`` is also the verification threshold at a false-accept rate
  (``facekd calibrate``): with ``n`` impostor scores at most ``floor(rate * n)`` may be
  accepted; ``T`` is the next float above the ``(k+1)``-th largest impostor score, which
  accepts as many genuine pairs as any threshold with that rate can. A rate below ``1 / n``
  cannot be measured: ``k = 0``, T lies just above the largest impostor score, and
  ``rate_resolved`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the FPIR columns of the IJB-C 1:N table (insightface ``ijb_1n.py``: FAR 0.01, 0.1)
IJB_FPIRS = (1e-2, 1e-1)


def _scores(scores, probe_labels, gallery_labels):
    s = np.asarray(scores, dtype=np.float64)
    pl, gl = np.asarray(probe_labels).reshape(-1), np.asarray(gallery_labels).reshape(-1)
    if s.ndim != 2 or s.shape != (len(pl), len(gl)):
        raise ValueError(
            f"scores must be (probes, gallery) = ({len(pl)}, {len(gl)}), got {s.shape}"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    uniq, counts = np.unique(gl, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"gallery labels must be unique (one template per identity); repeated: "
            f"{uniq[counts > 1][:5].tolist()}"
        )
    return s, pl, gl


def mate_ranks(scores, probe_labels, gallery_labels):
    """``(ranks, mate, top)``, each ``(P,)``: the mate's rank (0 = non-mated: no mate in the
    gallery), the mate's score (NaN when non-mated) and the best score over the gallery."""
    s, pl, gl = _scores(scores, probe_labels, gallery_labels)
    col = {label: j for j, label in enumerate(gl.tolist())}
    mate_col = np.array([col.get(label, -1) for label in pl.tolist()], dtype=np.int64)
    ranks, mate = np.zeros(len(pl), dtype=np.int64), np.full(len(pl), np.nan)
    idx = np.flatnonzero(mate_col >= 0)
    if idx.size:
        mate[idx] = s[idx, mate_col[idx]]
        ahead = (s[idx] >= mate[idx, None]).sum(axis=1) - 1  # minus the mate itself
        ranks[idx] = 1 + ahead
    top = s.max(axis=1) if s.shape[1] else np.full(len(pl), -np.inf)
    return ranks, mate, top


def cmc(scores, probe_labels, gallery_labels, max_rank: int | None = None) -> np.ndarray:
    """``(R,)`` closed-set CMC over the mated probes: entry ``r - 1`` = fraction at rank <= r.

    ``max_rank`` defaults to the gallery size. Raises when no probe has a mate.
    """
    ranks = mate_ranks(scores, probe_labels, gallery_labels)[0]
    ranks = ranks[ranks > 0]
    if not ranks.size:
        raise ValueError("no probe has a mate in the gallery: CMC is undefined")
    r = max_rank or np.asarray(scores).shape[1]
    return np.array([(ranks <= k).mean() for k in range(1, r + 1)])


def threshold_at_rate(negatives, rate: float) -> tuple[float, bool]:
    """``(T, rate_resolved)``: smallest ``T`` with ``#{negatives >= T} <= floor(rate * n)``.

    ``rate_resolved`` is False when ``rate * n < 1`` (the rate is below what ``n`` negative
    scores can measure). See the module docstring.
    """
    neg = np.asarray(negatives, dtype=np.float64).reshape(-1)
    if not neg.size:
        raise ValueError("no negative scores: a false-accept rate needs impostor comparisons")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    if not np.isfinite(neg).all():
        raise ValueError("negative scores contain NaN or inf")
    k = int(np.floor(rate * neg.size + 1e-9))  # false accepts allowed
    kth = np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k]  # the (k+1)-th largest
    return float(np.nextafter(kth, np.inf)), k >= 1


def tpir_at_fpir(
    scores, probe_labels, gallery_labels, fpirs: Sequence[float] = IJB_FPIRS, rank: int = 1
) -> dict[float, dict]:
    """``{fpir: {"tpir", "threshold", "fpir_measured", "resolved"}}`` (open set, see module).

    Needs mated and non-mated probes (e.g. IJB-C's mixed probes against gallery G1 only).
    """
    ranks, mate, top = mate_ranks(scores, probe_labels, gallery_labels)
    mated, non = ranks > 0, ranks == 0
    if not mated.any() or not non.any():
        raise ValueError(
            f"TPIR@FPIR needs mated and non-mated probes, got {int(mated.sum())} mated and "
            f"{int(non.sum())} non-mated"
        )
    out = {}
    for f in fpirs:
        t, resolved = threshold_at_rate(top[non], f)
        hit = (ranks[mated] <= rank) & (mate[mated] >= t)
        out[f] = {
            "tpir": float(hit.mean()),
            "threshold": t,
            "fpir_measured": float((top[non] >= t).mean()),
            "resolved": resolved,
        }
    return out


def open_set_rates(scores, probe_labels, gallery_labels, threshold: float, rank: int = 1):
    """``(TPIR, FPIR)`` at one fixed threshold (e.g. a calibrated one); NaN where undefined."""
    ranks, mate, top = mate_ranks(scores, probe_labels, gallery_labels)
    mated, non = ranks > 0, top[ranks == 0]
    hit = (ranks[mated] <= rank) & (mate[mated] >= threshold)
    tpir = float(hit.mean()) if mated.any() else float("nan")
    return tpir, float((non >= threshold).mean()) if non.size else float("nan")
