"""Latency where students run: eager torch beside onnxruntime fp32 and int8, in one timing.

``ort_compare({"torch": module, "ort_fp32": "m.onnx", "ort_int8": "m.int8.onnx"})`` times every
entry on the same random faces in [-1, 1] at each batch size, interleaved round by round in
ABBA order (``facekd.evaluation.profile._time_rounds``), so a busy machine slows all of them
alike and their ratios stay meaningful; medians and p90 in ms as ``profile.Latency``. Torch
runs eager fp32 (contiguous, ``inference_mode``: ``profile``'s ``fp32`` cell); onnxruntime
runs the CPU provider with all graph optimisations and ``threads`` intra-op threads, the same
count torch gets (default: torch's current count).

``int8_report(student, int8_path)`` is what ``facekd profile --int8`` / ``facekd bench --int8``
print: the three rows and the speed-ups ORT fp32 / torch, ORT int8 / ORT fp32, ORT int8 / torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from facekd.evaluation.profile import Latency, TimingBudget, _make_step, _time_rounds

#: default timing: a few seconds per batch size (noisy machines: compare ratios, not ms)
QUICK = TimingBudget(warmup=3, runs=50, min_runs=5, max_seconds=8.0)
#: (faster, baseline) pairs reported as speed-ups, when both are present
SPEEDUPS = (("ort_fp32", "torch"), ("ort_int8", "ort_fp32"), ("ort_int8", "torch"))


def _ort_step(path, x: np.ndarray, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def ort_compare(
    models: dict,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    size: int | dict[str, int] = 112,
    budget: TimingBudget = QUICK,
    threads: int | None = None,
) -> dict[str, dict[int, Latency]]:
    """``{name: {batch: Latency}}`` for torch modules and ``.onnx`` paths (module docstring).

    ``size``: the faces' side, one for all, or ``{name: side}`` per entry (the same network at
    several input resolutions, timed in the same rounds).
    """
    sizes = size if isinstance(size, dict) else dict.fromkeys(models, size)
    if missing := sorted(set(models) - set(sizes)):
        raise ValueError(f"no input size for {missing}")
    threads = threads or torch.get_num_threads()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, dict[int, Latency]] = {name: {} for name in models}
    try:
        sides = sorted(set(sizes.values()))
        for b in batch_sizes:
            faces = {s: torch.rand(b, 3, s, s, generator=gen) * 2 - 1 for s in sides}
            steps = [
                _make_step(m.eval(), faces[sizes[name]], "fp32")
                if isinstance(m, torch.nn.Module)
                else _ort_step(m, faces[sizes[name]].numpy(), threads)
                for name, m in models.items()
            ]
            times, warm = _time_rounds(steps, budget, torch.device("cpu"))
            for name, ts in zip(models, times, strict=True):
                out[name][b] = Latency.measured(
                    b, "fp32" if "int8" not in name else "int8", ts, warm
                )
    finally:
        torch.set_num_threads(old)
    return out


def speedups(lat: dict[str, dict[int, Latency]]) -> dict[str, float]:
    """``{"<fast>/<base>@b<B>": baseline median / fast median}`` for ``SPEEDUPS`` present."""
    res = {}
    for fast, base in SPEEDUPS:
        for b in lat.get(fast, {}):
            if b in lat.get(base, {}):
                res[f"{fast}/{base}@b{b}"] = lat[base][b].median_ms / lat[fast][b].median_ms
    return res


def fp32_of(int8_path) -> Path:
    """The fp32 model an int8 file was made from (its ``facekd quantize`` sidecar)."""
    side = Path(f"{int8_path}.json")
    if not side.is_file():
        raise ValueError(f"{int8_path}: no sidecar {side.name}; make it with facekd quantize")
    fp32 = Path(json.loads(side.read_text())["fp32_model"])
    if not fp32.is_file():
        raise ValueError(f"{int8_path}: its fp32 model {fp32} (from {side.name}) is gone")
    return fp32


def int8_report(student, int8_path, batch_sizes=(1, 64), budget=None, threads=None):
    """``(text table, json dict)``: eager torch, ORT fp32 (sidecar's model), ORT int8."""
    budget = budget or QUICK
    models = {"torch": student, "ort_fp32": fp32_of(int8_path), "ort_int8": Path(int8_path)}
    size = int(getattr(student, "input_size", 112))
    lat = ort_compare(models, tuple(batch_sizes), size=size, budget=budget, threads=threads)
    ups = speedups(lat)
    lines = ["latency (median ms, interleaved in one run)    " + "  ".join(
        f"b{b:<8}" for b in batch_sizes)]  # fmt: skip
    for name, cells in lat.items():
        lines.append(
            f"  {name:<44} " + "  ".join(f"{cells[b].median_ms:<9.2f}" for b in batch_sizes)
        )
    for key, value in ups.items():
        lines.append(f"  speed-up {key:<35} {value:.2f}x")
    data = {n: {b: c.__dict__ for b, c in cells.items()} for n, cells in lat.items()}
    return "\n".join(lines), {"latency": data, "speedup": ups, "threads": threads}
