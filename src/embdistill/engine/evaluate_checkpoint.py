"""`embdistill evaluate`: score a saved embedder on a dataset split."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from embdistill.data.datasets import load_dataset
from embdistill.data.transforms import Degrade
from embdistill.engine.checkpoint import embedder_from_checkpoint, load_checkpoint
from embdistill.engine.evaluate import evaluate_embedder
from embdistill.engine.loaders import eval_loader
from embdistill.engine.train import resolve_device

SOP_KS = (1, 10, 100, 1000)


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    split: str = "test",
    ks: Sequence[int] | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    degrade_resolution: int | None = None,
    degrade_jpeg_quality: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, float]:
    """Exact retrieval metrics over every image of ``split``; written beside the checkpoint too."""
    payload = load_checkpoint(checkpoint)
    data = payload.get("config", {}).get("data", {})
    dataset = dataset or data.get("dataset", "cub200")
    root = root or data.get("root")
    if root is None:
        raise ValueError("the checkpoint names no dataset root: pass --root")
    ks = tuple(ks or (SOP_KS if dataset == "sop" else (1, 2, 4, 8)))
    model = embedder_from_checkpoint(payload)
    dev = resolve_device(device)
    model.to(dev)
    items = load_dataset(dataset, root, split)
    degrade = Degrade(degrade_resolution, degrade_jpeg_quality) if degrade_resolution or degrade_jpeg_quality else None
    loader = eval_loader(items, payload["image_size"], model.normalization, batch_size, num_workers, degrade)
    metrics = evaluate_embedder(model, loader, dev, ks, progress)
    result = {"dataset": dataset, "split": split, "images": len(items), "classes": items.num_classes, **metrics}
    ckpt = Path(checkpoint)
    out_dir = ckpt if ckpt.is_dir() else ckpt.parent
    suffix = f"_degraded{degrade_resolution or ''}q{degrade_jpeg_quality or ''}" if degrade else ""
    (out_dir / f"eval_{dataset}_{split}{suffix}.json").write_text(json.dumps(result, indent=2))
    return result
