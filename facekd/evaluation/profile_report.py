"""Profile results: ``Latency`` cells, a ``ModelProfile`` per model and the teacher/student
``ComparisonReport`` with its ratios, JSON round trip and plain-text table.

Only data and layout live here; how the numbers are measured, and the definitions of every
quantity (parameters, FLOPs at 2 per multiply-add, size on disk, latency median / p90,
compression ratio, speed-up), are in ``facekd.evaluation.profile``, which re-exports these
names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Latency:
    """One timed cell; ``skipped`` gives the reason when it was not measured (values None)."""

    batch_size: int
    precision: str
    median_ms: float | None = None
    p90_ms: float | None = None
    throughput: float | None = None  # images per second = batch_size / median
    runs: int = 0  # timed runs actually made
    warmup_runs: int = 0
    skipped: str | None = None

    @classmethod
    def measured(cls, batch_size: int, precision: str, seconds: list[float], warmup: int):
        med, p90 = (float(v) for v in np.percentile(seconds, [50, 90]))
        return cls(
            batch_size, precision, med * 1e3, p90 * 1e3, batch_size / med, len(seconds), warmup
        )


@dataclass
class ModelProfile:
    """Static cost and latencies of one model (definitions: ``facekd.evaluation.profile``)."""

    name: str
    input_size: int
    params: int
    trainable_params: int
    flops: int  # per image, 2 FLOPs per multiply-add
    size_bytes: int
    latency: list[Latency] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9

    def latency_for(self, batch_size: int, precision: str) -> Latency | None:
        return next(
            (t for t in self.latency if (t.batch_size, t.precision) == (batch_size, precision)),
            None,
        )

    def to_json(self) -> dict:
        return {**asdict(self), "gflops": self.gflops, "gmacs": self.gmacs}

    @classmethod
    def from_json(cls, data: dict) -> ModelProfile:
        fields = {k: v for k, v in data.items() if k not in ("gflops", "gmacs")}
        fields["latency"] = [Latency(**t) for t in data["latency"]]
        return cls(**fields)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


@dataclass
class ComparisonReport:
    """Teacher and student profiled side by side, with the environment they ran in."""

    teacher: ModelProfile
    student: ModelProfile
    environment: dict

    @property
    def compression_ratio(self) -> float | None:
        return _ratio(self.teacher.params, self.student.params)

    @property
    def size_ratio(self) -> float | None:
        return _ratio(self.teacher.size_bytes, self.student.size_bytes)

    @property
    def flops_ratio(self) -> float | None:
        return _ratio(self.teacher.flops, self.student.flops)

    def speedups(self) -> list[dict]:
        """``[{batch_size, precision, speedup}]``; speedup None where a cell was skipped."""
        out = []
        for t in self.teacher.latency:
            s = self.student.latency_for(t.batch_size, t.precision)
            speedup = _ratio(t.median_ms, s.median_ms if s else None)
            out.append({"batch_size": t.batch_size, "precision": t.precision, "speedup": speedup})
        return out

    def to_json(self) -> dict:
        return {
            "environment": self.environment,
            "teacher": self.teacher.to_json(),
            "student": self.student.to_json(),
            "compression_ratio": self.compression_ratio,
            "size_ratio": self.size_ratio,
            "flops_ratio": self.flops_ratio,
            "speedup": self.speedups(),
        }

    @classmethod
    def from_json(cls, data: dict) -> ComparisonReport:
        t, s = (ModelProfile.from_json(data[k]) for k in ("teacher", "student"))
        return cls(teacher=t, student=s, environment=data["environment"])

    def table(self) -> str:
        """Plain-text table: one row per quantity, columns teacher | student | ratio."""
        t, s, env = self.teacher, self.student, self.environment
        rows = [
            ("", f"teacher: {t.name}", f"student: {s.name}", "teacher/student"),
            ("input", f"{t.input_size}x{t.input_size}", f"{s.input_size}x{s.input_size}", ""),
        ]
        for label, key, scale, ratio in (
            ("params (M) -> compression ratio", "params", 1e6, _fmt(self.compression_ratio)),
            ("trainable params (M)", "trainable_params", 1e6, ""),
            ("size on disk (MB)", "size_bytes", 1e6, _fmt(self.size_ratio)),
            ("GFLOPs (2 per MAC)", "flops", 1e9, _fmt(self.flops_ratio)),
            ("GMACs", "flops", 2e9, ""),
        ):
            rows.append((label, *(f"{getattr(p, key) / scale:.3f}" for p in (t, s)), ratio))
        for lt, sp in zip(t.latency, self.speedups(), strict=True):
            ls = s.latency_for(lt.batch_size, lt.precision)
            cell = f"b{lt.batch_size} {lt.precision}"
            if lt.skipped:
                rows.append((f"latency {cell}", f"skipped: {lt.skipped}", "", ""))
                continue
            speedup = _fmt(sp["speedup"])
            rows.append((f"latency {cell} ms med/p90 -> speed-up", _lat(lt), _lat(ls), speedup))
            rates = (f"{p.throughput:.1f}" if p and p.throughput else "n/a" for p in (lt, ls))
            rows.append((f"throughput {cell} img/s", *rates, ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            f"device: {env['device']} ({env['cpu']}), threads: {env['threads']}, "
            f"torch {env['torch']}, bf16: {env['bf16']}",
            f"1-min load average before/after: {env.get('load_before')}/{env.get('load_after')}"
            f" on {env['cpu_count']} CPUs (counts our own threads too; far above the thread"
            " count: other processes competed and latencies are inflated)",
            "FLOPs: FlopCounterMode, 2 FLOPs per multiply-add (GMACs = GFLOPs/2), batch 1",
        ]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        return "\n".join(lines)


def _fmt(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _lat(t: Latency | None) -> str:
    if t is None or t.median_ms is None:
        return "n/a"
    return f"{t.median_ms:.2f} / {t.p90_ms:.2f} (n={t.runs})"
