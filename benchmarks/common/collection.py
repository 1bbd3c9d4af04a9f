"""A collection a student distils on and is searched in (benchmarks.known_gallery, benchmarks.gallery_density,
benchmarks.parity.int8_teacher_space): every other photo of each class of a split (CUB's species, Cars-196's models)
linked, without labels, into one folder (the gallery), the other photos the queries; runs distilled on it, and its
images embedded by a checkpoint or its export. ``COLLECTIONS`` holds the datasets the known-gallery tables run on,
their teachers and their rows."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml

from benchmarks.common import ROOT, SHARED
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


def embedded(checkpoint: Path, items: ImageList, encoder: Callable[[Any], np.ndarray] | None = None,
             space: Literal["own", "teacher"] = "own") -> np.ndarray:
    """``items`` embedded at the checkpoint's own size and normalisation: by its fp32 network, or by ``encoder``
    (its ONNX export) when given. ``space="teacher"``: a student's network as it embeds into its teacher's space."""
    import torch

    from embdistill.checkpoints import checkpoint_normalization, embedder_from_checkpoint, load_checkpoint
    from embdistill.engine.batches.loaders import eval_loader
    from embdistill.engine.scoring.embed import embed_loader
    from embdistill.teacher_space import in_teacher_space

    payload = load_checkpoint(checkpoint)
    if space == "teacher":
        payload = in_teacher_space(payload, str(checkpoint))
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


def asymmetric_recall(gallery: np.ndarray, queries: np.ndarray, items: ImageList, in_gallery: np.ndarray,
                      classes: np.ndarray | None = None) -> float:
    """R@1 of the queries' embeddings of the images not in the gallery against the gallery's embeddings of those
    that are (both arrays: every image of ``items``, in order; the same array twice scores one network). With
    ``classes``, only their images: a smaller gallery."""
    from embdistill.evaluation.metrics import retrieval_metrics

    labels = np.asarray(items.labels)
    kept = np.ones(len(labels), bool) if classes is None else np.isin(labels, classes)
    g, q = kept & in_gallery, kept & ~in_gallery
    return retrieval_metrics(gallery[g], labels[g], query_embeddings=queries[q], query_labels=labels[q], ks=(1,),
                             map_at_r=False, r_precision=False)["recall@1"]


DEMO = ROOT / "runs" / "demo"  # `make demo`: the birds' teacher


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The network that embeds the gallery, and how the table describes it."""

    config: str | None  # run into --runs (its folder named as the file) when missing; None: `make demo`'s teacher
    description: str


@dataclasses.dataclass(frozen=True)
class Part:
    """The classes one table scores, and how the table names them."""

    split: str  # the dataset's split
    words: str  # "42 test species, unseen in training"
    held_out: int = 0  # > 0: only the split's last this many classes, which the teacher held out (never trained on)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One row of a table: a config a user can run with ``embdistill distill``."""

    config: str
    student: str  # as the table names it
    training_photos: bool = False  # distil on the training classes' photos beside the gallery's (labels never read)


@dataclasses.dataclass(frozen=True)
class Collection:
    """A dataset the tables run on: the test table's classes and the tuning's, its teacher, its rows."""

    reader: str  # embdistill's dataset reader
    data: Path  # its default root
    kind: str  # what one class is
    tune: Part
    test: Part
    teacher: Teacher
    rows: dict[str, Recipe]
    trials: dict[str, Recipe]  # --tune only: settings tried on the tuning classes beside the rows'
    runs: str = "known_gallery"  # runs/<this> by default
    # Test only, run when named (--rows): not recipes, they distil on the queries' photos too (labels never read;
    # transductive): what the student reaches when it has distilled on the photos it is scored on
    ceilings: dict[str, Recipe] = dataclasses.field(default_factory=dict)


COLLECTIONS = {
    "cub100": Collection(
        reader="cub200", data=SHARED / "data" / "cub100", kind="species",
        tune=Part("train", "58 training species (where the settings were chosen)"),
        test=Part("test", "42 test species, unseen in training"),
        teacher=Teacher(None, "EfficientNet-Lite0's ImageNet features at 160 px, 1,280-d"),
        rows={
            "asymmetric": Recipe("configs/cub100/known_gallery/asymmetric.yaml",
                                 "MobileNetV2 at 96 px (the demo's student)"),
            "asymmetric_160": Recipe("configs/cub100/known_gallery/asymmetric_160.yaml", "MobileNetV2 at 160 px"),
            "mobilenet025_32ep": Recipe("configs/cub100/known_gallery/mobilenet025_32ep.yaml",
                                        "MobileNet-0.25 (ImageNet) at 160 px, 32 epochs"),
        },
        trials={
            "asymmetric_b256": Recipe("configs/cub100/known_gallery/trials/asymmetric_b256.yaml",
                                      "MobileNetV2 at 96 px, 256 a batch"),
            "asymmetric_t005": Recipe("configs/cub100/known_gallery/trials/asymmetric_t005.yaml",
                                      "MobileNetV2 at 96 px, T 0.05"),
            "mobilenet025": Recipe("configs/cub100/known_gallery/mobilenet025.yaml",
                                   "MobileNet-0.25 (ImageNet) at 160 px, 8 epochs"),
        },
        ceilings={
            "mobilenet025_32ep_queries": Recipe("configs/cub100/known_gallery/ceilings/mobilenet025_32ep_queries.yaml",
                                                "MobileNet-0.25 (ImageNet) at 160 px, 32 epochs, on the queries too"),
        }),
    # the teacher learnt 74 of the 98 training models: the settings are chosen on the other 24 (its held-out ones)
    "cars196": Collection(
        reader="cars196", data=SHARED / "data" / "cars196", kind="model",
        tune=Part("train", "24 training models the teacher held out (it chose its epoch on them and never trained on "
                  "them; where the settings were chosen)", held_out=24),
        test=Part("test", "98 test models, unseen in training"),
        teacher=Teacher("configs/cars196/known_gallery/teacher.yaml",
                        "EfficientNet-Lite0 at 224 px, squashed, 1,280-d, fine-tuned with labels on 74 of the 98 "
                        "training models (its epoch chosen on the other 24): `configs/cars196/known_gallery/teacher.yaml`"),
        rows={
            "mobilenet025_32ep": Recipe("configs/cars196/known_gallery/mobilenet025_32ep.yaml",
                                        "MobileNet-0.25 (ImageNet) at 160 px, 32 epochs"),
            "asymmetric_160": Recipe("configs/cars196/known_gallery/asymmetric_160.yaml", "MobileNetV2 at 160 px"),
            "mobilenet025_views8": Recipe("configs/cars196/known_gallery/mobilenet025_views8.yaml",
                                          "MobileNet-0.25 (ImageNet) at 160 px, 32 epochs, 8 banked views"),
            "asymmetric_224_training": Recipe("configs/cars196/known_gallery/asymmetric_224_training.yaml",
                                              "MobileNetV2 at 224 px, 8 epochs, with the training photos",
                                              training_photos=True),
        },
        trials={
            "mobilenet025_224": Recipe("configs/cars196/known_gallery/trials/mobilenet025_224.yaml",
                                       "MobileNet-0.25 (ImageNet) at 224 px, 32 epochs"),
            "mobilenet025_64ep": Recipe("configs/cars196/known_gallery/trials/mobilenet025_64ep.yaml",
                                        "MobileNet-0.25 (ImageNet) at 160 px, 64 epochs"),
            "mobilenet025_memory": Recipe("configs/cars196/known_gallery/trials/mobilenet025_memory.yaml",
                                          "MobileNet-0.25 (ImageNet) at 160 px, 32 epochs, memory 1,024, soft target"),
            "mobilenet025_training": Recipe("configs/cars196/known_gallery/trials/mobilenet025_training.yaml",
                                            "MobileNet-0.25 (ImageNet) at 160 px, 8 epochs, with the training photos",
                                            training_photos=True),
            "asymmetric_224_16ep": Recipe("configs/cars196/known_gallery/trials/asymmetric_224_16ep.yaml",
                                          "MobileNetV2 at 224 px, 16 epochs"),
            "asymmetric_160_training": Recipe("configs/cars196/known_gallery/trials/asymmetric_160_training.yaml",
                                              "MobileNetV2 at 160 px, 4 epochs, with the training photos",
                                              training_photos=True),
            "asymmetric_160_training_12ep": Recipe(
                "configs/cars196/known_gallery/trials/asymmetric_160_training_12ep.yaml",
                "MobileNetV2 at 160 px, 12 epochs, with the training photos", training_photos=True),
        }, runs="known_gallery_cars196",
        ceilings={
            "mobilenet025_32ep_queries": Recipe("configs/cars196/known_gallery/ceilings/mobilenet025_32ep_queries.yaml",
                                                "MobileNet-0.25 (ImageNet) at 160 px, 32 epochs, on the queries too"),
            "mobilenet025_224_queries": Recipe("configs/cars196/known_gallery/ceilings/mobilenet025_224_queries.yaml",
                                               "MobileNet-0.25 (ImageNet) at 224 px, 32 epochs, on the queries too"),
        }),
}


@dataclasses.dataclass(frozen=True)
class Scored:
    """The photos a table scores, as ``embdistill evaluate`` reads them, and the folder of their gallery."""

    reader: str
    data: Path
    split: str
    tag: str  # names the gallery's folder and bank: "test", "train_held_out"
    folder: Path
    linked: int  # how many photos the gallery's folder links
    part: Part


def scored_photos(args: argparse.Namespace) -> Scored:
    """The tuning's or the test's photos (``args.tune``), their gallery linked into ``args.runs``/photos."""
    collection = COLLECTIONS[args.dataset]
    part = collection.tune if args.tune else collection.test
    reader, data, split, tag = collection.reader, args.data, part.split, part.split
    if part.held_out:  # the teacher's held-out classes, one folder each, read as a folder dataset
        held = yaml.safe_load((args.teacher / "config.yaml").read_text())["data"]["validation_classes"]
        if held != part.held_out:
            raise SystemExit(f"{args.teacher} held out {held} training classes; the tuning expects {part.held_out}")
        data = last_classes(args.data, reader, part.held_out, args.runs / f"{split}_held_out")
        reader, split, tag = "folder", "all", f"{split}_held_out"
    folder = args.runs / "photos" / f"gallery_{tag}"  # never a run's own folder: its outputs would become photos
    return Scored(reader, data, split, tag, folder, link_gallery(data, split, folder, reader), part)


def run_dir(args: argparse.Namespace, row: str, seed: int) -> Path:
    """Where a row's run at ``seed`` goes: ``--runs``/<row>/seed<n>, under tune/ for ``--tune``."""
    return args.runs / ("tune" if args.tune else "") / row / f"seed{seed}"


def teacher_folder(args: argparse.Namespace, teacher: Teacher) -> Path:
    """The teacher's run folder: `make demo`'s, or ``teacher.config``'s under ``--runs``."""
    return args.demo / "teacher" if teacher.config is None else args.runs / Path(teacher.config).stem


def teacher_run(args: argparse.Namespace, teacher: Teacher, overrides: list[str]) -> Path:
    """``teacher_folder``, ``teacher.config`` run into it first when missing."""
    run = teacher_folder(args, teacher)
    if teacher.config is not None and not (run / "summary.yaml").is_file():
        subprocess.run([sys.executable, "-m", "embdistill", "train", "-c", teacher.config, "--no-progress",
                        f"output_dir={args.runs}", f"name={run.name}", f"data.root={args.data}", *overrides],
                       check=True, cwd=ROOT)
    return run
