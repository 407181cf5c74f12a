"""``facekd quantize``: the arguments and the run behind the CLI's thin wrapper.

    facekd quantize student.onnx --calibration aligned/ --out student.int8.onnx \
        [--method percentile|minmax|entropy] [--keep-float gdc first ...] [--bin lfw.bin ...] \
        [--qat-steps 300 [--qat-lr 5e-5] [--qat-model student.pt]]

Prints the held-back cosine to fp32, sizes, and per ``--bin`` the fp32 / int8 /
fp32-gallery-int8-probe accuracy (and with ``--qat-steps`` the fine-tuning's simulated-int8
cosine before and after); everything also goes to ``<out>.json``. Bad input (not an
ONNX model, unreadable or empty calibration source) raises ``ValueError`` with the reason,
which the CLI prints as a usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    from facekd.deploy.graph import DEFAULT_KEEP_FLOAT
    from facekd.deploy.quantize import METHODS, ROLES

    p.add_argument("model", help="the fp32 .onnx (e.g. from facekd export)")
    p.add_argument(
        "--calibration",
        required=True,
        metavar="SRC",
        help="aligned faces: a folder (searched recursively), a verification .bin, or a "
        "RecordIO .rec (or the folder holding train.rec)",
    )
    p.add_argument("--out", help="int8 .onnx to write (default: MODEL-stem.int8.onnx)")
    p.add_argument("--method", choices=METHODS, default="percentile", help="default: percentile")
    p.add_argument("--percentile", type=float, default=99.99, help="default: 99.99")
    p.add_argument(
        "--keep-float",
        nargs="*",
        choices=ROLES,
        default=list(DEFAULT_KEEP_FLOAT),
        help="node roles left in float (default: gdc conv_sep; give none for all int8)",
    )
    p.add_argument("--calibration-size", type=int, default=512, help="faces (default 512)")
    p.add_argument("--held-back", type=int, default=128, help="faces for the cosine check")
    p.add_argument("--seed", type=int, default=0, help="seed of the face draw")
    p.add_argument("--no-prelu-rewrite", action="store_true", help="keep onnxruntime's PRelu")
    p.add_argument(
        "--fp32-kept-weights",
        action="store_true",
        help="store the weights of --keep-float layers in fp32 (default: int8, weight-only)",
    )
    p.add_argument("--bin", action="append", default=[], help="verification .bin (repeatable)")
    q = p.add_argument_group("quantisation-aware fine-tuning (facekd.deploy.qat)")
    q.add_argument("--qat-steps", type=int, default=0, help="fine-tune first (default 0: off)")
    q.add_argument("--qat-lr", type=float, default=5e-5, help="Adam lr (default 5e-5)")
    q.add_argument("--qat-batch", type=int, default=32, help="faces per step (default 32)")
    q.add_argument("--qat-faces", type=int, default=2048, help="training faces (default 2048)")
    q.add_argument("--qat-model", help="torch source of the weights (default: MODEL, imported)")


def run_quantize(args: argparse.Namespace) -> int:
    from facekd.deploy.accuracy import summary_line
    from facekd.deploy.qat import QatSettings
    from facekd.deploy.quantize import quantize_onnx

    qat = None
    if args.qat_steps:
        qat = QatSettings(args.qat_steps, args.qat_lr, args.qat_batch, args.qat_faces, args.seed)
    if args.calibration_size < 1 or args.held_back < 1:
        raise ValueError("--calibration-size and --held-back must be >= 1")
    out = args.out or str(Path(args.model).with_suffix("")) + ".int8.onnx"
    info = quantize_onnx(
        args.model,
        args.calibration,
        out,
        method=args.method,
        percentile=args.percentile,
        keep_float=tuple(args.keep_float),
        calibration_size=args.calibration_size,
        held_back=args.held_back,
        seed=args.seed,
        rewrite=not args.no_prelu_rewrite,
        int8_kept_weights=not args.fp32_kept_weights,
        bins=tuple(args.bin),
        qat=qat,
        qat_model=args.qat_model,
    )
    cos, q = info["cosine_to_fp32_held_back"]["int8"], info["quantization"]
    print(
        f"wrote {out}: {info['bytes']['int8'] / 1e6:.2f} MB ({info['size_ratio']:.2f}x smaller "
        f"than fp32), {q['method']} calibration on {info['calibration']['faces']} faces, "
        f"float: {', '.join(q['keep_float']) or 'none'} + PReLU"
    )
    print(
        f"cosine to fp32 on {info['calibration']['held_back']} held-back faces: "
        f"mean {cos['mean']:.4f}, 1st percentile {cos['p1']:.4f}, min {cos['min']:.4f}"
    )
    if q["qat"]:
        print(
            f"QAT: {q['qat']['settings']['steps']} steps on {len(q['qat']['ids'])} faces, "
            f"simulated-int8 cosine {q['qat']['cosine_before']:.4f} -> "
            f"{q['qat']['cosine_after']:.4f}"
        )
    for name, acc in info["accuracy"].items():
        print(summary_line(name, acc))
    print(f"sidecar: {out}.json")
    return 0


def print_int8_latency(student, int8_path, batch_sizes, threads=None) -> dict:
    """``facekd profile --int8``: eager torch, ORT fp32, ORT int8 side by side; returns JSON."""
    from facekd.deploy.latency import int8_report

    text, data = int8_report(student, int8_path, tuple(batch_sizes), threads=threads)
    print(text)
    return data


def int8_bench(students: dict, int8_paths: list, sets: list, out_dir) -> dict:
    """``facekd bench --int8``: per student with an int8 file, fp32 / int8 / fp32-gallery-
    int8-probe accuracy on every pair set and the onnxruntime latency table; also written to
    ``<out_dir>/int8.json``."""
    import json

    from facekd.deploy.accuracy import pair_accuracies, summary_line
    from facekd.deploy.latency import fp32_of

    if len(int8_paths) != len(students):
        raise ValueError(f"--int8 needs one file per student: {len(students)} students, "
                         f"{len(int8_paths)} files")  # fmt: skip
    res = {}
    for (name, (model, _)), path in zip(students.items(), int8_paths, strict=True):
        acc = {ps.name: pair_accuracies(ps, fp32_of(path), path) for ps in sets}
        for set_name, a in acc.items():
            print(f"{name} int8 ({path}): " + summary_line(set_name, a))
        res[name] = {"int8": str(path), "accuracy": acc,
                     "latency": print_int8_latency(model, path, (1, 64))}  # fmt: skip
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "int8.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return res
