"""Which ``data.resize`` suits Cars-196's wide images? The untrained teacher's R@1 in each mode.

The shared cars196 images are bounding-box crops about twice as wide as tall (longer side 256 px):
``crop`` (a centred square, the default) cuts the front and back off most cars, ``squash`` stretches the
whole car to a square, ``pad`` fits it whole on a zero border. The teacher of
``configs/cars196/cpu/teacher.yaml`` (EfficientNet-Lite0's pooled ImageNet features: no head, no
training) is scored at 224 px in each mode on the last 24 of the 98 train models, held out, so the
choice never looks at the test models. Every image of those models is a query against all the others.

    python -m benchmarks.tuning.cars196_resize          # writes benchmarks/results/cars196_resize.json
    python -m benchmarks.tuning.cars196_resize --smoke  # 3 images of 4 models per mode, to a temporary folder (or --out): the plumbing
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from embdistill.config import load_config
from embdistill.data.datasets import ImageList
from embdistill.data.transforms import RESIZE_MODES
from embdistill.engine.scoring.embed import evaluate_embedder
from embdistill.engine.batches.loaders import Splits, evaluation_set, load_splits
from embdistill.models.embedder import create_embedder

from benchmarks.common import KEYS, RESULTS, ROOT, SHARED, repo_relative, smoke_folder

TEACHER = ROOT / "configs" / "cars196" / "cpu" / "teacher.yaml"
VALIDATION_CLASSES = 24
IMAGE_SIZE = 224


def first_images(items: ImageList, classes: int, per_class: int) -> ImageList:
    """The first ``per_class`` images of each of the first ``classes`` classes: a smoke test's few images."""
    small = items.class_subset(range(classes))
    return small.subset([i for c in range(classes) for i in np.flatnonzero(small.labels == c)[:per_class]])


def score_modes(modes: list[str], out: Path, command: str, data_root: Path, smoke: bool = False) -> list[dict]:
    """Score the teacher in each mode, writing ``out`` after each one (a stopped run keeps what it scored)."""
    overrides = [f"data.root={data_root}", f"data.image_size={IMAGE_SIZE}",
                 f"data.validation_classes={VALIDATION_CLASSES}", "data.num_workers=1"]
    base = load_config(TEACHER, overrides)
    torch.set_num_threads(base.threads or 2)
    splits = load_splits(base.data)
    held_out = first_images(splits.eval, 4, 3) if smoke else splits.eval
    model = create_embedder(base.model).eval()
    results = []
    for resize in modes:
        cfg = load_config(TEACHER, [*overrides, f"data.resize={resize}"])
        loader = evaluation_set(cfg, model.normalization, splits=Splits(splits.train, held_out, "validation", held_out)).loader
        start = time.perf_counter()
        metrics = evaluate_embedder(model, loader, torch.device("cpu"), ks=cfg.eval.ks, progress=False)
        results.append({"resize": resize, "image_size": IMAGE_SIZE, "backbone": cfg.model.backbone, "dim": model.dim,
                        "split": splits.eval_name, "classes": held_out.num_classes, "images": len(held_out),
                        "seconds": round(time.perf_counter() - start, 1),
                        **{k: round(metrics[k], 4) for k in KEYS if k in metrics}})
        print(json.dumps(results[-1]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "command": command, "date": time.strftime("%Y-%m-%d"), "teacher_config": repo_relative(str(TEACHER)),
            "data": repo_relative(str(data_root)), "validation_classes": VALIDATION_CLASSES, "smoke": smoke,
            "modes": results,
        }, indent=1) + "\n")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "data" / "cars196"), help="the cars196 folder")
    p.add_argument("--modes", nargs="+", default=list(RESIZE_MODES), choices=RESIZE_MODES)
    p.add_argument("--smoke", action="store_true", help="3 images of 4 held-out models, written to a temporary folder")
    p.add_argument("--out", type=Path, help="the JSON (default: benchmarks/results/cars196_resize.json; "
                                            "with --smoke in a temporary folder)")
    args = p.parse_args()
    out = args.out or (smoke_folder("cars196_resize") / "cars196_resize.json" if args.smoke else RESULTS / "cars196_resize.json")
    command = "python -m benchmarks.tuning.cars196_resize" + (" --smoke" if args.smoke else "")
    if args.modes != list(RESIZE_MODES):
        command += " --modes " + " ".join(args.modes)
    rows = score_modes(args.modes, out, command, Path(args.data).resolve(), smoke=args.smoke)
    print(f"\n{'resize':<8} R@1    MAP@R  ({rows[0]['images']} images of {rows[0]['classes']} held-out models, "
          f"{IMAGE_SIZE} px) -> {out}")
    for row in rows:
        print(f"{row['resize']:<8} {100 * row['recall@1']:5.1f}  {100 * row['map@r']:5.1f}")


if __name__ == "__main__":
    main()
