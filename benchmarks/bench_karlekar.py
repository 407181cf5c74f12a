"""Karlekar et al.'s HR->LR protocol on real faces, over several seeds, with paired tests.

J. Karlekar, J. Feng, Z. S. Wong, S. Pranata, "Deep Face Recognition Model Compression via
Knowledge Transfer and Distillation", arXiv:1906.00619 (METHODS.md §2). The student keeps the
teacher's architecture, the real legacy InsightFace MobileFaceNet (128-d, 1.0 M parameters),
and sees the faces at 56 px instead of 112 (a quarter of the FLOPs). Rows, one per config in
``benchmarks/configs/karlekar/`` (``common.yaml`` + a few lines):

* ``kt_pooled``: knowledge transfer (``student.init: kt``, the teacher's weights) + the
  pooled-feature regression to the 112-px teacher (``pooling_transfer``) + ArcFace;
* ``kt_arcface``: the same start, ArcFace only;
* ``scratch``: the same architecture at 56 px from random weights, ArcFace only;
* evaluation only: the teacher fed the same 56-px faces (and at 112 px), and the KT student
  before any training.

Every row trains the same steps, warm-up and cosine decay on the same batches: seed ``k`` sets
``train.seed`` (the student's and head's start) and ``data.seed`` (batch order and flips), so
at one seed the two KT rows start from identical weights and every row sees identical
batches. The data preparation (CelebA-299 aligned by facekd, LFW-mini / CFP-FF / CFP-FP-mini
``.bin`` files, the teacher cache) is ``bench_real_distill.py``'s, in the same work folder.

Resumable: each student trains in ``<work>/karlekar/<row>_seed<k>/`` from its facekd trainer
checkpoint; a student already saved in ``--students`` is kept. The saved students are float16
facekd checkpoints (``facekd.load_backbone`` loads them into float32) and the report's
numbers come from those files. ``--quick`` is the CI smoke test (a few identities, steps and
pairs, 1 seed); the script exits 0 with a message when ``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_karlekar.py                  # 3 seeds, see the report
    .venv/bin/python benchmarks/bench_karlekar.py --quick --out /tmp/karlekar_quick

On a machine with idle cores, training splits over one-thread jobs (``OMP_NUM_THREADS=1``;
two threads on two busy cores ran 4-8x slower per step here): ``--rows R --seeds S
--no-report`` per job, then the plain command writes the report from the saved students.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

import bench_real_distill as real  # noqa: E402

ROOT = real.ROOT
CONFIGS = ROOT / "benchmarks" / "configs" / "karlekar"
ROWS = ("kt_pooled", "kt_arcface", "scratch")
RESULTS = ROOT / "benchmarks" / "results" / "real_distill"


def runs_dir(work: Path, steps: int | None) -> Path:
    """Where the students train and the embeddings are cached: one folder per schedule."""
    return work / ("karlekar" if steps is None else f"karlekar_steps{steps}")


def row_config(row: str, seed: int, work: Path, quick: bool, steps: int | None) -> dict:
    """``common.yaml`` + ``<row>.yaml`` at ``seed`` (student start and batch order)."""
    cfg = real.method_config(row, work, quick, steps, configs=CONFIGS)
    cfg["out_dir"] = str(runs_dir(work, steps) / f"{row}_seed{seed}")
    cfg["train"]["seed"] = seed
    cfg["data"]["seed"] = seed
    return cfg


def save_fp16(model: torch.nn.Module, path: Path) -> Path:
    """A facekd checkpoint with float16 weights (half the size); ``load_backbone`` builds the
    model in float32 and ``load_state_dict`` casts the tensors back."""
    import copy

    from facekd.models.checkpoints import save_backbone

    return save_backbone(copy.deepcopy(model).half(), path)


def train_rows(rows, seeds, work: Path, students: Path, quick: bool, steps, config=None) -> dict:
    """Train every (row, seed) whose saved student is missing; ``{name: train seconds}``.
    ``config(row, seed, work, quick, steps) -> dict``: the row's config (``row_config``)."""
    from facekd.config import ExperimentConfig, from_dict, save_config
    from facekd.engine.builder import build_trainer
    from facekd.models.checkpoints import load_backbone

    times = {}
    for seed in seeds:
        for row in rows:
            name = f"{row}_seed{seed}"
            final = students / f"{name}.pt"
            cfg = from_dict(ExperimentConfig, (config or row_config)(row, seed, work, quick, steps))
            out = Path(cfg.out_dir)
            if final.exists():
                print(f"-- {name}: saved before, kept ({final})")
                if (out / "train_seconds.json").exists():
                    times[name] = json.loads((out / "train_seconds.json").read_text())["seconds"]
                continue
            trainer = build_trainer(cfg)
            resumed = trainer.resume()
            save_config(cfg, out / "config.yaml")
            print(f"-- {name}" + (f" (resumed at step {trainer.step})" if resumed else ""))
            t0 = time.perf_counter()
            trainer.fit()
            times[name] = round(time.perf_counter() - t0, 1)  # this session (+ earlier ones)
            prev = out / "train_seconds.json"
            if resumed and prev.exists():
                times[name] += json.loads(prev.read_text())["seconds"]
            prev.write_text(json.dumps({"seconds": times[name], "resumed": resumed}))
            save_fp16(load_backbone(out / "student.pt"), final)
    return times


def embed_students(rows, seeds, runs: Path, students: Path, sets) -> None:
    """The report's embeddings of the saved students (cached; parallel jobs share the work)."""
    from karlekar_report import LOW, embed_sets

    from facekd.models.checkpoints import load_backbone

    for seed in seeds:
        for row in rows:
            path = students / f"{row}_seed{seed}.pt"
            emb = runs / "emb" / f"{row}_seed{seed}.npz"
            embed_sets(load_backbone(path), sets, LOW, emb, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke test: tiny data, 1 seed")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (quick: 0)")
    p.add_argument("--steps", type=int, help="training steps per student (common.yaml)")
    p.add_argument("--work", help="prepared data + runs (default outputs/real[_quick])")
    p.add_argument("--out", help="report folder (default benchmarks/results/real_distill/karlekar)")
    p.add_argument("--students", help="saved students (default <results>/students; quick: OUT)")
    p.add_argument("--rows", default=",".join(ROWS), help="rows to train (report: all)")
    p.add_argument("--no-report", action="store_true", help="train (and embed) only")
    p.add_argument("--references", action="store_true", help="embed the teacher / KT-init rows")
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if unknown := sorted(set(rows) - set(ROWS)):
        print(f"error: unknown row(s) {unknown}; valid: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    if missing := real.missing_data():
        print(f"SKIP: real data not available ({missing}); nothing to benchmark.")
        return 0
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work or ROOT / "outputs" / ("real_quick" if args.quick else "real"))
    out = Path(args.out or RESULTS / "karlekar")
    students = Path(args.students or (out / "students" if args.quick else RESULTS / "students"))
    work.mkdir(parents=True, exist_ok=True)
    students.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    real.prepare_training_set(work, args.quick)
    if "kt_pooled" in rows:
        real.build_cache(work, args.quick)
    t_prep = time.perf_counter() - t0
    times = train_rows(rows, seeds, work, students, args.quick, args.steps)
    t1 = time.perf_counter()
    sets = real.prepare_eval_sets(work, args.quick)
    t_prep += time.perf_counter() - t1
    runs = runs_dir(work, args.steps)
    embed_students(rows, seeds, runs, students, sets)
    from karlekar_report import embed_sets, reference_models, write_karlekar_report

    if args.references:
        for name, (model, degrade) in reference_models().items():
            embed_sets(model, sets, degrade, runs / "emb" / f"{name}.npz")
    if args.no_report:
        return 0

    command = "benchmarks/bench_karlekar.py" + (" --quick" if args.quick else "")
    for flag in ("seeds", "steps", "work", "out", "students"):  # what changes the result
        if getattr(args, flag) is not None and not (flag == "seeds" and args.seeds == "0,1,2"):
            command += f" --{flag} {getattr(args, flag)}"
    cfg = row_config("scratch", seeds[0], work, args.quick, args.steps)
    md = write_karlekar_report(
        ROWS, seeds, work, runs, students, sets, out, times, train_cfg=cfg, quick=args.quick,
        command=command, prep_seconds=t_prep, wall_start=t0,
    )  # fmt: skip
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
