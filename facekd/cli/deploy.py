"""``facekd export``, ``import-onnx`` and ``quantize``: models in and out of ONNX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facekd.cli.common import (
    UsageError,
    _positive_int,
    build_model,
)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="student checkpoint, legacy MXNet prefix or registry name")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--fp16", action="store_true", help="also write OUT-stem.fp16.onnx")
    p.add_argument("--int8", action="store_true", help="also write a dynamic-int8 variant")
    p.add_argument("--no-dynamo", action="store_true", help="use the TorchScript exporter")


def cmd_export(args: argparse.Namespace) -> int:
    """Export the student backbone to ONNX, checked against torch in onnxruntime."""
    from facekd.deploy.export import ExportError, export_onnx

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
