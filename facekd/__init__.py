"""facekd: knowledge distillation for face recognition (iResNet teachers -> MobileFaceNet students).

Public API only; see README.md for the workflows.
"""

from facekd.deploy.api import FaceModel, load
from facekd.deploy.export import ExportError, export_onnx
from facekd.engine.distiller import Distiller
from facekd.engine.trainer import Trainer
from facekd.evaluation import compare, evaluate_ijb, extract_embeddings, verify
from facekd.losses import LOSSES, build_loss
from facekd.models import BACKBONES, HEADS, build_backbone, build_head
from facekd.models.checkpoints import CheckpointError, load_backbone, save_backbone
from facekd.models.onnx_import import OnnxImportError, import_onnx
from facekd.types import Batch, ModelOutput

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "HEADS",
    "LOSSES",
    "Batch",
    "CheckpointError",
    "Distiller",
    "ExportError",
    "FaceModel",
    "ModelOutput",
    "OnnxImportError",
    "Trainer",
    "build_backbone",
    "build_head",
    "build_loss",
    "compare",
    "evaluate_ijb",
    "export_onnx",
    "extract_embeddings",
    "import_onnx",
    "load",
    "load_backbone",
    "save_backbone",
    "verify",
]
