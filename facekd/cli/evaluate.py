"""``facekd profile``, ``verify`` and ``bench``: cost and accuracy of models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facekd.cli.common import (
    UsageError,
    _count,
    _positive_int,
    _seconds,
    build_model,
)


def _run_profile(args: argparse.Namespace, teacher: str, student: str, json_path) -> int:
    from facekd.evaluation.profile import TimingBudget, compare

    budget = TimingBudget(
        warmup=args.warmup,
        runs=args.runs,
        min_runs=min(args.min_runs, args.runs),
        max_seconds=args.max_seconds or None,
    )
    report = compare(
        build_model(teacher, args.teacher_size),
        build_model(student, args.student_size),
        batch_sizes=tuple(args.batch_sizes),
        precisions=tuple(args.precisions),
        budget=budget,
        threads=args.threads,
        teacher_name=teacher,
        student_name=student,
    )
    print(report.table())
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _add_profile_options(p: argparse.ArgumentParser, max_seconds: float, warmup: int) -> None:
    p.add_argument("--teacher-size", type=_positive_int, help="input side (default: 112)")
    p.add_argument("--student-size", type=_positive_int, help="input side (default: 112)")
    p.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 64])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--threads", type=_positive_int, help="torch threads (default: current)")
    p.add_argument("--warmup", type=_count, default=warmup, help="max warm-up runs per cell")
    p.add_argument("--runs", type=_positive_int, default=200, help="max timed runs per cell")
    p.add_argument("--min-runs", type=_positive_int, default=3, help="min timed runs per cell")
    p.add_argument(
        "--max-seconds",
        type=_seconds,
        default=max_seconds,
        help="time budget per (batch, precision) cell once --min-runs are done; "
        "0 = none (METHODS §7: --warmup 20 --runs 200)",
    )


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="iresnet100", help="registry name or checkpoint file")
    p.add_argument("--student", default="mobilefacenet", help="registry name or checkpoint file")
    _add_profile_options(p, max_seconds=10.0, warmup=20)
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--int8", metavar="ONNX", help="student's facekd-quantize file: ORT latency")


def cmd_profile(args: argparse.Namespace) -> int:
    """Params, FLOPs, size, latency of teacher and student; compression ratio and speed-up."""
    rc = _run_profile(args, args.teacher, args.student, args.json)
    if args.int8:  # eager torch vs onnxruntime fp32 / int8 (facekd.deploy.latency)
        from facekd.deploy.command import print_int8_latency

        print_int8_latency(build_model(args.student), args.int8, args.batch_sizes, args.threads)
    return rc


def _add_verify(p: argparse.ArgumentParser) -> None:
    from facekd.deploy.api import DEFAULT_THRESHOLD

    p.add_argument("image1")
    p.add_argument("image2")
    p.add_argument("--model", required=True, help="checkpoint, legacy MXNet folder or .onnx")
    p.add_argument(
        "--threshold",
        type=float,
        help="cosine at or above which the faces match (default: the model's calibration "
        f"from facekd calibrate, else {DEFAULT_THRESHOLD}, uncalibrated)",
    )
    p.add_argument("--aligned", action="store_true", help="both images are aligned crops")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (torch; see README)")


def cmd_verify(args: argparse.Namespace) -> int:
    """Cosine similarity of two face photos and the same/different decision."""
    from facekd.deploy.api import load

    for path in (args.image1, args.image2):
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    if not (Path(args.model).exists() or Path(f"{args.model}-symbol.json").exists()):
        build_model(args.model)
    try:
        model = load(args.model, threshold=args.threshold, bf16=args.bf16)
        cosine, same = model.verify(args.image1, args.image2, aligned=args.aligned or None)
    except ValueError as err:  # no face, unreadable photo, bad checkpoint
        raise UsageError(str(err)) from None
    print(
        f"cosine {cosine:.4f}: {'same person' if same else 'different people'} "
        f"(threshold {model.threshold:.4f}, {model.threshold_source})"
    )
    return 0


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="registry name or checkpoint")
    p.add_argument("--student", required=True, nargs="+", help="one or more students")
    p.add_argument("--bin", action="append", default=[], help="verification .bin (repeatable)")
    p.add_argument("--low-res", type=_positive_int, nargs="*", default=[56, 32])
    p.add_argument("--ijb", help="IJB-B/C folder (meta/ + loose_crop/)")
    p.add_argument("--ijb-target", choices=["IJBC", "IJBB"], default="IJBC")
    p.add_argument("--out", default="outputs/bench")
    p.add_argument("--int8", nargs="+", default=[], help="per student: its facekd-quantize file")


def cmd_bench(args: argparse.Namespace) -> int:
    """Accuracy per verification set (and at low resolution), compression ratio and speed-up."""
    from facekd.data.set_manifest import load_set
    from facekd.evaluation.bench import run_benchmark

    if not args.bin and not args.ijb:
        raise UsageError("give at least one --bin verification file or --ijb")
    try:  # with a manifest beside it: distinct faces + identities (all-pairs TAR@FAR)
        sets = [load_set(path) for path in args.bin]
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None
    models = {"teacher": (build_model(args.teacher), args.teacher)}
    for i, spec in enumerate(args.student):
        models[f"student{i + 1}" if len(args.student) > 1 else "student"] = (
            build_model(spec),
            spec,
        )
    ijb = (args.ijb, args.ijb_target) if args.ijb else None
    md = run_benchmark(models, sets, args.out, low_res=args.low_res, ijb=ijb)
    print(md.read_text())
    if args.int8:  # fp32 / int8 / mixed accuracy and onnxruntime latency (facekd.deploy)
        from facekd.deploy.command import int8_bench

        students = {k: v for k, v in models.items() if k != "teacher"}
        try:
            int8_bench(students, args.int8, sets, args.out)
        except ValueError as err:
            raise UsageError(str(err)) from None
    return 0
