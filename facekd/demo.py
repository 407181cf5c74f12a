"""``facekd demo``: the whole job on an embedded default, with no data or weights of your own.

1. Generates a **synthetic** identity set (``facekd.data.synthetic``: procedural face-like
   images; not real faces, so the numbers show the machinery, not real-world accuracy).
2. Trains a small iResNet teacher with an ArcFace head.
3. Trains MobileFaceNet students with the same step budget: from scratch (ArcFace), and by
   distillation with Hinton soft targets, neuron selection (Luo et al. 2016, identity-label
   criterion), high-to-low resolution pooling-feature transfer (Karlekar et al. 2019, student
   at half resolution) and triplet distillation with the adaptive margin (Feng et al. 2019).
   Teacher outputs come from a teacher cache built once.
4. Evaluates every model with the 10-fold verification protocol on pairs of *held-out*
   synthetic people, at the training resolution and down-sampled to half of it.
5. Profiles teacher against each student (parameters, FLOPs, latency: compression ratio,
   speed-up) and writes ``report.md`` + ``report.json`` + PNG charts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from facekd.config import ExperimentConfig, from_dict
from facekd.data.synthetic import SyntheticFaces, synthetic_pairset
from facekd.evaluation.bench import run_benchmark
from facekd.experiment import build_trainer
from facekd.models.checkpoints import load_backbone

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoSize:
    identities: int = 80
    images_per_identity: int = 16
    size: int = 56
    steps: int = 100
    batch: int = 64
    teacher_width: float = 0.5
    student_width: float = 0.5
    pairs: int = 600


FULL = DemoSize(
    identities=200,
    images_per_identity=20,
    size=112,
    steps=600,
    teacher_width=1.0,
    student_width=1.0,
    pairs=3000,
)


#: (run name, method label, overrides on top of the common student config)
def student_runs(out: Path, s: DemoSize) -> list[tuple[str, str, dict]]:
    teacher_ckpt = str(out / "teacher" / "checkpoint.pt")
    cache = {"model": teacher_ckpt, "cache": str(out / "cache")}
    cache_hr = {"model": teacher_ckpt, "cache": str(out / "cache_lowres")}
    return [
        ("scratch", "ArcFace, no teacher", {}),
        (
            "hinton",
            "Hinton soft targets (T=4)",
            {
                "teacher": {**cache, "head": teacher_ckpt},
                "ce_weight": 0.1,
                "losses": [{"name": "hinton", "weight": 0.9, "kwargs": {"T": 4.0}}],
            },
        ),
        (
            "neuron_selection",
            "neuron selection (Luo 2016)",
            {
                "teacher": cache,
                "head": None,
                "student": {"kwargs": {"num_features": 422}},
                "losses": [
                    {
                        "name": "neuron_selection",
                        "kwargs": {"selection": str(out / "selection.json")},
                    }
                ],
            },
        ),
        (
            "hr_to_lr",
            f"HR->LR pooled ({s.size}->{s.size // 2} px)",
            {
                "teacher": cache_hr,
                "data": {"student_size": s.size // 2},
                "losses": [{"name": "pooling_transfer"}],
            },
        ),
        (
            "triplet",
            "triplet distillation F(d)",
            {
                "teacher": cache,
                "data": {"sampler": "pk", "p": s.batch // 4, "k": 4},
                "losses": [{"name": "triplet_distillation"}],
            },
        ),
    ]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _common(out: Path, s: DemoSize, name: str) -> dict:
    return {
        "out_dir": str(out / name),
        "head": {"name": "arcface", "kwargs": {"scale": 32.0, "margin": 0.3}},
        "data": {
            "identities": s.identities,
            "images_per_identity": s.images_per_identity,
            "image_size": s.size,
            "batch_size": s.batch,
            "augment": {"flip_p": 0.0},
            "workers": 2,
        },
        "train": {
            "steps": s.steps,
            "lr": 0.1,
            "clip_grad_norm": 5.0,  # regression losses on raw embeddings start with big gradients
            "warmup_steps": max(1, s.steps // 10),
            "log_every": max(1, s.steps // 10),
            "checkpoint_every": s.steps,
        },
    }


def _train(cfg_dict: dict) -> tuple[Path, float]:
    cfg = from_dict(ExperimentConfig, cfg_dict)
    t0 = time.perf_counter()
    build_trainer(cfg).fit()
    return Path(cfg.out_dir) / "student.pt", time.perf_counter() - t0


def run_demo(
    out_dir: str | Path = "outputs/demo", full: bool = False, size: DemoSize | None = None
) -> Path:
    """Run the demo; ``size`` overrides the default / ``--full`` sizes (tests use tiny ones)."""
    s = size or (FULL if full else DemoSize())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shape = f"{s.identities} identities x {s.images_per_identity} images, {s.size} px"
    print(f"facekd demo: SYNTHETIC data ({shape}) -> {out}")
    teacher_cfg = _merge(
        _common(out, s, "teacher"),
        {"student": {"name": "iresnet18", "kwargs": {"width": s.teacher_width}}},
    )
    teacher_cfg["train"]["steps"] = 2 * s.steps  # a teacher worth distilling from
    teacher_path, teacher_time = _train(teacher_cfg)
    teacher = load_backbone(teacher_path)

    from facekd.selection import run_selection

    train_set = SyntheticFaces(s.identities, s.images_per_identity, size=s.size)
    run_selection(teacher, train_set, out / "selection.json", max_images=len(train_set))

    models = {"teacher": (teacher_path, "iResNet-18 teacher (ArcFace)", teacher_time)}
    for name, label, over in student_runs(out, s):
        base = _merge(
            _common(out, s, name),
            {
                "student": {
                    "name": "mobilefacenet",
                    "kwargs": {"width": s.student_width, "num_features": 512},
                }
            },
        )
        print(f"-- student: {label}")
        path, seconds = _train(_merge(base, over))
        models[name] = (path, label, seconds)
    return _evaluate_and_report(out, s, models)


def _evaluate_and_report(out: Path, s: DemoSize, models: dict) -> Path:
    pairs = synthetic_pairset(s.pairs, size=s.size, seed=0)
    loaded = {name: (load_backbone(path), label) for name, (path, label, _) in models.items()}
    notes = [
        "DATA IS SYNTHETIC (procedural face-like images): the table shows the machinery "
        "working end to end, not real-world accuracy.",
        f"{s.identities} training identities x {s.images_per_identity} images at {s.size} px; "
        f"the teacher trains {2 * s.steps} steps, every student {s.steps} steps, "
        f"batch {s.batch}.",
        f"Verification set 'synthetic': {s.pairs} pairs of held-out synthetic people.",
    ]
    md = run_benchmark(
        loaded,
        [pairs],
        out,
        low_res=(s.size // 2,),
        title="facekd demo: teacher vs distilled students",
        notes=notes,
        extra_columns=[("train_s", "train s")],
        extra_rows={name: {"train_s": round(sec, 1)} for name, (_, _, sec) in models.items()},
    )
    rows = json.loads((out / "report.json").read_text())["rows"]
    logs = {name: read_log(out / name / "log.csv") for name in models}
    runs = {name: over for name, _, over in student_runs(out, s)}
    verdicts = face_method_verdicts(rows, s, logs, runs)
    with md.open("a") as f:
        f.write("\n## Face methods against the from-scratch student\n\n")
        f.writelines(f"- {line}\n" for line in verdicts)
    print(md.read_text())
    print(json.dumps({"report": str(md)}))
    return md


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_log(path: Path) -> list[dict]:
    """The Trainer's ``log.csv`` as rows of floats (empty or text cells left out); [] if absent."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def _trend(log: list[dict], key: str) -> tuple[float, float] | None:
    """Mean of ``key`` over the first and over the last tenth (at least one) of its log rows."""
    values = [r[key] for r in log if key in r]
    if not values:
        return None
    n = max(1, len(values) // 10)
    return sum(values[:n]) / n, sum(values[-n:]) / n


def _measured_causes(row, base, teacher, key, s: DemoSize, log, run) -> list[str]:
    """Why a method did not beat scratch, in numbers of this run only (no fixed verdicts)."""
    causes = []
    ref, t = base[key], teacher[key]
    noise = max(base.get("synthetic_std") or 0.0, teacher.get("synthetic_std") or 0.0)
    if t - ref <= noise:
        causes.append(
            f"the teacher it learns from scores {t:.4f} on these pairs, not measurably above "
            f"scratch ({ref:.4f}, fold std {noise:.4f}), so there is little to gain by copying it"
        )
    else:
        got = (row[key] - ref) / (t - ref)
        share = f"{got:.0%} of that gap" if got > 0 else "none of that gap"
        causes.append(
            f"the teacher scores {t:.4f} ({t - ref:+.4f} over scratch); the student recovers "
            + share
        )
    if row["input_px"] < base["input_px"]:
        flops = base["gflops"] / row["gflops"]
        lat = (base.get("latency_b1_ms") or 0) / (row.get("latency_b1_ms") or float("inf"))
        causes.append(
            f"it runs natively at {row['input_px']} px: {flops:.1f}x fewer FLOPs and {lat:.1f}x "
            f"lower batch-1 latency than the scratch student, which is fed the same faces "
            f"up-sampled to {base['input_px']} px"
        )
        drop = teacher["synthetic_acc"] - teacher[key]
        if drop > 0:
            causes.append(
                f"the lower resolution costs even the teacher {drop:.4f} "
                f"({teacher['synthetic_acc']:.4f} at {s.size} px, {teacher[key]:.4f} here)"
            )
    if log and not any("ce" in r for r in log):
        causes.append("its log has no identity (ce) term: it learns from the teacher alone")
    for term in sorted({k for r in log for k in r if k.startswith("kd/")}):
        first, last = _trend(log, term)
        if first > 0:
            causes.append(
                f"{term} went from {first:.3g} to {last:.3g} over training "
                f"({last / first:.0%} of its start)"
            )
    data = run.get("data", {})
    if data.get("sampler") == "pk":
        p, k = data["p"], data["k"]
        causes.append(
            f"its P x K batches hold {p} identities x {k} images, where scratch's {s.batch} "
            f"shuffled faces span up to {min(s.batch, s.identities)} of the {s.identities} "
            "identities"
        )
    return causes


def face_method_verdicts(
    rows: list[dict],
    s: DemoSize,
    logs: dict[str, list[dict]] | None = None,
    runs: dict[str, dict] | None = None,
) -> list[str]:
    """For each distilled student: did it beat the from-scratch student, and if not, the
    measured facts of this run that bear on why (``_measured_causes``).

    Accuracies are the report's default (insightface grid) columns. The comparison is at the
    resolution the method's student works at (a student with a smaller input is compared with
    the scratch student fed the same down-sampled faces), and a difference smaller than the
    larger fold standard deviation is called a tie, not a win or a loss. ``logs``: each run's
    ``log.csv`` rows; ``runs``: each run's config overrides (``student_runs``).
    """
    by = {r["model"]: r for r in rows}
    base, teacher = by["scratch"], by["teacher"]
    logs, runs = logs or {}, runs or {}
    lines = []
    for name, row in by.items():
        if name in ("teacher", "scratch"):
            continue
        low = row["input_px"] < base["input_px"]
        key = f"synthetic_acc@{row['input_px']}" if low else "synthetic_acc"
        ref = base[key]
        delta = row[key] - ref
        noise = max(row.get("synthetic_std") or 0.0, base.get("synthetic_std") or 0.0)
        where = f"at {row['input_px']} px"
        causes = _measured_causes(
            row, base, teacher, key, s, logs.get(name, []), runs.get(name, {})
        )
        if delta > noise:
            verdict = f"beats scratch {where}: {row[key]:.4f} vs {ref:.4f} (+{delta:.4f})."
        elif delta >= -noise:
            verdict = (
                f"ties scratch {where}: {row[key]:.4f} vs {ref:.4f} ({delta:+.4f}, within the "
                f"fold std {noise:.4f}); measured in this run: {'; '.join(causes)}."
            )
        else:
            verdict = (
                f"loses to scratch {where}: {row[key]:.4f} vs {ref:.4f} ({delta:+.4f}); "
                f"measured in this run: {'; '.join(causes)}."
            )
        lines.append(f"**{name}** {verdict}")
    return lines
