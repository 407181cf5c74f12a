"""A teacher's identity: what the teacher cache, neuron selection and ensembles key on."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def fingerprint_module(module: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every parameter and buffer, or the
    module's own ``fingerprint()`` (ONNX teachers and ensembles hold no torch weights)."""
    if callable(getattr(module, "fingerprint", None)):
        return str(module.fingerprint())
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
