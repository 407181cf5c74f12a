"""Build ``cplfw.bin`` from the CPLFW (cross-pose LFW) images and ``pairs_CPLFW.txt``.

Expects:
    <images>/<Name>_<N>.jpg    the CPLFW image folder (flat)
    <pairs>   pairs_CPLFW.txt: 12,000 lines "<Name>_<N>.jpg <label>", two consecutive lines
              per pair, label 1 = same / 0 = different; 3,000 positives first, then 3,000
              negatives; an optional header line is skipped
Writes ``<out>``: InsightFace verification .bin (JPEG-95 112x112 MTCNN-aligned crops), pairs in
fold-major order (fold f = positives and negatives 300f..300f+299) so insightface's unshuffled
10-fold split equals the official folds.

    python data_prep/cplfw.py --pairs cplfw/pairs_CPLFW.txt --images cplfw/images --out cplfw.bin
"""

from __future__ import annotations

import argparse

from facekd.data.detect import FaceDetector
from facekd.data.packing import LFW_FRACTION, build_bin
from facekd.data.pairlists import read_xlfw_pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="pairs_CPLFW.txt")
    p.add_argument("--images", required=True, help="folder holding the listed image files")
    p.add_argument("--out", default="cplfw.bin")
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--fallback-fraction", type=float, default=LFW_FRACTION)
    args = p.parse_args(argv)
    pairs = read_xlfw_pairs(args.pairs, args.images, name="cplfw")
    report = build_bin(
        pairs,
        args.out,
        FaceDetector(policy="center", device=args.device),
        fraction=args.fallback_fraction,
    )
    print(report)
    for path in report.no_face:
        print("  no face:", path)


if __name__ == "__main__":
    main()
