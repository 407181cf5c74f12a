"""Do two implementations of one face model agree? Row-wise cosine and differences of their
embeddings of the same faces (ONNX export, ONNX import, any backend swap).

``parity_faces`` draws the faces (synthetic aligned crops, one per identity, deterministic);
``row_agreement`` compares two ``(N, D)`` embedding arrays: ``min_cosine`` = min over rows of
``<a_i, b_i> / (|a_i| |b_i|)``, ``max_abs_diff`` = max |a - b|, ``max_rel_norm_diff`` = max over
rows of ``| |a_i| - |b_i| | / |a_i|`` (a scale error the cosine cannot see).
"""

from __future__ import annotations

import numpy as np

PARITY_BATCHES = (1, 7)


def parity_faces(size: int, count: int = max(PARITY_BATCHES), seed: int = 0) -> np.ndarray:
    """``(count, size, size, 3)`` uint8 RGB synthetic aligned faces, one per identity."""
    from facekd.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(count, 1, size=max(size, 16), seed=seed)
    out = np.stack([faces.render(i, 0)[0] for i in range(count)])
    if out.shape[1] != size:  # tiny test models below the renderer's 16 px minimum
        import cv2

        out = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in out])
    return out


def row_agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    """``{"min_cosine", "max_abs_diff", "max_rel_norm_diff"}`` of two ``(N, D)`` arrays."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"output shape {got.shape} differs from the reference {ref.shape}")
    n_ref, n_got = np.linalg.norm(ref, axis=1), np.linalg.norm(got, axis=1)
    cos = (ref * got).sum(1) / np.maximum(n_ref * n_got, 1e-12)
    return {
        "min_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(ref - got).max()),
        "max_rel_norm_diff": float((np.abs(n_ref - n_got) / np.maximum(n_ref, 1e-12)).max()),
    }
