"""``facekd align`` and ``embed``: raw photos to aligned crops and embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from facekd.cli.common import (
    UsageError,
    _count,
    _number,
    _positive_int,
    build_model,
)


def _add_align(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="folder of raw photos (any depth)")
    p.add_argument("dst", help="folder for aligned crops (same relative layout)")
    p.add_argument("--size", type=_positive_int, default=112)
    p.add_argument("--policy", choices=["center", "largest", "score", "all"], default="center")
    p.add_argument("--format", choices=["png", "jpg"], default="png")
    p.add_argument("--workers", type=_count, default=2)
    p.add_argument("--overwrite", action="store_true", help="redo crops that exist")
    p.add_argument("--retry-failed", action="store_true", help="retry files the report lists")
    p.add_argument(
        "--pad",
        type=_number(float, 0.0),
        default=0.0,
        help="tight crops: add this fraction of each side (edge-replicated) before detection",
    )


def cmd_align(args: argparse.Namespace) -> int:
    """Detect (MTCNN) and align faces to the 112x112 ArcFace template; resumable."""
    from facekd.data.align_tree import align_tree

    try:
        report = align_tree(
            args.src,
            args.dst,
            size=args.size,
            policy=args.policy,
            fmt=args.format,
            workers=args.workers,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
            pad=args.pad,
        )
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    where = Path(args.dst) / "align_report.json"
    print(
        f"aligned {report.written}, skipped {report.skipped}, failed {len(report.failed)} ({where})"
    )
    return 0


def _add_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="folder of raw photos (or aligned crops with --aligned)")
    p.add_argument("--model", required=True, help="checkpoint, legacy MXNet folder or .onnx")
    p.add_argument("--out", required=True, help="output .npz (failures: OUT-stem.failed.json)")
    p.add_argument("--aligned", action="store_true", help="images are aligned square crops")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--backend", choices=["torch", "onnx"], help="default: from the suffix")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--workers", type=_count, default=2)
    p.add_argument("--shard-size", type=_positive_int, default=1024, help="resume granularity")
    p.add_argument("--policy", choices=["center", "largest", "score"], default="center")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results")
    p.add_argument("--retry-failed", action="store_true", help="retry files listed as failed")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (torch; see README)")


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed every image of a folder (detect + align unless --aligned); resumable."""
    from facekd.deploy.embed_folder import embed_folder

    if not (Path(args.model).exists() or Path(f"{args.model}-symbol.json").exists()):
        build_model(args.model)  # a registry name, or a clear error
    try:
        rep = embed_folder(
            args.src,
            args.model,
            args.out,
            aligned=args.aligned,
            flip=args.flip,
            backend=args.backend,
            batch_size=args.batch_size,
            workers=args.workers,
            shard_size=args.shard_size,
            policy=args.policy,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
            bf16=args.bf16,
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    fails = Path(args.out).with_suffix(".failed.json")
    print(f"embedded {rep.embedded}, reused {rep.reused}, failed {len(rep.failed)} -> {args.out}")
    print(f"failures: {fails}")
    return 0
