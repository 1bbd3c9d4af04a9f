"""From a config to the splits and DataLoaders a run trains and evaluates on.

``evaluation_set`` is the one way to get the images a run is scored on and the
loader that embeds them: the trainer, ``embdistill evaluate`` and the report all
use it, so all three score the same images the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from embdistill.config import DataConfig, ExperimentConfig, held_out_count
from embdistill.data.datasets import DatasetError, ImageList, is_label_free, load_dataset
from embdistill.data.images import DecodedImageCache, ImageDataset
from embdistill.data.samplers import PKSampler, RandomBatchSampler
from embdistill.data.transforms import Degrade, Normalization, build_transform
from embdistill.engine.batches.views import ViewCrop, ViewDataset
from embdistill.data.imagefiles import list_images

RESIZE_RATIO = 256 / 224  # eval: resize the shorter side to size*ratio, then center-crop size


@dataclass
class Splits:
    train: ImageList
    eval: ImageList  # what the run is scored on at the end (run_split): the test classes, or the held-out train classes
    eval_name: str  # "test" | "validation"
    validation: ImageList | None = None  # the held-out train classes (data.validation_classes), scored while training


@dataclass
class EvalSet:
    items: ImageList
    name: str  # "test" | "validation" | the dataset split asked for
    loader: DataLoader


def _without_bad_images(items: ImageList, skip_bad: bool, log: list[tuple[Path, str]]) -> ImageList:
    if not skip_bad:
        return items
    checked = ImageDataset(items, skip_bad=True)
    log.extend(checked.skipped)
    return checked.items


def run_split(cfg: ExperimentConfig) -> str:
    """The split a run is scored on at the end: ``eval.split``, where ``auto`` is the held-out train classes
    when ``data.validation_classes`` > 0 (all that key meant before ``eval.split``), else the test classes."""
    if cfg.eval.split != "auto":
        return cfg.eval.split
    return "validation" if cfg.data.validation_classes > 0 else "test"


def load_splits(data: DataConfig, skipped: list[tuple[Path, str]] | None = None, scored: str = "auto") -> Splits:
    """Train and evaluation classes; ``validation_classes`` carves the last N train classes out (a fraction:
    that share of them, see ``config.held_out_count``).

    ``scored`` (the run's ``eval.split``) names what ``eval`` holds: with held-out
    classes, ``auto`` and ``validation`` are those, ``test`` the test classes. With
    ``data.skip_bad_images`` unreadable files are removed here, once, and
    appended to ``skipped`` so the run can list them.
    """
    skipped = [] if skipped is None else skipped
    train = _without_bad_images(load_dataset(data.dataset, data.root, "train"), data.skip_bad_images, skipped)
    n, held = held_out_count(data.validation_classes, train.num_classes), None
    if n > 0:
        if n >= train.num_classes - 1:
            raise DatasetError(f"data.validation_classes={n} leaves fewer than 2 of {train.num_classes} train classes")
        held = train.class_subset(range(train.num_classes - n, train.num_classes))
        train = train.class_subset(range(train.num_classes - n))
    if held is not None and scored != "test":
        return Splits(train, held, "validation", held)
    test = _without_bad_images(load_dataset(data.dataset, data.root, "test"), data.skip_bad_images, skipped)
    return Splits(train, test, "test", held)


def check_pk_classes(train: ImageList, labels: np.ndarray) -> None:
    """P×K batches need a positive pair in every class: name the classes with a single image.

    All labels -1 (a label-free dataset, :func:`train_labels`): random batches, nothing to check.
    """
    counts = np.bincount(labels[labels >= 0], minlength=train.num_classes)
    single = [train.class_names[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise DatasetError(f"{train.name}: class(es) {', '.join(single[:10])}{' ...' if len(single) > 10 else ''} "
                           "have only 1 training image; P×K batches need at least 2 per class. Add images "
                           "or remove the class from the dataset's metadata")


def evaluation_set(
    cfg: ExperimentConfig, normalization: Normalization, split: str | None = None, splits: Splits | None = None
) -> EvalSet:
    """The images ``cfg`` is scored on and the loader that embeds them.

    ``split`` None is the run's own evaluation split (:func:`run_split`: the test
    classes, or the held-out train classes); "validation" is the held-out train
    classes; otherwise that split of ``data.dataset`` ("train", "test" or "all").
    ``splits``: already loaded (the trainer's), used as they are. Images are resized to ``data.image_size``,
    batched by ``eval.batch_size`` with ``data.num_workers`` workers, and degraded
    like the student's for cross-quality runs (``distill.cross_quality.degrade_test``).
    """
    data = cfg.data
    name = split or run_split(cfg)
    if name == "validation":
        items = (splits or load_splits(data)).validation
        if items is None:
            raise DatasetError("the validation split is the held-out train classes, and data.validation_classes is 0")
    elif splits is not None and name == splits.eval_name:
        items = splits.eval
    else:
        items = _without_bad_images(load_dataset(data.dataset, data.root, name), data.skip_bad_images, [])
    cq = cfg.distill.cross_quality if cfg.distill else None
    degrade = student_degrade(cfg) if cq and cq.degrade_test else None
    loader = eval_loader(items, data.image_size, normalization, cfg.eval.batch_size, data.num_workers, degrade,
                         resize=data.resize)
    return EvalSet(items, name, loader)


def view_size(cfg: ExperimentConfig) -> int:
    """Size of the augmented training crops: the teacher's (``distill.teacher_image_size``) if larger."""
    teacher = cfg.distill.teacher_image_size if cfg.distill else None  # checked >= data.image_size in config.py
    return teacher or cfg.data.image_size


def image_cache(data: DataConfig, items: ImageList, size: int | None = None) -> DecodedImageCache | None:
    """Decoded images at the working resolution (``size``, default data.image_size), filled before loader workers fork."""
    if not data.cache_images:
        return None
    side = "longer" if data.resize == "pad" else "shorter"  # the side the transforms fix, see DecodedImageCache
    cache = DecodedImageCache(size=round((size or data.image_size) * RESIZE_RATIO), side=side)
    cache.fill(items.paths, num_workers=max(1, data.num_workers))
    return cache


def hidden_label_mask(train: ImageList, fraction: float, seed: int) -> np.ndarray:
    """True for images whose class is chosen (reproducibly) to be treated as unlabelled."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"distill.semi_supervised.hide_label_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    hidden = rng.permutation(train.num_classes)[: int(round(fraction * train.num_classes))]
    return np.isin(train.labels, hidden)


def student_degrade(cfg: ExperimentConfig) -> Degrade | None:
    """Cross-quality distillation: what the student sees instead of the teacher's clean image."""
    cq = cfg.distill.cross_quality if cfg.distill else None
    return Degrade(cq.resolution, cq.jpeg_quality) if cq else None


def view_crop(cfg: ExperimentConfig, normalization: Normalization) -> ViewCrop:
    """The training crop: one box per view, at the student's size and at the teacher's (``view_size``)."""
    return ViewCrop(cfg.data.image_size, view_size(cfg), normalization, resize=cfg.data.resize)


def augmentation_seed(cfg: ExperimentConfig) -> int:
    """Seed of the augmented views: ``distill.view_seed`` when distilling, so every run seed sees the
    same fixed views (and can read one teacher bank); the run's own seed otherwise."""
    return cfg.distill.view_seed if cfg.distill and cfg.distill.terms else cfg.seed


def train_labels(cfg: ExperimentConfig, items: ImageList) -> np.ndarray:
    """The labels the training batches carry: the dataset's, or -1 for every image of a label-free one
    (``data.dataset: photos``), which adds nothing to the metric loss (switched off there anyway)."""
    if is_label_free(cfg.data.dataset):
        return np.full(len(items), -1, dtype=np.int64)
    return items.labels


def train_loader(
    cfg: ExperimentConfig,
    items: ImageList,
    normalization: Normalization,
    labels: np.ndarray | None = None,
    cache: DecodedImageCache | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, ViewDataset, PKSampler | RandomBatchSampler]:
    """Class-balanced P×K batches of augmented views; ``labels`` < 0 are excluded from the batches.

    A label-free dataset (``data.dataset: photos``) has every label -1 and is batched at
    random instead (:class:`RandomBatchSampler`, ``train.batch_size`` images a batch).
    With ``world_size`` processes, this one's share of each global step (see PKSampler).
    """
    images = ImageDataset(items, cache=cache)
    labels = train_labels(cfg, items) if labels is None else labels
    views = ViewDataset(
        images,
        view_crop(cfg, normalization),
        seed=augmentation_seed(cfg),
        degrade=student_degrade(cfg),
        labels=torch.from_numpy(np.array(labels)),
        teacher_images=bool(cfg.distill and cfg.distill.terms),
    )
    if is_label_free(cfg.data.dataset):
        t = cfg.train
        random_batches = RandomBatchSampler(len(items), t.batch_size or t.classes_per_batch * t.images_per_class,
                                            seed=cfg.seed, rank=rank, world_size=world_size,
                                            batches_per_epoch=t.batches_per_epoch)
        loader = DataLoader(views, batch_sampler=random_batches, num_workers=cfg.data.num_workers, pin_memory=False)
        return loader, views, random_batches
    labelled = np.flatnonzero(labels >= 0)
    sampler = PKSampler(
        labels[labelled],
        cfg.train.classes_per_batch,
        cfg.train.images_per_class,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        batches_per_epoch=cfg.train.batches_per_epoch,
    )
    batches = _Reindexed(sampler, labelled)
    loader = DataLoader(views, batch_sampler=batches, num_workers=cfg.data.num_workers, pin_memory=False)
    return loader, views, sampler


class _Reindexed:
    """Maps a sampler's positions within a subset back to dataset indices."""

    def __init__(self, sampler: PKSampler, indices: np.ndarray) -> None:
        self.sampler = sampler
        self.indices = indices

    def __iter__(self):
        for batch in self.sampler:
            yield [int(self.indices[i]) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


def unlabelled_items(cfg: ExperimentConfig, train: ImageList, hidden: np.ndarray | None) -> ImageList | None:
    """Images that contribute only distillation terms (semi-supervised distillation)."""
    semi = cfg.distill.semi_supervised if cfg.distill else None
    if semi is None:
        return None
    if semi.folder:
        root = Path(semi.folder)
        paths = tuple(list_images(root, what="distill.semi_supervised.folder"))
        # One placeholder class; the loader hands these images out with label -1.
        return ImageList(paths=paths, labels=np.zeros(len(paths), dtype=np.int64), class_names=("unlabelled",), name=f"unlabelled:{root}")
    if hidden is None or not hidden.any():
        raise DatasetError("distill.semi_supervised needs `folder` or a hide_label_fraction > 0")
    return train.subset(np.flatnonzero(hidden))


def transductive_images(cfg: ExperimentConfig, unlabelled: ImageList) -> int:
    """How many of the unlabelled images (``distill.semi_supervised.folder``) are images of the dataset's test split.

    Paths are compared resolved, as ``quantize.calibration_images`` does, so a link to a
    test image counts. A student that has seen the test images, even without their labels,
    is scored transductively: the run says so rather than refusing, since that can be the
    point. A dataset whose test split cannot be read counts none.
    """
    try:
        test = {p.resolve() for p in load_dataset(cfg.data.dataset, cfg.data.root, "test").paths}
    except DatasetError:
        return 0
    return sum(p.resolve() in test for p in unlabelled.paths)


def eval_loader(
    items: ImageList,
    image_size: int,
    normalization: Normalization,
    batch_size: int,
    num_workers: int,
    degrade: Degrade | None = None,
    cache: DecodedImageCache | None = None,
    resize: str = "crop",
) -> DataLoader:
    """Deterministic resize (``resize``: crop | squash | pad) of ``items`` in order; prefer :func:`evaluation_set`, which reads the config."""
    transform = build_transform(False, image_size, normalization, resize_ratio=RESIZE_RATIO, degrade=degrade, resize=resize)
    return DataLoader(ImageDataset(items, transform, cache=cache), batch_size=batch_size, num_workers=num_workers)


def unlabelled_views(
    cfg: ExperimentConfig, items: ImageList, normalization: Normalization, cache: DecodedImageCache | None
) -> ViewDataset:
    """Augmented views of the unlabelled images (label -1); ``unlabelled_stream.BatchStream`` batches them."""
    return ViewDataset(
        ImageDataset(items, cache=cache),
        view_crop(cfg, normalization),
        seed=augmentation_seed(cfg) + 1,
        degrade=student_degrade(cfg),
        labels=torch.full((len(items),), -1, dtype=torch.long),
    )
