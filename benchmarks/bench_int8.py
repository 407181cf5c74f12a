"""int8 face models that keep their accuracy: the legacy MobileFaceNet and ESP-DL's mbf.onnx.

For each model: the fp32 ONNX (the legacy model through ``facekd export``; ``mbf.onnx`` as
shipped), then ``facekd.deploy.quantize_onnx`` in two recipes:

* ``naive``: minmax calibration, onnxruntime's PRelu kept, every layer int8 (the issue's
  starting point, activations uint8 as in facekd's recipe);
* ``facekd``: the default recipe of the committed report's run (exact PReLU rewrite,
  percentile 99.99, GDC float). The default now also keeps conv_sep, the GDC's input, in
  float (``graph.DEFAULT_KEEP_FLOAT``): ``bench_relu_student.py`` measures both side by side.

Calibration faces come from CelebA-299 aligned crops (identities disjoint from LFW / CFP),
``outputs/real/train_aligned`` (made by ``bench_real_distill.py``). Accuracy: LFW-mini and
CFP-FP-mini (2 official folds each, flip-sum, insightface grid; exact search in the JSON) for
fp32, int8 and fp32-gallery / int8-probe. Latency: eager torch, onnxruntime fp32 (as shipped),
onnxruntime fp32 with the PReLU rewrite, and each int8 file, interleaved in one timing run at
batch 1 and 64 (``facekd.deploy.latency.ort_compare``); the machine is shared, so compare the
ratios, not the milliseconds.

    .venv/bin/python benchmarks/bench_int8.py [--threads 2] [--calibration-size 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "outputs" / "int8"
RESULTS = ROOT / "benchmarks" / "results" / "int8"
RECIPES = {
    "naive": dict(method="minmax", rewrite=False, keep_float=()),
    "facekd": dict(method="percentile", rewrite=True, keep_float=("gdc",)),
}


def pair_sets():
    """LFW-mini and CFP-FP-mini ``PairSet``s with their official folds (their ``.bin`` files
    built first where missing: ``lfw_mini.load_lfw_mini``, ``bench_real_distill``)."""
    import bench_real_distill as real
    from lfw_mini import load_lfw_mini

    lfw, raw = load_lfw_mini(ROOT / "outputs" / "lfw_mini.bin", DATA / "lfw-mini", build=True)
    lfw.folds = raw.folds
    cfp = next(ps for ps in real.prepare_eval_sets(ROOT / "outputs" / "real", quick=False)
               if ps.name == "cfp_fp")  # fmt: skip
    cfp.name = "cfp_fp_mini"
    return [lfw, cfp]


def fp32_models(names=("legacy_mobilefacenet", "espdl_mbf")) -> dict:
    """``{name: (fp32 .onnx, torch module)}`` of the ``names`` asked for (each import of
    mbf.onnx takes seconds, so callers that need one model load only that one)."""
    from facekd.deploy.export import export_onnx
    from facekd.models.checkpoints import load_backbone

    out = {}
    if "legacy_mobilefacenet" in names:
        legacy = load_backbone(str(DATA / "insightface-mobilefacenet-legacy" / "model"))
        path = OUT / "legacy_mobilefacenet.onnx"
        if not path.exists():
            export_onnx(legacy, path, source="insightface-mobilefacenet-legacy")
        out["legacy_mobilefacenet"] = (path, legacy)
    if "espdl_mbf" in names:
        mbf = DATA / "espdl-mobilefacenets" / "mbf.onnx"
        out["espdl_mbf"] = (mbf, load_backbone(mbf))
    return out


def run_model(name, fp32, torch_model, sets, args) -> dict:
    from facekd.deploy.accuracy import pair_accuracies, summary_line
    from facekd.deploy.latency import ort_compare, speedups
    from facekd.deploy.quantize import prepare, quantize_onnx
    from facekd.evaluation.profile import TimingBudget

    row = {"fp32_bytes": fp32.stat().st_size, "recipes": {}}
    prepared = OUT / f"{name}.prelu_rewrite.onnx"
    prepare(fp32, prepared)
    timed = {"torch": torch_model, "ort_fp32": fp32, "ort_fp32_rewrite": prepared}
    for recipe, kw in RECIPES.items():
        out = OUT / f"{name}.{recipe}.int8.onnx"
        info = quantize_onnx(fp32, args.calibration, out, calibration_size=args.calibration_size,
                             held_back=args.held_back, **kw)  # fmt: skip
        info["accuracy"] = {ps.name: pair_accuracies(ps, fp32, out) for ps in sets}
        for set_name, acc in info["accuracy"].items():
            print(f"{name} {recipe}: " + summary_line(set_name, acc), flush=True)
        row["recipes"][recipe] = info
        timed[f"ort_int8_{recipe}"] = out
    budget = TimingBudget(warmup=3, runs=args.runs, min_runs=5, max_seconds=args.max_seconds)
    lat = ort_compare(timed, (1, 64), budget=budget, threads=args.threads)
    row["latency_ms"] = {k: {b: c.median_ms for b, c in v.items()} for k, v in lat.items()}
    row["speedup"] = speedups(lat) | {
        f"{k}/ort_fp32@b{b}": lat["ort_fp32"][b].median_ms / lat[k][b].median_ms
        for k in timed if k.startswith("ort_") and k != "ort_fp32" for b in (1, 64)
    } | {
        f"{k}/ort_fp32_rewrite@b{b}": lat["ort_fp32_rewrite"][b].median_ms / lat[k][b].median_ms
        for k in timed if k.startswith("ort_int8") for b in (1, 64)
    }  # fmt: skip
    print(json.dumps(row["latency_ms"]), flush=True)
    return row


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """The calibration options shared by ``bench_int8.py`` and ``bench_qat.py``."""
    p.add_argument("--calibration", default=str(ROOT / "outputs" / "real" / "train_aligned"))
    p.add_argument("--calibration-size", type=int, default=256)
    p.add_argument("--held-back", type=int, default=128)


def ready(args) -> bool:
    """Whether the data is there (else a clean skip, said); creates the output folders."""
    if not (DATA / "lfw-mini").exists() or not Path(args.calibration).exists():
        print(f"SKIP: needs {DATA} and the aligned calibration folder {args.calibration}")
        return False
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_calibration_args(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--max-seconds", type=float, default=40.0)
    p.add_argument("--models", nargs="+", default=["legacy_mobilefacenet", "espdl_mbf"])
    args = p.parse_args(argv)
    if not ready(args):
        return 0
    t0, sets = time.perf_counter(), pair_sets()
    res = {"command": "python benchmarks/bench_int8.py " + " ".join(argv or sys.argv[1:]),
           "threads": args.threads, "models": {}}  # fmt: skip
    for name, (fp32, module) in fp32_models(args.models).items():
        res["models"][name] = run_model(name, fp32, module, sets, args)
    res["wall_seconds"] = round(time.perf_counter() - t0)
    (RESULTS / "report.json").write_text(json.dumps(res, indent=1) + "\n")
    from int8_report import write_report

    print(write_report(res, RESULTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
