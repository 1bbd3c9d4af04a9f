"""A collection a student distils on and is searched in (benchmarks.known_gallery, benchmarks.parity.int8_teacher_space):
every other photo of each class of a split (CUB's species, Cars-196's models) linked, without labels, into one folder
(the gallery), the other photos the queries; runs distilled on it, and its images embedded by a checkpoint or its
export."""
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


def smoke_overrides(teacher: Path) -> list[str]:
    """``--smoke``'s runs on a tiny collection, taught by ``teacher`` (a run folder): 8 photos a batch, half the
    gallery's photos held out (knn_agreement@10 needs 11), 64 px (MobileNet-0.25's INT8 export needs more than 32),
    one epoch."""
    return [*SMALL, "data.image_size=64", "train.epochs=1", "train.batch_size=8", "model.pretrained=false",
            "data.validation_classes=0.5", f"distill.teacher={teacher}"]


def link_gallery(data: Path, split: str, folder: Path, reader: str = "cub200") -> int:
    """``folder``: links to every other photo (sorted by path) of each class of ``split`` of ``data`` (read by the
    dataset reader ``reader``), in one flat folder, no labels: the collection. The others are the queries. Returns how
    many it links."""
    from embdistill.data import load_dataset

    items = load_dataset(reader, str(data), split)
    by_class: dict[int, list[str]] = defaultdict(list)
    for path, label in zip(items.paths, items.labels):
        by_class[int(label)].append(str(path))
    return link_photos([path for label in sorted(by_class) for path in sorted(by_class[label])[::2]], folder)


def link_photos(paths: list[str], folder: Path) -> int:
    """``folder``: a link to each of ``paths``, numbered in their order, no labels. Returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        link = folder / f"{i:05d}{Path(path).suffix.lower()}"
        if not link.is_symlink():
            link.symlink_to(Path(path).resolve())
    return len(paths)


def _training_split(data: Path, reader: str, held_out: int) -> tuple[ImageList, ImageList | None]:
    """The training split of ``data`` (read by ``reader``) carved as a run with ``data.validation_classes:
    held_out`` carves it (``engine.batches.load_splits``): the classes it trains on, and the ones it holds out."""
    from embdistill.config.sections import DataConfig
    from embdistill.engine.batches.loaders import load_splits

    splits = load_splits(DataConfig(dataset=reader, root=str(data), validation_classes=held_out), scored="validation")
    return splits.train, splits.validation


def training_photos(data: Path, reader: str, held_out: int) -> list[str]:
    """The photos a teacher that held out ``held_out`` training classes of ``data`` trained on (all the training
    split's when 0), sorted by path."""
    return sorted(map(str, _training_split(data, reader, held_out)[0].paths))


def last_classes(data: Path, reader: str, count: int, out: Path) -> Path:
    """``out``: links to the folders of the last ``count`` training classes of ``data`` (read by ``reader``, one
    folder per class), for the "folder" reader (its split "all"): the classes a teacher held out to choose its epoch
    (``data.validation_classes``), carved as the trainer carves them."""
    held = _training_split(data, reader, count)[1]
    assert held is not None  # count > 0
    folders = sorted({Path(path).parent for path in held.paths})
    if len(folders) != held.num_classes:
        raise ValueError(f"{data} ({reader}, train): the last {count} classes lie in {len(folders)} folders; "
                         "expected one folder per class")
    out.mkdir(parents=True, exist_ok=True)
    for class_folder in folders:
        link = out / class_folder.name
        if not link.is_symlink():
            link.symlink_to(class_folder.resolve())
    return out


def distill(config: str, run: Path, overrides: list[str], seed: int) -> Path:
    """``run`` (a run directory) trained from ``config`` at ``seed`` unless it finished."""
    if not (run / "summary.yaml").is_file():
        subprocess.run([sys.executable, "-m", "embdistill", "distill", "-c", config, "--no-progress",
                        f"output_dir={run.parent}", f"name={run.name}", f"seed={seed}", *overrides], check=True, cwd=ROOT)
    return run


def split_items(data: Path, split: str, folder: Path, reader: str = "cub200") -> tuple[ImageList, np.ndarray]:
    """``split`` of ``data`` (read by ``reader``) and which of its images are the gallery (the ones ``folder`` links)."""
    from embdistill.data import load_dataset
    from embdistill.engine.scoring.command import gallery_mask

    items = load_dataset(reader, str(data), split)
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


def exported_queries(checkpoint: Path, items: ImageList, path: Path, **export: Any) -> np.ndarray:
    """``items`` embedded in ONNX Runtime by the checkpoint's export into its teacher's space, written to ``path``
    (``export``: more of ``export_checkpoint``'s arguments, such as ``quantize="int8"``)."""
    import torch

    from embdistill.deploy.export import export_checkpoint
    from embdistill.search.encoder import load_encoder

    exported = export_checkpoint(checkpoint, "onnx", path, space="teacher", **export)
    return embedded(checkpoint, items, load_encoder(exported.path, threads=torch.get_num_threads()))


def asymmetric_recall(gallery: np.ndarray, queries: np.ndarray, items: ImageList, in_gallery: np.ndarray) -> float:
    """R@1 of the queries' embeddings of the images not in the gallery against the gallery's embeddings of those
    that are (both arrays: every image of ``items``, in order)."""
    from embdistill.evaluation.metrics import retrieval_metrics

    labels = np.asarray(items.labels)
    return retrieval_metrics(gallery[in_gallery], labels[in_gallery], query_embeddings=queries[~in_gallery],
                             query_labels=labels[~in_gallery], ks=(1,))["recall@1"]
