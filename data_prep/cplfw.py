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

from facekd.data.packing import pair_list_script
from facekd.data.pairlists import read_xlfw_pairs


def main(argv=None) -> None:
    pair_list_script(
        __doc__,
        "cplfw.bin",
        "pairs_CPLFW.txt",
        lambda pairs, images: read_xlfw_pairs(pairs, images, name="cplfw"),
        argv,
    )


if __name__ == "__main__":
    main()
