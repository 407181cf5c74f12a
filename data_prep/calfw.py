"""Build ``calfw.bin`` from the CALFW (cross-age LFW) images and ``pairs_CALFW.txt``.

Expects:
    <images>/<file>    the CALFW image folder (flat; file names as listed)
    <pairs>   pairs_CALFW.txt: two consecutive lines "<file> <label>" per pair; label 0 =
              different, any other value = same (equal on both lines); positives first
Writes ``<out>``: InsightFace verification .bin, fold-major order as for CPLFW (the CALFW
layout details are from the CPLFW release and unverified for CALFW; the reader checks them).

    python data_prep/calfw.py --pairs calfw/pairs_CALFW.txt --images calfw/images --out calfw.bin
"""

from __future__ import annotations

import argparse

from facekd.data.detect import FaceDetector
from facekd.data.packing import LFW_FRACTION, build_bin
from facekd.data.pairlists import read_xlfw_pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="pairs_CALFW.txt")
    p.add_argument("--images", required=True, help="folder holding the listed image files")
    p.add_argument("--out", default="calfw.bin")
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--fallback-fraction", type=float, default=LFW_FRACTION)
    args = p.parse_args(argv)
    pairs = read_xlfw_pairs(args.pairs, args.images, name="calfw")
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
