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

from facekd.data.packing import pair_list_script
from facekd.data.pairlists import read_lfw_pairs


def main(argv=None) -> None:
    pair_list_script(__doc__, "lfw.bin", "official pairs.txt (view 2)", read_lfw_pairs, argv)


if __name__ == "__main__":
    main()
