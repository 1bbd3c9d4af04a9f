"""How far a student's neighbourhoods agree with its teacher's: a score that needs no labels.

``knn_agreement`` is the mean, over images, of the share of each image's ``k`` nearest
neighbours under the teacher that the student also ranks among its ``k`` nearest. It
lets a run choose its epoch on held-out photos nobody labelled
(``train.select_metric: knn_agreement@10``): the student that best keeps the teacher's
neighbourhoods is the one whose retrieval results look most like the teacher's.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch import Tensor

__all__ = ["KNN_AGREEMENT", "knn_agreement", "knn_agreement_k"]

KNN_AGREEMENT = re.compile(r"knn_agreement@(\d+)")
_CHUNK = 1024  # query rows per similarity block: memory about 4 * _CHUNK * N bytes


def knn_agreement_k(metric: str) -> int | None:
    """``k`` of a ``knn_agreement@k`` metric name, None for any other name."""
    match = KNN_AGREEMENT.fullmatch(metric)
    return int(match.group(1)) if match else None


def _neighbours(x: Tensor, k: int) -> Tensor:
    """(N, k) indices of each row's ``k`` most cosine-similar other rows (itself excluded), in bounded memory."""
    x = torch.nn.functional.normalize(x.float(), dim=1)
    out = []
    for start in range(0, len(x), _CHUNK):
        sims = x[start:start + _CHUNK] @ x.T
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -torch.inf
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


@torch.no_grad()
def knn_agreement(student: Tensor | np.ndarray, teacher: Tensor | np.ndarray, k: int = 10) -> float:
    """Mean share of each image's ``k`` nearest neighbours under ``teacher`` that ``student`` also ranks in its ``k``.

    Row i of both (N, D) arrays is one image; the sizes D may differ. Neighbours are
    ranked by cosine similarity (the same order as Euclidean distance for the
    L2-normalised embeddings the networks return), each image's own row excluded.
    1 when the student's neighbourhoods are the teacher's; about k / (N - 1) by chance.
    """
    s, t = torch.as_tensor(student), torch.as_tensor(teacher)
    if s.ndim != 2 or t.ndim != 2 or len(s) != len(t):
        raise ValueError(f"knn_agreement needs two (N, D) arrays of the same N images, got shapes "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")
    if not 1 <= k < len(s):
        raise ValueError(f"knn_agreement@{k} needs more than {k} images, got {len(s)}")
    ns, nt = _neighbours(s, k), _neighbours(t, k)
    # Shared indices per row, by a membership test on an (N, k, k) block: k is small.
    shared = (ns.unsqueeze(2) == nt.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(shared.double().mean() / k)
