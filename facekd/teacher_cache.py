"""Precomputed teacher outputs, memory-mapped on disk, so students train without the teacher.

Running an iResNet-100 teacher costs ~20x a MobileFaceNet student step; with deterministic
teacher inputs (no random augmentation of the teacher's view) its outputs are the same every
epoch, so facekd computes them once per data set:

    cache/
      meta.json          key (teacher weights, data set, preprocessing), fields, shapes, count
      embedding.npy      (N, D)          float16 by default
      pooled.npy         (N, C)
      logits.npy         (N, K)          only for teachers that give logits (ensembles)
      stage{i}.npy       (N, C_i, H_i, W_i)   only the stages asked for (large!)

``meta.json`` is written last, after every array is complete, so a half-built cache is never
mistaken for a finished one; building resumes from the last completed chunk. A cache opened
with a key that differs from the one it was built with (other teacher weights, other data,
other preprocessing) is refused with a message naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facekd.data.batching import collate_batch
from facekd.types import ModelOutput

FORMAT = "facekd.teacher_cache/1"


class CacheMismatchError(ValueError):
    """A cache that was built for another teacher, data set or preprocessing."""


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


def fingerprint_dataset(dataset) -> str:
    """Data set identity: its own ``fingerprint()`` when it has one, else length + labels."""
    if hasattr(dataset, "fingerprint"):
        return str(dataset.fingerprint())
    labels = np.asarray(getattr(dataset, "labels", []), dtype=np.int64)
    return hashlib.sha256(
        f"{type(dataset).__name__}:{len(dataset)}".encode() + labels.tobytes()
    ).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    teacher: str
    dataset: str
    preprocessing: str

    def diff(self, other: CacheKey) -> list[str]:
        return [
            f
            for f in ("teacher", "dataset", "preprocessing")
            if getattr(self, f) != getattr(other, f)
        ]


class TeacherCache:
    """Read side: ``lookup(index) -> ModelOutput`` from memory-mapped arrays."""

    def __init__(self, root: str | os.PathLike, key: CacheKey | None = None) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root} is not a finished teacher cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise CacheMismatchError(
                f"{meta_path}: unknown cache format {self.meta.get('format')!r}"
            )
        stored = CacheKey(**self.meta["key"])
        if key is not None and (differs := key.diff(stored)):
            raise CacheMismatchError(
                f"teacher cache {self.root} was built for another {' and '.join(differs)} "
                f"(stored {[getattr(stored, d)[:16] for d in differs]}, now "
                f"{[getattr(key, d)[:16] for d in differs]}); rebuild it (facekd cache-teacher) "
                "or point the run at the matching cache"
            )
        self.fields = tuple(self.meta["fields"])
        self.arrays = {
            name: np.load(self.root / f"{name}.npy", mmap_mode="r") for name in self.meta["arrays"]
        }
        self.count = int(self.meta["count"])

    def __len__(self) -> int:
        return self.count

    def lookup(self, index: torch.Tensor, device: torch.device | str = "cpu") -> ModelOutput:
        idx = index.detach().cpu().numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"teacher cache has {self.count} entries, asked for index {idx.max()}")

        def get(name: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(self.arrays[name][idx])).to(device).float()

        # full-length list so losses index stages as on a live teacher; uncached ones are None
        stages = [None] * int(self.meta.get("num_stages", 0))
        for s in self.meta.get("stages", []):
            stages[s] = get(f"stage{s}")
        return ModelOutput(
            embedding=get("embedding"),
            stages=stages,
            pooled=get("pooled") if "pooled" in self.arrays else None,
            logits=get("logits") if "logits" in self.arrays else None,
        )


@torch.no_grad()
def build_teacher_cache(
    teacher: nn.Module,
    dataset,
    root: str | os.PathLike,
    preprocessing: str,
    fields: tuple[str, ...] | None = None,
    stages: tuple[int, ...] = (),
    dtype: str = "float16",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TeacherCache:
    """Run ``teacher`` once over ``dataset`` (items per facekd.data.batching) and store outputs.

    ``preprocessing`` describes the teacher's input (size, normalisation, crop) and is part of
    the key. Items' ``teacher_image`` is used when present (the high-resolution view).
    ``fields``: default ``embedding`` plus whichever of ``pooled`` / ``logits`` the teacher
    gives (``facekd.teachers.teacher_provides``); a field asked for explicitly must exist.
    """
    if fields is None:
        from facekd.teachers import teacher_provides

        provides = teacher_provides(teacher)
        fields = ("embedding", *(f for f in ("pooled", "logits") if f in provides))
    root = Path(root)
    key = CacheKey(fingerprint_module(teacher), fingerprint_dataset(dataset), preprocessing)
    if (root / "meta.json").exists():
        return TeacherCache(root, key)  # finished and matching, or refused with a reason
    unknown = set(fields) - {"embedding", "pooled", "logits"}
    if unknown or "embedding" not in fields:
        raise ValueError(
            f"cache fields must include 'embedding' and may add 'pooled', 'logits'; got {fields}"
        )
    root.mkdir(parents=True, exist_ok=True)
    teacher = teacher.to(device).eval()
    n = len(dataset)
    probe = collate_batch([dataset[0]]).to(device)
    out = teacher.forward_features(probe.teacher_view)
    if stages and not out.stages:
        raise ValueError(
            f"the teacher gives no stage maps (a black-box ONNX teacher or an ensemble), so "
            f"stages {list(stages)} cannot be cached; drop teacher.cache_stages"
        )
    stages = tuple(sorted({s % len(out.stages) for s in stages}))  # -1 -> last stage
    shapes = {"embedding": out.embedding.shape[1:]}
    for name in ("pooled", "logits"):
        if name in fields:
            if getattr(out, name) is None:
                raise ValueError(f"cache field {name!r} asked for, but the teacher gives none")
            shapes[name] = getattr(out, name).shape[1:]
    for s in stages:
        shapes[f"stage{s}"] = out.stages[s].shape[1:]
    progress_path = root / "progress.json"
    start = 0
    if progress_path.exists():
        saved = json.loads(progress_path.read_text())
        start = saved["done"] if saved.get("key") == key.__dict__ else 0
    arrays = {
        name: np.lib.format.open_memmap(
            root / f"{name}.npy", mode="r+" if start else "w+", dtype=dtype, shape=(n, *shape)
        )
        for name, shape in shapes.items()
    }
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(start, n)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_batch,
    )
    pos = start
    for batch in tqdm(loader, desc="teacher cache", unit="batch", disable=not progress):
        out = teacher.forward_features(batch.to(device).teacher_view)
        b = len(batch)
        values = {"embedding": out.embedding}
        values.update({name: getattr(out, name) for name in ("pooled", "logits") if name in arrays})
        values.update({f"stage{s}": out.stages[s] for s in stages})
        for name, value in values.items():
            stored = value.float().cpu().numpy().astype(dtype)
            if not np.isfinite(stored).all():  # NaN teacher, or a value beyond float16's range
                peak = float(value.float().abs().nan_to_num(float("inf")).max())
                raise ValueError(
                    f"teacher {name} of items {pos}..{pos + b - 1} is not finite once stored as "
                    f"{dtype} (max |value| {peak:.4g}); check the teacher, or use dtype='float32'"
                )
            arrays[name][pos : pos + b] = stored
        pos += b
        for a in arrays.values():
            a.flush()
        progress_path.write_text(json.dumps({"key": key.__dict__, "done": pos}))
    meta = {
        "format": FORMAT,
        "key": key.__dict__,
        "fields": list(fields) + (["stages"] if stages else []),
        "stages": list(stages),
        "num_stages": len(out.stages),
        "arrays": list(arrays),
        "count": n,
        "dtype": dtype,
    }
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, root / "meta.json")
    progress_path.unlink(missing_ok=True)
    return TeacherCache(root, key)
