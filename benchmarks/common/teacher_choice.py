"""Scoring ImageNet backbones as teachers: each candidate's pooled features (no head, no training) on held-out classes.

Used by ``benchmarks/tuning/teacher_choice.py`` (the birds' candidates), ``resolution_ceiling.py`` (the teacher's
network at each input size) and ``cars196_teacher_choice.py`` (the birds' candidates on cars). The two birds' scripts
share :func:`smoke_data`, their ``--smoke``'s few species.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from embdistill.config import DataConfig
from embdistill.engine.scoring.embed import evaluate_embedder
from embdistill.engine.batches.loaders import eval_loader, load_splits
from embdistill.config import ModelConfig
from embdistill.models.embedder import create_embedder

from benchmarks.common import SHARED, cub_subset

CANDIDATES = [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 224)]
VALIDATION_CLASSES = 14
# --smoke: the first 4 train and 4 test species of cub100, 4 images each, 2 of the train species held out (the real
# runs hold out 14 of 58): every candidate loads and scores a handful of images
SMOKE_SPECIES, SMOKE_IMAGES, SMOKE_VALIDATION_CLASSES = 4, 4, 2


def smoke_data(folder: Path, validation_classes: int = VALIDATION_CLASSES) -> DataConfig:
    """``--smoke``'s data, linked under ``folder``: a few species of cub100, :data:`SMOKE_VALIDATION_CLASSES` train
    species held out where the real run holds out ``validation_classes`` (0 stays 0: the test species)."""
    root = cub_subset(SHARED / "data" / "cub100", folder, SMOKE_SPECIES, SMOKE_IMAGES)
    return DataConfig(root=str(root), validation_classes=min(validation_classes, SMOKE_VALIDATION_CLASSES), num_workers=1)


def score_candidates(candidates: list[tuple[str, int]], out: Path, command: str,
                     validation_classes: int = VALIDATION_CLASSES, data: DataConfig | None = None) -> list[dict]:
    """Each (backbone, px) candidate's pooled ImageNet features scored on the held-out species, written to ``out``
    after each one (a stopped run keeps what it scored). ``validation_classes=0`` scores the test species
    instead: for reporting what a network does there, never for a choice. ``data``: another dataset (its reader,
    root, held-out classes and ``resize``) instead of cub100's; ``validation_classes`` is then its own."""
    torch.set_num_threads(2)
    data = data or DataConfig(root=str(SHARED / "data" / "cub100"), validation_classes=validation_classes,
                              num_workers=1)
    splits = load_splits(data)
    results = []
    for backbone, size in candidates:
        model = create_embedder(ModelConfig(backbone=backbone, pretrained=True, dim=None)).eval()
        loader = eval_loader(splits.eval, size, model.normalization, 64, 1, resize=data.resize)
        start = time.perf_counter()
        metrics = evaluate_embedder(model, loader, torch.device("cpu"), progress=False)
        results.append({"backbone": backbone, "image_size": size, "dim": model.dim, "split": splits.eval_name,
                        "images": len(splits.eval), "seconds": round(time.perf_counter() - start, 1),
                        **{k: round(v, 4) for k, v in metrics.items()}})
        print(json.dumps(results[-1]), flush=True)
        out.write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d"), "candidates": results}, indent=1) + "\n")
    return results
