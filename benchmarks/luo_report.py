"""Report of ``bench_luo.py``: Luo et al.'s neuron-selection ablation on real faces.

Mean ± std over seeds of the three rows (selected K, all D, random K) beside the teacher,
paired tests on the per-pair decisions (``embedding_kd_report.paired``: McNemar per seed, sign
test over pairs) and the regression loss first → last from the training logs. Markdown + JSON +
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

#: (A, B): does A beat B? Same start and batches per seed
COMPARISONS = (
    ("luo_selected", "luo_random"),
    ("luo_selected", "luo_all"),
    ("luo_all", "luo_random"),
)
REFERENCES = ("teacher@112", "teacher@56")
LOG_KEYS = ("loss", "kd/neuron_selection", "img_per_s")


def labels(k: int) -> dict:
    return {
        "teacher@112": "teacher, 112-px faces (reference)",
        "teacher@56": "teacher fed the same 56-px faces (no training)",
        "luo_selected": f"regress the {k} selected teacher neurons ({k}-d student)",
        "luo_all": "regress all 128 teacher neurons (128-d student)",
        "luo_random": f"regress {k} random teacher neurons ({k}-d student)",
    }


def write_luo_report(
    rows, seeds, runs: Path, students: Path, sets, out: Path, times: dict, *,
    wall_start: float, k: int,
) -> Path:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    names = [ps.name for ps in sets]
    seeds_of = {r: [s for s in seeds if (students / f"{r}_seed{s}.pt").exists()] for r in rows}
    seeds_of = {r: s for r, s in seeds_of.items() if s}
    per_model, decisions, _ = evaluate_all(list(seeds_of), seeds_of, runs, students, sets, False)
    lines = summarise(seeds_of, per_model, names, "", references=REFERENCES)
    tests = paired(seeds_of, decisions, names, "", comparisons=COMPARISONS)
    logs = {r: [log_summary(runs / f"{r}_seed{s}", keys=LOG_KEYS) for s in ss]
            for r, ss in seeds_of.items()}  # fmt: skip
    plot_rows(lines, names, out / "accuracy.png",
              f"Neuron selection (Luo et al.) at {LOW} px: mean ± std over seeds")  # fmt: skip
    text = labels(k)
    md = [
        f"# Neuron selection (Luo et al. 2016): the paper's ablation on real faces, {LOW} px\n",
        f"- Student: MobileFaceNet width 0.35 fed {LOW}-px faces, from random weights; its "
        "output is the regressed vector (K-d) and the face descriptor. Regression only "
        "(`mse_half`), no labels; the same starts and batches per seed for every row.",
        f"- Selection: `facekd.teachers.select_neurons`, identity-label criterion on the "
        f"cached 112-px teacher embeddings of every labelled photo; K = {k} of 128.",
        '- Verification: insightface protocol, grid thresholds (`verify(thresholds="grid")`), '
        "official folds; " + ", ".join(f"{ps.name} {len(ps)} pairs" for ps in sets) + ".\n",
    ]
    md += accuracy_table(lines, names, text, lambda r, ss: schedule(runs, r, ss))
    md += sign_test_table(tests)
    md.append("## What the logs show (first → last logged steps, mean over seeds)\n")
    for r, ls in logs.items():
        first = np.mean([x["kd/neuron_selection_first"] for x in ls])
        last = np.mean([x["kd/neuron_selection_last"] for x in ls])
        md.append(f"- **{r}**: regression loss (1/2 squared L2 per face) {first:.2f} → {last:.2f}.")
    wall = time.perf_counter() - wall_start
    md.append(
        "\nCommand: `.venv/bin/python benchmarks/bench_luo.py`; this run took "
        f"{wall / 60:.1f} min (training {sum(v for v in times.values() if v) / 60:.1f} min).\n"
    )
    path = out / "report.md"
    path.write_text("\n".join(md))
    report = {"rows": lines, "per_model": per_model, "paired_tests": tests, "k": k,
              "verdicts": [verdict(t) for t in tests], "logs": logs, "train_seconds": times,
              "seeds": seeds_of}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    return path
