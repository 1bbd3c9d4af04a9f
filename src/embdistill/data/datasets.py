"""Readers for the metric-learning benchmarks: which image files a dataset split has, with their labels.

Metric learning trains and tests on *disjoint classes* (Yu et al., CVPR 2019 follow
Song et al., 2016): the first half of the classes by official id is the training
set, the second half the retrieval test set. Every reader returns an
:class:`ImageList` and checks its input hard: a missing file, a duplicate id or a
malformed line raises :class:`DatasetError` instead of being dropped, because a
silently smaller dataset gives silently wrong Recall@K numbers. Decoding the
files is data/images.py's job.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embdistill.data.errors import DatasetError
from embdistill.data.imagefiles import IMAGE_EXTENSIONS, list_images

__all__ = [
    "DATASETS",
    "DATASET_URLS",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetError",
    "ImageList",
    "LABEL_FREE_DATASETS",
    "is_label_free",
    "load_dataset",
    "read_cars196",
    "read_cub200",
    "read_folder",
    "read_photos",
    "read_sop",
]

SPLITS = ("train", "test", "all")
DATASET_URLS = {
    "cub200": "https://www.vision.caltech.edu/datasets/cub_200_2011/",
    "cars196": "https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
    "sop": "https://cvgl.stanford.edu/projects/lifted_struct/",
}
_LAYOUTS = {
    "cub200": "<root>/images.txt ('<image id> <relative path>'), "
    "<root>/image_class_labels.txt ('<image id> <class id>'), "
    "<root>/classes.txt ('<class id> <name>'), images under <root>/images/",
    "cars196": "either <root>/cars_annos.mat (struct array 'annotations' with fields "
    "relative_im_path, class, ...; cell array 'class_names'), images under <root>/car_ims/; "
    "or, without cars_annos.mat, one folder per class in class order, "
    "<root>/NNN_Make_Model_Type_Year/<image>",
    "sop": "<root>/Ebay_train.txt and <root>/Ebay_test.txt (header "
    "'image_id class_id super_class_id path', then one row per image), "
    "images at <root>/<path>, e.g. <root>/bicycle_final/111085122871_0.JPG",
    "folder": "<root>/<class name>/<image>, one sub-folder per class, images with "
    f"extensions {', '.join(IMAGE_EXTENSIONS)}",
    "photos": "<root>/**/<image>, images at any depth, no labels (folder names mean nothing), "
    f"extensions {', '.join(IMAGE_EXTENSIONS)}",
}
_MAX_LISTED = 5


def _hint(dataset: str) -> str:
    """The expected layout and, for the public benchmarks, where to download them."""
    text = f"Expected layout for {dataset!r}: {_LAYOUTS[dataset]}."
    if dataset in DATASET_URLS:
        text += f" Download it from {DATASET_URLS[dataset]}"
    return text


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(str(x) for x in items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


# --------------------------------------------------------------------------- ImageList


@dataclass(frozen=True, eq=False)
class ImageList:
    """One split of a dataset: absolute image paths and contiguous integer labels.

    ``labels`` run 0..C-1 within this split, in the order of the original class ids,
    and ``class_names[label]`` names the class, so retrieval results stay readable.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        paths = tuple(Path(p) for p in self.paths)
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        labels.setflags(write=False)  # frozen means frozen, including the array
        names = tuple(str(n) for n in self.class_names)
        if len(paths) != len(labels):
            raise DatasetError(f"{self.name}: {len(paths)} paths but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DatasetError(
                f"{self.name}: labels must lie in 0..{len(names) - 1} "
                f"(one per class name), got {labels.min()}..{labels.max()}"
            )
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", names)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageList:
        """The images at ``indices``; labels and class names are unchanged."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DatasetError(f"{self.name}: subset indices out of range 0..{len(self) - 1}")
        return ImageList(
            paths=tuple(self.paths[i] for i in idx),
            labels=self.labels[idx],
            class_names=self.class_names,
            name=self.name,
        )

    def class_subset(self, label_values: Iterable[int]) -> ImageList:
        """Only the images of the given classes, relabelled 0..len(classes)-1 in label order."""
        keep = np.unique(np.asarray(list(label_values), dtype=np.int64))
        if len(keep) == 0:
            raise DatasetError(f"{self.name}: class_subset needs at least one label")
        unknown = keep[(keep < 0) | (keep >= self.num_classes)]
        if len(unknown):
            raise DatasetError(
                f"{self.name}: class_subset got labels {_listing(unknown.tolist())}, "
                f"valid labels are 0..{self.num_classes - 1}"
            )
        mask = np.isin(self.labels, keep)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        return ImageList(
            paths=tuple(p for p, m in zip(self.paths, mask) if m),
            labels=remap[self.labels[mask]],
            class_names=tuple(self.class_names[i] for i in keep),
            name=self.name,
        )


def _image_list(
    dataset: str,
    split: str,
    records: Sequence[tuple[Path, int]],
    class_names: dict[int, str],
    name: str | None = None,
) -> ImageList:
    """Check that every image exists and map class ids (in id order) to labels 0..C-1."""
    list_name = name or f"{dataset}/{split}"
    if not records:
        raise DatasetError(f"{list_name}: the {split!r} split has no images. {_hint(dataset)}")
    missing = [p for p, _ in records if not p.is_file()]
    if missing:
        raise DatasetError(
            f"{list_name}: {len(missing)} of {len(records)} referenced image files are "
            f"missing, first: {_listing([str(p) for p in missing])}. {_hint(dataset)}"
        )
    class_ids = sorted({c for _, c in records})
    to_label = {c: i for i, c in enumerate(class_ids)}
    return ImageList(
        paths=tuple(p for p, _ in records),
        labels=np.array([to_label[c] for _, c in records], dtype=np.int64),
        class_names=tuple(class_names[c] for c in class_ids),
        name=list_name,
    )


def _split_by_id(
    dataset: str, split: str, records: list[tuple[Path, int]], train_classes: int
) -> list[tuple[Path, int]]:
    """The paper's rule: class ids <= train_classes train, the rest test."""
    if split == "all":
        return records
    chosen = [r for r in records if (r[1] <= train_classes) == (split == "train")]
    if not chosen:
        side = f"<= {train_classes}" if split == "train" else f"> {train_classes}"
        raise DatasetError(
            f"{dataset}/{split}: no images with class id {side} "
            f"(train_classes={train_classes}); check train_classes or the dataset root"
        )
    return chosen


# --------------------------------------------------------------------------- text tables


def _root(root: str | Path, dataset: str) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"{dataset}: dataset root {path} is not a directory. {_hint(dataset)}")
    return path


def _read_rows(path: Path, ncols: int, dataset: str) -> list[tuple[int, list[str], str]]:
    """Rows of a whitespace-separated file as (line number, fields, raw line); blank lines skipped.

    The last column takes the rest of the line, so a path may contain spaces.
    """
    if not path.is_file():
        raise DatasetError(f"{dataset}: missing file {path}. {_hint(dataset)}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            raw = line.rstrip("\r\n")
            if not raw.strip():
                continue
            fields = raw.split(maxsplit=ncols - 1)
            if len(fields) != ncols:
                raise DatasetError(
                    f"{path}:{lineno}: expected {ncols} whitespace-separated fields, "
                    f"got {raw!r}. {_hint(dataset)}"
                )
            rows.append((lineno, fields, raw))
    return rows


def _int(value: str, path: Path, lineno: int, raw: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} must be an integer, got {raw!r}") from None


def _read_id_table(path: Path, dataset: str, *, int_value: bool) -> dict[int, Any]:
    """A two-column '<id> <value>' file as {id: value}; duplicate ids are an error."""
    table: dict[int, Any] = {}
    first_line: dict[int, int] = {}
    for lineno, (key, value), raw in _read_rows(path, 2, dataset):
        k = _int(key, path, lineno, raw, "the id")
        if k in table:
            raise DatasetError(
                f"{path}:{lineno}: duplicate id {k} (first on line {first_line[k]}): {raw!r}"
            )
        table[k] = _int(value, path, lineno, raw, "the value") if int_value else value
        first_line[k] = lineno
    return table


# --------------------------------------------------------------------------- readers


def read_cub200(root: str | Path, split: str, *, train_classes: int = 100) -> ImageList:
    """CUB-200-2011 in its official layout; bounding boxes, parts and attributes are unused."""
    root = _root(root, "cub200")
    images = _read_id_table(root / "images.txt", "cub200", int_value=False)
    image_labels = _read_id_table(root / "image_class_labels.txt", "cub200", int_value=True)
    classes = _read_id_table(root / "classes.txt", "cub200", int_value=False)

    unlabelled = sorted(set(images) - set(image_labels))
    if unlabelled:
        raise DatasetError(
            f"cub200: image ids {_listing(unlabelled)} in {root / 'images.txt'} have no "
            f"label in {root / 'image_class_labels.txt'}"
        )
    unknown_images = sorted(set(image_labels) - set(images))
    if unknown_images:
        raise DatasetError(
            f"cub200: image ids {_listing(unknown_images)} in "
            f"{root / 'image_class_labels.txt'} are not listed in {root / 'images.txt'}"
        )
    unknown_classes = sorted({c for c in image_labels.values() if c not in classes})
    if unknown_classes:
        raise DatasetError(
            f"cub200: {root / 'image_class_labels.txt'} uses class ids "
            f"{_listing(unknown_classes)} that {root / 'classes.txt'} does not list"
        )
    records = [(root / "images" / images[i], image_labels[i]) for i in sorted(images)]
    records = _split_by_id("cub200", split, records, train_classes)
    return _image_list("cub200", split, records, classes)


def read_cars196(root: str | Path, split: str, *, train_classes: int = 98) -> ImageList:
    """Stanford Cars-196 from the official ``cars_annos.mat`` (the 'test' flag is unused), or,
    when there is none, from one folder per class: the first ``train_classes`` folders in
    sorted order train, the rest test."""
    import scipy.io  # slow import, only needed here

    root = _root(root, "cars196")
    mat_path = root / "cars_annos.mat"
    if not mat_path.is_file():
        return _read_cars196_folders(root, split, train_classes)
    try:
        mat = scipy.io.loadmat(mat_path, squeeze_me=True)
    except Exception as err:  # scipy raises several unrelated types for a bad file
        raise DatasetError(f"cars196: cannot read {mat_path}: {err}. {_hint('cars196')}") from err
    for key in ("annotations", "class_names"):
        if key not in mat:
            raise DatasetError(f"cars196: {mat_path} has no variable {key!r}. {_hint('cars196')}")
    annotations = np.atleast_1d(mat["annotations"])
    fields = annotations.dtype.names or ()
    for field in ("relative_im_path", "class"):
        if field not in fields:
            raise DatasetError(
                f"cars196: {mat_path}: 'annotations' lacks field {field!r} "
                f"(has {list(fields)}). {_hint('cars196')}"
            )
    names = [str(n) for n in np.atleast_1d(mat["class_names"])]
    class_names = {i + 1: n for i, n in enumerate(names)}

    records: list[tuple[Path, int]] = []
    seen: dict[str, int] = {}
    for number, ann in enumerate(annotations, start=1):
        rel = str(ann["relative_im_path"]).strip()
        try:
            class_id = int(ann["class"])
        except (TypeError, ValueError):
            raise DatasetError(
                f"cars196: {mat_path}: annotation {number} ({rel}) has class "
                f"{ann['class']!r}, expected an integer 1..{len(names)}"
            ) from None
        if class_id not in class_names:
            raise DatasetError(
                f"cars196: {mat_path}: annotation {number} ({rel}) has class id {class_id}, "
                f"but class_names lists only 1..{len(names)}"
            )
        if rel in seen:
            raise DatasetError(
                f"cars196: {mat_path}: duplicate image {rel!r} in annotations {seen[rel]} "
                f"and {number}"
            )
        seen[rel] = number
        records.append((root / rel, class_id))
    records = _split_by_id("cars196", split, records, train_classes)
    return _image_list("cars196", split, records, class_names)


def _read_cars196_folders(root: Path, split: str, train_classes: int) -> ImageList:
    """Folder ``k`` in sorted order is class id ``k`` (1-based), so the id split is the folder-order split."""
    names = [p.name for p in _class_folders(root, "cars196")]
    if len(names) <= train_classes:
        raise DatasetError(
            f"cars196: {root} has no cars_annos.mat and {len(names)} class folders; the split "
            f"needs more than train_classes={train_classes} (first {train_classes} train, "
            f"the rest test). {_hint('cars196')}"
        )
    records = [(p, k) for k, name in enumerate(names, start=1) for p in _class_images(root / name, "cars196")]
    records = _split_by_id("cars196", split, records, train_classes)
    return _image_list("cars196", split, records, dict(enumerate(names, start=1)))


_SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def _read_sop_file(path: Path) -> list[tuple[Path, int]]:
    rows = _read_rows(path, 4, "sop")
    if not rows or rows[0][1] != _SOP_HEADER:
        where = f"line {rows[0][0]}: {rows[0][2]!r}" if rows else "the file is empty"
        raise DatasetError(
            f"{path}: expected the header {' '.join(_SOP_HEADER)!r} on the first line, "
            f"{where}. {_hint('sop')}"
        )
    records = []
    first_line: dict[int, int] = {}
    for lineno, (image_id, class_id, _super, rel), raw in rows[1:]:
        iid = _int(image_id, path, lineno, raw, "image_id")
        if iid in first_line:
            raise DatasetError(
                f"{path}:{lineno}: duplicate image_id {iid} (first on line {first_line[iid]})"
            )
        first_line[iid] = lineno
        records.append((path.parent / rel, _int(class_id, path, lineno, raw, "class_id")))
    return records


def read_sop(root: str | Path, split: str) -> ImageList:
    """Stanford Online Products: train = Ebay_train.txt, test = Ebay_test.txt, all = both.

    SOP has no class-name file; a class is named by its class id.
    """
    root = _root(root, "sop")
    files = {"train": ["Ebay_train.txt"], "test": ["Ebay_test.txt"]}
    files["all"] = files["train"] + files["test"]
    per_file = {f: _read_sop_file(root / f) for f in files[split]}
    if split == "all":
        train_ids = {c for _, c in per_file["Ebay_train.txt"]}
        shared = sorted(train_ids & {c for _, c in per_file["Ebay_test.txt"]})
        if shared:
            raise DatasetError(
                f"sop: class ids {_listing(shared)} appear in both Ebay_train.txt and "
                "Ebay_test.txt; metric learning needs disjoint classes"
            )
    records = [r for f in files[split] for r in per_file[f]]
    seen: set[Path] = set()
    for path, _ in records:
        if path in seen:
            raise DatasetError(f"sop: image {path} is listed twice in {', '.join(files[split])}")
        seen.add(path)
    return _image_list("sop", split, records, {c: str(c) for _, c in records})


def read_folder(
    root: str | Path,
    split: str,
    *,
    train_classes: Sequence[str] | None = None,
    test_classes: Sequence[str] | None = None,
) -> ImageList:
    """A folder with one sub-folder per class.

    By default the first half of the class folders (sorted by name, the odd one to
    train) train and the rest test. Name ``train_classes`` and/or ``test_classes``
    to choose; a side left out gets the remaining classes, and "all" is their union.
    Hidden files (".DS_Store") are ignored; any other non-image file, or a nested
    folder inside a class folder, is an error rather than silently skipped.
    """
    root = _root(root, "folder")
    all_names = [p.name for p in _class_folders(root, "folder")]
    train, test = _folder_class_split(root, all_names, train_classes, test_classes)
    chosen = {"train": train, "test": test, "all": sorted(set(train) | set(test))}[split]

    records: list[tuple[Path, int]] = []
    for name in chosen:
        images = _class_images(root / name)
        records.extend((p, all_names.index(name)) for p in images)
    class_names = dict(enumerate(all_names))
    return _image_list("folder", split, records, class_names, name=f"folder:{root.name}/{split}")


def _folder_class_split(
    root: Path,
    names: list[str],
    train_classes: Sequence[str] | None,
    test_classes: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    for given, key in ((train_classes, "train_classes"), (test_classes, "test_classes")):
        if isinstance(given, str):
            raise DatasetError(
                f"folder: {key} must be a list of class names, got the string {given!r}"
            )
        unknown = sorted(set(given or ()) - set(names))
        if unknown:
            raise DatasetError(
                f"folder: {key} names classes with no folder in {root}: {_listing(unknown)}; "
                f"known classes: {_listing(names)}"
            )
    if train_classes is None and test_classes is None:
        half = (len(names) + 1) // 2
        return names[:half], names[half:]
    if train_classes is not None:
        train = sorted(train_classes)
    else:
        train = sorted(set(names) - set(test_classes or ()))
    if test_classes is not None:
        test = sorted(test_classes)
    else:
        test = sorted(set(names) - set(train))
    both = sorted(set(train) & set(test))
    if both:
        raise DatasetError(
            f"folder: classes {_listing(both)} are in both train_classes and test_classes"
        )
    return train, test


def _class_folders(root: Path, dataset: str) -> list[Path]:
    """The class sub-folders of ``root`` in sorted order; stray images or none at all are errors."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(
        p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if stray:
        raise DatasetError(
            f"{dataset}: image files directly in {root} belong to no class: {_listing(stray)}. "
            f"{_hint(dataset)}"
        )
    if not class_dirs:
        raise DatasetError(f"{dataset}: {root} has no class sub-folders. {_hint(dataset)}")
    return class_dirs


def _class_images(class_dir: Path, dataset: str = "folder") -> list[Path]:
    images, other = [], []
    for p in sorted(class_dir.iterdir()):
        if p.name.startswith("."):
            continue
        (images if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS else other).append(p)
    if other:
        raise DatasetError(
            f"{dataset}: {class_dir} holds entries that are not images: "
            f"{_listing([p.name for p in other])}. {_hint(dataset)}"
        )
    if not images:
        raise DatasetError(f"{dataset}: class folder {class_dir} has no images. {_hint(dataset)}")
    return images


def read_photos(root: str | Path, split: str) -> ImageList:
    """A folder of photos in any layout, nested or flat, with no labels: a label-free training set.

    Every image under ``root`` at any depth (``imagefiles.list_images``: hidden files
    and folders skipped) is one "class" of its own, named by its path relative to
    ``root``. So ``data.validation_classes`` (a count or a share of the train
    "classes") holds out that many photos, and which ones is fixed by a hash of each
    relative path: the label of a photo is the rank of that hash, and the held-out
    "classes" are the last labels, a spread-out share of the folders rather than
    the last folder. There is no test split: a label-free run is scored on its
    held-out photos (``train.select_metric: knn_agreement@10``); "train" and "all"
    are every photo.
    """
    import hashlib

    root = _root(root, "photos")
    if split == "test":
        raise DatasetError(
            f"photos: {root} has no labels and so no test split; a label-free run is scored on the photos "
            "data.validation_classes holds out. " + _hint("photos")
        )
    try:
        paths = list_images(root, what="photos: data.root")
    except DatasetError as err:
        raise DatasetError(f"{err}. {_hint('photos')}") from None
    names = [p.relative_to(root.absolute()).as_posix() if p.is_relative_to(root.absolute()) else str(p) for p in paths]
    order = sorted(range(len(names)), key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())
    labels = np.empty(len(names), dtype=np.int64)
    labels[order] = np.arange(len(names))
    return ImageList(paths=tuple(paths), labels=labels, class_names=tuple(names[i] for i in order),
                     name=f"photos:{root.name}/{split}")


DATASETS: dict[str, Callable[..., ImageList]] = {
    "cub200": read_cub200,
    "cars196": read_cars196,
    "sop": read_sop,
    "folder": read_folder,
    "photos": read_photos,
}
# Readers with no labels: every image is its own class (read_photos). A run on one learns from the teacher's
# terms alone (train.metric_weight: 0), in random batches (train.batch_size), and is scored by knn_agreement.
LABEL_FREE_DATASETS = frozenset({"photos"})


def is_label_free(dataset: str | None) -> bool:
    """Whether ``data.dataset`` names a reader without labels (``photos``)."""
    return dataset in LABEL_FREE_DATASETS


def load_dataset(name: str, root: str | Path, split: str, **kwargs: Any) -> ImageList:
    """Read one split of a registered dataset; bad names, splits and keywords raise DatasetError."""
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {known}")
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    reader = DATASETS[name]
    try:
        inspect.signature(reader).bind(root, split, **kwargs)
    except TypeError:
        accepted = [p for p in inspect.signature(reader).parameters if p not in ("root", "split")]
        raise DatasetError(
            f"{name}: unexpected options {sorted(kwargs)}; accepted: {accepted or 'none'}"
        ) from None
    return reader(root, split, **kwargs)

