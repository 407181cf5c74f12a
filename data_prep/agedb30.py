"""Check (and optionally rewrite) InsightFace's ``agedb_30.bin``.

AgeDB (Moschoglou et al., CVPRW 2017) publishes no pair list: the 30-year-gap protocol
(10 folds x 300 same + 300 different pairs) ships with the data set on request (insightface's
packer read ``04_FINAL_protocol_30_years.mat``). What circulates is insightface's
``agedb_30.bin`` (a Python 2 pickle of 12,000 aligned 112x112 JPEGs and 6,000 labels), so
this script does not build one; it validates it:
  * loads it with facekd's restricted unpickler (no code can run),
  * decodes every image and checks it is 112x112 RGB (after insightface's resize_short rule),
  * reports pairs / positives.
With ``--out`` it writes the same image bytes and labels as a Python 3 protocol-4 pickle
(no recompression: every image stays bit-identical).

    python data_prep/agedb30.py --bin faces_emore/agedb_30.bin [--out data/agedb_30.bin]
"""

from __future__ import annotations

import argparse

from facekd.data.verification import decode_image, read_bin, write_bin


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--bin", required=True, help="insightface agedb_30.bin (or any verification .bin)"
    )
    p.add_argument("--out", help="write a protocol-4 copy here")
    p.add_argument("--expect-pairs", type=int, default=6000)
    args = p.parse_args(argv)
    ps = read_bin(args.bin)
    bad = []
    for i, data in enumerate(ps.images):
        try:
            decode_image(data, 112)
        except ValueError as e:
            bad.append(f"image {i}: {e}")
    print(f"{args.bin}: {len(ps)} pairs ({int(ps.issame.sum())} same), {len(ps.images)} images")
    if len(ps) != args.expect_pairs:
        print(f"  warning: expected {args.expect_pairs} pairs")
    for line in bad[:20]:
        print("  undecodable:", line)
    if bad:
        raise SystemExit(f"{len(bad)} images could not be decoded as 112x112 crops")
    if args.out:
        write_bin(args.out, ps.pair_images(), ps.issame)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
