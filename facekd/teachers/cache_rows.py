"""Teacher-cache rows read by the data loader's workers, not by the training thread.

``WithTeacherRows(cache)`` is a DataLoader ``collate_fn``: it stacks the items as
``facekd.data.batching.collate_batch`` does, then attaches ``cache.lookup(index, flipped)`` as
``Batch.teacher``. With ``num_workers > 0`` the memory-mapped reads (one random row per face
and view: page faults on a cold cache) overlap the training step instead of stalling it; the
``Distiller`` uses ``Batch.teacher`` when present and reads the cache itself otherwise, so both
paths give the same numbers. Under a ``spawn`` start method the cache is pickled as its folder
and reopened in the worker (``TeacherCache.__getstate__``), never copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from facekd.data.batching import collate_batch
from facekd.types import Batch


class WithTeacherRows:
    """``collate_fn``: ``collate_batch(items)`` + the cache's rows of those faces (``(B, ...)``,
    float32, CPU) in ``Batch.teacher``; mirrored faces get the mirrored view's rows."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def __call__(self, items: Sequence[dict]) -> Batch:
        batch = collate_batch(items)
        return replace(batch, teacher=self.cache.lookup(batch.index, flipped=batch.flipped))
