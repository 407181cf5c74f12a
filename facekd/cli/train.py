"""``facekd train``, ``cache-teacher``, ``select-neurons`` and ``demo``."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from facekd.cli.common import (
    UsageError,
    _positive_int,
    build_model,
)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--full", action="store_true", help="bigger models and data (much slower)")


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a teacher and distilled students on synthetic faces; report accuracy and cost."""
    from facekd.demo import run_demo

    run_demo(args.out, full=args.full)
    return 0


def _config(args: argparse.Namespace):
    from facekd.config import ConfigError, ExperimentConfig, load_config

    try:
        return load_config(ExperimentConfig, args.config, args.set or [])
    except (ConfigError, OSError) as err:
        raise UsageError(str(err)) from None


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML experiment config (see benchmarks/configs)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.lr=0.05"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore OUT_DIR/checkpoint.pt")
    p.add_argument(
        "--extend-steps",
        action="store_true",
        help="resume a finished or running job with a larger train.steps (other training keys "
        "must match the checkpoint's config)",
    )


@contextlib.contextmanager
def _setup_errors():
    """Errors in what a config asks for (a teacher that cannot serve a loss, a missing file,
    a stale cache) are the user's to fix: one line, exit code 2, no traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None


def cmd_train(args: argparse.Namespace) -> int:
    """Train a teacher, a baseline student or a distilled student from a config (torchrun-ready)."""
    from facekd.config import save_config
    from facekd.engine.builder import build_trainer

    cfg = _config(args)
    with _setup_errors():
        trainer = build_trainer(cfg)
        resumed = not args.no_resume and trainer.resume(allow_steps_change=args.extend_steps)
    save_config(cfg, Path(cfg.out_dir) / "config.yaml")  # after the resume check: never lost
    if resumed:
        print(f"resuming from {trainer.checkpoint_path}")
    trainer.fit()
    from facekd.runtime import dist

    dist.shutdown()  # under torchrun: every rank leaves the process group together
    print(f"student weights: {Path(cfg.out_dir) / 'student.pt'}")
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    """Precompute the teacher outputs a config needs (teacher.cache) without training."""
    from facekd.engine.builder import build_distiller, training_dataset

    cfg = _config(args)
    t = cfg.teacher
    if not ((t.model or t.onnx or t.ensemble) and t.cache):
        raise UsageError("the config needs a teacher (model, onnx or ensemble) and teacher.cache")
    with _setup_errors():  # the training transform decides: mirrored views are cached too
        distiller = build_distiller(cfg, training_dataset(cfg))
    if distiller.teacher_cache is None:
        raise UsageError(
            "the augmentation changes the teacher's view beyond a mirror image (photometric "
            "jitter or occlusion): no cache can stand in for the teacher; drop those from "
            "data.augment or train with the teacher online"
        )
    print(f"teacher cache ready: {cfg.teacher.cache} ({len(distiller.teacher_cache)} items)")
    return 0


def _add_select(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher backbone (checkpoint or name)")
    p.add_argument("--data", required=True, help="identity-per-folder tree of aligned faces")
    p.add_argument("--out", required=True, help="selection JSON to write")
    p.add_argument("--attributes", help="CelebA list_attr_celeba.txt or a CSV of binary attributes")
    p.add_argument("--k", type=_positive_int, help="neurons to keep (default: 0.824 x D)")
    p.add_argument("--max-images", type=_positive_int, help="use at most this many images")
    p.add_argument(
        "--exclude-identities",
        metavar="FILE",
        help="held-out identity folder names, one a line (as data.exclude_identities)",
    )


def cmd_select_neurons(args: argparse.Namespace) -> int:
    """Neuron selection (Luo et al. 2016) on the teacher's embedding; saves indices + statistics."""
    from facekd.data.folder import ImageFolderDataset, exclusion_list
    from facekd.teachers.select_neurons import run_selection

    try:  # the same list and checks as data.exclude_identities
        exclude = exclusion_list(args.exclude_identities, "folder")
    except ValueError as err:
        raise UsageError(str(err)) from None
    teacher = build_model(args.teacher)
    extra = {"k": args.k} if args.k else {}
    sel = run_selection(
        teacher,
        ImageFolderDataset(args.data, exclude=exclude),
        args.out,
        attribute_file=args.attributes,
        max_images=args.max_images,
        **extra,
    )
    print(f"selected {len(sel.indices)} of {sel.dim} neurons ({sel.mode}) -> {args.out}")
    return 0
