"""Build an InsightFace verification ``.bin`` from raw photos and a pair list.

Each distinct image of the ``PairSet`` is read once (``read_rgb``), detected with MTCNN
(``FaceDetector``, policy ``"center"``: the face nearest the image centre, which is the
subject on LFW-style framing; METHODS.md section 6), aligned with ``norm_crop`` to 112x112 and
encoded once as JPEG quality 95 (``encode_image``; the OpenCV default insightface's alignment
scripts wrote with). Pairs are written in fold-major order (``PairSet.fold_major``), so
insightface's unshuffled 10-fold split of the ``.bin`` equals the protocol's folds (LFW and
CFP lists are already in that order; CPLFW/CALFW get fold blocks of 300 + 300).

An image without a face, or whose face box leaves the photo (CFP's tight crops: boxes from
y1 = -17 to -141 px, landmarks on the forehead), is detected again inside padded borders
(``detect_with_context``) and cut with insightface's black border; LFW's photos never need
it, so LFW crops are unchanged. Every ``.bin`` gets a manifest beside it
(``facekd.data.set_manifest``: pixel and pair-list sha256, distinct images, identities).
Detection runs with one torch thread (``BUILD_THREADS``): MTCNN's landmarks change with the
thread count, so only a fixed count makes two builds on one machine byte-identical.
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

import numpy as np

from facekd.data.align import norm_crop, template_for
from facekd.data.detect import CONTEXT_LOOKS, detect_with_context
from facekd.data.set_manifest import (
    compare_manifests,
    manifest_path,
    pixels_digest,
    read_manifest,
    set_manifest,
    write_manifest,
)
from facekd.data.transforms import read_rgb
from facekd.data.verification import JPEG_QUALITY, PairSet, encode_image, write_bin
from facekd.runtime import torch_threads

LFW_FRACTION = 0.52
#: torch threads while a set is built (see ``build_bin``); recorded in every manifest
BUILD_THREADS = 1


@dataclass
class BuildReport:
    """What ``build_bin`` did: counts and the images that used the centre-crop fallback."""

    path: str
    n_pairs: int
    n_images: int
    no_face: list[str] = field(default_factory=list)
    pixels_sha256: str = ""
    context: list[str] = field(default_factory=list)  # faces found on a padded photo
    frozen: str | None = None  # the frozen manifest compared with, if any
    drift: list[str] = field(default_factory=list)  # how the build differs from it

    def __str__(self) -> str:
        text = (
            f"{self.path}: {self.n_pairs} pairs, {self.n_images} distinct images, "
            f"{len(self.context)} found with added context (padded photo), "
            f"{len(self.no_face)} without a detected face (centre crop used); "
            f"pixels sha256 {self.pixels_sha256[:16]}"
        )
        if self.frozen is not None:
            text += "\n  " + (
                f"DIFFERS from the frozen set {self.frozen}: " + "; ".join(self.drift)
                if self.drift
                else f"identical to the frozen set {self.frozen}"
            )
        return text


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
    context_looks=CONTEXT_LOOKS,
):
    """Yield ``(path, crop (size, size, 3) uint8 RGB, found, context)`` for each path, in order
    (``context``: the face was found on the edge-padded photo).

    ``detector`` is anything with ``detect(list of RGB arrays) -> list[list[Detection]]``
    (default: ``FaceDetector(policy="center")``); the first face of each list is used.
    Detection goes through ``detect_with_context``: a photo without a face, or whose face box
    leaves the frame (CFP's and CelebA's tight crops), is detected again inside padded
    borders (``context_looks``; symmetric, so the ``"center"`` policy keeps its centre) and
    cut from the photo with a black border; ``context_looks=()`` disables this. Still
    nothing: ``centre_crop(image, fraction)``, ``found=False``.
    """
    if detector is None:
        from facekd.data.detect import FaceDetector

        detector = FaceDetector(policy="center")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [read_rgb(p) for p in chunk]
        faces = detect_with_context(detector, images, context_looks)
        for p, img, found in zip(chunk, images, faces, strict=True):
            if found:
                yield p, found[0].crop(img, size), True, found[0].padded
            else:
                yield p, centre_crop(img, fraction, size), False, False


def build_bin(
    pairset: PairSet,
    out_path: str | os.PathLike,
    detector=None,
    size: int = 112,
    fraction: float = LFW_FRACTION,
    quality: int = JPEG_QUALITY,
    batch_size: int = 16,
    context_looks=CONTEXT_LOOKS,
    progress: bool = False,
    frozen: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> BuildReport:
    """Detect, align and encode every image of ``pairset`` once; write ``out_path`` and its
    manifest (``facekd.data.set_manifest``) beside it.

    Args:
        pairset: raw-image ``PairSet`` (``images`` are paths), e.g. from ``read_lfw_pairs``.
        detector: see ``align_images``; size: crop side (112 for insightface);
        fraction: centre-crop fallback side relative to ``min(H, W)``;
        quality: JPEG quality; context_looks: the extra looks of ``align_images``;
        progress: show a tqdm bar;
        frozen: a frozen manifest of this set: differences are listed in ``report.drift``
            (and printed by the ``data_prep`` scripts), never silently accepted;
        root: image paths in the manifest are relative to it (default: their common folder).
    """
    from tqdm import tqdm

    pairset = pairset.used_only()  # a .bin holds only the images some pair uses
    encoded: list[bytes] = []
    digests: list[str] = []
    no_face: list[str] = []
    images = list(pairset.images)
    stream = align_images(images, detector, size, fraction, batch_size, context_looks)
    context: list[str] = []
    # one torch thread: MTCNN's landmarks depend on the thread count (124 of CFP-FP-mini's
    # 1,170 crops moved between 1 and 2 threads), and a frozen set must not
    with torch_threads(BUILD_THREADS):
        for path, crop, found, padded in tqdm(
            stream,
            total=len(images),
            desc=pairset.name or "align",
            unit="img",
            disable=not progress,
        ):
            encoded.append(encode_image(crop, ".jpg", quality))
            digests.append(pixels_digest(crop))
            if not found:
                no_face.append(path)
            if padded:
                context.append(path)
    ps = replace(pairset, images=encoded).fold_major()
    write_bin(out_path, ps.pair_images(), ps.issame)
    manifest = set_manifest(
        replace(ps, images=images), digests, out_path, no_face, root, context, BUILD_THREADS
    )
    write_manifest(manifest, manifest_path(out_path))
    report = BuildReport(
        str(out_path), len(ps), len(images), no_face, manifest["pixels_sha256"], context
    )
    if frozen is not None:
        report.drift = compare_manifests(read_manifest(frozen), manifest)
        report.frozen = str(frozen)
    return report


def pair_list_script(doc: str, default_out: str, pairs_help: str, read_pairs, argv=None):
    """The whole ``data_prep`` pair-list script: ``--pairs --images --out --device
    --fallback-fraction --frozen``, ``read_pairs(pairs, images)`` -> ``build_bin`` with MTCNN
    choosing the face nearest the centre; prints the report and every image without a face."""
    import argparse

    from facekd.data.detect import FaceDetector

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--pairs", required=True, help=pairs_help)
    p.add_argument("--images", required=True, help="folder holding the listed images")
    p.add_argument("--out", default=default_out)
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--fallback-fraction", type=float, default=LFW_FRACTION)
    p.add_argument("--frozen", default=None, help="frozen manifest to compare the build with")
    args = p.parse_args(argv)
    detector = FaceDetector(policy="center", device=args.device)
    pairs = read_pairs(args.pairs, args.images)
    report = build_bin(
        pairs,
        args.out,
        detector,
        fraction=args.fallback_fraction,
        progress=True,
        frozen=args.frozen,
        root=args.images,
    )
    print(report)
    for path in report.no_face:
        print("  no face:", path)
    return report
