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

from facekd.data.packing import pair_list_script
from facekd.data.pairlists import read_xlfw_pairs


def main(argv=None) -> None:
    pair_list_script(
        __doc__,
        "calfw.bin",
        "pairs_CALFW.txt",
        lambda pairs, images: read_xlfw_pairs(pairs, images, name="calfw"),
        argv,
    )


if __name__ == "__main__":
    main()
