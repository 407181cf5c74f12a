"""Exact top-k cosine search of probes in a gallery: numpy for small galleries, faiss for large.

Rows are L2-normalised embeddings, so the inner product is the cosine. Both backends are
**exact** (no approximation, same neighbours up to float rounding and tie order):

* ``numpy``: probes in batches of ``batch_size`` (default: as many as keep the ``(batch, N)``
  float32 score block under ``SCORE_BLOCK_BYTES``), one BLAS product per batch, then
  ``argpartition`` for the top ``k`` and a sort of those ``k`` (score descending, gallery row
  ascending on ties, so results are deterministic).
* ``faiss``: ``faiss.IndexFlatIP`` (brute force with a per-probe heap, no score matrix), from
  the ``faiss-cpu`` wheel; its OpenMP threads follow ``OMP_NUM_THREADS``.

``backend="auto"`` takes faiss from ``FAISS_MIN_GALLERY`` gallery entries on, else numpy;
without an importable faiss it logs one line and uses numpy. Measured by
``benchmarks/bench_search.py`` (1,000 probes, one thread, shared 2-core machine; two runs
differed by up to 2x): faiss searched 4-8x faster than numpy at 10,000 entries, 6x at 50,000
and 200,000, 11x at 1,000,000 (324 vs 28 probes/s); below 10,000 entries numpy's search costs
well under a millisecond per probe, nothing next to detecting and embedding the photo, and
needs no second copy of the gallery (``IndexFlatIP`` keeps its own).
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

BACKENDS = ("auto", "numpy", "faiss")
#: gallery size from which ``auto`` prefers faiss (benchmarks/results/search/scale.md)
FAISS_MIN_GALLERY = 10_000
#: the numpy backend's score block per probe batch
SCORE_BLOCK_BYTES = 64 * 2**20


def faiss_module():
    """The ``faiss`` module, or None when it cannot be imported."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def choose_backend(n_gallery: int, backend: str = "auto") -> str:
    """``numpy`` or ``faiss`` for a gallery of ``n_gallery`` entries (see module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "faiss" and faiss_module() is None:
        raise ImportError("backend 'faiss' needs the faiss-cpu package (pip install faiss-cpu)")
    if backend != "auto":
        return backend
    if n_gallery < FAISS_MIN_GALLERY:
        return "numpy"
    if faiss_module() is None:
        log.warning(
            "faiss is not installed: searching %d gallery entries with numpy (exact, slower); "
            "pip install faiss-cpu",
            n_gallery,
        )
        return "numpy"
    return "faiss"


def _as_rows(x, name: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(n, {dim})" if dim else "(n, D)"
        raise ValueError(f"{name} must be {want}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf")
    return x


class GalleryIndex:
    """Exact top-k inner-product search over ``templates (N, D)``; see the module docstring."""

    def __init__(self, templates, backend: str = "auto") -> None:
        self.templates = _as_rows(templates, "gallery templates")
        if not len(self.templates):
            raise ValueError("the gallery is empty: enrol at least one person")
        self.backend = choose_backend(len(self.templates), backend)
        self._faiss = None
        if self.backend == "faiss":
            faiss = faiss_module()
            self._faiss = faiss.IndexFlatIP(self.templates.shape[1])
            self._faiss.add(self.templates)

    def __len__(self) -> int:
        return len(self.templates)

    def _numpy_topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = q @ self.templates.T  # (B, N)
        if k < s.shape[1]:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (B, k), unordered
        else:
            part = np.broadcast_to(np.arange(s.shape[1]), s.shape)
        top = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -top), axis=1)  # score descending, then gallery row
        return np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)

    def search(
        self, probes, k: int = 5, batch_size: int | None = None, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k) float32, rows (Q, k) int64)``, best first; ``k`` at most ``N``."""
        q = _as_rows(probes, "probe embeddings", self.templates.shape[1])
        k = min(int(k), len(self))
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if batch_size is None:
            per_probe = 4 * len(self) if self.backend == "numpy" else 4 * 1024
            batch_size = max(1, min(4096, SCORE_BLOCK_BYTES // per_probe))
        scores = np.empty((len(q), k), np.float32)
        rows = np.empty((len(q), k), np.int64)
        for s in tqdm(
            range(0, len(q), batch_size), desc="search", unit="batch", disable=not progress
        ):
            block = q[s : s + batch_size]
            if self._faiss is not None:
                scores[s : s + batch_size], rows[s : s + batch_size] = self._faiss.search(block, k)
            else:
                scores[s : s + batch_size], rows[s : s + batch_size] = self._numpy_topk(block, k)
        return scores, rows
