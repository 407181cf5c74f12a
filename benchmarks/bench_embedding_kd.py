"""Embedding distillation at the strength that works in the field, on every training photo.

The face field's strongest plain recipe (issue 16; Keras_insightface's MobileNet students on
CASIA with an R100 teacher: embedding loss weight 128 gave LFW 98.38 -> 99.55, CFP-FP
87.30 -> 93.76, AgeDB 86.97 -> 94.65; weight 7 about half of that) is a student whose
embedding regresses the teacher's, ``1 - cos(e_s, e_t)``, weighted far above the ArcFace loss.
This driver tests it on real faces with the 56-px student of ``bench_karlekar.py`` (the legacy
InsightFace MobileFaceNet's architecture, a quarter of its FLOPs) and on all the real
training photos here: CelebA-299 (6,250 aligned) + CelebA-tight-1756 (17,5xx, aligned by
``facekd align --pad 0.4``), 2,055 disjoint identities. Rows, one config each in
``benchmarks/configs/embedding_kd/`` (``common.yaml`` + a few lines):

* ``kt_arcface`` / ``kt_emb128``: the KT start (teacher weights at 56 px), ArcFace alone /
  ArcFace + embedding mimic at weight 128: the headline pair, 3 seeds;
* ``scratch`` / ``scratch_emb128``: the same pair from random weights (the field's setting),
  3 seeds;
* ``kt_emb16`` and ``kt_emb128_only`` (no ArcFace): the weight sweep and the with/without
  ArcFace ablation, 1 seed (the same batches as seed 0 of the headline pair);
* ``kt_emb_adamw`` / ``scratch_b64``: a schedule that converges further, batch 64 and bf16
  autocast: the KT start regressing the teacher's embedding alone with AdamW (lr 2e-3), against
  ArcFace from random weights on the same batches, 800 steps, 3 seeds; ``kt_emb_adamw_long`` /
  ``scratch_b64_long``: the same pair at 2,500 steps (seed 0; the KT row also at seed 1).

"Cosine vs L2 on normalised embeddings" needs no row of its own: ``||a/|a| - b/|b| ||^2 =
2 - 2 cos(a, b)``, so the L2 loss at weight ``w`` is the cosine loss at weight ``2w``, the same
gradients (``facekd.losses.embedding``: ``mode="mse"``; tested in tests/test_losses.py).

Every row trains the same steps, warm-up and cosine decay on the same batches (seed ``k`` sets
``train.seed`` and ``data.seed``). Resumable: students train in ``<work>/embedding_kd/`` from
their facekd checkpoints; saved float16 students (``benchmarks/results/real_distill/students/
emb_<row>_seed<k>.pt``) are kept. Training splits over one-thread jobs (``--rows R --seeds S
--no-report``); the plain command then writes ``benchmarks/results/real_distill/
embedding_kd/``. Exits 0 with a message when ``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_embedding_kd.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

import bench_karlekar as karlekar  # noqa: E402
import bench_real_distill as real  # noqa: E402

ROOT = real.ROOT
CONFIGS = ROOT / "benchmarks" / "configs" / "embedding_kd"
TIGHT = real.DATA / "celeba-tight-1756" / "images"
#: row -> seeds trained by default (the headline pairs over 3 seeds, the sweep at seed 0)
ROWS = {
    "kt_arcface": (0, 1, 2),
    "kt_emb128": (0, 1, 2),
    "scratch": (0, 1, 2),
    "scratch_emb128": (0, 1, 2),
    "kt_emb16": (0,),
    "kt_emb128_only": (0,),
    # a schedule that converges further (AdamW, batch 64, bf16): 800 steps over 3 seeds, and
    # 2,500 steps (KT at seeds 0 and 1, scratch at 0), against ArcFace from scratch on the
    # same batches
    "kt_emb_adamw_long": (0, 1),
    "scratch_b64_long": (0,),
    "kt_emb_adamw": (0, 1, 2),
    "scratch_b64": (0, 1, 2),
    # one 4,000-step cosine schedule from the KT start (the deployable 56-px student)
    "kt_emb_adamw_4000": (0,),
    # kt_emb_adamw_long with function matching: a new view of every face, the teacher online
    "kt_emb_fm": (0,),
    # kt_emb_adamw_long plus Karlekar's pooled-feature transfer (the 512-d pooling layer)
    "kt_pooled_emb_long": (0,),
    # Karlekar HR->LR from ESP-DL's mbf.onnx (the strongest teacher here) into its own network
    # at 56 px, against that network from scratch on the same batches
    "kt_mbf_emb_long": (0,),
    "scratch_mbf_long": (0,),
    # Hinton soft targets (matched logit scales) from one teacher and from a teacher ensemble,
    # one KT start for all three
    "kt_hinton_legacy": (0,),
    "kt_hinton_mbf": (0,),
    "kt_hinton_ens": (0,),
    # lower resolutions (Karlekar et al.: 56 and below): the 800-step pair at 40 px (1 seed)
    # and 32 px (3 seeds)
    "kt_emb_adamw_40": (0,),
    "scratch_b64_40": (0,),
    "kt_emb_adamw_32": (0, 1, 2),
    "scratch_b64_32": (0, 1, 2),
    # the 56-px student that keeps the teacher's 7x7 last map (last_stride 1: every tensor
    # transferred as is), 800 steps (2 seeds, against the 4x4 map in float32 on the same
    # batches: float32 because this CPU has no native bf16) and 2,500 steps (seed 0)
    "kt_emb_ls1": (0, 1),
    "kt_emb_adamw_fp32": (0, 1),
    "kt_emb_ls1_long": (0,),
    # higher sides (METHODS 2.4: 80 and 96 beside 56), float32: the 800-step pair at 64 px
    # (seed 0) and 80 px (KT at 3 seeds, scratch at 1), and the 64-px student on the
    # 2,500-step schedule (seed 0)
    "kt_emb_adamw_64": (0,),
    "scratch_b64_64": (0,),
    "kt_emb_adamw_80": (0, 1, 2),
    "scratch_b64_80": (0,),
    "kt_emb_adamw_64_long": (0,),
}
RESULTS = ROOT / "benchmarks" / "results" / "real_distill"
PREFIX = "emb_"  # saved students: students/emb_<row>_seed<k>.pt (apart from Karlekar's)


def row_config(row: str, seed: int, work: Path, quick: bool, steps: int | None) -> dict:
    """``common.yaml`` + ``<row>.yaml`` at ``seed`` (student start and batch order)."""
    cfg = real.method_config(row, work, quick, steps, configs=CONFIGS)
    cfg["out_dir"] = str(work / "embedding_kd" / f"{row}_seed{seed}")
    cfg["train"]["seed"] = seed
    cfg["data"]["seed"] = seed
    return cfg


def resolved_config(row: str, seed: int, work: Path, steps: int | None = None) -> dict:
    """The row's config with every default filled in, as its run saves it (``config.yaml``)."""
    from facekd.config import ExperimentConfig, from_dict, to_dict

    return to_dict(from_dict(ExperimentConfig, row_config(row, seed, work, False, steps)))


def prepare_all_photos(work: Path) -> Path:
    """``<work>/train_all``: CelebA-299's and CelebA-tight-1756's aligned crops side by side
    (hard links; the identity folders are CelebA identity numbers, disjoint between the two)."""
    from facekd.data.align_tree import align_tree
    from facekd.data.detect import FaceDetector

    celeba = real.prepare_training_set(work, quick=False)
    tight = work / "tight_aligned"
    # tight crops (eyebrows to chin): pad 40 % by edge replication, or MTCNN lacks context and
    # the template's margins fall outside the photo (black); resumable, like every align run
    report = align_tree(
        TIGHT, tight, fmt="jpg", detector=FaceDetector(), workers=1, pad=0.4
    )  # fmt: skip
    print(f"tight crops: {report.written} aligned now, {len(report.failed)} without a face")
    dst = work / "train_all"
    for src in (celeba, tight):
        for photo in src.rglob("*.jpg"):
            out = dst / photo.relative_to(src)
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                os.link(photo, out)
    return dst


def save_kt_start(work: Path) -> Path:
    """``<work>/kt_start56.pt``: the KT student (the teacher's weights at 56 px, FC resized),
    the one start of the rows whose teacher is not the legacy model's alone (``kt_hinton_*``)."""
    from karlekar_eval import reference_models

    from facekd.models.checkpoints import save_backbone

    path = work / "kt_start56.pt"
    if not path.exists():  # float32: the very weights student.init=kt builds
        save_backbone(reference_models()["kt_init"][0], path)
    return path


def build_cache(work: Path) -> None:
    """The 112-px teacher's embeddings of every photo, both flip views (one pass each)."""
    from facekd.config import ExperimentConfig, from_dict
    from facekd.engine.builder import build_distiller, training_dataset

    cfg = from_dict(ExperimentConfig, row_config("kt_emb128", 0, work, False, None))
    t0 = time.perf_counter()
    build_distiller(cfg, training_dataset(cfg))
    print(f"teacher cache ready in {time.perf_counter() - t0:.1f} s: {cfg.teacher.cache}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help="rows to train (report: all)")
    p.add_argument("--seeds", help="comma-separated seeds for the rows (default: ROWS)")
    p.add_argument("--steps", type=int, help="training steps per student (common.yaml)")
    p.add_argument("--work", help="prepared data + runs (default outputs/real)")
    p.add_argument("--out", help="report folder (default <results>/embedding_kd)")
    p.add_argument("--no-report", action="store_true", help="train (and embed) only")
    p.add_argument("--report-rows", help="rows the report covers (default: every row)")
    p.add_argument("--prepare-only", action="store_true", help="align + cache, then stop")
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    reported = [r for r in (args.report_rows or ",".join(ROWS)).split(",") if r]
    if unknown := sorted((set(rows) | set(reported)) - set(ROWS)):
        print(f"error: unknown row(s) {unknown}; valid: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    if missing := real.missing_data() or (None if TIGHT.is_dir() else str(TIGHT)):
        print(f"SKIP: real data not available ({missing}); nothing to benchmark.")
        return 0
    work = Path(args.work or ROOT / "outputs" / "real")
    out = Path(args.out or RESULTS / "embedding_kd")
    students = RESULTS / "students"
    t0 = time.perf_counter()
    prepare_all_photos(work)
    build_cache(work)
    save_kt_start(work)
    if args.prepare_only:
        return 0
    seeds_of = {r: ROWS[r] for r in rows}
    if args.seeds:
        seeds_of = {r: tuple(int(s) for s in args.seeds.split(",")) for r in rows}
    t_prep = time.perf_counter() - t0
    times: dict = {}
    for row, seeds in seeds_of.items():
        times |= karlekar.train_rows(
            [PREFIX + row], seeds, work, students, False, args.steps, config=_unprefixed
        )  # fmt: skip
    sets = real.prepare_eval_sets(work, quick=False)
    from embedding_kd_report import write_embedding_kd_report

    if args.no_report:
        return 0
    md = write_embedding_kd_report(
        {r: ROWS[r] for r in reported}, work / "embedding_kd", students, PREFIX, sets, out,
        times, prep_seconds=t_prep, wall_start=t0,
        train_cfg=row_config(reported[0], 0, work, False, args.steps),
        config_of=lambda row, seed: resolved_config(row, seed, work, args.steps),
        command=" ".join([".venv/bin/python benchmarks/bench_embedding_kd.py", *sys.argv[1:]]),
    )  # fmt: skip
    print(md.read_text())
    return 0


def ablation_args(argv, doc: str, known_rows, report: str):
    """The command line shared by the ablation drivers on every training photo
    (``bench_luo.py``, ``bench_triplet_ft.py``): ``(args, rows, seeds, work, out)``, or the exit
    code when the rows are unknown (2) or the real data is absent (0, a clean skip)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rows", default=",".join(known_rows), help="rows to train (report: all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--steps", type=int, help="training steps per row (common.yaml)")
    p.add_argument("--work", help="prepared data + runs (default outputs/real)")
    p.add_argument("--out", help=f"report folder (default <results>/{report})")
    p.add_argument("--no-report", action="store_true", help="train only")
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if unknown := sorted(set(rows) - set(known_rows)):
        print(f"error: unknown row(s) {unknown}; valid: {', '.join(known_rows)}", file=sys.stderr)
        return 2
    if missing := real.missing_data() or (None if TIGHT.is_dir() else str(TIGHT)):
        print(f"SKIP: real data not available ({missing}); nothing to benchmark.")
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work or ROOT / "outputs" / "real")
    return args, rows, seeds, work, Path(args.out or RESULTS / report)


def _unprefixed(row: str, seed: int, work: Path, quick: bool, steps: int | None) -> dict:
    """``train_rows`` saves ``students/<row>_seed<k>.pt``; the rows here go in as ``emb_<row>``
    so their files stay apart from Karlekar's, and their configs are ``<row>``'s."""
    return row_config(row.removeprefix(PREFIX), seed, work, quick, steps)


if __name__ == "__main__":
    raise SystemExit(main())
