"""facekd: knowledge distillation for face recognition (iResNet teachers -> MobileFaceNet students).

Public API only; see README.md for the workflows.
"""

from facekd.models import BACKBONES, build_backbone
from facekd.models.checkpoints import CheckpointError, load_backbone, save_backbone
from facekd.types import Batch, ModelOutput

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "Batch",
    "CheckpointError",
    "ModelOutput",
    "build_backbone",
    "load_backbone",
    "save_backbone",
]
