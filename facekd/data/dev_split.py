"""The dev split: held-out training-set identities as an LFW-style verification protocol.

Every choice (learning rate, optimiser, loss weights, steps, the student to ship) is made on a
split that is never reported; LFW / CFP / IJB are scored once per final row. facekd's dev split
is a fixed set of identities taken out of the training sets (``data.exclude_identities`` keeps
them out of every training run) and turned into a protocol shaped like LFW view 2:

* identities are chosen per source by the sha256 of ``salt + name`` (a stable, seed-free order
  that does not depend on the folder listing): ``k`` of each source;
* the chosen identities are dealt round-robin (in that order, per source) into ``n_folds``
  identity-disjoint folds, as LFW's folds are disjoint in people;
* per fold, ``matched`` pairs drawn without replacement from all mated pairs of the fold's
  faces and ``mismatched`` pairs from its non-mated pairs (``numpy.random.default_rng(seed +
  fold)``), matched first, like ``pairs.txt``.

``DevSplit.pairset()`` gives the raw-photo ``PairSet`` (with identities, so the all-pairs
TAR@FAR of ``facekd.evaluation.all_pairs`` comes with it) for ``facekd.data.packing.build_bin``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from facekd.data.verification import PairSet

SALT = "facekd-dev-v1"


def hash_order(names: Sequence[str], salt: str = SALT) -> list[str]:
    """``names`` sorted by sha256(``salt`` + name): a fixed pseudo-random order."""
    return sorted(names, key=lambda n: hashlib.sha256(f"{salt}{n}".encode()).hexdigest())


def choose_identities(names: Sequence[str], k: int, salt: str = SALT) -> list[str]:
    """The first ``k`` of ``hash_order(names)``; refuses ``k`` larger than the source."""
    if k > len(names):
        raise ValueError(f"asked for {k} dev identities from a source with {len(names)}")
    return hash_order(names, salt)[:k]


@dataclass
class DevSplit:
    """``photos``: identity name -> its photo paths; ``sources``: the chosen identities of each
    source, in hash order (they decide the folds)."""

    photos: Mapping[str, Sequence[str]]
    sources: Sequence[Sequence[str]]
    n_folds: int = 10
    matched: int = 300
    mismatched: int = 300
    seed: int = 0
    name: str = "dev"

    def folds(self) -> list[list[str]]:
        """Identity names of each fold (round-robin per source)."""
        out: list[list[str]] = [[] for _ in range(self.n_folds)]
        for chosen in self.sources:
            for k, ident in enumerate(chosen):
                out[k % self.n_folds].append(ident)
        return out

    def identities(self) -> list[str]:
        return [i for fold in self.folds() for i in fold]

    def pairset(self) -> PairSet:
        """The protocol over the raw photos (``images`` paths, ``identities`` per image)."""
        images: list[str] = []
        owner: list[str] = []
        pairs, issame, folds = [], [], []
        for f, fold_ids in enumerate(self.folds()):
            start = len(images)
            for ident in fold_ids:
                for p in sorted(self.photos[ident]):
                    images.append(str(p))
                    owner.append(ident)
            idx = range(start, len(images))
            mated = [(i, j) for i, j in itertools.combinations(idx, 2) if owner[i] == owner[j]]
            other = [(i, j) for i, j in itertools.combinations(idx, 2) if owner[i] != owner[j]]
            if len(mated) < self.matched or len(other) < self.mismatched:
                raise ValueError(
                    f"dev fold {f}: {len(mated)} mated / {len(other)} non-mated pairs available, "
                    f"{self.matched} / {self.mismatched} wanted; choose more identities"
                )
            rng = np.random.default_rng(self.seed + f)
            for pool, n, same in ((mated, self.matched, True), (other, self.mismatched, False)):
                for k in sorted(rng.choice(len(pool), size=n, replace=False)):
                    pairs.append(pool[k])
                    issame.append(same)
                    folds.append(f)
        return PairSet(images, np.array(pairs), issame, folds, self.name, owner)


def read_identity_tsv(root) -> dict[str, list[str]]:
    """``<root>/identities.tsv`` (header, then ``path<TAB>identity``) -> identity -> paths."""
    from pathlib import Path

    root = Path(root)
    out: dict[str, list[str]] = {}
    lines = (root / "identities.tsv").read_text().splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{root / 'identities.tsv'}:{lineno}: expected 'path<TAB>identity'")
        out.setdefault(fields[1], []).append(str(root / fields[0]))
    return out
