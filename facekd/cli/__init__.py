"""The ``facekd`` command line: one argparse parser, one short function per subcommand.

Add a subcommand by writing, in the module of its group (``data``, ``train``, ``evaluate``,
``deploy``, ``search``; shared helpers in ``common``), ``_add_<name>(parser)`` (its arguments)
and ``cmd_<name>(args) -> int`` (a few lines calling library code), then one entry in
``COMMANDS``. Errors the user can cause raise ``UsageError``: ``main`` prints the message on
stderr and returns exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from facekd.cli.common import UsageError, build_model
from facekd.cli.data import _add_align, _add_embed, cmd_align, cmd_embed
from facekd.cli.deploy import (
    _add_export,
    _add_import_onnx,
    _add_quantize,
    cmd_export,
    cmd_import_onnx,
    cmd_quantize,
)
from facekd.cli.evaluate import (
    _add_bench,
    _add_profile,
    _add_verify,
    cmd_bench,
    cmd_profile,
    cmd_verify,
)
from facekd.cli.search import (
    _add_calibrate,
    _add_enroll,
    _add_search,
    cmd_calibrate,
    cmd_enroll,
    cmd_search,
)
from facekd.cli.train import (
    _add_demo,
    _add_select,
    _add_train,
    cmd_cache_teacher,
    cmd_demo,
    cmd_select_neurons,
    cmd_train,
)

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
    from facekd.runtime import cpu

    cpu.tune_cpu()  # allocator + threads, once (FACEKD_CPU_TUNING=0: off)
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        print(f"facekd {args.command}: error: {err}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "UsageError", "build_model", "build_parser", "main"]
