"""A smoke run's own `make demo`: the benchmarks built on the demo's teacher and bank check their plumbing on it, in
seconds, on a fresh clone (no ``runs/demo``), without reading or writing anything of the real runs."""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import cub_subset

# 8 train species (2 held out) and 8 test species, 8 images each, at 32 px: every step of a run, in seconds
SPECIES, IMAGES = 8, 8
SMALL = ("data.image_size=32", "data.num_workers=0", "data.cache_images=false", "train.batches_per_epoch=2",
         "eval.batch_size=64")
# a labelled run on the subset: P x K batches and held-out species that fit in it
LABELLED = (*SMALL, "data.validation_classes=2", "train.classes_per_batch=3", "train.images_per_class=4")


def tiny_demo(workdir: Path, cub100: Path) -> tuple[Path, Path]:
    """``embdistill demo``'s three runs, shrunk, into ``workdir``/demo (reused if finished), and the subset they ran
    on: (the demo's folder, the subset's CUB root)."""
    from embdistill.demo import run_demo

    data = cub_subset(cub100, workdir, SPECIES, IMAGES)
    demo = workdir / "demo"
    if not (demo / "distilled" / "summary.yaml").is_file():
        run_demo(data, demo, progress=False, overrides=LABELLED)
    return demo, data


def distilled_on(demo: Path, data: Path) -> list[str]:
    """The overrides that point a demo-based recipe at the tiny demo's teacher and bank and at its subset (the rows'
    epochs, views and losses stay theirs; ``train.epochs=1`` keeps each run to two steps)."""
    return [*LABELLED, "train.epochs=1", f"data.root={data}", f"distill.teacher={demo / 'teacher'}",
            f"distill.bank={demo / 'teacher.bank'}"]
