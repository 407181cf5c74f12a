"""Student inference cost: torch eager fp32, torch channels_last + bf16 autocast, onnxruntime.

For each batch size (default 1 and 64) the three runtimes see the same input (one forward of
the backbone, no flip-sum), interleaved round by round so machine noise hits all alike. Prints
median latency (ms per batch), throughput (faces/s) and the ratio of each runtime's latency to
torch fp32, and writes them to ``benchmarks/results/inference.json``. The ONNX file comes from
``facekd.deploy.export.export_onnx`` (parity-checked); onnxruntime runs on CPU, or CUDA when
``--device cuda`` and the provider exist. bf16 on CPU is only fast on CPUs with AVX512-BF16/AMX.

    .venv/bin/python benchmarks/bench_inference.py --model mobilefacenet --threads 4
    .venv/bin/python benchmarks/bench_inference.py \
        --model ../shared/data/insightface-mobilefacenet-legacy --batch-sizes 1 64

Not run by the tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facekd.deploy.export import export_onnx
from facekd.models.checkpoints import load_backbone


def runners(model, onnx_path: Path, device: str, threads: int | None = None) -> dict:
    """name -> fn(x: float32 CPU tensor) -> output (synchronised)."""
    import onnxruntime as ort

    dev = torch.device(device)
    eager = copy.deepcopy(model).to(dev).eval()
    fast = copy.deepcopy(model).to(dev).to(memory_format=torch.channels_last).eval()
    providers = ["CPUExecutionProvider"]
    if dev.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=providers)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_eager(x):
        with torch.inference_mode():
            out = eager(x.to(dev))
        sync()
        return out

    def run_fast(x):
        x = x.to(dev).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16):
            out = fast(x)
        sync()
        return out

    def run_onnx(x):
        return sess.run(None, {"input": x.numpy()})[0]

    return {
        "torch_fp32": run_eager,
        "torch_cl_bf16": run_fast,
        f"onnxruntime_{providers[0].replace('ExecutionProvider', '').lower()}": run_onnx,
    }


def measure(fns: dict, x: torch.Tensor, warmup: int, rounds: int, max_seconds: float) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t)
        if r >= 2 and time.perf_counter() - start > max_seconds:
            break
    return {k: statistics.median(v) for k, v in times.items()} | {
        "_runs": len(next(iter(times.values())))
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilefacenet", help="name, checkpoint or legacy folder")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch and onnxruntime intra-op threads")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--max-seconds", type=float, default=20.0, help="per batch size")
    p.add_argument("--json", default="benchmarks/results/inference.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_backbone(args.model)
    size = model.input_size
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "student.onnx"
        info = export_onnx(model, onnx_path)
        fns = runners(model, onnx_path, args.device, args.threads)
        rows = []
        for b in args.batch_sizes:
            x = torch.randn(b, 3, size, size).clamp(-1, 1)
            med = measure(fns, x, args.warmup, args.rounds, args.max_seconds)
            base = med["torch_fp32"]
            for name in fns:
                rows.append(
                    {
                        "runtime": name,
                        "batch": b,
                        "latency_ms": med[name] * 1e3,
                        "faces_per_s": b / med[name],
                        "ratio_to_torch_fp32": med[name] / base,
                        "runs": med["_runs"],
                    }
                )
    print(
        f"{args.model}: input {size}px, device {args.device}, torch threads "
        f"{torch.get_num_threads()}, ONNX parity min cosine {info['parity']['min_cosine']:.7f}"
    )
    print(f"{'runtime':<22}{'batch':>6}{'ms/batch':>11}{'faces/s':>11}{'x fp32':>8}")
    for r in rows:
        print(
            f"{r['runtime']:<22}{r['batch']:>6}{r['latency_ms']:>11.2f}"
            f"{r['faces_per_s']:>11.1f}{r['ratio_to_torch_fp32']:>8.2f}"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": str(args.model),
        "arch": info["arch"],
        "input_size": size,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": info["onnxruntime"],
        "onnx_parity_min_cosine": info["parity"]["min_cosine"],
        "note": "median of interleaved rounds; one forward, no flip-sum",
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0 if np.isfinite([r["latency_ms"] for r in rows]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
