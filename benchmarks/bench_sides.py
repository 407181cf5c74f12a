"""What a lower input resolution saves: the teacher's network at each side, measured.

Karlekar et al.'s low-resolution students keep the teacher's architecture and take smaller
faces (arXiv:1906.00619; METHODS 2.4), so the conv FLOPs fall with the square of the side while
the parameters stay (only the GDC kernel, ``ceil(side / 16)`` wide, shrinks). This benchmark
measures the legacy InsightFace MobileFaceNet's network (128-d, the students of
``bench_embedding_kd.py``) at sides 32, 40, 56, 64, 80 and 112, side by side in one run:

* parameters and GFLOPs of one face (``torch.utils.flop_counter``, one multiply-add = 2 FLOPs);
* latency at batch 1 and 64 in eager torch fp32 and in onnxruntime fp32 (the graph
  ``facekd.deploy.export_onnx`` writes and checks against torch), every side and runtime timed
  in the same interleaved rounds per runtime (``facekd.deploy.latency.ort_compare``), so a busy
  machine slows all sides alike; speed-ups are against the 112-px network in the same runtime.
  The two runtimes are timed one after the other, not interleaved: onnxruntime's worker threads
  spin for a while after each run and would slow a torch step timed right after it.

Cost does not depend on the weights, so the networks are built from random weights: no data
is needed. The accuracy of the students at each side is in the embedding-KD reports. Writes
``benchmarks/results/real_distill/sides/{report.md,report.json,cost.png}``.

    .venv/bin/python benchmarks/bench_sides.py           # about 2 min on 2 cores
    .venv/bin/python benchmarks/bench_sides.py --quick   # smoke test (tests/test_bench_sides.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "real_distill" / "sides"
SIDES = (32, 40, 56, 64, 80, 112)
#: the legacy MobileFaceNet's architecture (benchmarks/configs/embedding_kd/common.yaml)
ARCH = {"num_features": 128, "blocks": [1, 4, 6, 2], "scale": 1, "width": 1.0}


def networks(sides) -> dict:
    """``{side: the network at that side}``, random weights, eval mode."""
    from facekd.models import build_backbone

    return {s: build_backbone("mobilefacenet", input_size=s, **ARCH).eval() for s in sides}


def measure(sides, batch_sizes, budget, threads: int, onnx: bool) -> dict:
    """``{side: {params, gflops, <runtime>_b<B>_ms}}``; every side of one runtime is timed in
    the same interleaved rounds, one runtime after the other."""
    from facekd.deploy.export import export_onnx
    from facekd.deploy.latency import ort_compare
    from facekd.evaluation.profile import count_flops, count_parameters

    nets = networks(sides)
    out = {s: {"params": count_parameters(m)[0], "gflops": count_flops(m, s) / 1e9}
           for s, m in nets.items()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        timed, size = {}, {}
        for s, m in nets.items():
            timed[f"torch@{s}"], size[f"torch@{s}"] = m, s
            if onnx:
                path = Path(tmp) / f"mobilefacenet_{s}.onnx"
                export_onnx(m, path)  # raises unless onnxruntime agrees with torch
                timed[f"ort@{s}"], size[f"ort@{s}"] = path, s
        lat = {}
        for runtime in ("torch", "ort"):  # one runtime at a time: onnxruntime's threads spin
            group = {k: v for k, v in timed.items() if k.startswith(runtime + "@")}
            if group:  # after each run and would slow the torch step that follows them
                lat |= ort_compare(group, tuple(batch_sizes), size=size, budget=budget,
                                   threads=threads)  # fmt: skip
    for name, cells in lat.items():
        runtime, s = name.split("@")
        for b, cell in cells.items():
            out[int(s)][f"{runtime}_b{b}_ms"] = cell.median_ms
    return out


def table(res: dict, batch_sizes, runtimes) -> str:
    """The Markdown table: one row per side, speed-ups against the largest side."""
    base = max(res)
    head = ["side", "params", "GFLOPs", "FLOPs vs " + str(base)]
    cols = [f"{r}_b{b}_ms" for r in runtimes for b in batch_sizes]
    head += [f"{c.removesuffix('_ms').replace('_b', ' b')} ms (speed-up)" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s, row in sorted(res.items()):
        cells = [f"{s} px", f"{row['params']:,}", f"{row['gflops']:.3f}",
                 f"{res[base]['gflops'] / row['gflops']:.2f}x"]  # fmt: skip
        cells += [f"{row[c]:.2f} ({res[base][c] / row[c]:.2f}x)" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(res: dict, batch_sizes, runtimes, path: Path) -> None:
    """GFLOPs and latency against the side (log scale), one line per runtime x batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = sorted(res)
    base = max(res)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(sides, [res[s]["gflops"] / res[base]["gflops"] for s in sides], "k--o", label="FLOPs")
    for r in runtimes:
        for b in batch_sizes:
            c = f"{r}_b{b}_ms"
            ax.plot(sides, [res[s][c] / res[base][c] for s in sides], "-o", label=f"{r} b{b}")
    ax.set(xlabel="input side (px)", ylabel=f"cost relative to {base} px", yscale="log",
           title="The teacher's network at lower input sides")  # fmt: skip
    ax.set_xticks(sides)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from facekd.evaluation.profile import TimingBudget, environment
    from facekd.runtime import tune_cpu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two sides, batch 1, torch only")
    p.add_argument("--out", default=str(OUT), help=f"report folder (default {OUT})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    tune_cpu()
    t0 = time.perf_counter()
    sides, batches, runtimes = SIDES, (1, 64), ("torch", "ort")
    budget = TimingBudget(warmup=3, runs=args.runs, min_runs=5, max_seconds=20.0)
    if args.quick:
        sides, batches, runtimes = (32, 56), (1,), ("torch",)
        budget = TimingBudget(warmup=1, runs=3, min_runs=1, max_seconds=1.0)
    res = measure(sides, batches, budget, args.threads, onnx="ort" in runtimes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python benchmarks/bench_sides.py", *(argv or sys.argv[1:])])
    env = environment(args.threads)
    doc = {"command": command, "environment": env, "seconds": round(time.perf_counter() - t0),
           "sides": {str(s): row for s, row in res.items()}}  # fmt: skip
    (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
    chart(res, batches, runtimes, out / "cost.png")
    text = (
        "# The teacher's network at lower input sides: what each side costs\n\n"
        "The legacy InsightFace MobileFaceNet's network (128-d) at each input side, as the "
        "low-resolution students of `bench_embedding_kd.py` run it (Karlekar et al.: the "
        "teacher's architecture fed smaller faces). Latency: medians in ms, eager torch fp32 "
        "and onnxruntime fp32 (CPU provider), every side timed in the same interleaved rounds (one "
        "runtime after the other; onnxruntime's sessions spin their threads after each run, so "
        "interleaved sessions slow each other and its milliseconds here are pessimistic); "
        f"speed-ups against the {max(res)}-px network in the same runtime. "
        f"{args.threads} threads, {env.get('cpu', 'CPU')}; a shared machine: compare ratios, "
        "not milliseconds.\n\n"
        f"{table(res, batches, runtimes)}\n\n![cost](cost.png)\n\n"
        f"Command: `{command}` ({doc['seconds']} s).\n"
    )
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
