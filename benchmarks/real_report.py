"""Report of ``bench_real_distill.py``: evaluation, profile, charts and per-method verdicts.

Kept apart from the driver so the driver reads as the pipeline. Every number in the report is
computed here from the trained checkpoints; nothing is typed in.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

LABELS = {
    "teacher": "InsightFace MobileFaceNet (legacy MXNet, real weights)",
    "scratch": "ArcFace only, no teacher",
    "embedding": "embedding mimic (cosine) + ArcFace",
    "hr_lr_pooled": "HR->LR pooled-feature transfer (Karlekar 2019) + ArcFace",
    "triplet": "triplet distillation, adaptive F(d) (Feng 2019) + ArcFace",
    "neuron_selection": "neuron selection, identity labels (Luo 2016), no ArcFace",
    "hinton": "Hinton soft targets T=4, head fitted on teacher embeddings",
    "fitnets": "FitNets hint, teacher stage 2 (14 px) + ArcFace",
    "attention": "attention transfer, 2 stage pairs + ArcFace",
    "fsp": "FSP matrix, teacher stages 2->3 + ArcFace",
    "rkd": "RKD relational (distance + angle) + ArcFace",
}
SETS = ("lfw", "cfp_ff", "cfp_fp")


def verdicts(rows: list[dict], sets: list[str]) -> list[str]:
    """Each method against the from-scratch student, set by set, on the report's default
    accuracies (``<set>_acc``: insightface's threshold grid, ``facekd.evaluation.bench``).

    A difference within the larger of the two fold standard deviations is called a tie: with
    2 folds of 600 / 700 pairs, smaller gaps are not evidence.
    """
    by = {r["model"]: r for r in rows}
    if "scratch" not in by:
        return ["(no from-scratch student in this run: nothing to compare with)"]
    base, lines = by["scratch"], []
    for name, row in by.items():
        if name in ("teacher", "scratch"):
            continue
        parts, wins, losses = [], 0, 0
        for s in sets:
            delta = row[f"{s}_acc"] - base[f"{s}_acc"]
            noise = max(row[f"{s}_std"] or 0.0, base[f"{s}_std"] or 0.0)
            tag = "tie"
            if delta > noise:
                tag, wins = "better", wins + 1
            elif delta < -noise:
                tag, losses = "worse", losses + 1
            parts.append(f"{s} {100 * row[f'{s}_acc']:.2f} ({100 * delta:+.2f}, {tag})")
        summary = "helps" if wins and not losses else "hurts" if losses and not wins else "mixed"
        if not wins and not losses:
            summary = "no measurable effect"
        lines.append(f"**{name}**: {summary} vs scratch; " + "; ".join(parts) + ".")
    return lines


def write_real_report(
    methods, work: Path, sets, out: Path, times: dict, *, quick: bool, command: str,
    prep_seconds: float, wall_start: float, steps: int | None = None,
) -> Path:  # fmt: skip
    import yaml
    from bench_real_distill import CONFIGS, QUICK, TEACHER

    from facekd.evaluation.bench import QUICK_BUDGET, SEARCHES, run_benchmark
    from facekd.evaluation.profile import TimingBudget
    from facekd.evaluation.report import plot_accuracy
    from facekd.evaluation.verification import THRESHOLD_SEARCH
    from facekd.models.checkpoints import load_backbone

    models = {"teacher": (load_backbone(str(TEACHER)), LABELS["teacher"])}
    for m in methods:
        models[m] = (load_backbone(str(work / "students" / m / "student.pt")), LABELS[m])
    common = yaml.safe_load((CONFIGS / "common.yaml").read_text())
    student = common["student"]["kwargs"]
    dim = models[methods[0]][0].num_features if methods else "?"  # as trained, not as typed
    n_train = sum(1 for _ in (work / "train_aligned").rglob("*.jpg"))
    n_ids = sum(1 for d in (work / "train_aligned").iterdir() if d.is_dir())
    steps = steps or common["train"]["steps"]
    batch = QUICK["batch"] if quick else common["data"]["batch_size"]
    notes = [
        (
            "QUICK SMOKE RUN (a few identities, steps and pairs): numbers mean nothing. "
            if quick
            else ""
        )
        + f"Training set: {n_train} aligned CelebA photos of {n_ids} identities "
        "(MTCNN + ArcFace 5-point template, 112 px); every student trains "
        f"{steps} steps of batch {batch} (same schedule), from "
        "scratch or distilled from the cached teacher.",
        f"Student: MobileFaceNet width {student['width']}, {dim}-d "
        f"embedding, input {common['data']['student_size']} px (the teacher sees the same "
        "faces at 112 px).",
        "Verification: LFW-mini (official folds 1-2), CFP-FF / CFP-FP-mini (folds 01-02), "
        f"{', '.join(f'{ps.name} {len(ps)} pairs' for ps in sets)}: accuracy over the "
        "protocol's 2 folds, ± fold std. "
        "The @56px columns feed every model the faces down-sampled to 56 px. CFP-mini photos "
        "are tight crops, so aligned CFP faces carry black borders where the photo ends: CFP "
        "numbers (the teacher's too) sit below published full-CFP ones; compare the rows.",
        f"Preparation (alignment, .bin packing, teacher cache) {prep_seconds:.0f} s of this "
        f"run; machine: {platform.processor() or platform.machine()}.",
    ]
    extra = {m: {"train_s": times.get(m)} for m in methods}
    budget = TimingBudget(warmup=1, runs=3, min_runs=1, max_seconds=0.5) if quick else None
    md = run_benchmark(
        models, sets, out, low_res=(56,), budget=budget or QUICK_BUDGET,
        batch_sizes=(1,) if quick else (1, 64),
        title="facekd on real faces: legacy MobileFaceNet teacher vs distilled students",
        notes=notes, extra_columns=[("train_s", "train s")], extra_rows=extra,
        channels_last=True,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    names = [ps.name for ps in sets]
    plot_accuracy(
        rows, out / "accuracy_all_sets.png", [(f"{s}_acc", s) for s in names],
        title=f"Verification accuracy on real faces (2 official folds, {SEARCHES[0]} thresholds)",
    )  # fmt: skip
    lines = verdicts(rows, names)
    wall = time.perf_counter() - wall_start
    with md.open("a") as f:
        f.write("\n![all sets](accuracy_all_sets.png)\n")
        f.write("\n## Each method against the from-scratch student\n\n")
        search = SEARCHES[0]
        f.write(f"Accuracies in % from the {search} columns ({THRESHOLD_SEARCH[search]}).\n\n")
        f.writelines(f"- {line}\n" for line in lines)
        f.write(f"\nCommand: `.venv/bin/python {command}`; wall time {wall / 60:.1f} min.\n")
    report.update(command=command, wall_seconds=round(wall, 1), verdicts=lines, quick=quick)
    report["verdicts_threshold_search"] = SEARCHES[0]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return md
