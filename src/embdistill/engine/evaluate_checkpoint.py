"""`embdistill evaluate`: score a saved embedder on a dataset split."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from embdistill.config import ConfigError, ExperimentConfig, from_dict
from embdistill.engine.checkpoint import embedder_from_checkpoint, load_checkpoint
from embdistill.engine.device import resolve_device
from embdistill.engine.evaluate import evaluate_embedder
from embdistill.engine.loaders import evaluation_set

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
    cfg = _evaluation_config(payload, dataset, root, batch_size, num_workers, degrade_resolution, degrade_jpeg_quality)
    dataset = cfg.data.dataset
    ks = tuple(ks or (SOP_KS if dataset == "sop" else (1, 2, 4, 8)))
    model = embedder_from_checkpoint(payload)
    dev = resolve_device(device)
    model.to(dev)
    evaluated = evaluation_set(cfg, model.normalization, split=split)
    metrics = evaluate_embedder(model, evaluated.loader, dev, ks, progress)
    items = evaluated.items
    result = {"dataset": dataset, "split": split, "images": len(items), "classes": items.num_classes, **metrics}
    ckpt = Path(checkpoint)
    out_dir = ckpt if ckpt.is_dir() else ckpt.parent
    degraded = degrade_resolution or degrade_jpeg_quality
    suffix = f"_degraded{degrade_resolution or ''}q{degrade_jpeg_quality or ''}" if degraded else ""
    (out_dir / f"eval_{dataset}_{split}{suffix}.json").write_text(json.dumps(result, indent=2))
    return result


def _evaluation_config(
    payload: dict[str, Any], dataset: str | None, root: str | None, batch_size: int, num_workers: int,
    degrade_resolution: int | None, degrade_jpeg_quality: int | None,
) -> ExperimentConfig:
    """The checkpoint's config with the command line's choices on top: dataset, root, batching, degradation.

    The test images are degraded only when asked for here, whatever the run trained with.
    """
    values = dict(payload.get("config") or {})
    data = dict(values.get("data") or {})
    data.update(image_size=payload["image_size"], num_workers=num_workers)
    data.setdefault("dataset", "cub200")
    if dataset:
        data["dataset"] = dataset
    if root:
        data["root"] = root
    if not data.get("root"):
        raise ConfigError("the checkpoint names no dataset root: pass --root")
    values["data"] = data
    values["eval"] = {**(values.get("eval") or {}), "batch_size": batch_size}
    degraded = degrade_resolution or degrade_jpeg_quality
    values["distill"] = {"cross_quality": {"resolution": degrade_resolution, "jpeg_quality": degrade_jpeg_quality}} if degraded else None
    return from_dict(values)
