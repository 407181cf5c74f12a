"""The learning-rate schedule and the optimizer the Trainer builds from ``TrainSettings``
(the knobs themselves are schema: ``facekd.config.TrainSettings``). Defaults follow
insightface arcface_torch (SGD, lr 0.1, momentum 0.9, weight decay 5e-4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from facekd.config import TrainSettings  # noqa: F401 - the schema lives with the config


def lr_lambda(settings: TrainSettings) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step ``t``: linear warm-up, then the decay."""
    total, warm, floor = settings.steps, settings.warmup_steps, settings.min_lr_ratio

    def f(t: int) -> float:
        if warm and t < warm:
            return (t + 1) / warm
        progress = min(1.0, (t - warm) / max(1, total - warm))
        if settings.schedule == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * progress))
        elif settings.schedule == "poly":
            decay = (1 - progress) ** 2
        else:
            decay = 1.0
        return floor + (1 - floor) * decay

    return f


def build_optimizer(params, settings: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
