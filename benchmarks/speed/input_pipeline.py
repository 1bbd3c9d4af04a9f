"""Feeding the small student: does a real run of MobileNet-0.25 train as fast as its network allows?

MobileNet-0.25 from ImageNet weights (``configs/cub100/strong/mobilenet025_imagenet.yaml``: multi-similarity
loss, P×K 16 × 4, Adam) on the 44-species split (``data.validation_classes=14``), at 96 and 128 px:

- forward + backward: images/s of training steps on random tensors of the batch's shape, with the
  run's loss and optimizer (no data loading at all): the most a run could reach;
- real run: images/s of ``engine.train.run`` over ``--epochs`` epochs (the decoded-image cache, the config's
  2 threads), from the run's step log between its first and last logged step (the loader's start-up before
  the first step left out); the summary's overall rate is recorded too. Once with each of ``--workers``
  loader processes: the config's one, which competes with the 2 training threads for 2 cores, and none,
  which loads each batch in the training process between steps;
- the ratio of the two; issue #21 (item 7) asks for >= 0.8;
- the loader's cost per image (``ViewDataset.__getitem__``) now and the old way (torch's global RNG forked
  and reseeded per image, float views normalised per image in the worker), and the per-batch normalisation
  that replaced the latter (``engine.batches.views.to_input``), per image.

    python -m benchmarks.speed.input_pipeline          # writes benchmarks/results/input_pipeline.{json,md}
    python -m benchmarks.speed.input_pipeline --render # the Markdown again from the JSON
    python -m benchmarks.speed.input_pipeline --smoke --out /tmp/pipe --results /tmp/pipe/input_pipeline.json

Time only on an otherwise idle machine: every figure is a rate of this machine's 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from embdistill.config import ExperimentConfig, load_config
from embdistill.data.images import DecodedImageCache, ImageDataset
from embdistill.data.transforms import PadToSquare, render_box
from embdistill.engine.batches.loaders import RESIZE_RATIO, load_splits, view_crop
from embdistill.engine.train.optim import build_optimizer
from embdistill.engine.train.rng import seed_everything
from embdistill.engine.train import run
from embdistill.engine.batches.views import ViewDataset, crop_seed, to_input
from embdistill.engine.train.objective import build_objective
from embdistill.models.embedder import create_embedder

from benchmarks.common import RESULTS, ROOT, SHARED, command, machine, repo_relative

CONFIG = ROOT / "configs" / "cub100" / "strong" / "mobilenet025_imagenet.yaml"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SIZES = (96, 128)
TARGET = 0.8


def old_getitem(views: ViewDataset, index: int) -> tuple[Tensor, Tensor, int, int, int]:
    """``views[index]`` as the loader made it before issue #21 item 7: torchvision's box draw from torch's
    global RNG, forked and reseeded per image; float views normalised (and for ``pad`` padded) per image.

    Kept to time it here and, in tests/test_input_pipeline.py, to check that the new path gives the same views.
    """
    image = views.images.load_image(index)
    label = int(views.images.items.labels[index] if views.labels is None else views.labels[index])
    c = views.crop
    aspect = image.width / image.height if c.resize != "crop" else 1.0  # data/transforms.py draw_box
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(crop_seed(views.seed, index, views.view))
        box = T.RandomResizedCrop.get_params(image, list(c.scale), [c.ratio[0] * aspect, c.ratio[1] * aspect])
        flip = bool(torch.rand(1) < 0.5)

    def render(picture, size: int) -> Tensor:
        crop = render_box(picture, box, size, c.resize)
        crop = TF.hflip(crop) if flip else crop
        tensor = TF.normalize(TF.to_tensor(crop), c.normalization.mean, c.normalization.std)
        return PadToSquare(size)(tensor) if c.resize == "pad" else tensor

    student = render(image if views.degrade is None else views.degrade(image), c.student_size)
    if not views.teacher_images:
        teacher = torch.empty(0)
    elif views.degrade is None and c.teacher_size == c.student_size:
        teacher = student
    else:
        teacher = render(image, c.teacher_size)
    return student, teacher, label, index, views.view


def config(args: argparse.Namespace, size: int, workers: int | None = None) -> ExperimentConfig:
    """The benchmark's run of MobileNet-0.25 at ``size`` px with ``workers`` loader processes (None: the
    config's); ``--smoke``: a few steps of tiny batches."""
    weights = Path(args.weights)
    overrides = [f"name=mobilenet025_{size}px_w{workers}", f"output_dir={Path(args.out).resolve()}",
                 f"data.root={Path(args.data).resolve()}", f"data.image_size={size}", "data.validation_classes=14",
                 f"train.epochs={args.epochs}",
                 "eval.every_epochs=0", "eval.initial=false", "train.select=last", "train.log_every=5",
                 f"model.pretrained={weights.resolve() if weights.is_file() else 'false'}"]
    if not weights.is_file():  # --smoke without the weights: frozen BatchNorm needs ImageNet's statistics
        overrides.append("model.freeze_batchnorm=false")
    if workers is not None:
        overrides.append(f"data.num_workers={workers}")
    if args.smoke:
        overrides += ["train.classes_per_batch=4", "train.images_per_class=4", "train.batches_per_epoch=3", "train.log_every=1"]
    return load_config(CONFIG, overrides)


def forward_backward(cfg: ExperimentConfig, steps: int, warmup: int) -> float:
    """Images/s of the run's training step on random inputs: forward, loss, backward, Adam step."""
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    seed_everything(cfg.seed)
    student = create_embedder(cfg.model)
    objective = build_objective(cfg, student, None)
    optimizer = build_optimizer(cfg, student, objective)
    t = cfg.train
    images = torch.randn(t.classes_per_batch * t.images_per_class, 3, cfg.data.image_size, cfg.data.image_size)
    labels = torch.arange(t.classes_per_batch).repeat_interleave(t.images_per_class)
    student.train()
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        parts = objective(student(images, objective.student_layers).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
    return steps * len(images) / (time.perf_counter() - started)


def real_run(cfg: ExperimentConfig) -> dict[str, float]:
    """Train for real; images/s from the step log (first to last logged step) and from the summary."""
    result = run(cfg, progress=False)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    batch = cfg.train.classes_per_batch * cfg.train.images_per_class
    first, last = steps[0], steps[-1]  # images_per_s = images seen / seconds, both since the clock started
    seconds = [r["step"] * batch / r["images_per_s"] for r in (first, last)]
    summary = yaml.safe_load((result.run_dir / "summary.yaml").read_text())
    return {"steps": last["step"], "images_per_s": (last["step"] - first["step"]) * batch / (seconds[1] - seconds[0]),
            "summary_images_per_s": summary["train_images_per_s"], "train_seconds": summary["train_seconds"]}


def per_image_ms(cfg: ExperimentConfig, images: int, repeats: int) -> dict[str, float]:
    """Milliseconds per image of the loader's work, old and new, on the run's decoded-image cache, in one
    thread like a loader worker; and of the per-batch normalisation that the new path adds, per image."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    items = load_splits(cfg.data).train.subset(range(images))
    cache = DecodedImageCache(size=round(cfg.data.image_size * RESIZE_RATIO))
    cache.fill(items.paths)
    normalization = create_embedder(dataclasses.replace(cfg.model, pretrained=False)).normalization
    views = ViewDataset(ImageDataset(items, cache=cache), view_crop(cfg, normalization), seed=0, teacher_images=False)

    def best(work, count: int = images) -> float:  # ms per image in the least disturbed of the repeats
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append((time.perf_counter() - started) * 1e3 / count)
        return min(times)

    new = best(lambda: [views[i] for i in range(images)])
    old = best(lambda: [old_getitem(views, i) for i in range(images)])
    batch = torch.stack([views[i % images][0] for i in range(cfg.train.classes_per_batch * cfg.train.images_per_class)])
    torch.set_num_threads(threads)  # the training process's
    to_input(batch, normalization, torch.device("cpu"))  # once untimed: its constants are made on the first call
    normalise = best(lambda: to_input(batch, normalization, torch.device("cpu")), len(batch))
    return {"old": old, "new": new, "to_input": normalise}


def measure(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    rows = []
    for size in SIZES:
        cfg = config(args, size)
        steps, warmup = (2, 1) if args.smoke else (30, 5)
        images, repeats = (16, 1) if args.smoke else (400, 3)
        fb = forward_backward(cfg, steps, warmup)
        row = {"image_size": size, "batch": cfg.train.classes_per_batch * cfg.train.images_per_class,
               "forward_backward_images_per_s": fb, "runs": [], "getitem_ms": per_image_ms(cfg, images, repeats)}
        for workers in args.workers:
            r = {"workers": workers, **real_run(config(args, size, workers))}
            r["ratio"] = r["images_per_s"] / fb
            row["runs"].append(r)
            print(f"[input_pipeline] {size} px, {workers} loader worker(s): forward+backward {fb:.0f} img/s, "
                  f"run {r['images_per_s']:.0f} img/s, ratio {r['ratio']:.2f}", flush=True)
        rows.append(row)
    return {"command": command("benchmarks.speed.input_pipeline", [shlex.join(sys.argv[1:])]), "date": time.strftime("%Y-%m-%d"),
            "smoke": args.smoke, "machine": {**machine(), "torch": torch.__version__, "threads": cfg.threads},
            "weights": WEIGHTS.name if Path(args.weights).is_file() else None, "epochs": args.epochs, "target": TARGET,
            "rows": rows, "minutes": round((time.perf_counter() - started) / 60, 1)}


def table(result: dict) -> str:
    m = result["machine"]
    lines = ["# Feeding MobileNet-0.25: a real run's images/s against its forward + backward's", "",
             f"`{result['command']}` on {result['date']}: {m['cpu_count']} CPUs ({m['processor']}), {m['platform']}, "
             f"torch {m['torch']}, {m['threads']} threads; {result['epochs']} epoch(s) a run on the "
             f"44-species split, multi-similarity loss. Target: a run at >= {result['target']:.0%} of forward + backward.", "",
             "| px | batch | loader workers | forward + backward img/s | run img/s (step log) | run img/s (summary) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for r in row["runs"]:
            lines.append(f"| {row['image_size']} | {row['batch']} | {r['workers']} | {row['forward_backward_images_per_s']:.0f} | "
                         f"{r['images_per_s']:.0f} | {r['summary_images_per_s']:.0f} | {r['ratio']:.2f} |")
    lines += ["", "The loader's work per image, in one thread (ms): `ViewDataset.__getitem__` the old way (forked RNG, "
              "float views) and now (uint8 views), and the per-batch `to_input` (normalisation) that the new way adds, "
              "per image, in the training process.", "",
              "| px | old __getitem__ | new __getitem__ | to_input |", "|---|---|---|---|"]
    for row in result["rows"]:
        g = row["getitem_ms"]
        lines.append(f"| {row['image_size']} | {g['old']:.3f} | {g['new']:.3f} | {g['to_input']:.4f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "data" / "cub100"), help="cub100 root")
    p.add_argument("--weights", default=str(WEIGHTS), help="MobileNet-0.25's Keras ImageNet weights (random init if absent)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each real run")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="loader processes of the real runs, one run each")
    p.add_argument("--out", default=str(ROOT / "runs" / "input_pipeline"), help="run directories")
    p.add_argument("--results", help="the JSON (the Markdown beside it); default benchmarks/results/input_pipeline.json")
    p.add_argument("--smoke", action="store_true", help="a few tiny steps of everything: the plumbing")
    p.add_argument("--render", action="store_true", help="no runs: the Markdown again from the --results JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.epochs = 1
    results = Path(args.results) if args.results else RESULTS / "input_pipeline.json"
    if args.render:
        result = json.loads(results.read_text())
    else:
        result = measure(args)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(repo_relative(result), indent=1) + "\n")
    text = table(result)
    results.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
