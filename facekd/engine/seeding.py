"""Reproducibility for the Trainer: one seed gives one start and one batch order.

``seed_everything`` / ``seeded`` set Python, numpy and torch generators; ``_rng_state`` /
``_set_rng_state`` save and restore them in checkpoints; ``SeededItems`` gives every data-set
item its own seed from ``(seed, epoch, index)`` so augmentation does not depend on which
worker loads it; ``_EpochTagged`` tags the sampler's indices with the epoch (and skips the
batches a resumed run already consumed).
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block under torch / numpy / random seeded with ``seed``, leaving the caller's
    generators as they were: what is built inside does not depend on what was built before
    (the experiment builder builds the student and the teacher under separate seeds)."""
    saved = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])


def _rng_state() -> dict:
    # numpy's key array goes in as a tensor so checkpoints load with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SeededItems(torch.utils.data.Dataset):
    """Wraps a data set so item ``(epoch, i)`` is produced under RNGs seeded by (seed, epoch, i).

    Random augmentation then depends only on *which* item is drawn, not on worker processes or
    on when the iterator was created, which is what makes mid-epoch resume exact.
    """

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        item_seed = (self.seed * 1_000_003 + epoch * 7_919 + i) % 2**31
        saved = random.getstate(), np.random.get_state()  # leave the caller's RNGs as they were
        random.seed(item_seed)
        np.random.seed(item_seed)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                return self.dataset[i]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])


class _EpochTagged:
    """Batch sampler adaptor: yields ``[(epoch, i), ...]`` for ``SeededItems``.

    The Trainer, not the sampler, counts the batches it has consumed (DataLoader workers
    prefetch, so a sampler's own position runs ahead); on resume the first ``skip`` batches of
    the epoch are drawn and dropped, which only needs the sampler to be deterministic per epoch.
    """

    def __init__(self, batch_sampler) -> None:
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.skip

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for j, batch in enumerate(self.batch_sampler):
            if j >= skip:
                yield [(self.epoch, int(i)) for i in batch]
