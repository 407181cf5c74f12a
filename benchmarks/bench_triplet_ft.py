"""Triplet distillation by its paper's protocol, on real faces: fine-tuning a trained student.

Feng et al. 2019 (arXiv:1905.04457) and margindistillation's reproduction fine-tune a
converged ArcFace MobileFaceNet with the triplet loss whose margin F(d) comes from the
teacher's distances (MobileFaceNet ArcFace 99.51 / 92.68 / 96.13 -> 99.56 / 93.30 / 96.23 on
LFW / CFP-FP / AgeDB). This driver runs that protocol here. Every row starts from the same
trained ArcFace student (``bench_embedding_kd.py``'s ``scratch_b64_long``: the 56-px legacy
MobileFaceNet architecture, 2,500 steps from scratch; trained first if missing) and
fine-tunes it on the same P x K batches (16 people x 4 photos of the 23,761 labelled photos):

* ``arcface_cont``: ArcFace continued from the start's own head, no teacher (the baseline);
* ``triplet_fixed``: the plain triplet loss, fixed margin 0.35, semi-hard negatives;
* ``triplet_fd``: triplet distillation, margin F(d) from the cached 112-px teacher.

Configs: ``benchmarks/configs/triplet_ft/`` (``common.yaml`` + one file per row). Seed ``k``
sets the batch order (``train.seed = data.seed = k``); the start is the same for every seed.
The report (``benchmarks/results/real_distill/triplet_ft/``: Markdown, JSON, PNG) gives mean
± std over seeds on LFW-mini, CFP-FF and CFP-FP-mini, paired tests on the per-pair decisions
(McNemar per seed, sign test over pairs), and from the logs the mined and active triplets per
step. The fine-tuned students stay in ``<work>/triplet_ft/students`` (not committed: the
``students/`` folder of the results holds the headline students only). Resumable; exits 0
with a message when ``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_triplet_ft.py [--rows R] [--seeds 0,1,2] [--no-report]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

import bench_embedding_kd as ekd  # noqa: E402
import bench_karlekar as karlekar  # noqa: E402
import bench_real_distill as real  # noqa: E402

ROOT = real.ROOT
CONFIGS = ROOT / "benchmarks" / "configs" / "triplet_ft"
ROWS = ("arcface_cont", "triplet_fixed", "triplet_fd")
START_ROW = "scratch_b64_long"  # bench_embedding_kd.py's row the fine-tuning starts from
RESULTS = ROOT / "benchmarks" / "results" / "real_distill"


def runs_dir(work: Path) -> Path:
    return work / "triplet_ft"


def row_config(row: str, seed: int, work: Path, quick: bool, steps: int | None) -> dict:
    """``common.yaml`` + ``<row>.yaml`` at ``seed`` (the batch order; the start is shared)."""
    cfg = real.method_config(row, work, quick, steps, configs=CONFIGS)
    cfg["out_dir"] = str(runs_dir(work) / f"{row}_seed{seed}")
    cfg["train"]["seed"] = seed
    cfg["data"]["seed"] = seed
    return cfg


def start_checkpoint(work: Path) -> Path:
    """The trained ArcFace student every row fine-tunes (its training checkpoint: the backbone
    and the head ``arcface_cont`` continues)."""
    return work / "embedding_kd" / f"{START_ROW}_seed0" / "checkpoint.pt"


def ensure_start(work: Path, students: Path) -> Path:
    """Train the start if it is missing (resumable), then keep it as ``start_seed0.pt`` next to
    the fine-tuned students (float16, for the report's evaluation)."""
    from facekd.models.checkpoints import load_backbone

    start = start_checkpoint(work)
    ekd.prepare_all_photos(work)
    ekd.build_cache(work)
    if not (start.parent / "student.pt").exists():
        karlekar.train_rows(
            [ekd.PREFIX + START_ROW], (0,), work, RESULTS / "students", False, None,
            config=ekd._unprefixed,
        )  # fmt: skip
    saved = students / "start_seed0.pt"
    if not saved.exists():
        karlekar.save_fp16(load_backbone(start.parent / "student.pt"), saved)
    return start


def main(argv=None) -> int:
    parsed = ekd.ablation_args(argv, __doc__, ROWS, "triplet_ft")
    if isinstance(parsed, int):
        return parsed
    args, rows, seeds, work, out = parsed
    students = runs_dir(work) / "students"
    students.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ensure_start(work, students)
    times = karlekar.train_rows(rows, seeds, work, students, False, args.steps, config=row_config)
    if args.no_report:
        return 0
    from triplet_ft_report import write_triplet_report

    sets = real.prepare_eval_sets(work, quick=False)
    md = write_triplet_report(
        ROWS, seeds, runs_dir(work), students, sets, out, times, wall_start=t0,
        train_cfg=row_config("triplet_fd", seeds[0], work, False, args.steps),
    )  # fmt: skip
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
