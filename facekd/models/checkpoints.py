"""Load and save backbone weights: facekd files, insightface state dicts, legacy MXNet models.

``load_backbone`` never loads partially: a checkpoint either fits the architecture key for key
and shape for shape, or a ``CheckpointError`` names every missing, unexpected and wrong-shape
key. Accepted inputs:

* a registry name (``"iresnet100"``): a freshly initialised model;
* a facekd backbone file (``save_backbone``): rebuilt from the architecture recorded inside;
* an insightface arcface_torch ``backbone.pth`` / ``model.pt`` state dict, or a training
  checkpoint holding one (``state_dict_backbone``, ``state_dict``, ``model``), with
  ``module.`` / ``backbone.`` / ``_orig_mod.`` prefixes stripped; the architecture is inferred
  from the keys and shapes when ``arch`` is not given;
* a TorchScript archive (its state dict is used);
* a legacy InsightFace MXNet model (``model-symbol.json`` + ``model-0000.params``);
* an ONNX MobileFaceNet of the InsightFace family (``facekd.models.onnx_import``; keywords are
  ``import_onnx``'s: ``mean``, ``std``, ``channels``, ``verify``).
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from facekd.models import BACKBONES, build_backbone
from facekd.models.base import CheckpointError, FaceBackbone

FORMAT = "facekd.backbone/1"
_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_NESTED_KEYS = ("state_dict_backbone", "backbone", "state_dict", "model", "student")


def atomic_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A kill during the write leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_backbone(model: FaceBackbone, path: str | os.PathLike) -> Path:
    """Save weights with the resolved architecture so ``load_backbone(path)`` needs nothing else."""
    if not getattr(model, "arch", ""):
        raise CheckpointError(
            "model has no registry name (model.arch); build it with facekd.build_backbone"
        )
    payload = {
        "format": FORMAT,
        "arch": model.arch,
        "arch_kwargs": dict(model.arch_kwargs),
        "state_dict": model.state_dict(),
    }
    if getattr(model, "import_info", None):  # where imported weights came from (ONNX)
        payload["import_info"] = dict(model.import_info)
    return atomic_save(payload, path)


def strip_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip DDP / wrapper / torch.compile prefixes, repeatedly (``module.backbone.x``: ``x``)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _read_torch_file(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised below with an actionable message
        if zipfile.is_zipfile(path):
            try:  # TorchScript archives are zip files that torch.load refuses
                return torch.jit.load(str(path), map_location="cpu").state_dict()
            except Exception:  # noqa: BLE001
                pass
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} ({size} bytes) is not a readable PyTorch checkpoint: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. It may be truncated (re-download "
            "it) or in another format (legacy MXNet: pass model-symbol.json; ONNX: use an ONNX "
            "teacher)."
        ) from None


def _extract_state_dict(obj: object, path: Path) -> tuple[dict[str, Tensor], str | None, dict]:
    """(state dict, recorded arch or None, recorded arch kwargs)."""
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return dict(obj["state_dict"]), obj["arch"], dict(obj.get("arch_kwargs", {}))
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj), None, {}
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _extract_state_dict(obj[key], path)
        raise CheckpointError(
            f"{path}: no state dict found; top-level keys are {sorted(map(str, obj))[:20]}"
        )
    raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")


def infer_arch(state_dict: Mapping[str, Tensor]) -> tuple[str, dict]:
    """Guess (registry name, kwargs) from insightface-style keys and shapes."""
    keys = set(state_dict)
    if "conv1.weight" in keys and "fc.weight" in keys:
        depth = tuple(
            len({m.group(1) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
            for i in range(1, 5)
        )
        names = [
            n for n, f in BACKBONES.items() if getattr(f, "keywords", {}).get("layers") == depth
        ]
        if not names:
            raise CheckpointError(f"iResNet-like checkpoint with unknown block counts {depth}")
        fc_in, c_last = state_dict["fc.weight"].shape[1], state_dict["bn2.weight"].shape[0]
        kwargs = {"num_features": state_dict["fc.weight"].shape[0]}
        if fc_in == c_last:
            kwargs["head"] = "gap"
        else:
            side = round((fc_in // c_last) ** 0.5)
            if side != 7:
                kwargs["input_size"] = side * 16
        if c_last != 512:
            kwargs["width"] = c_last / 512
        return names[0], kwargs
    if "layers.0.layers.0.weight" in keys and "conv_sep.layers.0.weight" in keys:
        stem = state_dict["layers.0.layers.0.weight"].shape[0]
        inner = state_dict["layers.2.layers.0.layers.0.weight"].shape[0]  # expansion width
        emb = state_dict["features.layers.2.weight"].shape[0]
        kernel = state_dict["features.layers.0.layers.0.weight"].shape[-1]
        blocks = tuple(
            len(
                {
                    m.group(1)
                    for k in keys
                    if (m := re.match(rf"layers\.{i}\.layers\.(\d+)\.layers\.0\.", k))
                }
            )
            or 1
            for i in (1, 3, 5, 7)
        )
        # mbf (scale 2) has stem width == expansion width; the paper's net (scale 1) half of it
        name, kwargs = ("mbf", {}) if stem == inner else ("mobilefacenet", {})
        if inner != 128:
            kwargs["width"] = inner / 128
        kwargs["num_features"] = emb
        if blocks != (1, 4, 6, 2):
            kwargs["blocks"] = blocks
        if kernel != 7:
            kwargs["input_size"] = kernel * 16
        return name, kwargs
    raise CheckpointError(
        "cannot infer the architecture from the checkpoint keys (first keys: "
        f"{sorted(keys)[:8]}); pass arch=<one of {sorted(BACKBONES)}>"
    )


def check_compatible(model: torch.nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming missing, unexpected and wrong-shape keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or wrong):
        return

    def listing(title: str, items: list[str]) -> str:
        more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:12]) + more

    arch = getattr(model, "arch", type(model).__name__)
    raise CheckpointError(
        f"{source} does not fit {arch} {getattr(model, 'arch_kwargs', {})}:"
        + (listing("missing keys", missing) if missing else "")
        + (listing("unexpected keys", unexpected) if unexpected else "")
        + (listing("wrong shapes", wrong) if wrong else "")
    )


def load_backbone(
    name_or_path: str | os.PathLike, arch: str | None = None, **arch_kwargs
) -> FaceBackbone:
    """Build a backbone by registry name, or load one from a checkpoint (strictly), in eval mode.

    Args:
        name_or_path: registry name or checkpoint path (see the module docstring).
        arch: registry name to build; default: recorded in the file or inferred from its keys.
        arch_kwargs: constructor overrides (e.g. ``input_size=56``).
    """
    text = str(name_or_path)
    path = Path(text)
    if text in BACKBONES and not path.exists():
        return build_backbone(text, **arch_kwargs).eval()
    if not path.exists() and not Path(f"{text}-symbol.json").exists():
        raise CheckpointError(
            f"{text!r} is neither a registered backbone ({', '.join(sorted(BACKBONES))}) "
            "nor an existing file"
        )
    if text.endswith((".json", ".params")) or not path.exists() or path.is_dir():
        from facekd.models.mxnet_legacy import load_mxnet_legacy

        return load_mxnet_legacy(text)
    if path.suffix == ".onnx":  # InsightFace-family MobileFaceNets become real modules
        from facekd.models.onnx_import import import_onnx

        if arch is not None:
            raise CheckpointError(f"{path}: an ONNX graph's architecture is read from it")
        size = arch_kwargs.pop("input_size", None)
        model = import_onnx(path, **arch_kwargs)
        if size is not None and size != model.input_size:
            raise CheckpointError(
                f"{path} is a {model.input_size}px model; for {size}px initialise a student "
                "from it (student.init: kt, facekd.models.transfer.build_kt_student)"
            )
        return model
    obj = _read_torch_file(path)
    state_dict, recorded_arch, recorded_kwargs = _extract_state_dict(obj, path)
    state_dict = strip_prefixes(state_dict)
    if arch is None:
        arch, recorded_kwargs = (
            (recorded_arch, recorded_kwargs) if recorded_arch else infer_arch(state_dict)
        )
    elif arch != recorded_arch:
        recorded_kwargs = {}  # the user names the architecture: nothing recorded applies
    model = build_backbone(arch, **{**recorded_kwargs, **arch_kwargs})
    check_compatible(model, state_dict, str(path))
    model.load_state_dict(state_dict, strict=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("import_info"), Mapping):
        model.import_info = dict(obj["import_info"])
    return model.eval()
