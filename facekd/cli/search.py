"""``facekd calibrate``, ``enroll`` and ``search``: thresholds, galleries, 1:N."""

from __future__ import annotations

import argparse
from pathlib import Path

from facekd.cli.common import (
    UsageError,
    _add_face_source,
    _model_spec,
    _positive_int,
)


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bin", help="verification .bin (insightface format) with labelled pairs")
    src.add_argument("--folder", help="labelled folder: one subfolder of photos per person")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate")
    p.add_argument("--model", required=True, help="checkpoint, legacy MXNet folder or .onnx")
    p.add_argument("--aligned", action="store_true", help="--folder holds aligned crops")
    p.add_argument("--embeddings", help="keep --folder's embeddings here (.npz, resumable)")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Threshold at a target false-accept rate, stored in the model's sidecar."""
    from facekd.search.calibrate import calibrate

    if not 0 < args.far < 1:
        raise UsageError(f"--far must be in (0, 1), got {args.far}")
    try:
        rec = calibrate(
            _model_spec(args.model), args.far, args.bin, args.folder, args.aligned, args.embeddings
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(
        f"threshold {rec['threshold']:.4f} (cosine) at FAR {args.far:g}: TAR {100 * rec['tar']:.2f}"
        f" %, measured FAR {rec['far_measured']:.2e} ({rec['n_genuine']} genuine, "
        f"{rec['n_impostor']} impostor comparisons) -> {rec['sidecar']}"
    )
    if not rec["far_resolved"]:
        print(
            f"warning: {rec['n_impostor']} impostor comparisons cannot measure FAR {args.far:g}"
            " (needs >= 1/FAR); the threshold lies just above the highest impostor score"
        )
    if rec["failed"]:
        print(
            f"{len(rec['failed'])} photos could not be used (listed in the embeddings' "
            ".failed.json)"
        )
    return 0


def _add_enroll(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="folder with one subfolder of photos per person")
    p.add_argument("--out", required=True, help="gallery .npz to write")
    _add_face_source(p)
    p.add_argument("--overwrite", action="store_true", help="discard earlier embeddings")
    p.add_argument("--retry-failed", action="store_true", help="retry photos listed as failed")


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enrol people (one template per person folder) into a gallery; resumable."""
    from facekd.search.gallery import enroll

    try:
        rep = enroll(
            args.src,
            _model_spec(args.model),
            args.out,
            aligned=args.aligned,
            workers=args.workers,
            bf16=args.bf16,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    fails = Path(args.out).with_name(f"{Path(args.out).stem}.images.failed.json")
    print(
        f"enrolled {rep.people} people ({rep.embedded} photos embedded, {rep.reused} reused, "
        f"{len(rep.failed)} failed: {fails}) -> {args.out}"
    )
    if rep.without_photo:
        print(f"not enrolled (no usable photo): {', '.join(rep.without_photo)}")
    return 0


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="an image or a folder of images")
    p.add_argument("--gallery", required=True, help="gallery .npz from facekd enroll")
    p.add_argument("--out", required=True, help="results .csv")
    _add_face_source(p)
    p.add_argument("--top-k", type=_positive_int, default=5, help="identities per probe")
    p.add_argument("--threshold", type=float, help="default: the model's calibration")
    p.add_argument("--backend", choices=["auto", "numpy", "faiss"], default="auto")


def cmd_search(args: argparse.Namespace) -> int:
    """Search faces in a gallery: top-k identities, open-set rejection, CSV."""
    from facekd.search.probe import search

    try:
        rep = search(
            args.src,
            args.gallery,
            _model_spec(args.model),
            args.out,
            args.top_k,
            args.threshold,
            args.aligned,
            args.backend,
            workers=args.workers,
            bf16=args.bf16,
        )
    except (FileNotFoundError, ImportError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(
        f"searched {rep.probes} faces ({rep.backend}): {rep.accepted} accepted at threshold "
        f"{rep.threshold:.4f} ({rep.threshold_source}); {len(rep.failed)} failed -> {rep.out}"
    )
    if rep.fpir_bound is not None and rep.fpir_bound > 0.05:
        print(
            f"warning: a 1:1 threshold over {rep.gallery_size} people accepts a stranger with "
            f"probability up to {100 * rep.fpir_bound:.0f} %; for open-set search calibrate "
            "at FAR = wanted FPIR / gallery size"
        )
    return 0
