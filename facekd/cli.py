"""The ``facekd`` command line: one argparse parser, one short function per subcommand.

Add a subcommand by writing ``_add_<name>(parser)`` (its arguments) and ``cmd_<name>(args) ->
int`` (a few lines calling library code), then one entry in ``COMMANDS``. Errors the user can
cause raise ``UsageError``: ``main`` prints the message on stderr and returns exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class UsageError(Exception):
    """An error in what the user asked for (bad name, size, path): no traceback, exit code 2."""


def _number(kind: type, minimum: float) -> Callable[[str], float]:
    """An argparse ``type``: ``kind(text)`` that is at least ``minimum``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


_positive_int, _count, _seconds = _number(int, 1), _number(int, 0), _number(float, 0.0)


def build_model(spec: str, input_size: int | None = None):
    """A backbone from a registry name or, if ``spec`` is an existing file, a checkpoint.

    ``input_size`` overrides the registry default (112) or the size recorded in the checkpoint.
    """
    from facekd.models import BACKBONES, build_backbone

    kwargs = {} if input_size is None else {"input_size": input_size}
    is_path = Path(spec).exists() or Path(f"{spec}-symbol.json").exists()  # files, MXNet prefixes
    try:
        if spec in BACKBONES and not is_path:
            return build_backbone(spec, **kwargs)
        if is_path:
            from facekd.models.checkpoints import load_backbone  # lazy: heavy optional readers

            return load_backbone(spec, **kwargs)
    except (KeyError, OSError, TypeError, ValueError) as err:  # CheckpointError is a ValueError
        raise UsageError(f"{spec}: {err.args[0] if err.args else err}") from None
    raise UsageError(
        f"unknown backbone {spec!r}: neither a registered name nor an existing checkpoint file; "
        f"valid names: {', '.join(sorted(BACKBONES))}"
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
    from facekd.experiment import build_trainer

    cfg = _config(args)
    with _setup_errors():
        trainer = build_trainer(cfg)
        resumed = not args.no_resume and trainer.resume(allow_steps_change=args.extend_steps)
    save_config(cfg, Path(cfg.out_dir) / "config.yaml")  # after the resume check: never lost
    if resumed:
        print(f"resuming from {trainer.checkpoint_path}")
    trainer.fit()
    from facekd import dist

    dist.shutdown()  # under torchrun: every rank leaves the process group together
    print(f"student weights: {Path(cfg.out_dir) / 'student.pt'}")
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    """Precompute the teacher outputs a config needs (teacher.cache) without training."""
    from facekd.experiment import build_distiller, training_dataset

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


def cmd_select_neurons(args: argparse.Namespace) -> int:
    """Neuron selection (Luo et al. 2016) on the teacher's embedding; saves indices + statistics."""
    from facekd.data.folder import ImageFolderDataset
    from facekd.selection import run_selection

    teacher = build_model(args.teacher)
    extra = {"k": args.k} if args.k else {}
    sel = run_selection(
        teacher,
        ImageFolderDataset(args.data),
        args.out,
        attribute_file=args.attributes,
        max_images=args.max_images,
        **extra,
    )
    print(f"selected {len(sel.indices)} of {sel.dim} neurons ({sel.mode}) -> {args.out}")
    return 0


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


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="student checkpoint, legacy MXNet prefix or registry name")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--fp16", action="store_true", help="also write OUT-stem.fp16.onnx")
    p.add_argument("--int8", action="store_true", help="also write a dynamic-int8 variant")
    p.add_argument("--no-dynamo", action="store_true", help="use the TorchScript exporter")


def cmd_export(args: argparse.Namespace) -> int:
    """Export the student backbone to ONNX, checked against torch in onnxruntime."""
    from facekd.export import ExportError, export_onnx

    spec = args.checkpoint
    if Path(spec).exists() or Path(f"{spec}-symbol.json").exists():  # file, folder, prefix
        from facekd.models.checkpoints import load_backbone

        try:
            model = load_backbone(spec)
        except (OSError, ValueError) as err:  # CheckpointError is a ValueError
            raise UsageError(f"{spec}: {err}") from None
    else:
        model = build_model(spec)  # a registry name, or a clear error
    try:
        info = export_onnx(
            model,
            args.onnx,
            opset=args.opset,
            fp16=args.fp16,
            int8=args.int8,
            dynamo=not args.no_dynamo,
            source=spec,
        )
    except ExportError as err:
        print(f"facekd export: FAILED: {err}", file=sys.stderr)
        return 1
    par = info["parity"]
    print(
        f"wrote {args.onnx} ({info['arch']}, input {info['input_size']}px, opset {info['opset']}, "
        f"{info['exporter']} exporter); onnxruntime vs torch min cosine: batch 1 "
        f"{par['batch_1']['min_cosine']:.7f}, batch 7 {par['batch_7']['min_cosine']:.7f}"
    )
    for kind, var in info["variants"].items():
        if "skipped" in var:
            print(f"  {kind}: skipped: {var['skipped']}")
        else:
            print(
                f"  {kind}: {var['file']} min cosine {var['parity']['min_cosine']:.5f} "
                f"(drop {var['cosine_drop']:.2e})"
            )
    print(f"sidecar: {args.onnx}.json")
    return 0


def _add_import_onnx(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", help="an InsightFace-family MobileFaceNet .onnx (e.g. w600k_mbf.onnx)")
    p.add_argument("--out", required=True, help="the facekd backbone file (.pt) to write")
    p.add_argument("--channels", choices=("rgb", "bgr"), help="the graph's channel order")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity check")


def cmd_import_onnx(args: argparse.Namespace) -> int:
    """Turn an ONNX MobileFaceNet into a trainable facekd backbone (checked in onnxruntime)."""
    from facekd.models.checkpoints import save_backbone
    from facekd.models.onnx_import import import_onnx

    if not Path(args.onnx).is_file():
        raise UsageError(f"{args.onnx} does not exist")
    try:
        model = import_onnx(args.onnx, channels=args.channels, verify=not args.no_verify)
    except ValueError as err:  # OnnxImportError: the message names the node that does not fit
        raise UsageError(str(err)) from None
    save_backbone(model, args.out)
    info = model.import_info
    par = info.get("parity")
    check = (
        f"onnxruntime vs torch min cosine: batch 1 {par['batch_1']['min_cosine']:.7f}, "
        f"batch 7 {par['batch_7']['min_cosine']:.7f}"
        if par
        else "not checked against onnxruntime"
    )
    params = sum(t.numel() for t in model.parameters())
    print(
        f"wrote {args.out}: {model.arch} {model.arch_kwargs}, {params / 1e6:.2f}M parameters, "
        f"input {model.input_size}px {info['input']['channels'].upper()} (graph expects "
        f"(x - {info['input']['mean'][0]:g}) / {info['input']['std'][0]:g}: "
        f"{info['input']['source']}); {check}"
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
    from facekd.embed_folder import embed_folder

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


def _add_verify(p: argparse.ArgumentParser) -> None:
    from facekd.api import DEFAULT_THRESHOLD

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
    from facekd.api import load

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


def _model_spec(spec: str) -> str:
    """A model file, folder or MXNet prefix (a calibration / gallery belongs to one)."""
    if not (Path(spec).exists() or Path(f"{spec}-symbol.json").exists()):
        raise UsageError(f"{spec}: no such model file, folder or MXNet prefix")
    return spec


def _add_face_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint, legacy MXNet folder or .onnx")
    p.add_argument("--aligned", action="store_true", help="images are aligned square crops")
    p.add_argument("--workers", type=_count, default=2, help="decoding processes")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (torch; see README)")


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bin", help="verification .bin (insightface format) with labelled pairs")
    src.add_argument("--folder", help="labelled folder: one subfolder of photos per person")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate")
    p.add_argument("--model", required=True, help="checkpoint, legacy MXNet folder or .onnx")
    p.add_argument("--aligned", action="store_true", help="--folder holds aligned crops")
    p.add_argument("--embeddings", help="keep --folder's embeddings here (.npz, resumable)")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Threshold at a target false-accept rate, stored in the model's sidecar."""
    from facekd.search.calibrate import calibrate

    if not 0 < args.far < 1:
        raise UsageError(f"--far must be in (0, 1), got {args.far}")
    try:
        rec = calibrate(
            _model_spec(args.model), args.far, args.bin, args.folder, args.aligned, args.embeddings
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(
        f"threshold {rec['threshold']:.4f} (cosine) at FAR {args.far:g}: TAR {100 * rec['tar']:.2f}"
        f" %, measured FAR {rec['far_measured']:.2e} ({rec['n_genuine']} genuine, "
        f"{rec['n_impostor']} impostor comparisons) -> {rec['sidecar']}"
    )
    if not rec["far_resolved"]:
        print(
            f"warning: {rec['n_impostor']} impostor comparisons cannot measure FAR {args.far:g}"
            " (needs >= 1/FAR); the threshold lies just above the highest impostor score"
        )
    if rec["failed"]:
        print(
            f"{len(rec['failed'])} photos could not be used (listed in the embeddings' "
            ".failed.json)"
        )
    return 0


def _add_enroll(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="folder with one subfolder of photos per person")
    p.add_argument("--out", required=True, help="gallery .npz to write")
    _add_face_source(p)
    p.add_argument("--overwrite", action="store_true", help="discard earlier embeddings")
    p.add_argument("--retry-failed", action="store_true", help="retry photos listed as failed")


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enrol people (one template per person folder) into a gallery; resumable."""
    from facekd.search.gallery import enroll

    try:
        rep = enroll(
            args.src,
            _model_spec(args.model),
            args.out,
            aligned=args.aligned,
            workers=args.workers,
            bf16=args.bf16,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    fails = Path(args.out).with_name(f"{Path(args.out).stem}.images.failed.json")
    print(
        f"enrolled {rep.people} people ({rep.embedded} photos embedded, {rep.reused} reused, "
        f"{len(rep.failed)} failed: {fails}) -> {args.out}"
    )
    if rep.without_photo:
        print(f"not enrolled (no usable photo): {', '.join(rep.without_photo)}")
    return 0


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="an image or a folder of images")
    p.add_argument("--gallery", required=True, help="gallery .npz from facekd enroll")
    p.add_argument("--out", required=True, help="results .csv")
    _add_face_source(p)
    p.add_argument("--top-k", type=_positive_int, default=5, help="identities per probe")
    p.add_argument("--threshold", type=float, help="default: the model's calibration")
    p.add_argument("--backend", choices=["auto", "numpy", "faiss"], default="auto")


def cmd_search(args: argparse.Namespace) -> int:
    """Search faces in a gallery: top-k identities, open-set rejection, CSV."""
    from facekd.search.probe import search

    try:
        rep = search(
            args.src,
            args.gallery,
            _model_spec(args.model),
            args.out,
            args.top_k,
            args.threshold,
            args.aligned,
            args.backend,
            workers=args.workers,
            bf16=args.bf16,
        )
    except (FileNotFoundError, ImportError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(
        f"searched {rep.probes} faces ({rep.backend}): {rep.accepted} accepted at threshold "
        f"{rep.threshold:.4f} ({rep.threshold_source}); {len(rep.failed)} failed -> {rep.out}"
    )
    if rep.fpir_bound is not None and rep.fpir_bound > 0.05:
        print(
            f"warning: a 1:1 threshold over {rep.gallery_size} people accepts a stranger with "
            f"probability up to {100 * rep.fpir_bound:.0f} %; for open-set search calibrate "
            "at FAR = wanted FPIR / gallery size"
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
    from facekd.data.verification import read_bin
    from facekd.evaluation.bench import run_benchmark

    if not args.bin and not args.ijb:
        raise UsageError("give at least one --bin verification file or --ijb")
    try:
        sets = [read_bin(path) for path in args.bin]
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


def _add_quantize(p: argparse.ArgumentParser) -> None:
    from facekd.deploy.command import add_quantize_arguments

    add_quantize_arguments(p)


def cmd_quantize(args: argparse.Namespace) -> int:
    """Static int8 quantisation of an ONNX face model, calibrated on aligned faces."""
    from facekd.deploy.command import run_quantize

    try:
        return run_quantize(args)
    except (OSError, ValueError) as err:  # GraphError, CalibrationError are ValueErrors
        raise UsageError(str(err)) from None


#: subcommand -> (add its arguments, run it); the run function's docstring is its help line
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "profile": (_add_profile, cmd_profile),
    "demo": (_add_demo, cmd_demo),
    "align": (_add_align, cmd_align),
    "bench": (_add_bench, cmd_bench),
    "train": (_add_train, cmd_train),
    "cache-teacher": (_add_train, cmd_cache_teacher),
    "select-neurons": (_add_select, cmd_select_neurons),
    "export": (_add_export, cmd_export),
    "import-onnx": (_add_import_onnx, cmd_import_onnx),
    "embed": (_add_embed, cmd_embed),
    "verify": (_add_verify, cmd_verify),
    "quantize": (_add_quantize, cmd_quantize),
    "calibrate": (_add_calibrate, cmd_calibrate),
    "enroll": (_add_enroll, cmd_enroll),
    "search": (_add_search, cmd_search),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facekd", description="Knowledge distillation for face recognition."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, run) in COMMANDS.items():
        doc = (run.__doc__ or "").strip().split("\n")[0]
        p = sub.add_parser(name, help=doc, description=doc)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for usage errors, printed without a traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or an argparse error (2, message already printed)
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    from facekd.runtime import tune_cpu

    tune_cpu()  # allocator + threads, once (FACEKD_CPU_TUNING=0: off)
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        print(f"facekd {args.command}: error: {err}", file=sys.stderr)
        return 2
