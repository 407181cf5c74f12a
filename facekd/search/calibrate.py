"""``facekd calibrate``: the cosine threshold at a target false-accept rate, on your own data.

Scores: cosine of L2-normalised flip-sum embeddings (``extract_embeddings``, the one path).
Genuine and impostor comparisons come from

* a verification ``.bin`` (insightface format, aligned crops): its labelled pairs; or
* a labelled folder (one subfolder per person, raw photos or aligned crops with ``aligned``):
  embedded with ``facekd embed``'s resumable ``embed_folder``, then **every** pair of images:
  same subfolder = genuine, different subfolders = impostor. Many more impostors than a pair
  file, so small FARs become measurable.

The threshold is ``facekd.evaluation.identification.threshold_at_rate(impostor, far)``: the
smallest cosine that accepts at most ``floor(far * n_impostor)`` impostor comparisons; TAR is
the fraction of genuine comparisons at or above it. A FAR below ``1 / n_impostor`` cannot be
measured: the threshold then sits just above the highest impostor score and the record says
``far_resolved: false`` (the command warns). The record goes into the model's sidecar
(``facekd.search.sidecar``), where ``facekd verify``, ``facekd search`` and ``facekd.load``
find it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from facekd.evaluation.identification import threshold_at_rate
from facekd.search.sidecar import write_calibration

#: FARs whose TAR is recorded beside the calibrated one (information only)
REPORT_FARS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: a labelled folder yields n^2/2 comparisons; beyond this many we refuse rather than swap
MAX_COMPARISONS = 50_000_000


def bin_scores(face_model, path) -> tuple[np.ndarray, np.ndarray, int]:
    """``(genuine, impostor, D)``: cosines of the pairs of a verification ``.bin``."""
    from facekd.data.verification import read_bin
    from facekd.evaluation.embed import extract_embeddings

    ps = read_bin(path)
    emb = extract_embeddings(face_model.runner, ps.images, bf16=face_model.bf16, progress=True)
    cos = np.einsum("ij,ij->i", emb[ps.pairs[:, 0]].astype(np.float64), emb[ps.pairs[:, 1]])
    return cos[ps.issame], cos[~ps.issame], emb.shape[1]


def labelled_scores(embeddings, labels, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(genuine, impostor)`` cosines of every pair ``i < j`` of L2-normalised rows."""
    e = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(e)
    if n * (n - 1) // 2 > MAX_COMPARISONS:
        raise ValueError(
            f"{n} images give {n * (n - 1) // 2:,} comparisons (limit {MAX_COMPARISONS:,}); "
            "calibrate on a subset of the people or photos"
        )
    gen, imp = [], []
    for s in range(0, n, block):
        sim = e[s : s + block] @ e.T  # (b, n)
        rows = np.arange(s, min(s + block, n))[:, None]
        upper = np.arange(n)[None, :] > rows
        same = labels[s : s + block, None] == labels[None, :]
        gen.append(sim[upper & same])
        imp.append(sim[upper & ~same])
    return np.concatenate(gen), np.concatenate(imp)


def folder_scores(model, folder, aligned: bool = False, embeddings=None, **embed_kwargs):
    """``(genuine, impostor, D, failures)`` over a labelled folder (see the module docstring).

    ``embeddings``: where ``embed_folder`` keeps the per-image embeddings (resumable); default
    a temporary folder, removed afterwards.
    """
    from facekd.deploy.embed_folder import embed_folder

    with tempfile.TemporaryDirectory(prefix="facekd-calibrate-") as tmp:
        out = Path(embeddings) if embeddings else Path(tmp) / "calibration.npz"
        report = embed_folder(folder, model, out, aligned=aligned, **embed_kwargs)
        with np.load(out, allow_pickle=False) as z:
            emb, paths = z["embeddings"], z["paths"].tolist()
    loose = [p for p in paths if "/" not in p]
    if loose:
        raise ValueError(
            f"{folder}: {len(loose)} images are not in a person's subfolder (e.g. {loose[0]}); "
            "a labelled folder has one subfolder per person"
        )
    labels = [p.split("/", 1)[0] for p in paths]
    if len(set(labels)) < 2:
        raise ValueError(f"{folder}: need at least two people with usable photos")
    genuine, impostor = labelled_scores(emb, labels)
    if not genuine.size:
        raise ValueError(f"{folder}: no person has two usable photos: no genuine comparisons")
    return genuine, impostor, emb.shape[1], report.failed


def calibration_record(genuine, impostor, far: float, data: str) -> dict:
    """The sidecar record for a target ``far`` (threshold, TAR, measured FAR, counts)."""
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    if not genuine.size:
        raise ValueError("no genuine comparisons: TAR is undefined")
    t, resolved = threshold_at_rate(impostor, far)
    table = {}
    for f in REPORT_FARS:
        tf, ok = threshold_at_rate(impostor, f)
        table[f"{f:g}"] = {"threshold": tf, "tar": float((genuine >= tf).mean()), "resolved": ok}
    return {
        "threshold": t,
        "far": float(far),
        "far_measured": float((impostor >= t).mean()),
        "far_resolved": resolved,
        "tar": float((genuine >= t).mean()),
        "n_genuine": int(genuine.size),
        "n_impostor": int(impostor.size),
        "score": "cosine of L2-normalised flip-sum embeddings; accept when >= threshold",
        "data": str(data),
        "tar_at_far": table,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def calibrate(
    model,
    far: float = 1e-3,
    bin_path=None,
    folder=None,
    aligned: bool = False,
    embeddings=None,
    save: bool = True,
) -> dict:
    """Calibrate ``model`` (a file / folder / prefix) on ``bin_path`` or ``folder``; the record
    (also written into the sidecar when ``save``), with ``"failed"`` images of a folder."""
    from facekd.deploy.api import load
    from facekd.deploy.embed_folder import fingerprint

    if (bin_path is None) == (folder is None):
        raise ValueError("give exactly one of a verification .bin or a labelled folder")
    failed: dict[str, str] = {}
    if bin_path is not None:
        genuine, impostor, dim = bin_scores(load(model), bin_path)
    else:
        genuine, impostor, dim, failed = folder_scores(model, folder, aligned, embeddings)
    record = calibration_record(genuine, impostor, far, bin_path or folder)
    record.update(model_fingerprint=fingerprint(model), embedding_size=dim)
    if save:
        record["sidecar"] = str(write_calibration(model, record))
    return record | {"failed": failed}
