"""Evaluation: retrieval metrics (Recall@K, MAP@R, R-Precision) and clustering NMI."""
from embdistill.evaluation.metrics import nmi_kmeans, normalized_mutual_info, retrieval_metrics

__all__ = ["nmi_kmeans", "normalized_mutual_info", "retrieval_metrics"]
