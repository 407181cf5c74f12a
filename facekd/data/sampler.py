"""Identity-balanced P x K batch sampling for triplet-style losses and distillation.

Every batch holds ``P`` distinct identities with ``K`` images each (Schroff et al., "FaceNet",
CVPR 2015; Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification",
2017): each anchor then has ``K - 1`` positives and ``(P - 1) K`` negatives in the batch.

Epoch construction (deterministic given ``seed`` and the epoch, the same on every rank):

1. Identities are drawn round after round: each round is a fresh permutation of the eligible
   identities cut into groups of ``P`` (a remainder of fewer than ``P`` is dropped for that
   round), so identities are sampled uniformly and never twice in one batch.
2. For each visit an identity gives ``K`` images: identities with ``n >= K`` images deal
   disjoint groups of ``K`` from successive permutations of their images (the ``n mod K``
   remainder of a permutation is dropped), so no image repeats inside a batch and all images
   are used evenly; identities with ``n < K`` give all ``n`` images plus ``K - n`` drawn
   uniformly **with replacement** (set ``min_images=K`` to skip such identities instead).
3. The epoch's global batch list is split round-robin: rank ``r`` of ``W`` takes batches
   ``r, r + W, ...``, so ranks get disjoint batches and the same number of them.

Labels < 0 (unlabelled) are never sampled. Use as ``DataLoader(ds, batch_sampler=sampler)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``p`` identities x ``k`` images, as lists of data-set indices.

    Args:
        labels: ``(N,)`` identity label of every data-set item (e.g. ``dataset.labels``).
        p, k: identities per batch and images per identity (batch size ``p * k``).
        num_batches: batches per epoch *on each rank*. Default: about one pass over the eligible
            images, ``max(1, n_images // (p * k * world_size))``.
        min_images: identities with fewer images are skipped (default 1: all identities,
            the small ones padded with replacement).
        seed: the base seed; the epoch's order depends only on ``(seed, epoch)``.
        rank, world_size: this process's share; default from ``torch.distributed`` when a
            process group is initialised, else 0 and 1.

    Resuming: ``state_dict()`` records ``epoch`` and ``batch`` (batches yielded so far this
    epoch); after ``load_state_dict`` the next iteration continues with exactly the next batch,
    also when the training loop calls ``set_epoch`` with the same epoch first. A DataLoader with
    workers pulls batches ahead of the training step, so a trainer that knows how many batches
    it consumed should pass them: ``set_epoch(epoch, start_batch=n)``.
    ``len(sampler)`` is the number of batches the next iteration yields (``num_batches`` minus
    a pending ``start_batch``); ``num_batches`` is the full epoch.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        p: int,
        k: int,
        *,
        num_batches: int | None = None,
        min_images: int = 1,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if p < 1 or k < 1 or min_images < 1:
            raise ValueError(f"p, k and min_images must be >= 1, got {p}, {k}, {min_images}")
        initialised = dist.is_available() and dist.is_initialized()
        if world_size is None:
            world_size = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        self.rank, self.world_size = int(rank), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.p, self.k, self.seed, self.min_images = p, k, seed, min_images

        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        order = np.argsort(labels, kind="stable")
        ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        keep = (ids >= 0) & (counts >= min_images)
        # members[i]: data-set indices of the i-th eligible identity, ascending
        self._members = [
            order[s : s + c] for s, c, ok in zip(starts, counts, keep, strict=True) if ok
        ]
        self.identities = ids[keep]
        if len(self._members) < p:
            raise ValueError(
                f"P x K sampling needs at least p={p} identities with >= {min_images} images; "
                f"only {len(self._members)} of {int((ids >= 0).sum())} labelled identities qualify"
            )
        n_images = int(counts[keep].sum())
        if num_batches is None:
            num_batches = max(1, n_images // (p * k * self.world_size))
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.num_batches = num_batches
        self.epoch = 0
        self._start = 0  # where the next iteration begins (a resume position)
        self._position = 0  # batches of the current epoch yielded or skipped so far

    def set_epoch(self, epoch: int, start_batch: int | None = None) -> None:
        """Select the epoch; ``start_batch`` skips that many of this rank's batches.

        ``start_batch=None`` keeps a pending resume position of the same epoch (from
        ``load_state_dict``) and otherwise starts the epoch at its first batch.
        """
        if start_batch is None:
            start_batch = self._start if epoch == self.epoch else 0
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} is not in [0, {self.num_batches}]")
        self.epoch, self._start, self._position = int(epoch), int(start_batch), int(start_batch)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch": self._position,
            **{name: getattr(self, name) for name in _FIXED},
        }

    def load_state_dict(self, state: dict) -> None:
        changed = [n for n in _FIXED if n in state and state[n] != getattr(self, n)]
        if changed:
            raise ValueError(
                "cannot resume exactly: the sampler was built with different "
                + ", ".join(f"{n} ({state[n]} saved, {getattr(self, n)} now)" for n in changed)
            )
        self.set_epoch(state["epoch"], start_batch=state["batch"])

    def __len__(self) -> int:
        return self.num_batches - self._start

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0  # a resume position applies to one iteration
        batches = self.epoch_batches(self.epoch)
        self._position = start
        for i in range(start, self.num_batches):
            self._position = i + 1
            yield batches[i].tolist()

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """``(num_batches, p * k)`` data-set indices of this rank's batches in ``epoch``."""
        p, k, n_ids = self.p, self.k, len(self._members)
        total = self.num_batches * self.world_size
        rng = np.random.default_rng([self.seed, epoch])
        per_round = n_ids // p
        rounds = -(-total // per_round)
        groups = [rng.permutation(n_ids)[: per_round * p] for _ in range(rounds)]
        who = np.concatenate(groups).reshape(-1, p)[:total].ravel()  # (total * p,) identities

        out = np.empty((total * p, k), dtype=np.int64)  # one row per identity visit
        visits = np.argsort(who, kind="stable")  # rows grouped by identity, in visit order
        bounds = np.flatnonzero(np.diff(who[visits])) + 1
        for rows in np.split(visits, bounds):
            out[rows] = self._draw(rng, self._members[who[rows[0]]], len(rows))
        out = out.reshape(total, p * k)
        return out[self.rank :: self.world_size]

    def _draw(self, rng: np.random.Generator, members: np.ndarray, visits: int) -> np.ndarray:
        """``(visits, k)`` image indices of one identity (see the module docstring, step 2)."""
        n, k = len(members), self.k
        if n >= k:
            per_perm = n // k
            perms = [rng.permutation(n)[: per_perm * k] for _ in range(-(-visits // per_perm))]
            picks = np.concatenate(perms).reshape(-1, k)[:visits]
        else:
            everyone = rng.permuted(np.tile(np.arange(n), (visits, 1)), axis=1)
            picks = np.concatenate([everyone, rng.integers(0, n, (visits, k - n))], axis=1)
        return members[picks]


_FIXED = ("seed", "p", "k", "min_images", "world_size", "num_batches")


class ShuffledBatchSampler(Sampler[list[int]]):
    """Plain shuffled mini-batches (identity-classification training), DDP-aware.

    Each epoch is a permutation of all indices drawn from ``(seed, epoch)`` (identical on every
    rank), cut into global batches of ``batch_size * world_size``; rank ``r`` takes the ``r``-th
    slice of each, so ranks are disjoint and equally long. A final incomplete global batch is
    dropped (BatchNorm and margin heads dislike tiny batches).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        self.world_size = int(
            world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        )
        self.rank = int(rank if rank is not None else (dist.get_rank() if initialised else 0))
        if batch_size < 1 or num_items < batch_size * self.world_size:
            raise ValueError(
                f"{num_items} items cannot fill one global batch of {batch_size} x "
                f"{self.world_size} rank(s)"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        step = self.batch_size * self.world_size
        for b in range(len(self)):
            start = b * step + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
