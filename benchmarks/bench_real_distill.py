"""Distillation on real faces: a real teacher, a real training set, LFW and CFP results.

Everything runs through facekd's own chain, from raw photos (``../shared/data``):

1. aligns the 299-identity CelebA training photos (MTCNN, face nearest the centre, 5-point
   ArcFace template, 112 px; ``facekd.data.align_tree``) and packs LFW-mini (2 official folds)
   and CFP-FF / CFP-FP-mini (folds 01-02) into verification ``.bin`` files;
2. imports the real InsightFace MobileFaceNet from its legacy MXNet files as the teacher and
   caches its outputs once (embedding, pooled feature, stage maps 2-3: ``teacher_cache``);
3. trains one width-0.35 MobileFaceNet student at 56 px per config in
   ``benchmarks/configs/real/`` (``common.yaml`` + the method's few lines), every student with
   the same steps, batch and schedule: from scratch (ArcFace) and by each distillation method;
4. evaluates teacher and students on the three sets at their own input size and with the
   faces degraded to 56 px, profiles each against the teacher side by side (parameters,
   FLOPs, latency, compression, speed-up; ``facekd.evaluation.bench``) and writes
   ``report.md`` / ``report.json`` / PNG charts plus a per-method verdict against scratch.

Prepared data, the teacher cache and finished students are kept in ``--work`` and reused by a
rerun (delete a student's folder to retrain it). ``--quick`` is the CI smoke test: a few
identities, a few steps, a few pairs, into a separate work folder. Exits 0 with a message
when ``../shared/data`` is absent.

    .venv/bin/python benchmarks/bench_real_distill.py            # ~1 h on 2 CPU cores
    .venv/bin/python benchmarks/bench_real_distill.py --quick --out /tmp/real_quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CELEBA = DATA / "celeba-299" / "images"
LFW = DATA / "lfw-mini"
CFP = DATA / "cfp-mini"
TEACHER = DATA / "insightface-mobilefacenet-legacy" / "model"
CONFIGS = ROOT / "benchmarks" / "configs" / "real"
#: dev identities + training people matched to an evaluation person (benchmarks/sets/README.md)
EXCLUDE = ROOT / "benchmarks" / "sets" / "exclude_identities.txt"
#: run order: "embedding" first builds the teacher cache every other run reuses
METHODS = (
    "scratch", "embedding", "hr_lr_pooled", "triplet", "neuron_selection", "hinton",
    "fitnets", "attention", "fsp", "rkd",
)  # fmt: skip
QUICK = {"identities": 6, "steps": 4, "batch": 8, "pairs_per_fold": 12}


def missing_data() -> str | None:
    needed = [CELEBA, LFW / "pairs.txt", CFP / "Protocol", Path(f"{TEACHER}-symbol.json")]
    missing = [str(p) for p in needed if not p.exists()]
    return ", ".join(missing) if missing else None


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def fill(value, **paths):
    """Replace ``{work}`` / ``{teacher}`` / ``{data}`` in every string of a config."""
    if isinstance(value, dict):
        return {k: fill(v, **paths) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, **paths) for v in value]
    return value.format(**paths) if isinstance(value, str) else value


def method_config(
    method: str, work: Path, quick: bool, steps: int | None = None, configs: Path = CONFIGS
) -> dict:
    """``common.yaml`` + ``<method>.yaml`` of ``configs`` with paths filled in (and shrunk for
    ``--quick``); ``benchmarks/bench_karlekar.py`` passes its own folder."""
    common = yaml.safe_load((configs / "common.yaml").read_text())
    own = yaml.safe_load((configs / f"{method}.yaml").read_text()) or {}
    cfg = fill(merge(common, own), work=str(work), teacher=str(TEACHER), data=str(DATA))
    # held out of every real-data run unless a config says otherwise: the dev split's people
    # and the CelebA people matched to a CFP / LFW-mini person (bench_identity_overlap.py)
    cfg["data"].setdefault("exclude_identities", str(EXCLUDE))
    cfg["out_dir"] = str(work / "students" / method)
    if steps:
        cfg["train"]["steps"] = steps
    if quick:
        s = QUICK
        batch = {"batch_size": s["batch"], "p": s["batch"] // 4, "k": 4, "workers": 0}
        cfg = merge(cfg, {"data": batch})
        cfg = merge(cfg, {"train": {"steps": s["steps"], "warmup_steps": 1, "log_every": 1}})
        cfg["train"]["checkpoint_every"] = s["steps"]
        cfg["train"]["progress"] = False
    return cfg


def _subset_pairs(ps, per_fold: int):
    """The first ``per_fold`` matched and mismatched pairs of each fold (quick mode)."""
    import numpy as np

    from facekd.data.verification import PairSet

    keep = []
    for f in np.unique(ps.folds):
        for same in (True, False):
            keep += list(np.flatnonzero((ps.folds == f) & (ps.issame == same))[:per_fold])
    keep = np.sort(np.asarray(keep))
    used, inverse = np.unique(ps.pairs[keep], return_inverse=True)
    return PairSet(
        [ps.images[i] for i in used], inverse.reshape(-1, 2), ps.issame[keep], ps.folds[keep],
        ps.name,
    )  # fmt: skip


def prepare_eval_sets(work: Path, quick: bool) -> list:
    """LFW-mini and CFP-FF/FP-mini as aligned ``.bin`` files (built once), official folds."""
    from facekd.data.detect import FaceDetector
    from facekd.data.packing import build_bin
    from facekd.data.pairlists import read_cfp_pairs, read_lfw_pairs
    from facekd.data.verification import read_bin

    raw_sets = [
        read_lfw_pairs(LFW / "pairs.txt", LFW / "images"),
        read_cfp_pairs(CFP, "FF"),
        read_cfp_pairs(CFP, "FP"),
    ]
    detector, sets = None, []
    for raw in raw_sets:
        raw = raw.fold_major()  # build_bin writes fold-major; the .bin itself has no folds
        if quick:
            raw = _subset_pairs(raw, QUICK["pairs_per_fold"])
        path = work / f"{raw.name}.bin"
        if not path.exists():
            detector = detector or FaceDetector(policy="center")
            print(f"building {path} ({len(raw.images)} images) ...")
            print(build_bin(raw, path, detector))
        ps = read_bin(path, raw.name)
        if len(ps) != len(raw) or (ps.issame != raw.issame).any():
            raise SystemExit(f"{path} does not match its pair list; delete it and rerun")
        ps.folds = raw.folds  # the protocol's own folds (2 here), not 10 file blocks
        sets.append(ps)
    return sets


def prepare_training_set(work: Path, quick: bool) -> Path:
    """Aligned 112-px crops ``<work>/train_aligned/<identity>/<photo>.jpg`` (resumable)."""
    from facekd.data.align_tree import align_tree
    from facekd.data.detect import FaceDetector

    src = CELEBA
    if quick:  # a copy of the identities with the most photos
        src = work / "train_raw"
        if not src.exists():
            sizes = {d: len(list(d.iterdir())) for d in CELEBA.iterdir() if d.is_dir()}
            for d in sorted(sizes, key=lambda d: (-sizes[d], d.name))[: QUICK["identities"]]:
                shutil.copytree(d, src / d.name)
    dst = work / "train_aligned"
    # the photos are 250 px crops framing the face with a 2.5x margin (faces ~100 px), so
    # MTCNN's pyramid can start at 60 px: 4x faster than 20 px, same faces found
    report = align_tree(src, dst, fmt="jpg", detector=FaceDetector(min_face_size=60), workers=1)
    print(f"training set: {report.written} aligned now, {len(report.failed)} without a face")
    return dst


def train_students(methods, work: Path, quick: bool, steps: int | None) -> dict[str, float]:
    """Train every method not finished yet; returns ``{method: train seconds}``."""
    from facekd.config import ExperimentConfig, from_dict
    from facekd.engine.builder import build_trainer

    times_path = work / "train_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    for method in methods:
        cfg = from_dict(ExperimentConfig, method_config(method, work, quick, steps))
        if method == "neuron_selection" and not (work / "selection.json").exists():
            select_neurons(work, cfg)
        if (Path(cfg.out_dir) / "student.pt").exists() and method in times:
            print(f"-- {method}: trained before, kept")
            continue
        print(f"-- {method}")
        t0 = time.perf_counter()
        build_trainer(cfg).fit()
        times[method] = round(time.perf_counter() - t0, 1)
        times_path.write_text(json.dumps(times, indent=1))
    return times


def select_neurons(work: Path, cfg) -> None:
    """Luo et al.'s selection on the cached teacher embeddings, identity-label criterion."""
    from facekd.data.folder import ImageFolderDataset, exclusion_list
    from facekd.teachers.select_neurons import run_selection

    # the training run's own identities: the held-out ones stay out of the selection too
    exclude = exclusion_list(cfg.data.exclude_identities, "folder")
    dataset = ImageFolderDataset(cfg.data.path, exclude=exclude)
    k = round(0.824 * 128)  # the paper's 422 of 512 outputs, on the teacher's 128
    sel = run_selection(
        None, dataset, work / "selection.json", teacher_cache=cfg.teacher.cache, k=k
    )
    print(f"neuron selection: kept {len(sel.indices)} of {len(sel.q)} teacher neurons")


def build_cache(work: Path, quick: bool) -> None:
    """The teacher cache every distillation run reads (what ``facekd cache-teacher`` does)."""
    from facekd.config import ExperimentConfig, from_dict
    from facekd.engine.builder import build_distiller, training_dataset

    cfg = from_dict(ExperimentConfig, method_config("embedding", work, quick))
    t0 = time.perf_counter()
    # the training transform decides what is cached (its flip: the mirrored views too)
    build_distiller(cfg, training_dataset(cfg))
    print(f"teacher cache ready in {time.perf_counter() - t0:.1f} s: {cfg.teacher.cache}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke test: tiny data and steps")
    p.add_argument("--work", help="prepared data + students (default outputs/real[_quick])")
    p.add_argument("--out", help="report folder (default benchmarks/results/real_distill)")
    p.add_argument("--steps", type=int, help="training steps per student (common.yaml: 800)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    args = p.parse_args(argv)
    if missing := missing_data():
        print(f"SKIP: real data not available ({missing}); nothing to benchmark.")
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := sorted(set(methods) - set(METHODS)):
        print(f"error: unknown method(s) {unknown}; valid: {', '.join(METHODS)}", file=sys.stderr)
        return 2
    work = Path(args.work or ROOT / "outputs" / ("real_quick" if args.quick else "real"))
    out = Path(args.out or ROOT / "benchmarks" / "results" / "real_distill")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare_training_set(work, args.quick)
    sets = prepare_eval_sets(work, args.quick)
    build_cache(work, args.quick)
    t_prep = time.perf_counter() - t0
    times = train_students(methods, work, args.quick, args.steps)
    from real_report import write_real_report

    command = "benchmarks/bench_real_distill.py" + (" --quick" if args.quick else "")
    if args.steps:
        command += f" --steps {args.steps}"
    if methods != list(METHODS):
        command += f" --methods {','.join(methods)}"
    if args.work:
        command += f" --work {args.work}"
    if args.out:
        command += f" --out {args.out}"
    md = write_real_report(
        methods, work, sets, out, times, quick=args.quick, command=command, prep_seconds=t_prep,
        wall_start=t0, steps=QUICK["steps"] if args.quick else args.steps,
    )  # fmt: skip
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
