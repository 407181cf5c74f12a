"""Model cost: parameters, FLOPs, size on disk, latency; teacher/student ratios (METHODS.md §7).

Definitions used in every report:

* **parameters**: ``sum(p.numel())`` over the module passed in (shared tensors once); pass the
  backbone alone, so the count includes the embedding head and excludes any classifier.
* **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` on one image (batch 1), fp32. It counts
  **2 FLOPs per multiply-add** of convolutions and matrix products (BN, PReLU, additions and
  pooling are not counted); ``GMACs = GFLOPs / 2`` (insightface's convention: r100 ≈ 12.1 G).
* **size on disk**: bytes of ``torch.save(model.state_dict())`` (fp32 weights and BN buffers).
* **latency**: wall time of one ``model(x)`` under ``torch.inference_mode()``, timed with
  ``time.perf_counter`` after warm-up; median and 90th percentile (linear interpolation) in ms;
  throughput = batch size / median. Precision ``fp32``: eager, contiguous. Precision ``bf16``:
  a ``channels_last`` copy under bf16 autocast, measured only where the hardware supports bf16.
* **compression ratio** = params(teacher) / params(student); size and FLOPs ratios likewise.
* **speed-up** = median latency(teacher) / median latency(student), per batch size and
  precision, measured in the same run with teacher and student runs interleaved (ABBA order),
  so that machine noise hits both.

The caller's models are never modified: the profiler works on a deep copy (``eval()``, device,
memory format), and owns threads, autocast and ``inference_mode`` itself. It measures on the
tuned CPU runtime of facekd's own paths (``facekd.runtime.tune_cpu``: allocator, threads; its
summary is recorded as ``environment["runtime"]``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from facekd.evaluation.profile_report import (  # noqa: F401 - re-exported
    ComparisonReport,
    Latency,
    ModelProfile,
)
from facekd.runtime import bf16_support, tune_cpu

#: "fp32": eager, contiguous; "bf16": channels_last + bf16 autocast
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TimingBudget:
    """How long to time one (batch size, precision) cell.

    Warm-up: up to ``warmup`` rounds, stopping early (after at least one) once warm-up has taken
    ``max_seconds / 4``. Timed: up to ``runs`` rounds, stopping early once ``min_runs`` are done
    and ``max_seconds`` have passed. A round runs every model once. ``max_seconds=None`` is
    METHODS §7's fixed protocol (20 warm-up, 200 timed runs).
    """

    warmup: int = 20
    runs: int = 200
    min_runs: int = 3
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.runs < 1 or self.min_runs < 1:
            raise ValueError(f"need warmup >= 0, runs >= 1, min_runs >= 1; got {self}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive or None, got {self.max_seconds}")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters), each shared tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def count_flops(model: nn.Module, input_size: int, device: str | torch.device = "cpu") -> int:
    """FLOPs of one forward pass on a single ``(1, 3, S, S)`` image (2 per multiply-add)."""
    model = copy.deepcopy(model).eval().to(device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    return int(counter.get_total_flops())


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes that ``torch.save(model.state_dict())`` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path)


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo, else what ``platform`` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _load() -> float | None:
    """1-minute load average (other processes competing for the CPU inflate latencies)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def environment(threads: int, device: str | torch.device = "cpu") -> dict:
    """Where the numbers came from (recorded in every report); ``load_*``: see ``_load``."""
    device = torch.device(device)
    ok, reason = bf16_support(device)
    env = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bf16": "yes" if ok else "no",
        "bf16_reason": reason,
        "load_after": _load(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_rounds(steps: list, budget: TimingBudget, device: torch.device):
    """Interleaved timing: per round, every step once, order reversed each round (ABBA).

    Returns (per-step lists of seconds, warm-up rounds).
    """

    def round_(k: int, record: list[list[float]] | None) -> None:
        for i in range(len(steps)) if k % 2 == 0 else reversed(range(len(steps))):
            _sync(device)
            start = time.perf_counter()
            steps[i]()
            _sync(device)
            if record is not None:
                record[i].append(time.perf_counter() - start)

    cap = budget.max_seconds
    warm, start = 0, time.perf_counter()
    while warm < budget.warmup and not (warm and cap and time.perf_counter() - start > cap / 4):
        round_(warm, None)
        warm += 1
    times: list[list[float]] = [[] for _ in steps]
    k, start = 0, time.perf_counter()
    while k < budget.runs and not (
        k >= budget.min_runs and cap and time.perf_counter() - start > cap
    ):
        round_(k, times)
        k += 1
    return times, warm


def _profile(entries, batch_sizes, precisions, budget, threads, device, progress):
    """Profile several (name, model, input_size) entries, latencies interleaved across them."""
    device = torch.device(device)
    batch_sizes, precisions = tuple(batch_sizes), tuple(precisions)
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive ints, got {batch_sizes!r}")
    if not precisions or set(precisions) - set(PRECISIONS):
        raise ValueError(f"precisions must be among {PRECISIONS}, got {precisions!r}")
    runtime = tune_cpu().summary()  # the allocator and threads facekd's own paths run with
    threads, load_before = threads or torch.get_num_threads(), _load()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        profiles = [_static(name, model, size, device) for name, model, size in entries]
        copies = [copy.deepcopy(model).eval().to(device) for _, model, _ in entries]
        bf16_ok, reason = bf16_support(device)
        gen = torch.Generator().manual_seed(0)
        n_cells = len(batch_sizes) * len(precisions)
        bar = tqdm(total=n_cells, desc="profile", file=sys.stderr, disable=not progress)
        for precision in precisions:
            fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
            for b in batch_sizes:
                bar.set_postfix_str(f"batch {b} {precision}")
                if precision == "bf16" and not bf16_ok:
                    for p in profiles:
                        p.latency.append(Latency(b, precision, skipped=reason))
                    bar.update()
                    continue
                steps = []
                for m, (_, _, size) in zip(copies, entries, strict=True):
                    m.to(memory_format=fmt)
                    x = torch.rand(b, 3, size, size, generator=gen) * 2 - 1  # faces in [-1, 1]
                    steps.append(_make_step(m, x.to(device, memory_format=fmt), precision))
                times, warm = _time_rounds(steps, budget, device)
                for p, ts in zip(profiles, times, strict=True):
                    p.latency.append(Latency.measured(b, precision, ts, warm))
                bar.update()
        bar.close()
    finally:
        torch.set_num_threads(old_threads)
    env = environment(threads, device)
    return profiles, {**env, "load_before": load_before, "runtime": runtime}


def _static(name: str, model: nn.Module, size: int, device: torch.device) -> ModelProfile:
    """Parameters, FLOPs and size on disk; latencies are appended later."""
    n_all, n_train = count_parameters(model)
    flops = count_flops(model, size, device)
    return ModelProfile(name, size, n_all, n_train, flops, state_dict_bytes(model))


def _make_step(model: nn.Module, x: torch.Tensor, precision: str):
    """A no-argument callable running one inference forward in the given precision."""
    bf16 = precision == "bf16"

    def step() -> None:
        amp = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)
        with torch.inference_mode(), amp:
            model(x)

    return step


def _name(model: nn.Module, name: str | None) -> str:
    return name or getattr(model, "arch", "") or type(model).__name__


def profile_model(
    model: nn.Module,
    input_size: int,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    precisions: tuple[str, ...] = PRECISIONS,
    budget: TimingBudget = TimingBudget(),
    threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    name: str | None = None,
) -> ModelProfile:
    """Profile one model on ``(B, 3, input_size, input_size)`` inputs (see module docstring).

    ``threads``: torch intra-op threads during the measurement (default: the current count).
    """
    entry = (_name(model, name), model, input_size)
    profiles, _ = _profile([entry], batch_sizes, precisions, budget, threads, device, progress)
    return profiles[0]


def compare(
    teacher: nn.Module,
    student: nn.Module,
    *,
    teacher_size: int | None = None,
    student_size: int | None = None,
    batch_sizes: tuple[int, ...] = (1, 64),
    precisions: tuple[str, ...] = PRECISIONS,
    budget: TimingBudget = TimingBudget(),
    threads: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    teacher_name: str | None = None,
    student_name: str | None = None,
) -> ComparisonReport:
    """Profile teacher and student side by side (interleaved) and report their ratios.

    Input sizes default to each model's ``input_size`` attribute (facekd backbones have one).
    """
    entries = [
        (_name(m, nm), m, size or getattr(m, "input_size", None))
        for m, nm, size in (
            (teacher, teacher_name, teacher_size),
            (student, student_name, student_size),
        )
    ]
    for nm, _, size in entries:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{nm}: give its input size (got {size!r})")
    profiles, env = _profile(entries, batch_sizes, precisions, budget, threads, device, progress)
    return ComparisonReport(teacher=profiles[0], student=profiles[1], environment=env)
