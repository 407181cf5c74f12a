"""Evaluation: one embedding path, verification / identification / IJB metrics, model cost,
reports."""

from facekd.evaluation.embed import extract_embeddings
from facekd.evaluation.identification import cmc, threshold_at_rate, tpir_at_fpir
from facekd.evaluation.ijb import IJBResult, evaluate_ijb
from facekd.evaluation.ijb_1n import evaluate_ijb_1n
from facekd.evaluation.profile import (
    PRECISIONS,
    ComparisonReport,
    Latency,
    ModelProfile,
    TimingBudget,
    compare,
    count_flops,
    count_parameters,
    profile_model,
)
from facekd.evaluation.verification import VerificationResult, verify

__all__ = [
    "PRECISIONS",
    "ComparisonReport",
    "IJBResult",
    "Latency",
    "ModelProfile",
    "TimingBudget",
    "VerificationResult",
    "cmc",
    "compare",
    "count_flops",
    "count_parameters",
    "evaluate_ijb",
    "evaluate_ijb_1n",
    "extract_embeddings",
    "profile_model",
    "threshold_at_rate",
    "tpir_at_fpir",
    "verify",
]
