"""What every command shares: ``UsageError`` (exit code 2, no traceback), argparse number
types, ``build_model`` (a registry name or a checkpoint) and model / face-source options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
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
