"""Post-training int8 against quantisation-aware fine-tuning first, side by side.

For each model (default: the legacy InsightFace MobileFaceNet exported by facekd) and each set
of layers kept in float (``gdc``: facekd's default; ``none``: every layer int8, where
post-training quantisation alone loses the most), two int8 files from the same calibration
faces, the same onnxruntime recipe (QDQ, per-channel int8 weights, uint8 activations,
percentile 99.99, exact PReLU rewrite) and the same held-back faces:

* ``ptq``: ``quantize_onnx`` on the fp32 file as it is;
* ``qat``: ``quantize_onnx(qat=QatSettings(...))``: the weights are first fine-tuned under
  simulated int8 toward the fp32 model's own embeddings (``facekd.deploy.qat``) on other faces
  of the calibration folder, then quantised the same way.

Reported: held-back cosine to the *untouched* fp32 model (mean / 1st percentile / min),
LFW-mini and CFP-FP-mini accuracy of fp32, int8 and fp32-gallery / int8-probe (flip-sum,
insightface grid), the simulated cosine before / after fine-tuning, and the file size. The
graphs of ``ptq`` and ``qat`` are the same operators, so their speed is the same: see
``bench_int8.py`` for latency. Calibration and QAT faces are CelebA-299 crops, identities
disjoint from LFW / CFP. Resumable: a recipe whose int8 file and sidecar exist is read back.

    .venv/bin/python benchmarks/bench_qat.py [--steps 300] [--lr 5e-5] [--keep gdc none]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_int8 import OUT, RESULTS, add_calibration_args, fp32_models, pair_sets, ready
from int8_report import accuracy_cell

KEEP = {"gdc": ("gdc",), "none": ()}


def run(name, fp32, keep, qat, sets, args) -> dict:
    from facekd.deploy.accuracy import pair_accuracies, summary_line
    from facekd.deploy.qat import QatSettings
    from facekd.deploy.quantize import quantize_onnx

    tag = f"{name}.{'qat' if qat else 'ptq'}_{keep}"
    out = OUT / f"{tag}.int8.onnx"
    side = Path(f"{out}.json")
    if out.exists() and side.exists() and "accuracy_sets" in (info := json.loads(side.read_text())):
        print(f"{tag}: read back {side}")
        return info
    settings = QatSettings(args.steps, args.lr, args.batch, args.faces) if qat else None
    info = quantize_onnx(fp32, args.calibration, out, calibration_size=args.calibration_size,
                         held_back=args.held_back, keep_float=KEEP[keep], qat=settings)  # fmt: skip
    info["accuracy_sets"] = {ps.name: pair_accuracies(ps, fp32, out) for ps in sets}
    for set_name, acc in info["accuracy_sets"].items():
        print(f"{tag}: " + summary_line(set_name, acc), flush=True)
    side.write_text(json.dumps(info, indent=1) + "\n")
    return info


def table(res: dict) -> str:
    lines = [
        "| model | float layers | recipe | cosine mean / p1 / min | sim. cosine before -> after "
        "| LFW-mini fp32 -> int8 (mixed) | CFP-FP-mini fp32 -> int8 (mixed) | MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, info in res["runs"].items():
        model, recipe, keep = key.split("/")
        c = info["cosine_to_fp32_held_back"]["int8"]
        q = info["quantization"]["qat"]
        sim = f"{q['cosine_before']:.4f} -> {q['cosine_after']:.4f}" if q else "-"
        accs = [accuracy_cell(acc) for acc in info["accuracy_sets"].values()]
        lines.append(
            f"| {model} | {keep} | {recipe} | {c['mean']:.4f} / {c['p1']:.4f} / {c['min']:.4f} "
            f"| {sim} | {' | '.join(accs)} | {info['bytes']['int8'] / 1e6:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_calibration_args(p)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--faces", type=int, default=2048)
    p.add_argument("--keep", nargs="+", choices=KEEP, default=list(KEEP))
    p.add_argument("--models", nargs="+", default=["legacy_mobilefacenet"])
    args = p.parse_args(argv)
    if not ready(args):
        return 0
    t0, sets = time.perf_counter(), pair_sets()
    res = {"command": "python benchmarks/bench_qat.py " + " ".join(argv or sys.argv[1:]),
           "settings": vars(args), "runs": {}}  # fmt: skip
    for name, (fp32, _) in fp32_models(args.models).items():
        for keep in args.keep:
            for qat in (False, True):
                key = f"{name}/{'qat' if qat else 'ptq'}/{keep}"
                res["runs"][key] = run(name, fp32, keep, qat, sets, args)
    res["wall_seconds"] = round(time.perf_counter() - t0)
    (RESULTS / "qat.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    text = f"# int8: post-training vs quantisation-aware fine-tuning\n\n{table(res)}\n"
    (RESULTS / "qat.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
