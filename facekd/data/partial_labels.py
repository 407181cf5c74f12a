"""A transfer set with scarce labels: every photo, identity labels for a few people only.

Hinton, Vinyals and Dean ("Distilling the Knowledge in a Neural Network", 2015, §3) show the
case distillation is made for: the teacher learnt from plenty of labelled data, the student has
labels for little of it, and the teacher's outputs carry what the missing labels would have
taught (their MNIST student never saw a labelled 3 and still recognised most 3s from the soft
targets alone). Face distillation losses need no labels at all (embedding mimic, pooled
features, neuron selection), so every photo of a data set can be a transfer photo while only
some identities keep their label for the margin head.

``PartialLabels(dataset, labelled)`` keeps the label of identities ``0 .. labelled - 1`` and turns
every other label into ``-1`` (unlabelled: the margin head's cross-entropy skips the row, the
P x K sampler never draws it, triplet losses leave it out). ``num_classes`` stays the full
count so a student head has a column for every teacher class (Hinton's soft targets train the
columns no label reaches). The pixels, indices and ``manifest()`` are the wrapped set's, so a
teacher cache built on the full set serves every label budget.

Config: ``data.labelled_identities: N`` (``null``: every label kept).
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class PartialLabels(Dataset):
    """``dataset`` with the labels of identities ``>= labelled`` replaced by ``-1``."""

    def __init__(self, dataset, labelled: int) -> None:
        labels = getattr(dataset, "labels", None)
        if labels is None:
            raise TypeError(f"{type(dataset).__name__} has no .labels to hide some of")
        if not isinstance(labelled, int) or not 1 <= labelled <= dataset.num_classes:
            raise ValueError(
                f"labelled_identities must be an int in [1, {dataset.num_classes}] (the data "
                f"set's identities), got {labelled!r}"
            )
        self.dataset, self.labelled = dataset, labelled
        base = np.asarray(labels, dtype=np.int64)
        self.labels = np.where(base < labelled, base, -1)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def labelled_images(self) -> int:
        return int((self.labels >= 0).sum())

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        item["label"] = int(self.labels[index])
        return item

    def manifest(self) -> dict:
        # teacher outputs do not depend on labels: a cache of the full set stays valid
        return self.dataset.manifest()

    def __getattr__(self, name: str):  # e.g. transform, size, render of the wrapped set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
