"""The dev split (facekd.data.dev_split): held-out identities as an LFW-style protocol."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from facekd.data.dev_split import DevSplit, choose_identities, hash_order
from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]


def _split(n_tight=30, n_loose=10, per=(6, 9)):
    photos = {}
    for k in range(n_tight):
        photos[f"t{k}"] = [f"tight/t{k}/{j}.jpg" for j in range(per[0])]
    for k in range(n_loose):
        photos[f"l{k}"] = [f"loose/l{k}/{j}.jpg" for j in range(per[1])]
    sources = [
        choose_identities([f"t{k}" for k in range(n_tight)], 20),
        choose_identities([f"l{k}" for k in range(n_loose)], 10),
    ]
    return DevSplit(photos, sources, n_folds=5, matched=20, mismatched=20)


def test_dev_folds_are_identity_disjoint_and_balanced():
    split = _split()
    ps = split.pairset()
    assert len(ps) == 5 * 40 and ps.issame.sum() == 100
    assert np.bincount(ps.folds).tolist() == [40] * 5
    owner = np.array(ps.identities)
    fold_people = [set(owner[ps.pairs[ps.folds == f].ravel()]) for f in range(5)]
    for a in range(5):
        for b in range(a + 1, 5):
            assert not fold_people[a] & fold_people[b]  # no person in two folds
    # every fold gets 4 tight and 2 loose identities (round-robin per source)
    assert [sum(i.startswith("l") for i in f) for f in split.folds()] == [2] * 5
    # labels agree with identities (PairSet checks it) and pairs are distinct
    assert len({tuple(p) for p in ps.pairs.tolist()}) == len(ps)


def test_dev_split_is_deterministic_and_independent_of_listing_order():
    a = _split().pairset()
    names = [f"t{k}" for k in range(30)]
    assert choose_identities(names, 20) == choose_identities(names[::-1], 20)
    b = _split().pairset()
    assert a.images == b.images and (a.pairs == b.pairs).all()
    names = [f"n{k}" for k in range(50)]
    assert hash_order(names, salt="a") != hash_order(names, salt="b")  # the salt decides


def test_dev_split_refuses_a_fold_too_small():
    split = _split()
    split.matched = 10_000
    with pytest.raises(ValueError, match="mated / .* non-mated pairs available"):
        split.pairset()
    with pytest.raises(ValueError, match="asked for 5 dev identities"):
        choose_identities(["a", "b"], 5)


def test_committed_dev_list_is_the_split_of_the_real_sets():
    """benchmarks/sets/dev_identities.txt is what data_prep/dev_split.py chooses."""
    tight = shared_path("celeba-tight-1756")
    loose = shared_path("celeba-299")
    sys.path.insert(0, str(ROOT / "data_prep"))
    from dev_split import make_split

    from facekd.data.folder import load_identity_list

    split = make_split(tight, loose)
    committed = load_identity_list(ROOT / "benchmarks" / "sets" / "dev_identities.txt")
    assert sorted(committed) == sorted(split.identities()) and len(committed) == 200
    ps = split.pairset()
    assert len(ps) == 6000 and ps.n_folds == 10 and len(set(ps.identities)) == 200
