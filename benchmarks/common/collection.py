"""A collection a student distils on and is searched in (benchmarks.known_gallery, benchmarks.parity.int8_teacher_space):
every other photo of each species of a CUB split linked, without labels, into one folder (the gallery), the other
photos the queries; runs distilled on it, and its images embedded by a checkpoint or its export."""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.common import ROOT
from benchmarks.common.smoke import SMALL

if TYPE_CHECKING:
    from embdistill.data import ImageList


def smoke_overrides(demo: Path) -> list[str]:
    """``--smoke``'s runs on the tiny demo (``demo``: its folder): 8 photos a batch, half the 32 gallery photos held
    out (knn_agreement@10 needs 11), 64 px (MobileNet-0.25's INT8 export needs more than 32), one epoch."""
    return [*SMALL, "data.image_size=64", "train.epochs=1", "train.batch_size=8", "model.pretrained=false",
            "data.validation_classes=0.5", f"distill.teacher={demo / 'teacher'}"]


def link_gallery(data: Path, split: str, folder: Path) -> int:
    """``folder``: links to every other photo (sorted by path) of each species of the CUB root's ``split``, in one
    flat folder, no labels: the collection. The others are the queries. Returns how many it links."""
    from embdistill.data import load_dataset

    items = load_dataset("cub200", str(data), split)
    by_class: dict[int, list[str]] = defaultdict(list)
    for path, label in zip(items.paths, items.labels):
        by_class[int(label)].append(str(path))
    folder.mkdir(parents=True, exist_ok=True)
    gallery = [path for label in sorted(by_class) for path in sorted(by_class[label])[::2]]
    for i, path in enumerate(gallery):
        link = folder / f"{i:05d}{Path(path).suffix.lower()}"
        if not link.is_symlink():
            link.symlink_to(Path(path).resolve())
    return len(gallery)


def distill(config: str, run: Path, overrides: list[str], seed: int) -> Path:
    """``run`` (a run directory) trained from ``config`` at ``seed`` unless it finished."""
    if not (run / "summary.yaml").is_file():
        subprocess.run([sys.executable, "-m", "embdistill", "distill", "-c", config, "--no-progress",
                        f"output_dir={run.parent}", f"name={run.name}", f"seed={seed}", *overrides], check=True, cwd=ROOT)
    return run


def split_items(data: Path, split: str, folder: Path) -> tuple[ImageList, np.ndarray]:
    """The CUB root's ``split`` and which of its images are the gallery (those linked in ``folder``)."""
    from embdistill.data import load_dataset
    from embdistill.engine.scoring.command import gallery_mask

    items = load_dataset("cub200", str(data), split)
    return items, gallery_mask(items, folder, split)


def embedded(checkpoint: Path, items: ImageList, encoder: Callable[[Any], np.ndarray] | None = None) -> np.ndarray:
    """``items`` embedded at the checkpoint's own size and normalisation: by its fp32 network, or by ``encoder``
    (its ONNX export) when given."""
    import torch

    from embdistill.checkpoints import checkpoint_normalization, embedder_from_checkpoint, load_checkpoint
    from embdistill.engine.batches.loaders import eval_loader
    from embdistill.engine.scoring.embed import embed_loader

    payload = load_checkpoint(checkpoint)
    loader = eval_loader(items, payload["image_size"], checkpoint_normalization(payload), 128, num_workers=0,
                         resize=payload["config"]["data"].get("resize", "crop"))
    if encoder is not None:
        return np.concatenate([encoder(images) for images, _, _ in loader])
    return embed_loader(embedder_from_checkpoint(payload), loader, torch.device("cpu"), progress=False)[0].numpy()
