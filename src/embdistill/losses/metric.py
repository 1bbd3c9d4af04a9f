"""Metric (label) losses: ``forward(embeddings, labels) -> scalar``.

Our own batch-hard triplet loss is the one Yu et al. (CVPR 2019) train teachers and
students with; the other registry entries adapt pytorch-metric-learning (pml) losses
to the same two-argument call so the trainer never needs to know which is which.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import Tensor, nn

from .registry import build_registered


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances with an exactly zero diagonal.

    Squared distances come from the Gram matrix (memory O(B^2), not O(B^2 D)) and
    are clamped to ``eps`` before the square root, so the gradient stays finite
    when two points coincide.
    """
    sq_norms = x.pow(2).sum(dim=1)
    sq = (sq_norms.unsqueeze(0) + sq_norms.unsqueeze(1) - 2.0 * x @ x.t()).clamp(min=eps)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return sq.sqrt().masked_fill(eye, 0.0)


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al., 2017), as used by Yu et al. (CVPR 2019).

    For every anchor: the farthest same-label sample and the nearest other-label
    sample in the batch. ``margin`` defaults to 0, the paper's setting. ``soft=True``
    replaces the hinge by softplus, Hermans et al.'s soft margin (they use it with
    margin 0). Anchors lacking a positive or a negative are left out of the mean.
    """

    def __init__(self, margin: float = 0.0, soft: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.soft = soft

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        dist = pairwise_distances(embeddings)
        labels = labels.to(embeddings.device)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=embeddings.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
        if not valid.any():
            return embeddings.sum() * 0.0
        d_ap = dist.masked_fill(~pos_mask, float("-inf")).amax(dim=1)[valid]
        d_an = dist.masked_fill(~neg_mask, float("inf")).amin(dim=1)[valid]
        violation = d_ap - d_an + self.margin
        return (F.softplus(violation) if self.soft else F.relu(violation)).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, soft={self.soft}"


class PMLMetricLoss(nn.Module):
    """A pml loss, optionally fed by a pml miner, behind ``forward(embeddings, labels)``.

    The pml modules are registered as children, so learnable state such as
    Proxy-Anchor's proxies shows up in ``parameters()`` and must go to the optimizer.
    """

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


TripletMiner = Literal["batch_hard", "hard", "semihard", "all"]
_TRIPLET_MINERS: tuple[str, ...] = get_args(TripletMiner)


def triplet_margin(margin: float = 0.05, miner: TripletMiner | None = None, smooth_loss: bool = False) -> PMLMetricLoss:
    """pml ``TripletMarginLoss`` on all batch triplets, or on mined ones.

    ``miner``: ``"batch_hard"`` (pml ``BatchHardMiner``) or ``"hard"`` / ``"semihard"`` /
    ``"all"`` (pml ``TripletMarginMiner`` with this margin and that triplet type).
    """
    if miner is not None and miner not in _TRIPLET_MINERS:
        raise ValueError(f"unknown triplet miner {miner!r}; valid: None, {', '.join(_TRIPLET_MINERS)}")
    loss = pml_losses.TripletMarginLoss(margin=margin, smooth_loss=smooth_loss)
    if miner is None:
        return PMLMetricLoss(loss)
    if miner == "batch_hard":
        return PMLMetricLoss(loss, pml_miners.BatchHardMiner())
    return PMLMetricLoss(loss, pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=miner))


def contrastive(pos_margin: float = 0.0, neg_margin: float = 1.0) -> PMLMetricLoss:
    """pml ``ContrastiveLoss`` (Hadsell et al., 2006) over all batch pairs."""
    return PMLMetricLoss(pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin))


def multi_similarity(
    alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, miner_epsilon: float | None = 0.1
) -> PMLMetricLoss:
    """pml ``MultiSimilarityLoss`` with its ``MultiSimilarityMiner`` (Wang et al., CVPR 2019).

    ``miner_epsilon=None`` drops the miner and uses every pair.
    """
    loss = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    if miner_epsilon is None:
        return PMLMetricLoss(loss)
    return PMLMetricLoss(loss, pml_miners.MultiSimilarityMiner(epsilon=miner_epsilon))


def proxy_anchor(num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32.0) -> PMLMetricLoss:
    """pml ``ProxyAnchorLoss`` (Kim et al., CVPR 2020).

    It owns one learnable proxy per training class: pass the loss's parameters to
    the optimizer (Kim et al. give them a 100x larger learning rate).
    """
    return PMLMetricLoss(
        pml_losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_size, margin=margin, alpha=alpha)
    )


METRIC_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "batch_hard_triplet": BatchHardTripletLoss,
    "triplet_margin": triplet_margin,
    "contrastive": contrastive,
    "multi_similarity": multi_similarity,
    "proxy_anchor": proxy_anchor,
}


def build_metric_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered metric loss, e.g. ``build_metric_loss("batch_hard_triplet", margin=0.2)``."""
    return build_registered("metric", METRIC_LOSSES, name, kwargs)
