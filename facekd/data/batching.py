"""Turning data-set items into a ``Batch``.

Every facekd data set returns items as dicts with
``image`` ``(3, H, W)`` float in [-1, 1], ``label`` int (-1 = unlabelled), ``index`` int (the
item's position in its data set, the teacher-cache key) and optionally ``teacher_image``
``(3, H_t, W_t)`` (e.g. the high-resolution view for high-to-low resolution transfer) and
``flipped`` bool (the face was mirrored by augmentation; see ``Batch.flipped``).
``collate_batch`` is the ``collate_fn`` for ``torch.utils.data.DataLoader``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from facekd.types import Batch


def collate_batch(items: Sequence[dict]) -> Batch:
    """Stack items into a ``Batch`` (teacher images only when every item has one)."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    teacher = None
    if all("teacher_image" in it for it in items):
        teacher = torch.stack([it["teacher_image"] for it in items])
    elif any("teacher_image" in it for it in items):
        raise ValueError("some items have a teacher_image and others not")
    flipped = None
    if all("flipped" in it for it in items):
        flipped = torch.tensor([bool(it["flipped"]) for it in items], dtype=torch.bool)
    return Batch(
        images=torch.stack([it["image"] for it in items]),
        labels=torch.tensor([int(it["label"]) for it in items], dtype=torch.long),
        teacher_images=teacher,
        index=torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        flipped=flipped,
    )
