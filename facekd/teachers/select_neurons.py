"""``run_selection``: teacher activations of a data set -> ``selection.json`` (METHODS §1.7).

Step 2 of the neuron-selection schedule (Luo, Zhu, Liu, Wang, Tang, AAAI 2016; facekd
schedule [OURS]): read the teacher's embeddings of a selection set (from a ``TeacherCache``
when given, otherwise by running the teacher once under ``torch.no_grad``), attach attribute
labels (``attributes`` mode) or identity labels (``identity_fallback``), run
``select_neurons`` and save the result with its statistics and provenance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facekd.selection.attributes import read_attribute_file
from facekd.selection.core import NeuronSelection, select_neurons
from facekd.teachers.cache import TeacherCache, fingerprint_dataset, fingerprint_module


def dataset_image_keys(dataset) -> list[str]:
    """Image keys of a data set, to align an attribute file with its items.

    ``dataset.image_keys()`` when defined; for ``ImageFolderDataset``-like sets (``samples``
    of ``(path, label)`` and ``root``) the POSIX path relative to ``root`` (an attribute file
    keyed by file name, like CelebA's, matches on the file name).
    """
    if hasattr(dataset, "image_keys"):
        return [str(k) for k in dataset.image_keys()]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise ValueError(
            f"cannot tell the image names of a {type(dataset).__name__}; pass image_keys="
        )
    root = getattr(dataset, "root", None)
    keys = []
    for path, *_ in samples:
        path = Path(path)
        keys.append(path.relative_to(root).as_posix() if root is not None else path.name)
    return keys


def extract_embeddings(teacher: nn.Module, dataset, indices=None, **kwargs) -> np.ndarray:
    """The teacher's embeddings of the selection set (``evaluation.embed.dataset_embeddings``)."""
    from facekd.evaluation.embed import dataset_embeddings

    return dataset_embeddings(teacher, dataset, indices, **kwargs)


def run_selection(
    teacher: nn.Module | None,
    dataset,
    out_json: str | os.PathLike,
    *,
    teacher_cache: TeacherCache | str | os.PathLike | None = None,
    attribute_file: str | os.PathLike | None = None,
    image_keys: Sequence[str] | None = None,
    identity_labels: Sequence[int] | None = None,
    max_images: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    **select_kwargs,
) -> NeuronSelection:
    """Select neurons of ``teacher`` on ``dataset`` and write ``out_json``; returns the result.

    Args:
        teacher: backbone with ``forward_features``; may be ``None`` with ``teacher_cache``.
        dataset: items per ``facekd.data.batching`` (the teacher sees ``teacher_view``).
        out_json: where the ``NeuronSelection`` is saved (``NeuronSelection.to_json``).
        teacher_cache: a ``TeacherCache`` (or its folder) of this data set: no teacher run.
        attribute_file: CelebA ``list_attr_celeba.txt`` or ``image,attr,...`` CSV ->
            ``attributes`` mode (rows aligned by ``image_keys``, default
            ``dataset_image_keys(dataset)``).
        identity_labels: ``(N,)`` ids for ``identity_fallback`` (default ``dataset.labels``).
        max_images: use a seeded random subset of this many images (default: all).
        select_kwargs: forwarded to ``select_neurons`` (``k``, ``mode``, ``mu``, ``seed`` ...).
    """
    n = len(dataset)
    idx = np.arange(n)
    if max_images is not None and max_images < n:
        rng = np.random.default_rng(select_kwargs.get("seed", 0))
        idx = np.sort(rng.choice(n, size=max_images, replace=False))
    meta: dict = {"dataset": fingerprint_dataset(dataset), "num_images": int(idx.size)}
    if teacher_cache is not None:
        cache = teacher_cache
        if not isinstance(cache, TeacherCache):
            cache = TeacherCache(cache)
        if len(cache) != n:
            raise ValueError(f"teacher cache has {len(cache)} entries, data set {n} items")
        acts = np.asarray(cache.arrays["embedding"][idx], dtype=np.float32)
        meta.update(teacher=cache.meta["key"]["teacher"], teacher_cache=str(cache.root))
    elif teacher is not None:
        acts = extract_embeddings(
            teacher, dataset, idx.tolist(), batch_size=batch_size, num_workers=num_workers,
            device=device,
        )  # fmt: skip
        meta["teacher"] = fingerprint_module(teacher)
    else:
        raise ValueError("run_selection needs a teacher or a teacher_cache")

    mode = select_kwargs.pop("mode", None)
    if mode is None:
        mode = "attributes" if attribute_file is not None else "identity_fallback"
    if mode == "attributes":
        if attribute_file is None:
            raise ValueError("mode='attributes' needs attribute_file")
        keys = list(image_keys) if image_keys is not None else dataset_image_keys(dataset)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} image keys for a data set of {n} items")
        names, labels, _ = read_attribute_file(attribute_file, [keys[i] for i in idx])
        select_kwargs.update(attributes=labels, attribute_names=names)
        meta["attribute_file"] = os.fspath(attribute_file)
    else:
        ids = identity_labels if identity_labels is not None else getattr(dataset, "labels", None)
        if ids is None:
            raise ValueError("identity_fallback needs identity_labels or dataset.labels")
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise ValueError(f"identity labels have shape {ids.shape}, expected ({n},)")
        select_kwargs["identity_labels"] = ids[idx]
    selection = select_neurons(acts, mode=mode, **select_kwargs)
    selection.meta = meta
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    selection.to_json(out_json)
    return selection
