"""Zoo ONNX MobileFaceNets imported as facekd modules, checked against onnxruntime on LFW-mini.

    mbf.onnx / mfn.onnx (ESP-DL, BatchNorm folded) -> facekd.load_backbone (torch module)
                                                   -> OnnxTeacher (onnxruntime), the reference
For each model: the worst cosine between the two backends' raw embeddings on the first 400
aligned LFW-mini crops at batch 1 and at batch 50, and on every crop; then LFW-mini
verification (2 official folds, flip-sum, insightface grid and exact threshold search)
through facekd's chain with the imported module and with onnxruntime. The aligned ``.bin``
(MTCNN + ArcFace template) is the one ``bench_lfw_legacy.py`` builds.

    .venv/bin/python benchmarks/bench_onnx_import.py
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
MODELS = DATA / "espdl-mobilefacenets"
RESULTS = ROOT / "benchmarks" / "results"


def _cosines(a, b):
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def markdown(res: dict, n: int) -> str:
    """The report table; cosines as ``1 - min cosine`` (they print as 1.0000000 otherwise)."""
    lines = [
        "# Zoo ONNX MobileFaceNets imported as facekd modules, LFW-mini",
        "",
        f"Command: `{res['command']}` ({res['wall_seconds']} s); {res['pairs']} pairs "
        "(2 official folds), flip-sum; accuracy with insightface's threshold grid (exact "
        "search in brackets).",
        "",
        f"| model | facekd arch | 1 - min cos, {n} faces b1 / b50 | 1 - min cos, all crops | "
        "LFW-mini imported (%) | LFW-mini onnxruntime (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in res["models"].items():
        lines.append(
            f"| {name}.onnx | {row['arch']} {row['arch_kwargs']} | "
            f"{1 - row[f'min_cosine_{n}_faces_batch_1']:.1e} / "
            f"{1 - row[f'min_cosine_{n}_faces_batch_50']:.1e} | "
            f"{1 - row['min_cosine_all_crops_flip_sum']:.1e} | "
            f"{100 * row['torch_imported']['grid']['accuracy']:.2f} "
            f"({100 * row['torch_imported']['exact']['accuracy']:.2f}) | "
            f"{100 * row['onnxruntime']['grid']['accuracy']:.2f} "
            f"({100 * row['onnxruntime']['exact']['accuracy']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=str(ROOT / "outputs" / "lfw_mini.bin"))
    p.add_argument("--models", nargs="+", default=["mbf", "mfn"])
    p.add_argument("--faces", type=int, default=400, help="crops for the parity check")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if not (LFW / "pairs.txt").exists() or not MODELS.exists():
        print(f"SKIP: real data not available under {DATA}; nothing to benchmark.")
        return 0
    from facekd.evaluation.embed import extract_embeddings
    from facekd.evaluation.verification import verify
    from facekd.models.checkpoints import load_backbone
    from facekd.teachers import OnnxTeacher

    t0 = time.perf_counter()
    try:
        ps, raw = load_lfw_mini(Path(args.bin), LFW)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    crops = ps.pair_images()
    res = {"command": "python benchmarks/bench_onnx_import.py", "pairs": len(ps), "models": {}}
    for name in args.models:
        path = MODELS / f"{name}.onnx"
        t1 = time.perf_counter()
        model = load_backbone(path)
        row = {
            "arch": model.arch,
            "arch_kwargs": model.arch_kwargs,
            "parameters": sum(t.numel() for t in model.parameters()),
            "import_seconds": round(time.perf_counter() - t1, 1),
            "import_info": model.import_info,
        }
        reference = OnnxTeacher(path, device="cpu")
        faces = crops[: args.faces]
        raw_kw = dict(flip=False, normalize=False, progress=False)
        ort = extract_embeddings(reference, faces, batch_size=50, **raw_kw)
        for b in (1, 50):
            got = extract_embeddings(model, faces, batch_size=b, **raw_kw)
            row[f"min_cosine_{len(faces)}_faces_batch_{b}"] = float(_cosines(got, ort).min())
        embs = {}
        for backend, m in (("torch_imported", model), ("onnxruntime", reference)):
            t1 = time.perf_counter()
            embs[backend] = extract_embeddings(m, crops, flip=True, progress=False)
            row[backend] = {"embed_seconds": round(time.perf_counter() - t1, 1)}
            for search in ("grid", "exact"):  # insightface's grid first: its published numbers
                r = verify(embs[backend], ps.issame, folds=raw.folds, thresholds=search)
                row[backend][search] = {
                    "accuracy": r.accuracy,
                    "accuracy_std": r.accuracy_std,
                    "fold_accuracy": list(r.fold_accuracy),
                }
                print(r.summary(f"lfw-mini, {name}, {backend}, {search}"), flush=True)
        row["min_cosine_all_crops_flip_sum"] = float(
            _cosines(embs["torch_imported"], embs["onnxruntime"]).min()
        )
        res["models"][name] = row
        print(json.dumps({k: v for k, v in row.items() if k != "import_info"}), flush=True)
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_import_lfw.json").write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res, args.faces)
    (out / "onnx_import_lfw.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
