"""The quantisation-friendly student: a ReLU MobileFaceNet distilled from the fp32 PReLU model.

Issue 18's remaining route to int8 speed. onnxruntime fuses ``Conv -> Relu`` into one int8
``QLinearConv``; a PReLU is a float operator between dequantise / quantise pairs (or, rewritten
exactly by ``facekd.deploy.graph.rewrite_prelu``, three more int8 operators), 33 of them in a
MobileFaceNet. So the student keeps the legacy InsightFace MobileFaceNet's architecture and
112-px input with ``activation="relu"``, starts from its weights (KT: the 300 other tensors
copied, the 33 slopes dropped) and regresses its fp32 embedding (row ``relu_kt_emb_112`` of
``benchmarks/configs/embedding_kd/``: embedding mimic x128 alone, every training photo, no
labels, AdamW, 1,200 x 64, bf16).

Then both networks go through the same int8 recipe (``facekd.deploy.quantize_onnx``: QDQ,
per-channel int8 weights, uint8 activations, percentile 99.99; the legacy model with facekd's
exact PReLU rewrite) with the GDC layer in float (``gdc``), with the GDC and the 1x1
convolution whose output it pools in float (``gdc+conv_sep``), and with every layer int8
(``none``). Reported side by side from one run: LFW-mini and CFP-FP-mini accuracy (fp32,
int8, fp32-gallery / int8-probe; 2 official folds, flip-sum, insightface grid), held-back
cosine of int8 to its own fp32 file, file sizes, and onnxruntime latency at batch 1 and 64 for
every file, interleaved in one timing run (the machine is shared: compare the ratios). The
headline ratio is the ReLU student's int8 against the *legacy model's* onnxruntime fp32: what
a user replacing the shipped model gains.

Resumable (the student, its ONNX and each int8 file are kept). Exits 0 with a message when
``../shared/data`` or the aligned training photos (``bench_embedding_kd.py --prepare-only``)
are absent. Writes ``benchmarks/results/int8/relu_student.{md,json}`` and saves the student as
``benchmarks/results/int8/students/relu_kt_emb_112_seed0.pt`` (float16, 2.1 MB);
``--row relu_kt_emb_112_long`` (2,500 steps) writes ``relu_student_long.{md,json}``.

    .venv/bin/python benchmarks/bench_relu_student.py [--row R] [--steps N] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

from bench_int8 import OUT, RESULTS, fp32_models, pair_sets  # noqa: E402
from int8_report import accuracy_cell  # noqa: E402

ROW = "relu_kt_emb_112"
ROWS = (ROW, "relu_kt_emb_112_long")  # 1,200 and 2,500 steps
STUDENTS = RESULTS / "students"
#: the layers kept in float -> their roles (``facekd.deploy.graph``)
KEEP = {"gdc": ("gdc",), "gdc+conv_sep": ("gdc", "conv_sep"), "none": ()}
FLOAT_PART = {"gdc": "all but GDC", "gdc+conv_sep": "all but conv_sep + GDC", "none": "all"}


def train_student(work: Path, steps: int | None, row: str = ROW) -> Path:
    """The saved ReLU student of ``row`` (trained first when missing; resumable)."""
    import bench_embedding_kd as emb
    import bench_karlekar as karlekar

    emb.prepare_all_photos(work)
    karlekar.train_rows([row], (0,), work, STUDENTS, False, steps, config=emb.row_config)
    return STUDENTS / f"{row}_seed0.pt"


def _fresh(made: Path, source: Path) -> bool:
    """Whether ``made`` exists and is newer than what it was made from (else: make it anew)."""
    return made.exists() and made.stat().st_mtime >= source.stat().st_mtime


def quantised(name: str, fp32: Path, keep: str, args) -> tuple[Path, dict]:
    """``(int8 file, sidecar)`` of ``fp32`` with ``KEEP[keep]`` in float (read back if made)."""
    from facekd.deploy.quantize import quantize_onnx

    out = OUT / f"{name}.{keep}.int8.onnx"
    side = Path(f"{out}.json")
    if _fresh(out, fp32) and side.exists():
        return out, json.loads(side.read_text())
    info = quantize_onnx(fp32, args.calibration, out, calibration_size=args.calibration_size,
                         held_back=args.held_back, keep_float=KEEP[keep])  # fmt: skip
    return out, info


def table(res: dict) -> str:
    lines = [
        "| model | int8 layers | MB fp32 -> int8 (x) | cosine int8 vs fp32 mean / min "
        "| LFW-mini fp32 -> int8 (mixed) | CFP-FP-mini fp32 -> int8 (mixed) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in res["models"].items():
        for keep, q in row["int8"].items():
            c = q["cosine"]
            accs = [accuracy_cell(acc) for acc in q["accuracy"].values()]
            float_part = FLOAT_PART.get(keep, keep)
            lines.append(
                f"| {name} | {float_part} | {row['fp32_bytes'] / 1e6:.2f} -> "
                f"{q['bytes'] / 1e6:.2f} ({row['fp32_bytes'] / q['bytes']:.2f}x) "
                f"| {c['mean']:.4f} / {c['min']:.4f} | {' | '.join(accs)} |"
            )
    return "\n".join(lines)


def speed_table(lat: dict, base: str) -> str:
    lines = [f"| runtime | b1 ms | b64 ms | b1 vs {base} | b64 vs {base} |", "|---" * 5 + "|"]
    for name, cells in lat.items():
        lines.append(
            f"| {name} | {cells[1]:.1f} | {cells[64]:.1f} | {lat[base][1] / cells[1]:.2f}x "
            f"| {lat[base][64] / cells[64]:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from bench_int8 import add_calibration_args, ready

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_calibration_args(p)
    p.add_argument("--row", choices=ROWS, default=ROW, help=f"the student (default {ROW})")
    p.add_argument("--steps", type=int, help="training steps (default: the row's)")
    p.add_argument("--work", default=str(OUT.parent / "real"), help="prepared data + runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--max-seconds", type=float, default=40.0)
    args = p.parse_args(argv)
    if not ready(args):
        return 0
    from facekd.deploy.accuracy import pair_accuracies, summary_line
    from facekd.deploy.export import export_onnx
    from facekd.deploy.latency import ort_compare
    from facekd.evaluation.profile import TimingBudget
    from facekd.models.checkpoints import load_backbone

    t0 = time.perf_counter()
    student_pt = train_student(Path(args.work), args.steps, args.row)
    sets = pair_sets()
    legacy_onnx, legacy = fp32_models(("legacy_mobilefacenet",))["legacy_mobilefacenet"]
    relu = load_backbone(student_pt).float().eval()
    tag = "relu_student" if args.row == ROW else f"relu_student_{args.row.removeprefix(ROW + '_')}"
    relu_onnx = OUT / f"{tag}.onnx"
    if not _fresh(relu_onnx, student_pt):  # a retrained student is exported anew
        export_onnx(relu, relu_onnx, source=str(student_pt.relative_to(RESULTS.parents[2])))
    res = {"command": "python benchmarks/bench_relu_student.py " + " ".join(argv or sys.argv[1:]),
           "threads": args.threads, "models": {}}  # fmt: skip
    timed: dict = {"legacy torch": legacy, f"{tag} torch": relu}
    for name, fp32 in (("legacy_mobilefacenet", legacy_onnx), (tag, relu_onnx)):
        row = res["models"][name] = {"fp32_bytes": fp32.stat().st_size, "int8": {}}
        timed[f"{name} ort_fp32"] = fp32
        for keep in KEEP:
            out, info = quantised(name, fp32, keep, args)
            acc = {ps.name: pair_accuracies(ps, fp32, out) for ps in sets}
            for set_name, a in acc.items():
                print(f"{name} int8[{keep}]: " + summary_line(set_name, a), flush=True)
            row["int8"][keep] = {"bytes": out.stat().st_size, "accuracy": acc,
                                 "cosine": info["cosine_to_fp32_held_back"]["int8"]}  # fmt: skip
            timed[f"{name} ort_int8[{keep}]"] = out
    budget = TimingBudget(warmup=3, runs=args.runs, min_runs=5, max_seconds=args.max_seconds)
    lat = ort_compare(timed, (1, 64), budget=budget, threads=args.threads)
    res["latency_ms"] = {k: {b: c.median_ms for b, c in v.items()} for k, v in lat.items()}
    res["wall_seconds"] = round(time.perf_counter() - t0)
    (RESULTS / f"{tag}.json").write_text(json.dumps(res, indent=1) + "\n")
    text = (
        "# The quantisation-friendly student: ReLU MobileFaceNet distilled from the fp32 legacy "
        f"model\n\nCommand: `{res['command']}` ({res['wall_seconds']} s), {args.threads} threads."
        f" Student: `{args.row}` (benchmarks/configs/embedding_kd/{args.row}.yaml). Calibration: "
        f"{args.calibration_size} CelebA-299 crops (identities disjoint from LFW / CFP); cosine on"
        f" {args.held_back} held-back ones.\n\n{table(res)}\n\nLatency (onnxruntime CPU, medians,"
        " every file interleaved in one run):\n\n"
        f"{speed_table(res['latency_ms'], 'legacy_mobilefacenet ort_fp32')}\n"
    )
    (RESULTS / f"{tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
