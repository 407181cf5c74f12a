"""Build a training set from an identity-per-folder tree of raw photos (InsightFace RecordIO).

Expects:
    <src>/<identity>/<photo>     raw photos (jpg / jpeg / png / bmp / webp, any case), any
                                 depth below the identity folder (``<identity>/a/b/x.jpg``)
Step 1 (skipped with ``--aligned``): ``facekd.data.align_tree.align_tree`` writes one 112x112
ArcFace-aligned crop per photo (MTCNN, face nearest the centre) to the same relative path under
``<dst>`` and its failures to ``<dst>/align_report.json``. Resumable: a rerun only does photos
that have no crop and are not listed as failed (``--retry-failed`` retries those).
Step 2 (with ``--rec OUT``) packs the aligned tree ``<dst>/<identity>/...`` into ``OUT/``:
    train.rec, train.idx   InsightFace layout (header record 0, images keys 1..N sorted by
                           label, one identity record per label), as written by face2rec2
    property               ``num_classes,H,W`` (H, W of the first crop)
    class_map.json         ``{identity folder: label}``: kept identities sorted by name,
                           labelled 0..C-1 (ImageFolderDataset's rule, so
                           ``ImageFolderDataset(<dst>)`` gets the same labels when no identity
                           was skipped and the crops sit directly in identity folders)
Identities with fewer than ``--min-images`` crops are skipped and listed, as are images
directly in ``<dst>`` (no identity folder) and hidden files or folders.
Image bytes (``--store``): ``jpg`` (default) keeps a JPEG crop's bytes as they are and
re-encodes any other crop as JPEG quality 95 (InsightFace's sets are JPEG; several times
smaller than PNG); ``asis`` stores every crop file's bytes unchanged (PNG crops stay lossless).
InsightFace readers decode either with ``imdecode``.

    python data_prep/training_set.py --src raw/ --dst aligned/ --rec data/train/
    python data_prep/training_set.py --aligned --dst aligned/ --rec data/train/
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from facekd.data.align_tree import REPORT_NAME, align_tree, list_images
from facekd.data.folder import save_class_map
from facekd.data.recordio import RecordIOWriter, write_property
from facekd.data.transforms import read_rgb

JPEG_MAGIC = b"\xff\xd8\xff"


def align_step(args: argparse.Namespace) -> None:
    detector = None
    if args.device != "cpu":  # otherwise align_tree builds its CPU detector only when needed
        from facekd.data.detect import FaceDetector

        detector = FaceDetector(min_face_size=20, policy=args.policy, device=args.device)
    report = align_tree(
        args.src,
        args.dst,
        size=args.size,
        policy=args.policy,
        fmt=args.format,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        detector=detector,
    )
    print(
        f"aligned {report.written}, skipped (done before) {report.skipped}, "
        f"failed {len(report.failed)} ({Path(args.dst) / REPORT_NAME})"
    )
    for tag, n in Counter(why.split(":")[0] for why in report.failed.values()).most_common():
        print(f"  {tag}: {n}")


def group_by_identity(root: str) -> tuple[dict[str, list[str]], list[str]]:
    """``{identity: [relative paths]}`` of the crops below ``root`` and the paths left out."""
    groups: dict[str, list[str]] = {}
    ignored = []
    for rel in list_images(root):
        parts = rel.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            ignored.append(rel)
        else:
            groups.setdefault(parts[0], []).append(rel)
    return groups, ignored


def pack_step(args: argparse.Namespace) -> None:
    groups, ignored = group_by_identity(args.dst)
    for rel in ignored:
        print("  ignored (no identity folder, or hidden):", rel)
    small = {name: len(v) for name, v in groups.items() if len(v) < args.min_images}
    for name, n in sorted(small.items()):
        print(f"  skipped identity {name}: {n} crop(s) < --min-images {args.min_images}")
    kept = sorted(name for name in groups if name not in small)
    if not kept:
        raise SystemExit(f"no identity of {args.dst} has >= {args.min_images} aligned crops")
    class_map = {name: label for label, name in enumerate(kept)}
    out = Path(args.rec)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.dst)
    total = sum(len(groups[name]) for name in kept)
    size = read_rgb(str(root / groups[kept[0]][0])).shape[:2]
    with (
        RecordIOWriter(out / "train.rec", header=True, jpeg_quality=95) as writer,
        tqdm(total=total, desc="pack", unit="img") as bar,
    ):
        for name in kept:  # sorted by label, as header=True requires
            for rel in groups[name]:
                data = (root / rel).read_bytes()
                if args.store == "jpg" and not data.startswith(JPEG_MAGIC):
                    writer.write(read_rgb(data), class_map[name])  # JPEG-95 re-encode
                else:
                    writer.write(data, class_map[name])
                bar.update()
    write_property(out, len(kept), size)
    save_class_map(class_map, out / "class_map.json")
    print(
        f"packed {total} images of {len(kept)} identities ({len(small)} skipped) into "
        f"{out / 'train.rec'}; property {len(kept)},{size[0]},{size[1]}; class map "
        f"{out / 'class_map.json'}"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", help="raw photos: <src>/<identity>/<photo> (not with --aligned)")
    p.add_argument("--dst", required=True, help="folder of aligned crops (written by step 1)")
    p.add_argument("--aligned", action="store_true", help="--dst is already aligned: skip step 1")
    p.add_argument("--rec", metavar="OUT", help="pack train.rec/.idx/property/class_map here")
    p.add_argument("--min-images", type=int, default=1, help="skip smaller identities (pack)")
    p.add_argument("--store", choices=["jpg", "asis"], default="jpg", help="record image bytes")
    p.add_argument("--size", type=int, default=112, help="crop side (align)")
    p.add_argument("--policy", choices=["center", "largest", "score", "all"], default="center")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="crop files (align)")
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--batch-size", type=int, default=16, help="photos per MTCNN batch")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (align)")
    p.add_argument("--overwrite", action="store_true", help="redo crops that exist (align)")
    p.add_argument("--retry-failed", action="store_true", help="retry photos the report lists")
    args = p.parse_args(argv)
    if args.aligned == (args.src is not None):
        p.error("give --src (raw photos to align) or --aligned (skip alignment), not both")
    if args.min_images < 1:
        p.error("--min-images must be >= 1")
    if not args.aligned:
        align_step(args)
    if args.rec:
        pack_step(args)


if __name__ == "__main__":
    main()
