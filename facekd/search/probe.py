"""``facekd search``: who is in these photos? Top-k gallery identities per probe, as a CSV.

Probes: one image (detected and aligned through ``facekd.load``) or a folder (every image at
any depth, through ``embed_folder``: resumable, cached in ``<results>.probes.npz``, failures in
``<results>.probes.failed.json``). The gallery must come from the same model
(``Gallery.check_model``) and probes are embedded with the gallery's flip setting.

Open-set rejection: ``accepted`` is ``rank1_score >= threshold``; a probe below it is nobody
the gallery knows. The threshold is the one given, else the model's calibration
(``facekd calibrate``, in its sidecar), else the uncalibrated default (``resolve_threshold``).
A 1:1 threshold at FAR ``f`` lets a stranger through a gallery of ``N`` people with probability
up to ``FPIR <= 1 - (1 - f)^N`` (about ``N f`` when small; independent comparisons assumed):
``SearchReport.fpir_bound`` states it, and a gallery of 300 at FAR 1e-2 accepts nearly every
stranger (measured: benchmarks/results/search/lfw_mini.md). Calibrate at ``f = FPIR / N``.

CSV (written atomically), one row per probe, in path order: ``path, rank1_identity,
rank1_score, accepted, rank2_identity, rank2_score, ...`` up to rank ``k`` (at most the
gallery size); scores are cosines with 6 decimals. Search: ``GalleryIndex`` (exact; numpy or
faiss, chosen by gallery size), batched.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.search.gallery import Gallery
from facekd.search.index import GalleryIndex
from facekd.search.sidecar import read_calibration, resolve_threshold


@dataclass
class SearchReport:
    """``probes`` searched, ``accepted`` at ``threshold`` (from ``threshold_source``),
    ``failed`` {path: reason}, the index ``backend`` and the CSV ``out``."""

    probes: int
    accepted: int
    threshold: float
    threshold_source: str
    failed: dict[str, str]
    backend: str
    out: Path
    gallery_size: int = 0
    fpir_bound: float | None = None  # 1 - (1 - FAR)^N for a calibrated threshold


def embed_probes(src, model, gallery: Gallery, cache: Path, aligned: bool, **kw):
    """``(paths, embeddings (Q, D), failed)`` for an image file or a folder."""
    src = Path(src)
    if src.is_file():
        from facekd.deploy.api import NoFaceError, load

        try:
            emb = load(model).embed([src], aligned=True if aligned else None, flip=kw["flip"])
        except (NoFaceError, ValueError, OSError) as err:
            return (
                [],
                np.zeros((0, gallery.meta["embedding_size"]), np.float32),
                {src.name: f"{type(err).__name__}: {err}"},
            )
        return [src.name], emb, {}
    from facekd.deploy.embed_folder import embed_folder

    rep = embed_folder(src, model, cache, aligned=aligned, **kw)
    with np.load(cache, allow_pickle=False) as z:
        return z["paths"].tolist(), z["embeddings"], rep.failed


def write_csv(path: Path, paths, identities, scores, rows, threshold: float) -> None:
    """The results CSV (see the module docstring), atomically."""
    k = scores.shape[1]
    header = ["path", "rank1_identity", "rank1_score", "accepted"]
    for r in range(2, k + 1):
        header += [f"rank{r}_identity", f"rank{r}_score"]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for p, s, j in zip(paths, scores, rows, strict=True):
            line = [p, identities[j[0]], f"{s[0]:.6f}", bool(s[0] >= threshold)]
            for r in range(1, k):
                line += [identities[j[r]], f"{s[r]:.6f}"]
            w.writerow(line)
    os.replace(tmp, path)


def search(
    src,
    gallery,
    model,
    out,
    k: int = 5,
    threshold: float | None = None,
    aligned: bool = False,
    backend: str = "auto",
    batch_size: int | None = None,
    **embed_kwargs,
) -> SearchReport:
    """Search the faces of ``src`` in ``gallery`` (path or ``Gallery``); write ``out`` (CSV).

    ``embed_kwargs`` go to ``embed_folder`` for a folder (``workers``, ``policy``, ``bf16``,
    ``detector``, ``progress``, ``overwrite``, ...).
    """
    out = Path(out)
    if not Path(src).exists():
        raise FileNotFoundError(f"{src}: no such image or folder")
    g = gallery if isinstance(gallery, Gallery) else Gallery.load(gallery)
    g.check_model(model)
    t, source = resolve_threshold(model, threshold)
    rec = read_calibration(model) if threshold is None else None
    bound = None if rec is None else float(-np.expm1(len(g) * np.log1p(-rec["far"])))
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.with_name(f"{out.name}.probes.npz")
    flip = bool(g.meta.get("flip", True))
    paths, emb, failed = embed_probes(src, model, g, cache, aligned, flip=flip, **embed_kwargs)
    g.check_model(model, emb.shape[1])
    index = GalleryIndex(g.templates, backend)
    k = min(k, len(g))
    scores, rows = index.search(emb, k, batch_size=batch_size, progress=len(emb) > 10_000)
    write_csv(out, paths, g.identities.tolist(), scores, rows, t)
    return SearchReport(
        probes=len(paths),
        accepted=int((scores[:, 0] >= t).sum()) if len(paths) else 0,
        threshold=t,
        threshold_source=source,
        failed=failed,
        backend=index.backend,
        out=out,
        gallery_size=len(g),
        fpir_bound=bound,
    )
