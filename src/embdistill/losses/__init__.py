"""Metric losses (embeddings, labels) and distillation losses (student, teacher)."""
from .distill import (
    DISTILL_LOSSES,
    AbsoluteTeacherLoss,
    AttentionTransferLoss,
    DarkRankLoss,
    DistillationLoss,
    HintLoss,
    PKTLoss,
    RelativeTeacherLoss,
    RelaxedContrastiveLoss,
    RKDAngleLoss,
    RKDDistanceLoss,
    build_distill_loss,
    embedding_of,
)
from .metric import (
    METRIC_LOSSES,
    BatchHardTripletLoss,
    PMLMetricLoss,
    build_metric_loss,
    pairwise_distances,
)

__all__ = [
    "DISTILL_LOSSES",
    "METRIC_LOSSES",
    "AbsoluteTeacherLoss",
    "AttentionTransferLoss",
    "BatchHardTripletLoss",
    "DarkRankLoss",
    "DistillationLoss",
    "HintLoss",
    "PKTLoss",
    "PMLMetricLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "RelativeTeacherLoss",
    "RelaxedContrastiveLoss",
    "build_distill_loss",
    "build_metric_loss",
    "embedding_of",
    "pairwise_distances",
]
