"""Build ``cfp_ff.bin`` and ``cfp_fp.bin`` from the official CFP folder.

Expects <root>/ as distributed (Sengupta et al., "Frontal to Profile Face Verification in the
Wild", WACV 2016):
    Data/Images/<id>/{frontal,profile}/<NN>.jpg
    Protocol/Pair_list_F.txt, Pair_list_P.txt      "k ../Data/Images/..." (k from 1)
    Protocol/Split/{FF,FP}/<01..10>/{same,diff}.txt "i,j" (FP: i frontal, j profile)
Writes <out-dir>/cfp_ff.bin and cfp_fp.bin: InsightFace verification .bin files, fold by fold,
350 same then 350 different pairs per fold, each with its manifest (``cfp_ff.manifest.json``:
pixel and pair-list sha256, images, identities). CFP images are tight face crops: MTCNN's box
runs off the photo and its landmarks drift, or it finds nothing; every such photo is detected
again inside an edge-replicated border (``facekd.data.detect.detect_with_context``, decided
per photo, no flag). What is still missed falls back to the whole image (fraction 1.0) and is
listed. ``--frozen-dir benchmarks/sets`` compares each build with its frozen manifest and
prints every difference.

    python data_prep/cfp.py --root cfp-dataset --out-dir data/ [--frozen-dir benchmarks/sets]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facekd.data.detect import FaceDetector
from facekd.data.packing import build_bin
from facekd.data.pairlists import read_cfp_pairs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="CFP folder holding Data/ and Protocol/")
    p.add_argument("--out-dir", default=".")
    p.add_argument("--protocols", default="FF,FP")
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--fallback-fraction", type=float, default=1.0)
    p.add_argument("--frozen-dir", default=None, help="folder of frozen <set>.manifest.json")
    args = p.parse_args(argv)
    detector = FaceDetector(policy="center", device=args.device)
    for protocol in args.protocols.split(","):
        pairs = read_cfp_pairs(args.root, protocol)
        out = Path(args.out_dir) / f"{pairs.name}.bin"
        frozen = Path(args.frozen_dir) / f"{pairs.name}.manifest.json" if args.frozen_dir else None
        report = build_bin(
            pairs,
            out,
            detector,
            fraction=args.fallback_fraction,
            progress=True,
            frozen=frozen if frozen is not None and frozen.exists() else None,
            root=args.root,
        )
        print(report)
        for path in report.no_face:
            print("  no face:", path)


if __name__ == "__main__":
    main()
