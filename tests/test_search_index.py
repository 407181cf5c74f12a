"""GalleryIndex: exact top-k against a brute-force sort, numpy and faiss agree, the automatic
choice and the fallback when faiss is missing."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

import facekd.search.index as ix
from facekd.search.index import GalleryIndex, choose_backend


def _unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(gallery, probes, k):
    """Independent reference: full sort of every probe's scores (descending, row ascending)."""
    s = probes.astype(np.float64) @ gallery.T.astype(np.float64)
    rows = np.array([sorted(range(len(gallery)), key=lambda j, r=r: (-r[j], j))[:k] for r in s])
    return np.take_along_axis(s, rows, 1), rows


@pytest.mark.parametrize("batch_size", [1, 7, None])
def test_numpy_topk_matches_a_full_sort(batch_size):
    rng = np.random.default_rng(0)
    gallery, probes = _unit(rng, 50), _unit(rng, 23)
    gallery[10] = gallery[3]  # an exact tie: the lower row comes first
    scores, rows = GalleryIndex(gallery, "numpy").search(probes, k=6, batch_size=batch_size)
    ref_scores, ref_rows = _brute_force(gallery, probes, 6)
    assert scores.shape == rows.shape == (23, 6) and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


def test_k_is_capped_at_the_gallery_size():
    rng = np.random.default_rng(1)
    gallery, probes = _unit(rng, 3), _unit(rng, 4)
    scores, rows = GalleryIndex(gallery, "numpy").search(probes, k=10)
    assert rows.shape == (4, 3)
    np.testing.assert_array_equal(rows, _brute_force(gallery, probes, 3)[1])


def test_faiss_and_numpy_return_the_same_neighbours():
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    rng = np.random.default_rng(2)
    gallery, probes = _unit(rng, 500, 32), _unit(rng, 40, 32)
    fi = GalleryIndex(gallery, "faiss")
    assert fi.backend == "faiss"
    s_f, r_f = fi.search(probes, k=5, batch_size=9)
    s_n, r_n = GalleryIndex(gallery, "numpy").search(probes, k=5)
    np.testing.assert_array_equal(r_f, r_n)
    np.testing.assert_allclose(s_f, s_n, atol=1e-5)


def test_auto_choice_by_gallery_size(monkeypatch):
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    assert choose_backend(ix.FAISS_MIN_GALLERY - 1) == "numpy"
    assert choose_backend(ix.FAISS_MIN_GALLERY) == "faiss"
    monkeypatch.setattr(ix, "FAISS_MIN_GALLERY", 10)
    assert GalleryIndex(_unit(np.random.default_rng(3), 12), "auto").backend == "faiss"


def test_without_faiss_auto_falls_back_to_numpy_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.setattr(ix, "FAISS_MIN_GALLERY", 10)
    with caplog.at_level(logging.WARNING, logger="facekd.search.index"):
        index = GalleryIndex(_unit(np.random.default_rng(4), 12), "auto")
    assert index.backend == "numpy"
    assert "faiss is not installed" in caplog.text
    with pytest.raises(ImportError, match="faiss-cpu"):
        GalleryIndex(_unit(np.random.default_rng(4), 12), "faiss")


def test_bad_input_is_named():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="empty"):
        GalleryIndex(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="backend must be"):
        GalleryIndex(_unit(rng, 4), "annoy")
    index = GalleryIndex(_unit(rng, 4))
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        index.search(_unit(rng, 2, 8))
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(_unit(rng, 2), k=0)
