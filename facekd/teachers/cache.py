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
      <field>.flip.npy   the same on the horizontally mirrored face (``flip=True``)
      dataset.json       the data set's manifest (``facekd.data.manifest``)

Mirrored views: the standard face augmentation flips half of the training faces. The teacher's
output on a mirrored face is not the mirror of its output (stage maps of strided convolutions
are not flip-equivariant, embeddings are not flip-invariant), so with ``flip=True`` the cache
runs the teacher on both views, as insightface-style pipelines with precomputed teacher
embeddings do, and ``lookup(index, flipped)`` returns, row by row, the view the student saw.

``meta.json`` is written last, after every array is complete, so a half-built cache is never
mistaken for a finished one; building resumes from the last completed chunk. A cache opened
with a key that differs from the one it was built with (other teacher weights, other data,
other preprocessing) is refused with a message naming what differs, for the data set down to
the files that were added, removed or rewritten.

Under ``torchrun`` rank 0 builds the cache while the other ranks wait; rank 0 then tells every
rank whether it succeeded (with its error message if not, so no rank hangs), and all ranks open
the finished cache read-only: each image passes the teacher once, whatever the world size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facekd.data.batching import collate_batch
from facekd.data.manifest import dataset_manifest, manifest_diff, manifest_fingerprint
from facekd.data.robust import ReplaceUnreadable
from facekd.runtime import dist, tune_cpu, worker_init
from facekd.teachers.fingerprint import fingerprint_module  # noqa: F401 - re-exported
from facekd.types import ModelOutput

FORMAT = "facekd.teacher_cache/2"  # stored in caches: kept when the module moved
FLIP_SUFFIX = ".flip"  # arrays of the mirrored view: embedding.flip.npy, stage3.flip.npy ...


class CacheMismatchError(ValueError):
    """A cache that was built for another teacher, data set or preprocessing."""


def fingerprint_dataset(dataset) -> str:
    """Data set identity: sha256 of its manifest (``facekd.data.manifest``: paths, sizes and
    mtimes of the files, RecordIO index and headers, synthetic parameters)."""
    return manifest_fingerprint(dataset_manifest(dataset))


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


def _mismatch_message(root: Path, stored: CacheKey, key: CacheKey, manifest: dict | None) -> str:
    differs = key.diff(stored)
    details = []
    for what in differs:
        if what == "dataset" and manifest is not None and (root / "dataset.json").exists():
            old = json.loads((root / "dataset.json").read_text())
            changes = manifest_diff(old, manifest) or ["(manifests equal; the hash rule changed)"]
            details.append("data set changed: " + "; ".join(changes))
        elif what == "preprocessing":
            details.append(f"preprocessing was {stored.preprocessing!r}, now {key.preprocessing!r}")
        else:
            a, b = getattr(stored, what)[:16], getattr(key, what)[:16]
            details.append(f"{what} fingerprint was {a}..., now {b}...")
    return (
        f"teacher cache {root} was built for another {' and '.join(differs)} ("
        + "; ".join(details)
        + "); rebuild it (delete the folder, or facekd cache-teacher) or point the run at the "
        "matching cache"
    )


class TeacherCache:
    """Read side: ``lookup(index, flipped) -> ModelOutput`` from memory-mapped arrays.

    ``manifest`` (optional) is the current data set's manifest, used only to say what changed
    when ``key`` does not match.
    """

    def __init__(
        self, root: str | os.PathLike, key: CacheKey | None = None, manifest: dict | None = None
    ) -> None:
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
        if key is not None and key.diff(stored):
            raise CacheMismatchError(_mismatch_message(self.root, stored, key, manifest))
        self.fields = tuple(self.meta["fields"])
        self.has_flip = bool(self.meta.get("flip", False))
        self.arrays = self._open_arrays()
        self.count = int(self.meta["count"])

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        # pickled (DataLoader workers under spawn) as its folder: the memmaps are reopened,
        # never serialised with their data
        return {k: v for k, v in self.__dict__.items() if k != "arrays"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.arrays = self._open_arrays()

    def _open_arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays, memory-mapped read-only."""
        return {
            name: np.load(self.root / f"{name}.npy", mmap_mode="r") for name in self.meta["arrays"]
        }

    def lookup(
        self,
        index: torch.Tensor,
        device: torch.device | str = "cpu",
        flipped: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Teacher outputs of data-set items ``index (B,)``; where ``flipped (B,)`` is True,
        those of the mirrored face (needs a cache built with ``flip=True``)."""
        idx = index.detach().cpu().numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"teacher cache has {self.count} entries, asked for index {idx.max()}")
        mirrored = None
        if flipped is not None and bool(flipped.any()):
            if not self.has_flip:
                raise ValueError(
                    f"the batch holds mirrored faces but the teacher cache {self.root} has no "
                    "mirrored view; rebuild it with flip=True (facekd does so when the training "
                    "augmentation flips) or set data.augment.flip_p=0"
                )
            mirrored = flipped.detach().cpu().numpy().astype(bool)

        def get(name: str) -> torch.Tensor:
            rows = np.ascontiguousarray(self.arrays[name][idx])
            if mirrored is not None:
                rows[mirrored] = self.arrays[name + FLIP_SUFFIX][idx[mirrored]]
            return torch.from_numpy(rows).to(device).float()

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
    flip: bool = False,
) -> TeacherCache:
    """Run ``teacher`` once over ``dataset`` (items per facekd.data.batching) and store outputs.

    ``preprocessing`` describes the teacher's input (size, normalisation, crop) and is part of
    the key. Items' ``teacher_image`` is used when present (the high-resolution view); the data
    set must give the *clean* view (no random augmentation). ``fields``: default ``embedding``
    plus whichever of ``pooled`` / ``logits`` the teacher gives
    (``facekd.teachers.teacher_provides``); a field asked for explicitly must exist. ``flip``:
    also store every output on the mirrored face (module docstring). Unreadable images are
    reported and replaced as in training (``facekd.data.robust``), so their rows are never used.

    Under torchrun only rank 0 runs the teacher; the other ranks wait and open the result.
    """
    root = Path(root)
    manifest = dataset_manifest(dataset)
    key = CacheKey(fingerprint_module(teacher), manifest_fingerprint(manifest), preprocessing)
    if dist.world_size() > 1:
        status = [None]
        if dist.is_main():
            try:
                _build(teacher, dataset, root, key, manifest, fields, stages, dtype, batch_size,
                       num_workers, device, progress, flip)  # fmt: skip
                status = ["ok"]
            except Exception as err:  # every rank must hear of it, or the others wait forever
                status = [f"{type(err).__name__}: {err}"]
                torch.distributed.broadcast_object_list(status, src=0)
                raise
        torch.distributed.broadcast_object_list(status, src=0)
        if status[0] != "ok":
            raise RuntimeError(f"rank 0 failed to build the teacher cache {root}: {status[0]}")
        return _open(root, key, manifest, flip)
    return _build(teacher, dataset, root, key, manifest, fields, stages, dtype, batch_size,
                  num_workers, device, progress, flip)  # fmt: skip


def _open(root: Path, key: CacheKey, manifest: dict, flip: bool) -> TeacherCache:
    cache = TeacherCache(root, key, manifest)  # finished and matching, or refused with a reason
    if flip and not cache.has_flip:
        raise CacheMismatchError(
            f"teacher cache {root} holds no mirrored view, but the training augmentation flips "
            "faces; delete it so facekd rebuilds it with both views, or set "
            "data.augment.flip_p=0"
        )
    return cache


def _layout(out: ModelOutput, fields, stages) -> dict:
    """Array shapes of one teacher output; the stages asked for, checked and made positive."""
    if stages and not out.stages:
        raise ValueError(
            f"the teacher gives no stage maps (a black-box ONNX teacher or an ensemble), so "
            f"stages {list(stages)} cannot be cached; drop teacher.cache_stages"
        )
    stages = sorted({s % len(out.stages) for s in stages})  # -1 -> last stage
    shapes = {"embedding": list(out.embedding.shape[1:])}
    for name in ("pooled", "logits"):
        if name in fields:
            if getattr(out, name) is None:
                raise ValueError(f"cache field {name!r} asked for, but the teacher gives none")
            shapes[name] = list(getattr(out, name).shape[1:])
    for s in stages:
        shapes[f"stage{s}"] = list(out.stages[s].shape[1:])
    return {"shapes": shapes, "stages": stages, "num_stages": len(out.stages)}


def _arrays(root: Path, shapes: dict, views: dict, n: int, dtype: str, mode: str) -> dict:
    """The memory-mapped ``.npy`` arrays of every field and view (``w+`` new, ``r+`` resume)."""
    return {
        name + suffix: np.lib.format.open_memmap(
            root / f"{name}{suffix}.npy", mode=mode, dtype=dtype, shape=(n, *shape)
        )
        for name, shape in shapes.items()
        for suffix in views
    }


def _check_fields(teacher, fields: tuple[str, ...] | None) -> tuple[str, ...]:
    """The fields to cache: ``fields`` as given (checked), or by default ``embedding`` plus
    whichever of ``pooled`` / ``logits`` the teacher gives."""
    if fields is None:
        from facekd.teachers import teacher_provides

        provides = teacher_provides(teacher)
        fields = ("embedding", *(f for f in ("pooled", "logits") if f in provides))
    unknown = set(fields) - {"embedding", "pooled", "logits"}
    if unknown or "embedding" not in fields:
        raise ValueError(
            f"cache fields must include 'embedding' and may add 'pooled', 'logits'; got {fields}"
        )
    return fields


def _store(
    arrays: dict, out: ModelOutput, layout: dict, suffix: str, rows: np.ndarray, dtype: str
) -> None:
    """Write one view's teacher outputs into ``arrays`` at data-set ``rows``; refuses values
    that are not finite once cast to ``dtype``."""
    values = {"embedding": out.embedding}
    values.update({k: getattr(out, k) for k in ("pooled", "logits") if k in layout["shapes"]})
    values.update({f"stage{s}": out.stages[s] for s in layout["stages"]})
    for name, value in values.items():
        stored = value.float().cpu().numpy().astype(dtype)
        if not np.isfinite(stored).all():  # NaN teacher, or beyond float16's range
            peak = float(value.float().abs().nan_to_num(float("inf")).max())
            raise ValueError(
                f"teacher {name}{suffix} of items {rows.min()}..{rows.max()} is not "
                f"finite once stored as {dtype} (max |value| {peak:.4g}); check the "
                "teacher, or use dtype='float32'"
            )
        arrays[name + suffix][rows] = stored


def _write_meta(
    root: Path, key: CacheKey, fields, layout: dict, arrays: dict, flip: bool, n: int, dtype: str
) -> None:
    """``meta.json``, written last and atomically: its presence marks a finished cache."""
    meta = {
        "format": FORMAT,
        "key": key.__dict__,
        "fields": list(fields) + (["stages"] if layout["stages"] else []),
        "stages": layout["stages"],
        "num_stages": layout["num_stages"],
        "arrays": list(arrays),
        "flip": flip,
        "count": n,
        "dtype": dtype,
    }
    tmp = root / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, root / "meta.json")


@torch.no_grad()
def _build(
    teacher, dataset, root, key, manifest, fields, stages, dtype, batch_size, num_workers,
    device, progress, flip,
) -> TeacherCache:  # fmt: skip
    if (root / "meta.json").exists():
        return _open(root, key, manifest, flip)
    fields = _check_fields(teacher, fields)
    tune_cpu()
    root.mkdir(parents=True, exist_ok=True)
    teacher = teacher.to(device).eval()
    dataset = ReplaceUnreadable(dataset, report=root / "unreadable.txt")
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot cache teacher outputs of an empty data set")
    views = {"": False, FLIP_SUFFIX: True} if flip else {"": False}
    progress_path = root / "progress.json"
    start, arrays, layout = 0, None, None
    if progress_path.exists():
        saved = json.loads(progress_path.read_text())
        if saved.get("key") == key.__dict__ and saved.get("flip", False) == flip:
            start, layout = saved["done"], saved["layout"]
            arrays = _arrays(root, layout["shapes"], views, n, dtype, "r+")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(start, n)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_batch,
        worker_init_fn=worker_init,
    )
    pos = start
    for batch in tqdm(loader, desc="teacher cache", unit="batch", disable=not progress):
        batch = batch.to(device)
        rows = batch.index.cpu().numpy()  # a replaced unreadable item writes its own row
        for suffix, mirrored in views.items():  # each image passes the teacher once per view
            out = teacher.forward_features(
                batch.teacher_view.flip(-1) if mirrored else batch.teacher_view
            )
            if layout is None:  # shapes from the first real batch: no extra probe pass
                layout = _layout(out, fields, stages)
                arrays = _arrays(root, layout["shapes"], views, n, dtype, "w+")
            _store(arrays, out, layout, suffix, rows, dtype)
        pos += len(batch)
        for a in arrays.values():
            a.flush()
        state = {"key": key.__dict__, "flip": flip, "done": pos, "layout": layout}
        progress_path.write_text(json.dumps(state))
    (root / "dataset.json").write_text(json.dumps(manifest))
    _write_meta(root, key, fields, layout, arrays, flip, n, dtype)
    progress_path.unlink(missing_ok=True)
    return TeacherCache(root, key, manifest)
