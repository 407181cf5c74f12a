"""The real legacy InsightFace MobileFaceNet as a black-box ONNX teacher, checked on LFW-mini.

    legacy MXNet files -> facekd backbone (torch)      facekd.models.checkpoints.load_backbone
                       -> facekd export (ONNX file)     facekd.deploy.export.export_onnx
                       -> OnnxTeacher (onnxruntime)     facekd.teachers.OnnxTeacher
Both the torch model and the ONNX teacher embed the same aligned LFW-mini crops (flip-sum) and
are verified on the 2 official folds; the report gives both accuracies, their difference and
the worst per-image cosine between the two embeddings. The aligned ``.bin`` is the one
``bench_lfw_legacy.py`` builds (built here the same way when missing).

    .venv/bin/python benchmarks/bench_onnx_teacher.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lfw_mini import load_lfw_mini

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LFW = DATA / "lfw-mini"
MODEL = DATA / "insightface-mobilefacenet-legacy" / "model"
RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=str(ROOT / "outputs" / "lfw_mini.bin"))
    p.add_argument("--work", default=str(ROOT / "outputs" / "onnx_teacher"))
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if not (LFW / "pairs.txt").exists() or not Path(f"{MODEL}-symbol.json").exists():
        print(f"SKIP: real data not available under {DATA}; nothing to benchmark.")
        return 0
    import numpy as np

    from facekd.deploy.export import export_onnx
    from facekd.evaluation.embed import extract_embeddings
    from facekd.evaluation.verification import verify
    from facekd.models.checkpoints import load_backbone
    from facekd.teachers import OnnxTeacher

    t0 = time.perf_counter()
    try:
        ps, raw = load_lfw_mini(Path(args.bin), LFW, build=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    torch_model = load_backbone(str(MODEL))
    onnx_path = Path(args.work) / "mobilefacenet_legacy.onnx"
    export_onnx(torch_model, onnx_path, source=str(MODEL))
    teacher = OnnxTeacher(onnx_path)
    crops = ps.pair_images()
    rows, embs = {}, {}
    for name, model in (("torch", torch_model), ("onnx_teacher", teacher)):
        t1 = time.perf_counter()
        embs[name] = extract_embeddings(model, crops, flip=True, progress=False)
        r = verify(embs[name], ps.issame, folds=raw.folds)
        rows[name] = {
            "accuracy": r.accuracy,
            "accuracy_std": r.accuracy_std,
            "fold_accuracy": list(r.fold_accuracy),
            "embed_seconds": round(time.perf_counter() - t1, 1),
        }
        print(r.summary(f"lfw-mini, {name}"))
    cos = (embs["torch"] * embs["onnx_teacher"]).sum(1)  # both L2-normalised
    res = {
        "command": ".venv/bin/python benchmarks/bench_onnx_teacher.py",
        "model": str(MODEL),
        "onnx": onnx_path.name,
        "onnx_contract": teacher.contract,
        "pairs": len(ps),
        "crops": len(crops),
        "rows": rows,
        "accuracy_difference": rows["onnx_teacher"]["accuracy"] - rows["torch"]["accuracy"],
        "min_cosine": float(np.min(cos)),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_teacher_lfw.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [
        "# The legacy InsightFace MobileFaceNet as an ONNX teacher, LFW-mini",
        "",
        f"Command: `{res['command']}` ({res['wall_seconds']} s)",
        "",
        f"{res['pairs']} pairs (2 official folds), {res['crops']} aligned crops, flip-sum.",
        "",
        "| backend | accuracy (%) | ± std | per fold (%) |",
        "|---|---|---|---|",
        *(
            f"| {k} | {100 * v['accuracy']:.2f} | {100 * v['accuracy_std']:.2f} | "
            + ", ".join(f"{100 * a:.2f}" for a in v["fold_accuracy"])
            + " |"
            for k, v in rows.items()
        ),
        "",
        f"Accuracy difference (ONNX teacher - torch): {100 * res['accuracy_difference']:+.2f} "
        f"points; worst per-crop cosine between the two embeddings: {res['min_cosine']:.7f}.",
        "",
    ]
    (out / "onnx_teacher_lfw.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
