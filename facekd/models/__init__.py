"""Face backbones and margin heads, built by name from plain-dict registries."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from facekd.models.base import FaceBackbone
from facekd.models.heads import HEADS, ArcFace, CosFace, HeadOutput, SoftmaxHead, build_head
from facekd.models.iresnet import IRESNET_LAYERS, IResNet
from facekd.models.mobilefacenet import MobileFaceNet

#: name -> constructor with the defaults that make the name mean what it says
BACKBONES: dict[str, Callable[..., FaceBackbone]] = {
    **{name: partial(IResNet, layers=layers) for name, layers in IRESNET_LAYERS.items()},
    # arcface_torch get_mbf: scale 2, 512-d
    "mbf": partial(MobileFaceNet, num_features=512, scale=2),
    # Chen et al. 2018: scale 1, 128-d (= InsightFace's legacy MXNet "y1" MobileFaceNet)
    "mobilefacenet": partial(MobileFaceNet, num_features=128, scale=1),
}


def build_backbone(name: str, **kwargs) -> FaceBackbone:
    """Build a registered backbone; ``kwargs`` override the registry defaults.

    The model remembers ``arch`` and ``arch_kwargs`` so a checkpoint can rebuild it.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    try:
        model = BACKBONES[name](**kwargs)
    except TypeError as err:  # an unknown keyword: say which model refused it
        raise TypeError(f"build_backbone({name!r}): {err}") from None
    model.arch = name
    model.arch_kwargs = dict(kwargs)
    return model


__all__ = [
    "BACKBONES",
    "HEADS",
    "ArcFace",
    "CosFace",
    "FaceBackbone",
    "HeadOutput",
    "IResNet",
    "MobileFaceNet",
    "SoftmaxHead",
    "build_backbone",
    "build_head",
]
