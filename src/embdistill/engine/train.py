"""The training loop: one function, readable top to bottom.

``run(config)`` trains an embedder with a metric loss and, when ``config.distill``
is set, distils a frozen teacher into it. Everything else (data, models, losses,
metrics) is built by the modules named in the imports.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from embdistill.config import ExperimentConfig, to_dict
from embdistill.data.datasets import DatasetError, ImageList
from embdistill.engine.checkpoint import check_teacher, embedder_from_checkpoint, load_checkpoint, save_checkpoint
from embdistill.engine.distributed import World, process_group
from embdistill.engine.evaluate import embed_loader, evaluate_embedder
from embdistill.engine.loaders import (
    eval_loader,
    hidden_label_mask,
    image_cache,
    load_splits,
    student_degrade,
    train_loader,
    unlabelled_items,
    unlabelled_views,
    view_size,
)
from embdistill.engine.precision import autocast_dtype, memory_format
from embdistill.engine.resume import BatchStream, StopSignals, TrainState, resume_checkpoint, start_fresh
from embdistill.engine.runlog import RunLog
from embdistill.engine.teacher import FrozenTeacher, TeacherCache
from embdistill.evaluation.metrics import retrieval_metrics
from embdistill.losses.distill import build_distill_loss
from embdistill.losses.metric import build_metric_loss
from embdistill.losses.objective import Objective, all_finite
from embdistill.models.embedder import Embedder, create_embedder
from embdistill.models.output import EmbedderOutput
from embdistill.plots import plot_training_curves
from embdistill.report import save_test_embeddings, write_run_report


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the terms and the last checkpoint."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    checkpoint: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_objective(cfg: ExperimentConfig, student: Embedder, teacher: Embedder | None, gather=None) -> Objective:
    """The metric loss plus each configured distillation term, sized to the two networks.

    ``gather`` (data parallelism) lets the batch-level losses see every process's batch.
    """
    metric = build_metric_loss(cfg.train.metric_loss, **cfg.train.metric_loss_args)
    terms = {}
    for term in cfg.distill.terms if cfg.distill else []:
        assert teacher is not None
        args = dict(term.args)
        if term.name == "absolute":
            args.setdefault("student_dim", student.dim)
            args.setdefault("teacher_dim", teacher.dim)
        if term.name == "hint":
            args.setdefault("student_channels", student.backbone.channels[args["student_layer"]])
            args.setdefault("teacher_channels", teacher.backbone.channels[args["teacher_layer"]])
        key = term.name if term.name not in terms else f"{term.name}_{len(terms)}"
        terms[key] = (term.weight, build_distill_loss(term.name, **args))
    return Objective(metric, terms, gather)


def build_optimizer(cfg: ExperimentConfig, model: Embedder, objective: nn.Module) -> torch.optim.Optimizer:
    """Adam with the backbone at ``backbone_lr_mult`` × the head's learning rate.

    (The paper's code meant 0.1× on the backbone, but passed a single parameter
    group, so its optimizer ignored it. Here the groups are real.)
    """
    backbone, head = model.param_groups()
    t = cfg.train
    return torch.optim.Adam(
        [
            {"params": backbone, "lr": t.lr * t.backbone_lr_mult, "name": "backbone"},
            {"params": head + list(objective.parameters()), "lr": t.lr, "name": "head"},
        ],
        weight_decay=t.weight_decay,
    )


def build_scheduler(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step learning-rate factor: linear warm-up, then cosine, step or constant."""
    t = cfg.train
    total, warmup = t.epochs * steps_per_epoch, int(t.warmup_epochs * steps_per_epoch)
    if t.schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"train.schedule must be cosine, step or constant, got {t.schedule!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if t.schedule == "step":
            return 0.1 ** sum(step >= e * steps_per_epoch for e in t.step_epochs)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_teacher(cfg: ExperimentConfig, device: torch.device) -> Embedder:
    """The frozen teacher, checked against ``distill.teacher_backbone``/``teacher_dim``/``strict_teacher``."""
    d = cfg.distill
    payload = load_checkpoint(d.teacher)
    teacher = embedder_from_checkpoint(payload)
    for note in check_teacher(payload, d.teacher, teacher, backbone=d.teacher_backbone, dim=d.teacher_dim,
                              image_size=d.teacher_image_size or cfg.data.image_size, strict_image_size=d.strict_teacher):
        print(f"[{cfg.name}] note: {note}")
    return teacher.to(device)


def check_pk_classes(train: ImageList, labels: np.ndarray) -> None:
    """P×K batches need a positive pair in every class: name the classes with a single image."""
    counts = np.bincount(labels[labels >= 0], minlength=train.num_classes)
    single = [train.class_names[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise DatasetError(f"{train.name}: class(es) {', '.join(single[:10])}{' ...' if len(single) > 10 else ''} "
                           "have only 1 training image; P×K batches need at least 2 per class. Add images "
                           "or remove the class from the dataset's metadata")


def run(cfg: ExperimentConfig, progress: bool = True, resume: bool = False) -> RunResult:
    """Train (and distil, if configured), evaluate, and leave everything in ``cfg.run_dir``.

    ``resume=True`` continues from ``cfg.run_dir/last.pt`` when there is one (see
    engine/resume.py) and starts afresh otherwise. Under ``torchrun`` every process
    runs this data-parallel (engine/distributed.py); rank 0 alone logs, evaluates
    and writes the run directory.
    """
    with process_group(resolve_device(cfg.device)) as (world, device):
        return _run(cfg, world, device, progress, resume)


def _run(cfg: ExperimentConfig, world: World, device: torch.device, progress: bool, resume: bool) -> RunResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    amp, layout = autocast_dtype(cfg.train.precision, device), memory_format(cfg.train.channels_last, device)
    say = print if world.is_main else _quiet
    run_dir = cfg.run_dir
    payload = resume_checkpoint(cfg) if resume else None
    if payload is None and world.is_main:
        start_fresh(cfg)
    world.barrier()
    log = RunLog(run_dir, enabled=world.is_main)

    # Data and networks.
    skipped: list = []
    splits = load_splits(cfg.data, skipped)
    if skipped and world.is_main:
        (run_dir / "skipped_images.txt").write_text("".join(f"{path}\t{why}\n" for path, why in skipped))
        say(f"[{cfg.name}] skipped {len(skipped)} unreadable image(s), listed in {run_dir / 'skipped_images.txt'}")
    student = create_embedder(cfg.model).to(device, memory_format=layout)
    teacher = load_teacher(cfg, device).to(memory_format=layout) if cfg.distill and cfg.distill.terms else None
    gather = world.gather if world.distributed and cfg.train.gather_global_batch else None
    objective = build_objective(cfg, student, teacher, gather).to(device)
    world.broadcast_parameters(objective)
    distill = cfg.distill
    semi = distill.semi_supervised if distill else None
    hidden = hidden_label_mask(splits.train, semi.hide_label_fraction, cfg.seed) if semi and not semi.folder else None
    labels = np.where(hidden, -1, splits.train.labels) if hidden is not None else splits.train.labels
    check_pk_classes(splits.train, labels)
    cache = image_cache(cfg.data, splits.train, view_size(cfg))
    loader, views, sampler = train_loader(cfg, splits.train, student.normalization, labels, cache, world.rank, world.size)
    unlabelled_stream = None
    unlabelled = unlabelled_items(cfg, splits.train, hidden)
    if unlabelled is not None:
        unlabelled_stream = BatchStream(unlabelled_views(cfg, unlabelled, student.normalization, cache),
                                        semi.unlabelled_per_batch, cfg.seed, cfg.data.num_workers, world.rank, world.size)
    teach = teach_unlabelled = None
    if teacher is not None:
        num_views = distill.cache_views if distill.cache_teacher else 0
        make_cache = (lambda n: TeacherCache(n, num_views)) if num_views else (lambda n: None)
        teach = FrozenTeacher(teacher, objective.teacher_layers, student.normalization, distill.teacher_precision, make_cache(len(splits.train)))
        if unlabelled is not None:
            teach_unlabelled = FrozenTeacher(teacher, objective.teacher_layers, student.normalization, distill.teacher_precision, make_cache(len(unlabelled)))
    cq = distill.cross_quality if distill else None
    test_degrade = student_degrade(cfg) if cq and cq.degrade_test else None
    test_loader = eval_loader(splits.eval, cfg.data.image_size, student.normalization, cfg.eval.batch_size, cfg.data.num_workers, test_degrade)
    model = world.wrap(student, device)  # DDP on several processes
    optimizer = build_optimizer(cfg, student, objective)
    scheduler = build_scheduler(cfg, optimizer, len(loader))
    checkpoint = run_dir / "last.pt"
    state = TrainState(run_dir, student, optimizer, scheduler, objective, sampler,
                       {"train": teach, "unlabelled": teach_unlabelled}, unlabelled_stream, writes=world.is_main)

    def evaluate(epoch: int) -> dict[str, float]:
        metrics = evaluate_embedder(student, test_loader, device, cfg.eval.ks, progress)
        log.write("eval", epoch=epoch, split=splits.eval_name, **metrics)
        return metrics

    def save() -> None:
        if not world.is_main:
            return
        save_checkpoint(checkpoint, {
            "model_config": to_dict(cfg.model),
            "model_state": student.state_dict(),
            "normalization": (student.normalization.mean, student.normalization.std),
            "image_size": cfg.data.image_size,
            "config": to_dict(cfg),
            **state.state_dict(),  # epoch, step, optimizer, scheduler, objective, and what resuming needs
        })

    say(f"[{cfg.name}] {cfg.model.backbone} -> {cfg.model.dim}-d on {len(splits.train)} images "
        f"/ {splits.train.num_classes} classes; evaluating on {len(splits.eval)} {splits.eval_name} images; device {device}"
        + (f" x {world.size} processes" if world.distributed else ""))
    for name, term in objective.terms.items():
        say(f"[{cfg.name}] distillation term {name} (λ={objective.weights[name]}): {term}")
    if payload is not None:
        state.load_state_dict(payload)
        say(f"[{cfg.name}] resuming from {checkpoint} after step {state.step} (epoch {state.epoch + 1}, batch {state.batch})")
    elif cfg.eval.initial and world.is_main:
        state.initial = evaluate(0)
        say(f"[{cfg.name}] before training: " + _fmt(state.initial))

    # The loop. SIGINT/SIGTERM: finish the step, checkpoint, raise Interrupted.
    state.start_clock()
    with StopSignals() as stop:
        for epoch in range(state.epoch, cfg.train.epochs):
            sampler.set_epoch(epoch)
            view = epoch % distill.cache_views if teacher is not None and distill.cache_teacher else epoch
            views.set_view(view)
            if unlabelled_stream is not None:
                unlabelled_stream.set_view(view)
            model.train()
            bar = tqdm(state.batches(loader), desc=f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}",
                       total=len(loader), initial=state.batch, leave=False, disable=not (progress and world.is_main))
            for student_images, teacher_images, batch_labels, indices, batch_views in bar:
                student_images = student_images.to(device, memory_format=layout)
                teacher_images = teacher_images.to(device, memory_format=layout)
                batch_labels = batch_labels.to(device)
                teacher_out = teach(teacher_images, indices, batch_views) if teach else None
                if unlabelled_stream is not None:
                    student_images, batch_labels, teacher_out = _add_unlabelled(
                        student_images, batch_labels, teacher_out, next(unlabelled_stream), teach_unlabelled, device)
                with torch.autocast(device.type, amp or torch.bfloat16, enabled=amp is not None):
                    student_out = model(student_images, objective.student_layers)
                parts = objective(student_out.float(), batch_labels, teacher_out)
                values = world.average(parts)  # the global batch's values, the same on every process
                if not all_finite(values):
                    if cfg.train.nan_policy == "skip":
                        log.write("skipped_step", epoch=epoch, step=state.step, **values)
                        state.skipped_steps += 1
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    last = checkpoint if checkpoint.exists() else "none yet"
                    raise NonFiniteLossError(f"non-finite loss at step {state.step} (epoch {epoch + 1}): {values}; last good checkpoint: {last}")
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                world.average_gradients(objective.parameters())  # DDP averages the student's
                optimizer.step()
                scheduler.step()
                state.step += 1
                state.seen += len(student_images) * world.size
                if state.step % cfg.train.log_every == 0 or state.step == 1:
                    values = {k: round(v, 5) for k, v in values.items()}
                    bar.set_postfix(loss=values["loss"])
                    log.write("step", epoch=epoch, step=state.step, lr=scheduler.get_last_lr()[-1],
                              images_per_s=state.seen / state.seconds, **values)
                stop.adopt(world.any_signal(stop.signum, device))  # every process stops after the same step
                if stop.signum or state.checkpoint_due(cfg.train.checkpoint_every, len(loader)):
                    save()
                    stop.raise_if_requested(cfg, state)
            state.end_epoch()
            if cfg.eval.every_epochs and (epoch + 1) % cfg.eval.every_epochs == 0 and epoch + 1 < cfg.train.epochs and world.is_main:
                say(f"[{cfg.name}] epoch {epoch + 1}: " + _fmt(evaluate(epoch + 1)))
            save()
            world.barrier()  # the others wait for rank 0's evaluation and checkpoint
            stop.raise_if_requested(cfg, state)

    train_seconds = state.seconds
    if not world.is_main:  # rank 0 evaluates and writes the reports; wait for its metrics
        return RunResult(run_dir, world.broadcast(None), checkpoint)
    embeddings, eval_labels = embed_loader(student, test_loader, device, progress)
    metrics = retrieval_metrics(embeddings, eval_labels, ks=cfg.eval.ks)
    log.write("eval", epoch=cfg.train.epochs, split=splits.eval_name, **metrics)
    save_test_embeddings(run_dir, embeddings, eval_labels, splits.eval.paths, splits.eval.class_names)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "split": splits.eval_name,
        **metrics,
        "train_seconds": round(train_seconds, 1),
        "train_images_per_s": round(state.seen / max(train_seconds, 1e-9), 1),
        "teacher_forward_images": sum(t.forward_passes for t in (teach, teach_unlabelled) if t is not None),
        "skipped_images": len(skipped),
        "skipped_steps": state.skipped_steps,
        **({"processes": world.size} if world.distributed else {}),
    }
    if state.initial is not None:
        summary["initial"] = state.initial
    (run_dir / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    plot_training_curves(run_dir)
    write_run_report(run_dir, device=cfg.device, progress=progress)  # stats.json, retrieval_grid.png
    print(f"[{cfg.name}] done in {train_seconds:.0f} s: " + _fmt(metrics))
    if skipped or state.skipped_steps:
        print(f"[{cfg.name}] skipped {len(skipped)} unreadable image(s) and {state.skipped_steps} non-finite step(s)")
    return RunResult(run_dir, world.broadcast(metrics), checkpoint)


def _add_unlabelled(images, labels, teacher_out, batch, teach_unlabelled, device):
    """Append a batch of unlabelled images (label -1): they add only distillation terms."""
    u_student, u_teacher, u_labels, u_indices, u_views = batch
    u_out = teach_unlabelled(u_teacher.to(device), u_indices, u_views)
    merged = EmbedderOutput(
        torch.cat([teacher_out.embedding, u_out.embedding]),
        {k: torch.cat([v, u_out.features[k]]) for k, v in teacher_out.features.items()},
    )
    return torch.cat([images, u_student.to(device)]), torch.cat([labels, u_labels.to(device)]), merged


def _quiet(*args: object, **kwargs: object) -> None:
    """``print`` on the data-parallel ranks other than 0."""


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())
