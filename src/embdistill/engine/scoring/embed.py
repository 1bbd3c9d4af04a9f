"""Embed a split with a trained embedder and score retrieval on it."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from embdistill.evaluation.metrics import retrieval_metrics
from embdistill.models.embedder import Embedder


@torch.no_grad()
def embed_loader(model: Embedder, loader: DataLoader, device: torch.device, progress: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Embeddings (N, D) on the CPU and labels (N,), in the loader's order."""
    was_training = model.training
    model.eval()
    embeddings, labels = [], []
    for images, batch_labels, _ in tqdm(loader, desc="embed", leave=False, disable=not progress):
        embeddings.append(model(images.to(device)).embedding.float().cpu())
        labels.append(np.asarray(batch_labels))
    model.train(was_training)
    return torch.cat(embeddings), np.concatenate(labels)


def evaluate_embedder(
    model: Embedder, loader: DataLoader, device: torch.device, ks: Sequence[int] = (1, 2, 4, 8), progress: bool = True
) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision, every test image a query against all the others."""
    embeddings, labels = embed_loader(model, loader, device, progress)
    return retrieval_metrics(embeddings, labels, ks=ks)
