"""Build an InsightFace verification ``.bin`` from raw photos and a pair list.

Each distinct image of the ``PairSet`` is read once (``read_rgb``), detected with MTCNN
(``FaceDetector``, policy ``"center"``: the face nearest the image centre, which is the
subject on LFW-style framing; METHODS.md section 6), aligned with ``norm_crop`` to 112x112 and
encoded once as JPEG quality 95 (``encode_image``; the OpenCV default insightface's alignment
scripts wrote with). Pairs are written in fold-major order (``PairSet.fold_major``), so
insightface's unshuffled 10-fold split of the ``.bin`` equals the protocol's folds (LFW and
CFP lists are already in that order; CPLFW/CALFW get fold blocks of 300 + 300).

An image without a face is detected a second time inside a black border of 0.25 x its longer
side: on the real CFP mini set this finds the face in all 5 frontal images MTCNN missed (tight
crops whose face touches the frame); LFW needs no retry (every image has a face).
Verification protocols keep every pair, so an image still without a face is not dropped:
it gets the **centre crop** fallback (``centre_crop``): a square of side
``fraction * min(H, W)`` centred on the image, mapped onto the 112x112 crop by the same
``norm_crop`` warp (the ArcFace template scaled into that square). The default fraction 0.52
is the median side of the MTCNN-aligned crop measured on 80 real LFW images (250x250, centre
within 3% of the image centre); for tight face crops such as CFP's, pass ``fraction=1.0``.
Fallback images are listed in the returned ``BuildReport``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from facekd.data.align import norm_crop, template_for
from facekd.data.transforms import read_rgb
from facekd.data.verification import JPEG_QUALITY, PairSet, encode_image, write_bin

LFW_FRACTION = 0.52
RETRY_PAD = 0.25


@dataclass
class BuildReport:
    """What ``build_bin`` did: counts and the images that used the centre-crop fallback."""

    path: str
    n_pairs: int
    n_images: int
    no_face: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.n_pairs} pairs, {self.n_images} distinct images, "
            f"{len(self.no_face)} without a detected face (centre crop used)"
        )


def centre_landmarks(shape: tuple[int, ...], fraction: float = LFW_FRACTION, size: int = 112):
    """(5, 2) landmarks that make ``norm_crop`` cut the centred square of side
    ``fraction * min(H, W)``: the ``size`` template scaled into that square."""
    if not 0 < fraction <= 4:
        raise ValueError(f"centre-crop fraction must be in (0, 4], got {fraction}")
    h, w = shape[:2]
    side = fraction * min(h, w)
    origin = np.array([(w - side) / 2.0, (h - side) / 2.0])
    return template_for(size) * (side / size) + origin


def centre_crop(image: np.ndarray, fraction: float = LFW_FRACTION, size: int = 112):
    """The documented no-face fallback: the centred square, resized to ``size`` x ``size``."""
    return norm_crop(image, centre_landmarks(image.shape, fraction, size), size)


def align_images(
    paths: list[str],
    detector=None,
    size: int = 112,
    fraction: float = LFW_FRACTION,
    batch_size: int = 16,
    retry_pad: float = RETRY_PAD,
):
    """Yield ``(path, crop (size, size, 3) uint8 RGB, found)`` for each path, in order.

    ``detector`` is anything with ``detect(list of RGB arrays) -> list[list[Detection]]``
    (default: ``FaceDetector(policy="center")``); the first face of each list is used. An
    image without a face is detected once more inside a black border of ``retry_pad`` x its
    longer side (MTCNN misses faces that touch the frame, e.g. CFP's tight crops; the
    symmetric border keeps the image centre for the ``"center"`` policy); ``retry_pad=0``
    disables this. Still nothing: ``centre_crop(image, fraction)``, ``found=False``.
    """
    if detector is None:
        from facekd.data.detect import FaceDetector

        detector = FaceDetector(policy="center")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [read_rgb(p) for p in chunk]
        faces = detector.detect(images)
        retry = [k for k, f in enumerate(faces) if not f] if retry_pad > 0 else []
        if retry:
            pads = [int(round(retry_pad * max(images[k].shape[:2]))) for k in retry]
            padded = [
                cv2.copyMakeBorder(images[k], p, p, p, p, cv2.BORDER_CONSTANT, value=0)
                for k, p in zip(retry, pads, strict=True)
            ]
            for k, p, found in zip(retry, pads, detector.detect(padded), strict=True):
                faces[k] = [replace(f, landmarks=f.landmarks - p) for f in found]
        for p, img, found in zip(chunk, images, faces, strict=True):
            if found:
                yield p, norm_crop(img, found[0].landmarks, size), True
            else:
                yield p, centre_crop(img, fraction, size), False


def build_bin(
    pairset: PairSet,
    out_path: str | os.PathLike,
    detector=None,
    size: int = 112,
    fraction: float = LFW_FRACTION,
    quality: int = JPEG_QUALITY,
    batch_size: int = 16,
    retry_pad: float = RETRY_PAD,
    progress=None,
) -> BuildReport:
    """Detect, align and encode every image of ``pairset`` once; write ``out_path``.

    Args:
        pairset: raw-image ``PairSet`` (``images`` are paths), e.g. from ``read_lfw_pairs``.
        detector: see ``align_images``; size: crop side (112 for insightface);
        fraction: centre-crop fallback side relative to ``min(H, W)``;
        quality: JPEG quality; retry_pad: border for the second detection attempt;
        progress: optional callable ``(done, total)``.
    """
    encoded: list[bytes] = []
    no_face: list[str] = []
    n = len(pairset.images)
    for k, (path, crop, found) in enumerate(
        align_images(list(pairset.images), detector, size, fraction, batch_size, retry_pad)
    ):
        encoded.append(encode_image(crop, ".jpg", quality))
        if not found:
            no_face.append(path)
        if progress is not None:
            progress(k + 1, n)
    ps = PairSet(encoded, pairset.pairs, pairset.issame, pairset.folds, pairset.name).fold_major()
    write_bin(out_path, ps.pair_images(), ps.issame)
    return BuildReport(str(out_path), len(ps), n, no_face)


def pair_list_script(doc: str, default_out: str, pairs_help: str, read_pairs, argv=None):
    """The whole ``data_prep`` pair-list script: ``--pairs --images --out --device
    --fallback-fraction``, ``read_pairs(pairs, images)`` -> ``build_bin`` with MTCNN choosing
    the face nearest the centre; prints the report and every image without a face."""
    import argparse

    from facekd.data.detect import FaceDetector

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--pairs", required=True, help=pairs_help)
    p.add_argument("--images", required=True, help="folder holding the listed images")
    p.add_argument("--out", default=default_out)
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--fallback-fraction", type=float, default=LFW_FRACTION)
    args = p.parse_args(argv)
    detector = FaceDetector(policy="center", device=args.device)
    pairs = read_pairs(args.pairs, args.images)
    report = build_bin(pairs, args.out, detector, fraction=args.fallback_fraction)
    print(report)
    for path in report.no_face:
        print("  no face:", path)
    return report
