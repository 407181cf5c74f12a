"""Build ``lfw.bin`` (InsightFace verification format) from raw LFW and the official pairs.

Expects (the LFW tarball ``lfw.tgz`` unpacked, and view 2 ``pairs.txt``):
    <images>/<Name>/<Name>_<NNNN>.jpg      original 250x250 colour JPEGs
    <pairs>  header "10<TAB>300", then per fold 300 matched "name i j" and 300 mismatched
             "name1 i name2 j" lines (any number of folds is accepted)
Writes ``<out>``: a pickle (protocol 4) of ``(bins, issame_list)``: 2 JPEG-95 112x112
ArcFace-aligned crops per pair (MTCNN, face nearest the centre), pairs in pairs.txt order.
An image without a face is re-detected inside a black border; if still none, it gets a
centred crop of 0.52 x the image side and is listed (real LFW: every image has a face).

    python data_prep/lfw.py --pairs lfw/pairs.txt --images lfw/ --out data/lfw.bin
"""

from __future__ import annotations

import argparse

from facekd.data.detect import FaceDetector
from facekd.data.packing import LFW_FRACTION, build_bin
from facekd.data.pairlists import read_lfw_pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="official pairs.txt (view 2)")
    p.add_argument("--images", required=True, help="folder holding <Name>/<Name>_NNNN.jpg")
    p.add_argument("--out", default="lfw.bin")
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--fallback-fraction", type=float, default=LFW_FRACTION)
    args = p.parse_args(argv)
    pairs = read_lfw_pairs(args.pairs, args.images)
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
