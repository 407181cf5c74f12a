"""The calibrated threshold in a model's sidecar JSON, and the threshold every command uses.

Sidecar: ``<model>.json`` beside the model (the convention of ``facekd export``, whose
``student.onnx.json`` gains a ``"calibration"`` key and keeps everything else); for a
legacy MXNet prefix ``<prefix>.json``, for a model folder ``<folder>.json``. Writes are
atomic (temporary file + ``os.replace``).

``"calibration"`` holds ``threshold`` (cosine of L2-normalised flip-sum embeddings; accept when
``cosine >= threshold``), the ``far`` it was chosen for, the measured ``far_measured`` and
``tar``, whether the FAR was resolvable from the impostor count, the data, and the model's
``model_fingerprint`` (``facekd.deploy.embed_folder.fingerprint``). A calibration whose fingerprint
does not match the model file any more (retrained, replaced) is ignored with a warning.

``resolve_threshold(model, threshold)``: an explicit threshold wins, then the sidecar's
calibration, then ``DEFAULT_THRESHOLD`` (uncalibrated); it returns where the value
came from so commands can say it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

KEY = "calibration"


#: the uncalibrated verification threshold (cosine) when a model has no calibration
DEFAULT_THRESHOLD = 0.3


def sidecar_path(model) -> Path:
    """``<model>.json`` for a model file, folder or legacy MXNet prefix; names raise."""
    text = str(model).rstrip("/")
    if not isinstance(model, (str, os.PathLike)) or not (
        Path(text).exists() or Path(f"{text}-symbol.json").exists()
    ):
        raise ValueError(
            f"{model!r} is not a model file or folder: a calibration is stored beside one"
        )
    return Path(f"{text}.json")


def read_sidecar(model) -> dict:
    """The sidecar's JSON object (``{}`` when there is none or ``model`` is not a file)."""
    try:
        path = sidecar_path(model)
    except ValueError:
        return {}
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_calibration(model, record: dict) -> Path:
    """Store ``record`` under ``"calibration"`` in the sidecar (other keys kept); its path."""
    path = sidecar_path(model)
    data = read_sidecar(model)
    data[KEY] = record
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_calibration(model) -> dict | None:
    """The model's calibration, or None (none stored, or made for other weights: warned)."""
    record = read_sidecar(model).get(KEY)
    if record is None:
        return None
    from facekd.deploy.embed_folder import fingerprint

    if record.get("model_fingerprint") != fingerprint(model):
        log.warning(
            "%s: the calibration in %s was made for other weights (fingerprint differs); "
            "ignored: run facekd calibrate again",
            model,
            sidecar_path(model),
        )
        return None
    return record


def describe(record: dict) -> str:
    """One line: ``calibrated at FAR 1e-03 on <data>: TAR 97.10 %``."""
    note = "" if record.get("far_resolved", True) else " (FAR below 1/impostors: not resolved)"
    return (
        f"calibrated at FAR {record['far']:.0e} on {record.get('data', '?')}: "
        f"TAR {100 * record['tar']:.2f} %, measured FAR {record['far_measured']:.2e}{note}"
    )


def resolve_threshold(model, threshold: float | None = None) -> tuple[float, str]:
    """``(threshold, source)``: explicit, else calibrated (sidecar), else the default."""
    if threshold is not None:
        return float(threshold), "given"
    record = read_calibration(model)
    if record is not None:
        return float(record["threshold"]), describe(record)

    return DEFAULT_THRESHOLD, "uncalibrated default: run facekd calibrate"
