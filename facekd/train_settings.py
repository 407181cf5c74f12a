"""Training settings (the Trainer's knobs), the learning-rate schedule and the optimizer.

Kept apart from the Trainer so configuration code can import the schema without the loop.
Defaults follow insightface arcface_torch (SGD, lr 0.1, momentum 0.9, weight decay 5e-4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class TrainSettings:
    """How to train (the Trainer's knobs; see ``facekd.config.TrainConfig`` for the YAML side)."""

    steps: int = 1000
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    accumulate: int = 1
    clip_grad_norm: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 0
    seed: int = 0
    progress: bool = True


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
