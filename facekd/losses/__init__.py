"""Distillation losses, built by name from a plain-dict registry (one file per family)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from facekd.losses.attention import AttentionTransfer
from facekd.losses.base import TEACHER_FIELDS, DistillLoss
from facekd.losses.embedding import EmbeddingMimic
from facekd.losses.fitnets import FitNets
from facekd.losses.fsp import FSP
from facekd.losses.hinton import HintonKD
from facekd.losses.neuron_selection import NeuronSelectionLoss
from facekd.losses.pooling_transfer import PoolingTransfer
from facekd.losses.relational import RKD, DarkRank
from facekd.losses.triplet import TripletDistillation

LOSSES: dict[str, Callable[..., DistillLoss]] = {
    "embedding": EmbeddingMimic,
    "neuron_selection": NeuronSelectionLoss,
    "pooling_transfer": PoolingTransfer,
    "triplet_distillation": TripletDistillation,
    "triplet": partial(TripletDistillation, adaptive=False),  # plain fixed-margin baseline
    "hinton": HintonKD,
    "fitnets": FitNets,
    "attention": AttentionTransfer,
    "fsp": FSP,
    "darkrank": DarkRank,
    "rkd": RKD,
}


def build_loss(name: str, **kwargs) -> DistillLoss:
    """Build a registered distillation loss; unknown names list the valid ones."""
    if name not in LOSSES:
        raise KeyError(
            f"unknown distillation loss {name!r}; valid names: {', '.join(sorted(LOSSES))}"
        )
    try:
        return LOSSES[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"build_loss({name!r}): {err}") from None


__all__ = ["LOSSES", "TEACHER_FIELDS", "DistillLoss", "build_loss"]
