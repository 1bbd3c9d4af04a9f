"""Collapse detection: is a batch's embedding cloud shrinking to one point?

From random init, the batch-hard triplet loss can send every embedding to the same
point: the hinge then sits exactly at the margin and its gradient vanishes, so the
loss curve looks flat, not broken. The *spread* of each batch's embeddings shows it
at once: about 1 for unit vectors in scattered directions, 0 when all coincide.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

# Below this a batch's L2-normalised embeddings are practically one point. On the held-out tuning trials
# (benchmarks/results/cub100_strong_tuning.md) every collapsed run ended at 0.001-0.006, while working
# students that keep a narrow cone (the absolute teacher's) sat at 0.03-0.06 and still ranked neighbours well.
COLLAPSE_SPREAD = 0.01


@torch.no_grad()
def embedding_spread(embeddings: Tensor) -> float:
    """Root-mean-square distance of the rows of ``embeddings`` to their mean.

    For unit vectors this is ``sqrt(1 - |mean|^2)``: 1 for directions that cancel out,
    0 for a collapsed batch. Independent of the batch's labels.
    """
    x = embeddings.detach().float()
    if len(x) < 2:
        return float("nan")
    return float((x - x.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt())


def collapse_warning(spreads: Iterable[float], threshold: float = COLLAPSE_SPREAD) -> str | None:
    """A one-line warning when the mean of ``spreads`` (e.g. one epoch's batches) is below ``threshold``."""
    values = [s for s in spreads if not math.isnan(s)]
    if not values:
        return None
    mean = sum(values) / len(values)
    if mean >= threshold:
        return None
    return (f"embeddings are collapsing: their batch spread is {mean:.4f} (below {threshold}; "
            "about 1 for a healthy batch). A flat metric loss at the margin means a collapse, not slow "
            "learning: try a lower learning rate, a warm-up, another metric loss or a teacher's dense target")
