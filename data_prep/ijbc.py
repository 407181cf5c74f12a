"""Validate an IJB-C (or IJB-B) folder in insightface's ``eval_ijbc.py`` layout; print counts.

Expects <root>/ (prefix ijbc_ or ijbb_, chosen by --target):
    meta/ijbc_face_tid_mid.txt          "image_name template_id media_id"
    meta/ijbc_template_pair_label.txt   "template_id_1 template_id_2 label"
    meta/ijbc_name_5pts_score.txt       "image_name x1 y1 ... x5 y5 faceness_score"
    loose_crop/<image_name>
Writes nothing. Checks that both per-image files list the same images in the same order, that
every template of the pair list has images, and (``--check-images``) that every loose crop
exists. No alignment happens here: ``facekd.data.ijb.IJBDataset`` aligns from the given
landmarks at evaluation time.

    python data_prep/ijbc.py --root IJBC --check-images
"""

from __future__ import annotations

import argparse

import numpy as np

from facekd.data.ijb import load_ijb


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--target", default="IJBC", choices=["IJBC", "IJBB"])
    p.add_argument("--check-images", action="store_true", help="stat every loose crop")
    args = p.parse_args(argv)
    m = load_ijb(args.root, args.target)
    n_media = len(np.unique(np.stack([m.tids, m.mids], 1), axis=0))
    print(f"{args.target} at {args.root}:")
    print(f"  images {len(m.names)}, templates {len(np.unique(m.tids))}, media {n_media}")
    n_genuine = int(m.label.sum())
    print(f"  pairs {len(m.label)}: {n_genuine} genuine, {len(m.label) - n_genuine} impostor")
    print(
        f"  faceness score min/median/max {m.scores.min():.3f} / {np.median(m.scores):.3f} / "
        f"{m.scores.max():.3f}"
    )
    if args.check_images:
        missing = m.missing_images()
        print(f"  missing loose crops: {len(missing)}")
        for path in missing[:20]:
            print("   ", path)
        if missing:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
