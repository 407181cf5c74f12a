"""Real-data benchmark: LFW (2 official folds) with InsightFace's legacy MobileFaceNet.

The whole chain through facekd's own code, nothing precomputed:

    raw LFW photos (../shared/data/lfw-mini, official pairs.txt, 2 x 600 pairs)
      -> MTCNN, the face nearest the image centre       (facekd.data.detect.FaceDetector)
      -> 5-point ArcFace alignment to 112x112, JPEG-95   (facekd.data.packing.build_bin)
      -> the real InsightFace MobileFaceNet read from its legacy MXNet files
         (model-symbol.json + model-0000.params)          (facekd.models.checkpoints.load_backbone)
      -> flip-sum, L2-normalised embeddings                (facekd.evaluation.embed)
      -> verification over the 2 folds of pairs.txt, thresholds 'exact' and 'grid'
                                                           (facekd.evaluation.verification.verify)

The published accuracy of this model on the full LFW is about 99.5%.
The aligned ``.bin`` is built once into ``--cache`` and reused (``--rebuild`` forces it).
Writes ``benchmarks/results/lfw_mini_legacy.json`` and ``.md``. Exits 0 with a message when
``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_lfw_legacy.py [--rebuild] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LFW = DATA / "lfw-mini"
MODEL = DATA / "insightface-mobilefacenet-legacy" / "model"
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("exact", "grid")


def _missing_data() -> str | None:
    needed = [LFW / "pairs.txt", LFW / "images", Path(f"{MODEL}-symbol.json")]
    missing = [str(p) for p in needed if not p.exists()]
    return ", ".join(missing) if missing else None


def _markdown(res: dict) -> str:
    lines = [
        "# LFW-mini with the legacy InsightFace MobileFaceNet",
        "",
        f"Command: `{res['command']}`",
        "",
        f"- pairs: {res['n_pairs']} ({res['n_folds']} official folds from pairs.txt), "
        f"distinct images: {res['n_images']}",
        f"- images without a detected face (centre-crop fallback): {len(res['no_face'])}"
        + "".join(f"\n  - `{p}`" for p in res["no_face"]),
        f"- aligned .bin: `{res['bin']}` ({'rebuilt' if res['built'] else 'cached'}, "
        f"build {res['time_build_s']:.1f} s)",
        f"- embedding: {res['time_embed_s']:.1f} s on {res['device']}; "
        f"total wall time {res['wall_time_s']:.1f} s",
        "",
        "| thresholds | accuracy (%) | ± std | per-fold accuracy (%) | "
        + " | ".join(f"TAR@FAR={k}" for k in res["modes"]["exact"]["tar_at_far"])
        + " |",
        "|---|---|---|---|" + "---|" * len(res["modes"]["exact"]["tar_at_far"]),
    ]
    for mode, r in res["modes"].items():
        folds = ", ".join(f"{100 * a:.2f}" for a in r["fold_accuracy"])
        tars = " | ".join(f"{100 * v:.2f}" for v in r["tar_at_far"].values())
        lines.append(
            f"| {mode} | {100 * r['accuracy']:.2f} | {100 * r['accuracy_std']:.2f} | "
            f"{folds} | {tars} |"
        )
    lines += ["", "Published for this model on the full LFW: about 99.5%.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=str(ROOT / "outputs" / "lfw_mini.bin"))
    p.add_argument("--rebuild", action="store_true", help="rebuild the aligned .bin")
    p.add_argument("--device", default="cpu", help="torch device (MTCNN and the model)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)

    missing = _missing_data()
    if missing:
        print(f"SKIP: real data not available ({missing}); nothing to benchmark.")
        return 0

    import numpy as np

    from facekd.data.detect import FaceDetector
    from facekd.data.packing import build_bin
    from facekd.data.pairlists import read_lfw_pairs
    from facekd.data.verification import read_bin
    from facekd.evaluation.embed import extract_embeddings
    from facekd.evaluation.verification import verify
    from facekd.models.checkpoints import load_backbone

    t0 = time.perf_counter()
    raw = read_lfw_pairs(LFW / "pairs.txt", LFW / "images")
    # build_bin writes the pairs fold-major; the .bin itself carries no folds
    folds = raw.fold_major().folds
    cache = Path(args.cache)
    built, no_face = False, []
    meta_path = cache.with_suffix(".no_face.json")
    if args.rebuild or not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {cache} (MTCNN + alignment of {len(raw.images)} images) ...")
        report = build_bin(raw, cache, FaceDetector(policy="center", device=args.device))
        print(report)
        no_face = [str(Path(q).relative_to(LFW)) for q in report.no_face]
        meta_path.write_text(json.dumps(no_face))
        built = True
    elif meta_path.exists():
        no_face = json.loads(meta_path.read_text())
    else:
        no_face = ["(unknown: cached .bin without its report; use --rebuild)"]
    t_build = time.perf_counter() - t0

    ps = read_bin(cache, "lfw_mini")
    if len(ps) != len(raw) or not np.array_equal(ps.issame, raw.fold_major().issame):
        print(f"error: {cache} does not match pairs.txt; rerun with --rebuild", file=sys.stderr)
        return 1

    t1 = time.perf_counter()
    model = load_backbone(str(MODEL))
    emb = extract_embeddings(
        model, ps.pair_images(), batch_size=args.batch_size, flip=True, device=args.device
    )
    t_embed = time.perf_counter() - t1

    modes = {}
    for mode in MODES:
        r = verify(emb, ps.issame, folds=folds, thresholds=mode)
        print(r.summary(f"lfw-mini, {mode}"))
        print("  per fold:", ", ".join(f"{100 * a:.2f}" for a in r.fold_accuracy))
        print("  TAR@FAR:", ", ".join(f"{k:g}: {100 * v:.2f}" for k, v in r.tar_at_far.items()))
        modes[mode] = r.as_dict()
    wall = time.perf_counter() - t0

    res = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/bench_lfw_legacy.py"]
            + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
        ),
        "data": str(LFW),
        "model": str(MODEL),
        "bin": str(cache),
        "built": built,
        "device": args.device,
        "n_pairs": len(ps),
        "n_folds": int(folds.max()) + 1,
        "n_images": len(raw.images),
        "n_crops_embedded": len(emb),
        "no_face": no_face,
        "time_build_s": t_build,
        "time_embed_s": t_embed,
        "wall_time_s": wall,
        "modes": modes,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lfw_mini_legacy.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "lfw_mini_legacy.md").write_text(_markdown(res))
    print(f"wall time {wall:.1f} s; wrote {out / 'lfw_mini_legacy.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
