"""Build facekd's dev split: held-out CelebA identities as an LFW-style ``dev.bin``.

Chooses ``--tight`` identities of ``celeba-tight-1756`` and ``--loose`` of ``celeba-299``
(``facekd.data.dev_split``: sha256 order, identity-disjoint folds, 300 + 300 pairs per fold),
writes the identity list (one CelebA identity number per line: pass it as
``data.exclude_identities`` so no training run sees them), then detects, aligns and packs the
photos into ``<out-dir>/dev.bin`` with its manifest (``facekd.data.set_manifest``).

    python data_prep/dev_split.py --tight-root ../shared/data/celeba-tight-1756 \\
        --loose-root ../shared/data/celeba-299 --out-dir outputs/sets \\
        [--frozen benchmarks/sets/dev.manifest.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facekd.data.detect import FaceDetector
from facekd.data.dev_split import DevSplit, choose_identities, read_identity_tsv
from facekd.data.packing import build_bin


def make_split(tight_root, loose_root, tight: int = 150, loose: int = 50) -> DevSplit:
    """The ``DevSplit`` of the two CelebA sources (identity numbers are disjoint between them)."""
    photos, sources = {}, []
    for root, k in ((tight_root, tight), (loose_root, loose)):
        found = read_identity_tsv(root)
        overlap = set(found) & set(photos)
        if overlap:
            raise ValueError(f"{root}: identities also in another source: {sorted(overlap)[:5]}")
        photos |= found
        sources.append(choose_identities(sorted(found), k))
    return DevSplit(photos, sources)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tight-root", required=True, help="celeba-tight-1756 (identities.tsv)")
    p.add_argument("--loose-root", required=True, help="celeba-299 (identities.tsv)")
    p.add_argument("--tight", type=int, default=150)
    p.add_argument("--loose", type=int, default=50)
    p.add_argument("--out-dir", default=".")
    p.add_argument("--frozen", default=None, help="frozen dev.manifest.json to compare with")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    split = make_split(args.tight_root, args.loose_root, args.tight, args.loose)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = out / "dev_identities.txt"
    ids.write_text(
        "# facekd dev split: CelebA identities held out of training (data.exclude_identities)\n"
        + "".join(f"{i}\n" for i in sorted(split.identities(), key=int))
    )
    print(f"{len(split.identities())} dev identities -> {ids}")
    pairs = split.pairset()
    root = Path(args.tight_root).resolve().parent
    pairs.images = [str(Path(p).resolve()) for p in pairs.images]
    report = build_bin(
        pairs,
        out / "dev.bin",
        FaceDetector(policy="center", device=args.device),
        fraction=1.0,
        progress=True,
        frozen=args.frozen,
        root=root,
    )
    print(report)
    for path in report.no_face:
        print("  no face:", path)


if __name__ == "__main__":
    main()
