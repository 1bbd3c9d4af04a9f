"""`embdistill evaluate`: score a saved embedder on a dataset split; with ``--gallery-model``, its queries against
another network's gallery of the same images (a student's queries, its teacher's gallery); with ``--gallery-images``,
the split's images in a folder are the gallery and the others its queries (a collection a run distilled on, searched
with new photos)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from embdistill.config import ConfigError, ExperimentConfig, from_dict, to_dict
from embdistill.checkpoints import CheckpointError, checkpoint_fingerprint, embedder_from_checkpoint, load_checkpoint
from embdistill.engine.compute.device import resolve_device
from embdistill.engine.scoring.embed import embed_loader, evaluate_embedder
from embdistill.engine.batches.loaders import evaluation_set
from embdistill.teacher_space import TEACHER_SPACE, declared_space, in_teacher_space
from embdistill.evaluation.metrics import retrieval_metrics

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
    gallery_model: str | Path | None = None,
    allow_other_space: bool = False,
    gallery_images: str | Path | None = None,
) -> dict[str, Any]:
    """Exact retrieval metrics over every image of ``split``; written beside the checkpoint too.

    ``gallery_model`` (a checkpoint): asymmetric retrieval. Every image is embedded by both
    networks; query i is the checkpoint's embedding of image i, the gallery is
    ``gallery_model``'s embedding of every other image (image i itself left out, as
    leave-one-out does). That is a student querying its teacher's gallery: the checkpoint must
    declare the gallery model's space (absolute teacher term; its projection is applied) unless
    ``allow_other_space``. Each network sees the images at its own size and normalisation; only
    the queries are degraded (``degrade_*``), as a phone's photos would be.

    ``gallery_images`` (a folder; links count as the images they point to): the known-collection protocol. The
    split's images found there are the gallery, the others are the queries, and no query is in the gallery. A run
    that distilled without labels on the gallery's photos (the collection a user will search) is scored on new
    photos it never saw: its scores are not transductive, and the result counts the gallery images it distilled on.
    """
    payload = load_checkpoint(checkpoint)
    cfg = _evaluation_config(payload, dataset, root, batch_size, num_workers, degrade_resolution, degrade_jpeg_quality)
    dataset = cfg.data.dataset
    ks = tuple(ks or (SOP_KS if dataset == "sop" else (1, 2, 4, 8)))
    dev = resolve_device(device)
    if gallery_model is not None:
        payload, gallery_payload, note = _paired_payloads(checkpoint, payload, gallery_model, allow_other_space)
    model = embedder_from_checkpoint(payload)
    model.to(dev)
    evaluated = evaluation_set(cfg, model.normalization, split=split)
    items = evaluated.items
    in_gallery = None if gallery_images is None else gallery_mask(items, gallery_images, split)
    pairing: dict[str, Any] = {}
    if gallery_model is None and in_gallery is None:
        metrics = evaluate_embedder(model, evaluated.loader, dev, ks, progress)
    else:
        queries, labels = embed_loader(model, evaluated.loader, dev, progress)
        gallery = queries
        if gallery_model is not None:
            gallery = _gallery_embeddings(evaluated, cfg, gallery_payload, split, dev, progress)
            if queries.shape[1] != gallery.shape[1]:
                raise CheckpointError(f"the query model embeds in {queries.shape[1]}-d, the gallery model in "
                                      f"{gallery.shape[1]}-d")
            pairing = {"query_model": str(Path(checkpoint)), "gallery_model": str(Path(gallery_model)), "pairing": note}
        if in_gallery is None:  # every image queries the gallery network's embeddings of all the others
            metrics = retrieval_metrics(gallery, labels, query_embeddings=queries, query_labels=labels, ks=ks,
                                        paired=gallery_model is not None)
        else:
            mask = torch.from_numpy(in_gallery)
            metrics = retrieval_metrics(gallery[mask], labels[in_gallery], query_embeddings=queries[~mask],
                                        query_labels=labels[~in_gallery], ks=ks)
    result = {"dataset": dataset, "split": split, "images": len(items), "classes": items.num_classes, **pairing, **metrics}
    is_query = np.ones(len(items), dtype=bool) if in_gallery is None else ~in_gallery
    distilled = _distilled_photos(payload)
    was_distilled = np.zeros(len(items), dtype=bool)
    if distilled:  # resolving every path costs a system call each: only for a run that distilled on photos
        was_distilled[:] = [Path(p).resolve() in distilled for p in items.paths]
    seen, queries_count = int((was_distilled & is_query).sum()), int(is_query.sum())
    if in_gallery is not None:
        known = int((was_distilled & in_gallery).sum())
        result.update(gallery_images=str(gallery_images), queries=queries_count,
                      gallery=int(in_gallery.sum()), distilled_on_gallery=known)
        print(f"known gallery: the {result['gallery']} {split} images in {gallery_images} are the gallery, the other "
              f"{queries_count} query it; {checkpoint} distilled without labels on {known} of the gallery's images "
              f"and {seen} of the queries", flush=True)
    if seen:
        print(f"transductive: {seen} of the {queries_count} scored images are among the photos {checkpoint} was "
              "distilled on without labels: these scores are transductive", flush=True)
        result.update(transductive=True, transductive_test_images=seen)
    ckpt = Path(checkpoint)
    out_dir = ckpt if ckpt.is_dir() else ckpt.parent
    degraded = degrade_resolution or degrade_jpeg_quality
    suffix = f"_degraded{degrade_resolution or ''}q{degrade_jpeg_quality or ''}" if degraded else ""
    suffix = ("_gallery_" + _run_name(gallery_model) if gallery_model is not None else "") + suffix
    suffix = (f"_gallery_images_{Path(gallery_images).name}" if gallery_images is not None else "") + suffix
    (out_dir / f"eval_{dataset}_{split}{suffix}.json").write_text(json.dumps(result, indent=2))
    return result


def _distilled_photos(payload: dict[str, Any]) -> set[Path]:
    """The photos (resolved: a link to an image counts as the image) the checkpoint's run distilled on without
    labels: a label-free run's photos (``data.root``) or ``distill.semi_supervised.folder``, as the trainer counts a
    semi-supervised folder's test images. Folders no longer there hold none."""
    from embdistill.data.datasets import is_label_free

    values = payload.get("config") or {}
    data = values.get("data") or {}
    folders = [data.get("root")] if is_label_free(data.get("dataset", "")) else []
    folders.append(((values.get("distill") or {}).get("semi_supervised") or {}).get("folder"))
    return set().union(*(_resolved_images(folder) for folder in folders if folder and Path(folder).is_dir()))


def _resolved_images(folder: str | Path) -> set[Path]:
    """Every image under ``folder``, resolved, so that a link and the image it points to compare equal."""
    from embdistill.data.imagefiles import list_images

    return {p.resolve() for p in list_images(folder)}


def _run_name(checkpoint: str | Path) -> str:
    """runs/x/teacher/last.pt -> "teacher"; runs/x/teacher -> "teacher"."""
    path = Path(checkpoint)
    return path.name if path.is_dir() else path.parent.name or path.stem


def _paired_payloads(
    checkpoint: str | Path, payload: dict[str, Any], gallery_model: str | Path, allow_other_space: bool,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The query network (in the gallery network's space where it declares it), the gallery network, and the
    line that says what pairs them; a query network of another space is refused unless ``allow_other_space``."""
    gallery_payload = load_checkpoint(gallery_model)
    space = checkpoint_fingerprint(gallery_payload)
    record = payload.get(TEACHER_SPACE) or {}
    if record.get("fingerprint") == space:
        payload = in_teacher_space(payload, f"checkpoint {checkpoint}")
    own = checkpoint_fingerprint(payload)
    if own == space:
        note = f"{checkpoint} and {gallery_model} are one network (space {space[:12]}): leave-one-out retrieval"
    elif declared_space(payload) == space:
        note = (f"student {checkpoint} queries the gallery of its teacher {gallery_model}: trained into the "
                f"teacher's space {space[:12]} by the absolute teacher term")
    elif allow_other_space:
        note = f"{checkpoint} (space {own[:12]}) queries the gallery of {gallery_model} (space {space[:12]}): --allow-other-space"
    else:
        raise CheckpointError(
            f"checkpoint {checkpoint} embeds into space {own[:12]}, not into the space {space[:12]} of gallery model "
            f"{gallery_model}: only a student distilled from that teacher with the absolute teacher term was trained "
            "there; pass --allow-other-space to score it anyway"
        )
    query_dim, gallery_dim = payload["model_config"].get("dim"), gallery_payload["model_config"].get("dim")
    if query_dim and gallery_dim and query_dim != gallery_dim:
        raise CheckpointError(f"checkpoint {checkpoint} embeds in {query_dim}-d, gallery model {gallery_model} in {gallery_dim}-d")
    return payload, gallery_payload, note


def _gallery_embeddings(
    evaluated: Any, cfg: ExperimentConfig, gallery_payload: dict[str, Any], split: str, dev: Any, progress: bool,
) -> torch.Tensor:
    """The gallery network's embeddings of the query network's images, row for row, each network at its own image
    size, resize and normalisation, never degraded (the server's clean copies)."""
    gallery_net = embedder_from_checkpoint(gallery_payload).to(dev)
    gallery_data = ((gallery_payload.get("config") or {}).get("data") or {})
    values = to_dict(cfg)
    values["data"] = {**values["data"], "image_size": gallery_payload["image_size"],
                      "resize": gallery_data.get("resize", "crop")}  # older configs: crop, as export reads them
    values["distill"] = None  # the gallery's images are not degraded
    gallery_set = evaluation_set(from_dict(values), gallery_net.normalization, split=split)
    if list(gallery_set.items.paths) != list(evaluated.items.paths):
        raise CheckpointError(f"the gallery model's {split} split is not the same images as the query model's")
    return embed_loader(gallery_net, gallery_set.loader, dev, progress)[0]


def gallery_mask(items: Any, folder: str | Path, split: str) -> np.ndarray:
    """Which of ``items`` (an ImageList of ``split``) are images in ``folder`` (compared resolved, so a link counts
    as its image): the gallery of ``--gallery-images``, the others its queries. Refused unless the folder is a
    strict, non-empty part of the split holding an image of every query's class."""
    from embdistill.data.errors import DatasetError

    if not Path(folder).is_dir():
        raise DatasetError(f"--gallery-images {folder}: no such folder")
    photos = _resolved_images(folder)
    mask = np.array([Path(p).resolve() in photos for p in items.paths], dtype=bool)
    if not mask.any() or mask.all():
        raise DatasetError(f"--gallery-images {folder} holds {int(mask.sum())} of the {len(mask)} {split} images: the "
                           "gallery must be some of them and the queries the others")
    labels = np.asarray(items.labels)
    missing = sorted(set(labels[~mask].tolist()) - set(labels[mask].tolist()))
    if missing:
        names = [items.class_names[i] for i in missing[:5]]
        raise DatasetError(f"--gallery-images {folder} holds no {split} image of {len(missing)} classes that queries "
                           f"belong to (for example {names}): every query needs its class in the gallery")
    return mask


def _evaluation_config(
    payload: dict[str, Any], dataset: str | None, root: str | None, batch_size: int, num_workers: int,
    degrade_resolution: int | None, degrade_jpeg_quality: int | None,
) -> ExperimentConfig:
    """The checkpoint's config with the command line's choices on top: dataset, root, batching, degradation.

    The test images are degraded only when asked for here, whatever the run trained with.
    """
    from embdistill.data.datasets import is_label_free

    values = dict(payload.get("config") or {})
    data = dict(values.get("data") or {})
    data.update(image_size=payload["image_size"], num_workers=num_workers)
    data.setdefault("dataset", "cub200")
    trained_on = data["dataset"]
    if dataset:
        data["dataset"] = dataset
    if root:
        data["root"] = root
    if not data.get("root"):
        raise ConfigError("the checkpoint names no dataset root: pass --root")
    if is_label_free(data["dataset"]):
        raise ConfigError(f"data.dataset: {data['dataset']!r} has no labels, so there is no retrieval to score; a "
                          "label-free run's score, knn_agreement on its held-out photos, is in its summary.yaml. To score "
                          "retrieval, pass a labelled set: --dataset folder --root PATH (one sub-folder per class)")
    # nothing is chosen or trained here: without the distill section, a run that trained on its teacher's terms
    # alone (train.metric_weight 0) would read as a run with nothing to train
    values["train"] = {**(values.get("train") or {}), "select": "last", "patience": 0, "metric_weight": 1.0}
    if is_label_free(trained_on):  # the run's label-free settings say nothing about a labelled set
        values["train"].update(select_metric="recall@1", batch_size=None)
        data["validation_classes"] = 0
        values["eval"] = {**(values.get("eval") or {}), "split": "auto"}
    values["data"] = data
    values["eval"] = {**(values.get("eval") or {}), "batch_size": batch_size}
    degraded = degrade_resolution or degrade_jpeg_quality
    values["distill"] = {"cross_quality": {"resolution": degrade_resolution, "jpeg_quality": degrade_jpeg_quality}} if degraded else None
    return from_dict(values)
