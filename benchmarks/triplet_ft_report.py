"""Report of ``bench_triplet_ft.py``: Feng et al.'s fine-tuning protocol on real faces.

Mean ± std over seeds of every fine-tuned row and the start it fine-tunes, paired tests on the
per-pair decisions (``embedding_kd_report.paired``: McNemar per seed, sign test over pairs),
and from the training logs the mined and active triplets per step (an *active* triplet has a
positive hinge, ``D_ap - D_an + margin > 0``; only those move the student). Markdown + JSON +
PNG, every number computed here from the saved students and the ``.bin`` files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from embedding_kd_report import (
    accuracy_table,
    paired,
    schedule,
    sign_test_table,
    summarise,
    verdict,
)
from karlekar_eval import LOW, evaluate_all, log_summary
from karlekar_report import plot_rows

#: (A, B): does A beat B? Every row fine-tunes the same start on the same batches per seed
COMPARISONS = (
    ("triplet_fd", "triplet_fixed"),
    ("triplet_fd", "arcface_cont"),
    ("triplet_fixed", "arcface_cont"),
)
LABELS = {
    "teacher@112": "teacher, 112-px faces (reference)",
    "teacher@56": "teacher fed the same 56-px faces (no training)",
    "start": "the trained ArcFace student every row starts from",
    "arcface_cont": "start + ArcFace continued (its own head), no teacher",
    "triplet_fixed": "start + triplet loss, fixed margin 0.35",
    "triplet_fd": "start + triplet distillation, margin F(d) from the teacher",
}
REFERENCES = ("teacher@112", "teacher@56")
LOSS = "triplet_distillation"
LOG_KEYS = ("loss", "ce", f"kd/{LOSS}", f"stats/{LOSS}/triplets", f"stats/{LOSS}/active")


def _schedule(runs: Path, row: str, seeds) -> str:
    """The row's training schedule (``embedding_kd_report.schedule``); the start's is its own
    run's in ``<work>/embedding_kd``."""
    if row == "start":
        return schedule(runs.parent / "embedding_kd", "scratch_b64_long", [0])
    return schedule(runs, row, seeds)


def triplet_activity(logs: list[dict]) -> dict | None:
    """Mined triplets per step and the active fraction, first → last logged steps, mean over
    the seeds' ``log_summary`` dicts; ``None`` for a row without the triplet loss."""
    key_n, key_a = f"stats/{LOSS}/triplets", f"stats/{LOSS}/active"
    if not logs or f"{key_n}_first" not in logs[0]:
        return None
    return {
        f"{what}_{end}": float(np.mean([x[f"{key}_{end}"] for x in logs]))
        for what, key in (("triplets", key_n), ("active", key_a))
        for end in ("first", "last")
    }


def write_triplet_report(
    rows, seeds, runs: Path, students: Path, sets, out: Path, times: dict, *,
    wall_start: float, train_cfg: dict,
) -> Path:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    names = [ps.name for ps in sets]
    seeds_of = {"start": [0]} | {
        r: [k for k in seeds if (students / f"{r}_seed{k}.pt").exists()] for r in rows
    }
    seeds_of = {r: s for r, s in seeds_of.items() if s}
    per_model, decisions, _ = evaluate_all(list(seeds_of), seeds_of, runs, students, sets)
    lines = summarise(seeds_of, per_model, names, "", references=REFERENCES)
    tests = paired(seeds_of, decisions, names, "", comparisons=COMPARISONS)
    logs = {
        r: [log_summary(runs / f"{r}_seed{k}", keys=LOG_KEYS) for k in s]
        for r, s in seeds_of.items()
        if r != "start"
    }
    title = f"Triplet fine-tuning at {LOW} px (Feng et al. protocol): mean ± std over seeds"
    plot_rows(lines, names, out / "accuracy.png", title)
    tr, data = train_cfg["train"], train_cfg["data"]
    md = [
        f"# Triplet distillation as a fine-tuning step (Feng et al. 2019), real faces, {LOW} px\n",
        "- Start: one trained ArcFace student, the legacy MobileFaceNet architecture fed 56-px "
        "faces, trained from scratch by `bench_embedding_kd.py`'s `scratch_b64_long` row "
        "(2,500 steps of batch 64). Every row fine-tunes that same start.",
        f"- Fine-tuning: {tr['steps']} steps of P x K = {data['p']} x {data['k']} batches "
        f"(the same batches per seed for every row), SGD momentum 0.9, lr {tr['lr']:g} with "
        f"warm-up {tr['warmup_steps']} and cosine decay, bf16 autocast. Triplets are mined "
        "online in each batch (semi-hard, squared L2 on normalised embeddings); the teacher's "
        "distances come from its cached 112-px embeddings.",
        '- Verification: insightface protocol, grid thresholds (`verify(thresholds="grid")`), '
        "official folds; " + ", ".join(f"{ps.name} {len(ps)} pairs" for ps in sets) + ".\n",
    ]
    md += accuracy_table(lines, names, LABELS, lambda r, ss: _schedule(runs, r, ss))
    md += sign_test_table(tests)
    md.append("## What the logs show (first → last logged steps, mean over seeds)\n")
    activity = {r: triplet_activity(ls) for r, ls in logs.items()}
    for r, ls in logs.items():
        parts = [f"loss {np.mean([x['loss_first'] for x in ls]):.3f} → "
                 f"{np.mean([x['loss_last'] for x in ls]):.3f}"]  # fmt: skip
        if act := activity[r]:
            parts.append(
                f"mined triplets per step {act['triplets_first']:.0f} → "
                f"{act['triplets_last']:.0f}, "
                f"active (positive hinge) {100 * act['active_first']:.0f} % → "
                f"{100 * act['active_last']:.0f} %"
            )
        md.append(f"- **{r}**: " + "; ".join(parts) + ".")
    wall = time.perf_counter() - wall_start
    md.append(
        "\nCommand: `.venv/bin/python benchmarks/bench_triplet_ft.py`; this run took "
        f"{wall / 60:.1f} min (training {sum(v for v in times.values() if v) / 60:.1f} min).\n"
    )
    path = out / "report.md"
    path.write_text("\n".join(md))
    report = {
        "rows": lines, "per_model": per_model, "paired_tests": tests,
        "verdicts": [verdict(t) for t in tests], "logs": logs, "triplet_activity": activity,
        "train_seconds": times, "seeds": seeds_of, "steps": tr["steps"],
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return path
