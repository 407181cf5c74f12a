"""``facekd demo``: train the teacher and every student row, evaluate, profile, report.

The steps (``facekd.demo.setting`` explains the setting and the rows):

1. trains the teacher on every labelled synthetic person;
2. selects the teacher's neurons on the labelled people (Luo et al.'s identity criterion);
3. trains every student row (the teacher's outputs come from caches built once);
4. evaluates all models with the 10-fold protocol on pairs of held-out synthetic people, at
   the training resolution and at half of it, profiles each against the teacher (parameters,
   FLOPs, latency: compression, speed-up) and writes ``report.md`` / ``report.json`` / PNGs
   with a verdict per method against its baseline and a paragraph on what the run shows.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch

from facekd.config import ExperimentConfig, from_dict
from facekd.data.synthetic import SyntheticFaces, synthetic_pairset
from facekd.demo.setting import FULL, DemoSize, student_rows, teacher_config
from facekd.demo.verdicts import method_verdicts, setting_paragraph
from facekd.engine.builder import build_trainer
from facekd.evaluation.bench import run_benchmark
from facekd.models.checkpoints import load_backbone


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
    print(
        f"facekd demo: SYNTHETIC data -> {out}\n  teacher: {s.identities} labelled people x "
        f"{s.images_per_identity} images at {s.size} px; students: labels for {s.labelled} "
        f"of them, every photo as the transfer set"
    )
    print("-- teacher")
    teacher_path, teacher_time = _train(teacher_config(out, s))
    teacher = load_backbone(teacher_path)

    from facekd.teachers.select_neurons import run_selection

    labelled = SyntheticFaces(s.labelled, s.images_per_identity, size=s.size)
    k = round(0.824 * s.features)
    run_selection(teacher, labelled, out / "selection.json", k=k, max_images=len(labelled))

    models = {"teacher": (teacher_path, f"MobileFaceNet x{s.teacher_width} teacher", teacher_time)}
    for name, label, cfg in student_rows(out, s):
        print(f"-- student: {name} ({label})")
        path, seconds = _train(cfg)
        models[name] = (path, label, seconds)
    return _evaluate_and_report(out, s, models)


def read_log(path: Path) -> list[dict]:
    """The Trainer's ``log.csv`` as rows of floats (empty or text cells left out); [] if absent."""
    if not path.exists():
        return []

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    with path.open(newline="") as f:
        rows = [{k: number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def _evaluate_and_report(out: Path, s: DemoSize, models: dict) -> Path:
    pairs = synthetic_pairset(s.pairs, size=s.size, seed=0)
    loaded = {name: (load_backbone(path), label) for name, (path, label, _) in models.items()}
    n = s.identities * s.images_per_identity
    notes = [
        "DATA IS SYNTHETIC (procedural face-like images): the table shows distillation at "
        "work in a controlled setting, not real-world accuracy.",
        f"Teacher: {s.identities} labelled people x {s.images_per_identity} images at {s.size} "
        f"px, {s.teacher_steps} steps. Students: labels for {s.labelled} people, all {n} photos "
        f"as the transfer set, {s.steps} steps of batch {s.batch}, one start and one batch "
        f"order for every row; the triplet rows fine-tune the scratch student "
        f"{s.finetune_steps} steps on P x K batches of the labelled people.",
        f"Verification set 'synthetic': {s.pairs} pairs of held-out synthetic people.",
    ]
    md = run_benchmark(
        loaded,
        [pairs],
        out,
        low_res=(s.size // 2,),
        title="facekd demo: what a teacher that knows more gives a student",
        notes=notes,
        extra_columns=[("train_s", "train s")],
        extra_rows={name: {"train_s": round(sec, 1)} for name, (_, _, sec) in models.items()},
    )
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    logs = {name: read_log(out / name / "log.csv") for name in models}
    verdicts = method_verdicts(rows, logs)
    paragraph = setting_paragraph(rows, s)
    with md.open("a") as f:
        f.write("\n## What this run shows\n\n" + paragraph + "\n")
        f.write("\n## Each method against its no-teacher baseline\n\n")
        f.write(
            "Same start and same batches without the teacher's term; a difference within the "
            "larger fold std of the two rows is a tie.\n\n"
        )
        f.writelines(f"- {line}\n" for line in verdicts)
    report["verdicts"], report["summary"] = verdicts, paragraph
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    print(md.read_text())
    print(json.dumps({"report": str(md)}))
    return md
