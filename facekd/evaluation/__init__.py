"""Evaluation: one embedding path, verification / IJB metrics, model cost, reports."""

from facekd.evaluation.embed import extract_embeddings
from facekd.evaluation.ijb import IJBResult, evaluate_ijb
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
    "compare",
    "count_flops",
    "count_parameters",
    "evaluate_ijb",
    "extract_embeddings",
    "profile_model",
    "verify",
]
