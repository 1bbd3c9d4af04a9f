"""The training loop: set up, start (or resume), loop, finish, each a named step.

``run(config)`` trains an embedder with a metric loss and, when ``config.distill``
is set, distils a frozen teacher into it; it leaves the checkpoint, the log,
``summary.yaml`` and the test embeddings in the run directory. Pictures and stats
for people (loss curves, retrieval grid, ``stats.json``) are the caller's step
after training: ``embdistill.report.write_run_report``.

Everything the loop uses is built by the modules named in the imports; this file
only decides the order.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from embdistill.checkpoints import EPOCHS, checkpoint_fingerprint, run_checkpoint, save_checkpoint
from embdistill.config import ExperimentConfig, to_dict
from embdistill.data.datasets import is_label_free
from embdistill.data.images import DecodedImageCache
from embdistill.data.samplers import PKSampler, RandomBatchSampler
from embdistill.engine.batches.loaders import (
    Splits,
    check_pk_classes,
    eval_loader,
    evaluation_set,
    hidden_label_mask,
    image_cache,
    load_splits,
    run_split,
    train_labels,
    train_loader,
    transductive_images,
    unlabelled_items,
    unlabelled_views,
    view_size,
)
from embdistill.engine.batches.unlabelled_stream import BatchStream
from embdistill.engine.batches.views import ViewDataset, to_input
from embdistill.engine.compute.device import resolve_device
from embdistill.engine.compute.distributed import World, process_group
from embdistill.engine.persist.rundir import resume_checkpoint, start_fresh
from embdistill.engine.persist.runlog import RunLog
from embdistill.engine.persist.test_embeddings import save_test_embeddings
from embdistill.engine.scoring.embed import embed_loader, evaluate_embedder
from embdistill.engine.teacher.bank import bank_for_run
from embdistill.engine.teacher.frozen import FrozenTeacher, TeacherCache, load_teacher
from embdistill.engine.train.epoch_selection import Selection, weights
from embdistill.engine.train.objective import build_objective
from embdistill.engine.train.optim import build_optimizer, build_scheduler
from embdistill.engine.train.precision import autocast_dtype, memory_format
from embdistill.engine.train.rng import seed_everything
from embdistill.engine.train.signals import StopSignals
from embdistill.engine.train.state import TrainState
from embdistill.evaluation.agreement import knn_agreement, knn_agreement_k
from embdistill.evaluation.collapse import collapse_warning, embedding_spread
from embdistill.evaluation.metrics import retrieval_metrics
from embdistill.losses.objective import Objective, all_finite
from embdistill.models.embedder import Embedder, create_embedder
from embdistill.models.output import EmbedderOutput
from embdistill.teacher_space import TEACHER_SPACE, TeacherSpace, teacher_space_of

ASYMMETRIC_RECALL = "asymmetric_recall@1"  # train.select_metric: the student's queries on the teacher's gallery

__all__ = ["NonFiniteLossError", "RunResult", "Teachers", "Training", "run"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the terms and the last checkpoint."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    checkpoint: Path


@dataclass
class Teachers:
    """The frozen teacher as the loop calls it: on each labelled batch, and on each unlabelled one."""

    train: FrozenTeacher | None = None
    unlabelled: FrozenTeacher | None = None

    def by_name(self) -> dict[str, FrozenTeacher | None]:
        """The names their caches are checkpointed under (TrainState)."""
        return {"train": self.train, "unlabelled": self.unlabelled}

    @property
    def forward_images(self) -> int:
        """Images the teacher network actually ran on (cache hits excluded)."""
        return sum(t.forward_passes for t in (self.train, self.unlabelled) if t is not None)


@dataclass
class Training:
    """Everything the loop works with, built once by :func:`_setup`."""

    cfg: ExperimentConfig
    world: World
    device: torch.device
    amp: torch.dtype | None  # autocast dtype of the student's forward pass, None for fp32
    layout: torch.memory_format
    log: RunLog
    splits: Splits
    skipped: list[tuple[Path, str]]  # unreadable images left out (data.skip_bad_images)
    student: Embedder
    model: nn.Module  # the student, in DistributedDataParallel on several processes
    objective: Objective
    teachers: Teachers
    loader: DataLoader
    views: ViewDataset
    sampler: PKSampler | RandomBatchSampler  # random batches for a label-free dataset
    unlabelled_stream: BatchStream | None
    test_loader: DataLoader  # the run's split (run_split), scored at the end
    val_loader: DataLoader  # scored every eval.every_epochs: the held-out train classes, or the run's split without them
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainState
    resume_from: dict[str, Any] | None  # the checkpoint payload to continue from
    selection: Selection  # the held-out scores so far and the epoch chosen (train.select)
    transductive: int = 0  # unlabelled images that are test images: the test scores are transductive
    # train.select_metric knn_agreement@k or asymmetric_recall@1: the teacher's embeddings of the periodic split's
    # images, in its order
    teacher_reference: torch.Tensor | None = None
    spread: float | None = None  # the last epoch's mean batch embedding spread (evaluation/collapse.py)
    collapse: str | None = None  # the collapse warning, if an epoch's spread fell below train.collapse_spread
    teacher_space: TeacherSpace | None = None  # the absolute teacher term trains the student into the teacher's space

    @property
    def label_free(self) -> bool:
        """A dataset with no labels (``photos``): scored by knn_agreement alone, no retrieval metrics or NMI."""
        return is_label_free(self.cfg.data.dataset)

    @property
    def checkpoint(self) -> Path:
        return self.cfg.run_dir / "last.pt"

    def say(self, text: str) -> None:
        """Print on rank 0 only."""
        if self.world.is_main:
            print(f"[{self.cfg.name}] {text}")

    @property
    def periodic_split(self) -> str:
        """What is scored every ``eval.every_epochs``: the held-out train classes if any, else the run's split."""
        return "validation" if self.splits.validation is not None else self.splits.eval_name

    def evaluate(self, epoch: int, progress: bool, periodic: bool = False) -> dict[str, float]:
        """Score the run's split, or (``periodic``) the :attr:`periodic_split`."""
        loader, split = (self.val_loader, self.periodic_split) if periodic else (self.test_loader, self.splits.eval_name)
        if self.label_free and self.teacher_reference is None:  # no classes and no teacher: nothing to score by
            metrics = {}
        elif self.teacher_reference is None or not (periodic or loader is self.val_loader):
            metrics = evaluate_embedder(self.student, loader, self.device, self.cfg.eval.ks, progress)
        else:
            embeddings, labels = embed_loader(self.student, loader, self.device, progress)
            retrieval = {} if self.label_free else retrieval_metrics(embeddings, labels, ks=self.cfg.eval.ks)
            metrics = {**retrieval, **self.teacher_scores(embeddings, labels)}
        self.log.write("eval", epoch=epoch, split=split, **metrics)
        return metrics

    @torch.no_grad()
    def teacher_scores(self, embeddings: torch.Tensor, labels: torch.Tensor | np.ndarray,
                       projection: torch.Tensor | None = None) -> dict[str, float]:
        """The select metric scored against the teacher's embeddings of the periodic split (none without them):
        ``knn_agreement@k``, or ``asymmetric_recall@1``, the student's embeddings taken into the teacher's space (by
        the absolute term's projection as it is now, or ``projection``: the chosen epoch's) as queries on the
        teacher's, each query's own image left out."""
        if self.teacher_reference is None:
            return {}
        metric = self.cfg.train.select_metric
        if metric != ASYMMETRIC_RECALL:
            return {metric: knn_agreement(embeddings, self.teacher_reference, knn_agreement_k(metric))}
        assert self.teacher_space is not None  # config/rules.py: the metric needs the absolute term
        term = self.teacher_space.loss
        if projection is not None and term.projection is not None:  # a copy: the objective keeps its own state
            term = copy.deepcopy(term)
            term.projection.weight.copy_(projection)
        queries = embeddings if term.projection is None else embeddings.to(term.projection.weight)
        queries, gallery = term.in_teacher_space(queries, self.teacher_reference.to(queries))
        scores = retrieval_metrics(gallery, labels, query_embeddings=queries, query_labels=labels, paired=True,
                                   ks=(1,), map_at_r=False, r_precision=False)
        return {metric: scores["recall@1"]}

    def validate(self, epoch: int, progress: bool) -> bool:
        """The score after ``epoch`` epochs, said and offered to the selection; True when it is the best so far."""
        metrics = self.evaluate(epoch, progress, periodic=True)
        best = self.selection.observe(epoch, metrics)
        self.say(f"epoch {epoch} ({self.periodic_split}): {_fmt(metrics)}" + (" (best so far)" if best else ""))
        return best

    def save(self, best: bool = False, epoch_end: bool = False) -> None:
        """Write ``last.pt`` (rank 0): weights, what rebuilds the network, and what resuming needs; then
        ``best.pt`` when these weights are the best so far (in that order: see Selection.load_state_dict),
        and at an epoch's end with ``train.keep_epochs`` that epoch's weights in ``epochs/``."""
        if not self.world.is_main:
            return
        cfg, student = self.cfg, self.student
        payload = {
            "model_config": to_dict(cfg.model),
            "model_state": student.state_dict(),
            "normalization": (student.normalization.mean, student.normalization.std),
            "image_size": cfg.data.image_size,
            "config": to_dict(cfg),
            **({TEACHER_SPACE: self.teacher_space.record()} if self.teacher_space else {}),  # teacher_space.py
            **self.state.state_dict(),  # epoch, step, optimizer, scheduler, objective, and what resuming needs
            "selection": self.selection.state_dict(),
        }
        save_checkpoint(self.checkpoint, payload)
        if best:
            self.selection.save_best(payload)
        if epoch_end and cfg.train.keep_epochs:
            save_checkpoint(cfg.run_dir / EPOCHS / f"epoch_{payload['epoch']:03d}.pt", weights(payload))


def run(cfg: ExperimentConfig, progress: bool = True, resume: bool = False) -> RunResult:
    """Train (and distil, if configured), evaluate, and leave everything in ``cfg.run_dir``.

    ``resume=True`` continues from ``cfg.run_dir/last.pt`` when there is one (see
    engine/train/state.py) and starts afresh otherwise. Under ``torchrun`` every process
    runs this data-parallel (engine/compute/distributed.py); rank 0 alone logs, evaluates
    and writes the run directory.
    """
    with process_group(resolve_device(cfg.device)) as (world, device):
        return _run(cfg, world, device, progress, resume)


def _run(cfg: ExperimentConfig, world: World, device: torch.device, progress: bool, resume: bool) -> RunResult:
    t = _setup(cfg, world, device, resume)
    _start(t, progress)
    _train_loop(t, progress)
    return _finish(t, progress)


# --------------------------------------------------------------------------- setup


def _setup(cfg: ExperimentConfig, world: World, device: torch.device, resume: bool) -> Training:
    """The run directory, data, networks, objective, teacher, loaders and optimizer.

    The order matters for reproducibility: the student, the teacher and the
    objective draw their initial weights from torch's seeded RNG in that order.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    amp, layout = autocast_dtype(cfg.train.precision, device), memory_format(cfg.train.channels_last, device)
    run_dir = cfg.run_dir
    payload = resume_checkpoint(cfg) if resume else None
    if payload is None and world.is_main:
        start_fresh(cfg)
    world.barrier()

    skipped: list[tuple[Path, str]] = []
    splits = load_splits(cfg.data, skipped, scored=run_split(cfg))
    if skipped and world.is_main:
        (run_dir / "skipped_images.txt").write_text("".join(f"{path}\t{why}\n" for path, why in skipped))
        print(f"[{cfg.name}] skipped {len(skipped)} unreadable image(s), listed in {run_dir / 'skipped_images.txt'}")

    student = create_embedder(cfg.model).to(device, memory_format=layout)
    teacher = load_teacher(cfg, device).to(memory_format=layout) if cfg.distill and cfg.distill.terms else None
    gather = world.gather if world.distributed and cfg.train.gather_global_batch else None
    objective = build_objective(cfg, student, teacher, gather).to(device)
    world.broadcast_parameters(objective)

    semi = cfg.distill.semi_supervised if cfg.distill else None
    hidden = hidden_label_mask(splits.train, semi.hide_label_fraction, cfg.seed) if semi and not semi.folder else None
    labels = np.where(hidden, -1, splits.train.labels) if hidden is not None else train_labels(cfg, splits.train)
    check_pk_classes(splits.train, labels)
    cache = image_cache(cfg.data, splits.train, view_size(cfg))
    loader, views, sampler = train_loader(cfg, splits.train, student.normalization, labels, cache, world.rank, world.size)
    unlabelled = unlabelled_items(cfg, splits.train, hidden)
    unlabelled_stream, transductive = None, 0
    if unlabelled is not None and semi.folder:
        transductive = transductive_images(cfg, unlabelled)
        if transductive and world.is_main:
            print(f"[{cfg.name}] transductive: {transductive} of the {len(unlabelled)} unlabelled images in "
                  f"distill.semi_supervised.folder are test images of {cfg.data.dataset} {cfg.data.root}; "
                  "the test scores will be marked transductive")
    if unlabelled is not None:
        unlabelled_stream = BatchStream(unlabelled_views(cfg, unlabelled, student.normalization, cache),
                                        semi.unlabelled_per_batch, cfg.seed, cfg.data.num_workers, world.rank, world.size)
    teachers = _build_teachers(cfg, world, teacher, objective, student, views, splits, cache,
                               len(unlabelled) if unlabelled is not None else None)

    test_loader = evaluation_set(cfg, student.normalization, splits=splits).loader
    selection = Selection(cfg, splits.validation is not None, splits.eval_name, writes=world.is_main)
    val_loader = evaluation_set(cfg, student.normalization, "validation", splits).loader if selection.separate else test_loader
    model = world.wrap(student, device)  # DDP on several processes
    optimizer = build_optimizer(cfg, student, objective)
    scheduler = build_scheduler(cfg, optimizer, len(loader))
    state = TrainState(run_dir, student, optimizer, scheduler, objective, sampler,
                       teachers.by_name(), unlabelled_stream, writes=world.is_main)
    reference = None
    if teacher is not None and world.is_main and (knn_agreement_k(cfg.train.select_metric)
                                                  or cfg.train.select_metric == ASYMMETRIC_RECALL):
        reference = _teacher_reference(cfg, teacher, val_loader.dataset.items, device)
    space = None
    if teacher is not None and world.is_main:  # the space the absolute teacher term trains the student into
        space = teacher_space_of(dict(objective.terms.items()), objective.weights,
                                 checkpoint_fingerprint(cfg.distill.teacher), str(cfg.distill.teacher))
    return Training(cfg, world, device, amp, layout, RunLog(run_dir, enabled=world.is_main), splits, skipped,
                    student, model, objective, teachers, loader, views, sampler, unlabelled_stream, test_loader,
                    val_loader, optimizer, scheduler, state, payload, selection, transductive,
                    teacher_reference=reference, teacher_space=space)


def _teacher_reference(cfg: ExperimentConfig, teacher: Embedder, items, device: torch.device) -> torch.Tensor:
    """The teacher's embeddings of ``items`` (the periodic split), once: what the select metric compares the student with.

    At the teacher's own size and normalisation, on the clean images (as the teacher
    sees its training crops), in the order the student's evaluation embeds them.
    """
    loader = eval_loader(items, view_size(cfg), teacher.normalization, cfg.eval.batch_size, cfg.data.num_workers,
                         resize=cfg.data.resize)
    print(f"[{cfg.name}] train.select_metric {cfg.train.select_metric}: the teacher embeds the {len(items)} "
          "held-out images once")
    return embed_loader(teacher, loader, device, progress=False)[0]


def _build_teachers(cfg: ExperimentConfig, world: World, teacher: Embedder | None, objective: Objective,
                    student: Embedder, views: ViewDataset, splits: Splits, images: DecodedImageCache | None,
                    num_unlabelled: int | None) -> Teachers:
    """Wrap the frozen teacher for the loop, with an output cache per image set when ``distill.cache_teacher``.

    With ``distill.bank`` the train images' cache comes full from the teacher bank (filled first if
    missing), so the teacher never runs; terms that need feature maps keep the live teacher.
    """
    if teacher is None:
        return Teachers()
    d = cfg.distill
    num_views = d.cache_views if d.cache_teacher else 0

    def frozen(num_images: int, cache: TeacherCache | None = None) -> FrozenTeacher:
        cache = cache or (TeacherCache(num_images, num_views) if num_views else None)
        return FrozenTeacher(teacher, objective.teacher_layers, student.normalization, d.teacher_precision, cache)

    banked = None
    if d.bank and objective.teacher_layers:
        if world.is_main:
            print(f"[{cfg.name}] note: distill.bank holds embeddings only; the terms that need the teacher's "
                  f"feature maps ({', '.join(objective.teacher_layers)}) run the live teacher instead")
    elif d.bank:
        banked = bank_for_run(cfg, teacher, views, splits.train, images.size if images else None, student.normalization,
                              is_main=world.is_main, barrier=world.barrier).as_cache()
        views.teacher_images = False  # the loader need not render the teacher's crops any more
    return Teachers(frozen(len(splits.train), banked), frozen(num_unlabelled) if num_unlabelled is not None else None)


def _start(t: Training, progress: bool) -> None:
    """Say what runs; then put the checkpoint back, or score the starting point (``eval.initial``)."""
    cfg, splits = t.cfg, t.splits
    t.say(f"{cfg.model.backbone} -> {t.student.dim}-d on {len(splits.train)} images "
          + ("(label-free: random batches, the teacher's terms alone)" if t.label_free
             else f"/ {splits.train.num_classes} classes")
          + f"; evaluating on {len(splits.eval)} {splits.eval_name} images"
          + (f"; validating on {len(splits.validation)} held-out images" if t.selection.separate else "")
          + f"; device {t.device}"
          + (f" x {t.world.size} processes" if t.world.distributed else ""))
    for name, term in t.objective.terms.items():
        until = t.objective.until_epoch.get(name)
        t.say(f"distillation term {name} (λ={t.objective.weights[name]}{f', the first {until} epochs' if until else ''}): "
              f"{term.describe()}")
    if t.resume_from is not None:
        t.state.load_state_dict(t.resume_from)
        t.selection.load_state_dict(t.resume_from.get("selection"), t.resume_from)
        t.say(f"resuming from {t.checkpoint} after step {t.state.step} (epoch {t.state.epoch + 1}, batch {t.state.batch})")
    elif cfg.eval.initial and t.world.is_main:
        t.state.initial = t.evaluate(0, progress)
        t.say("before training: " + _fmt(t.state.initial))


# --------------------------------------------------------------------------- the loop


def _train_loop(t: Training, progress: bool) -> None:
    """Epochs of P×K steps. SIGINT/SIGTERM: finish the step, checkpoint, raise Interrupted."""
    cfg, world, device, layout, state = t.cfg, t.world, t.device, t.layout, t.state
    distill, loader, objective, optimizer, scheduler = cfg.distill, t.loader, t.objective, t.optimizer, t.scheduler
    teach, teach_unlabelled, unlabelled_stream = t.teachers.train, t.teachers.unlabelled, t.unlabelled_stream
    normalization = t.views.crop.normalization  # the student's: the teacher's inputs are renormalised (FrozenTeacher)
    state.start_clock()
    with StopSignals() as stop:
        for epoch in range(state.epoch, cfg.train.epochs):
            if t.selection.stopped:  # stopped early (train.patience) before an interruption
                break
            t.sampler.set_epoch(epoch)
            objective.set_epoch(epoch)
            view = epoch % distill.cache_views if teach is not None and distill.cache_teacher else epoch
            t.views.set_view(view)
            if unlabelled_stream is not None:
                unlabelled_stream.set_view(view)
            t.model.train()
            spreads: list[float] = []
            bar = tqdm(state.batches(loader), desc=f"{cfg.name} epoch {epoch + 1}/{cfg.train.epochs}",
                       total=len(loader), initial=state.batch, leave=False, disable=not (progress and world.is_main))
            for student_images, teacher_images, batch_labels, indices, batch_views in bar:
                student_images = to_input(student_images, normalization, device, layout)
                if teacher_images.dim() == 4:  # empty when no teacher network runs (none, or a bank)
                    teacher_images = to_input(teacher_images, normalization, device, layout)
                batch_labels = batch_labels.to(device)
                teacher_out = teach(teacher_images, indices, batch_views) if teach else None
                if unlabelled_stream is not None:
                    student_images, batch_labels, teacher_out = _add_unlabelled(
                        student_images, batch_labels, teacher_out, next(unlabelled_stream), teach_unlabelled, device,
                        unlabelled_stream.views.crop.normalization)
                with torch.autocast(device.type, t.amp or torch.bfloat16, enabled=t.amp is not None):
                    student_out = t.model(student_images, objective.student_layers)
                parts = objective(student_out.float(), batch_labels, teacher_out)
                spreads.append(embedding_spread(student_out.embedding))
                values = world.average(parts)  # the global batch's values, the same on every process
                if not all_finite(values):
                    if cfg.train.nan_policy == "skip":
                        t.log.write("skipped_step", epoch=epoch, step=state.step, **values)
                        state.skipped_steps += 1
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    last = t.checkpoint if t.checkpoint.exists() else "none yet"
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
                    t.log.write("step", epoch=epoch, step=state.step, lr=scheduler.get_last_lr()[1],
                                images_per_s=state.seen / state.seconds, spread=round(spreads[-1], 4), **values)
                stop.adopt(world.any_signal(stop.signum, device))  # every process stops after the same step
                if stop.signum or state.checkpoint_due(cfg.train.checkpoint_every, len(loader)):
                    t.save()
                    stop.raise_if_requested(cfg, state)
            state.end_epoch()
            _check_collapse(t, epoch, spreads)
            best = t.validate(epoch + 1, progress) if world.is_main and t.selection.due(epoch + 1) else False
            t.save(best, epoch_end=True)
            world.barrier()  # the others wait for rank 0's evaluation and checkpoint
            stop.raise_if_requested(cfg, state)
            if t.selection.rule == "best" and world.broadcast(t.selection.stopped):
                t.selection.stopped = True  # rank 0 decided; the others follow
                t.say(f"stopping early: no better validation {cfg.train.select_metric} in {cfg.train.patience} "
                      f"evaluations since epoch {t.selection.best_epoch}")
                break


def _check_collapse(t: Training, epoch: int, spreads: list[float]) -> None:
    """Record the epoch's mean embedding spread; warn in the log and on screen when it nears zero."""
    if not spreads:
        return
    t.spread = sum(spreads) / len(spreads)
    warning = collapse_warning(spreads, t.cfg.train.collapse_spread)
    if warning:
        t.collapse = f"epoch {epoch + 1}: {warning}"
        t.say(f"warning: {t.collapse}")
        t.log.write("warning", epoch=epoch, spread=round(t.spread, 5), message=warning)


def _add_unlabelled(images, labels, teacher_out, batch, teach_unlabelled, device, normalization):
    """Append a batch of unlabelled images (label -1): they add only distillation terms."""
    u_student, u_teacher, u_labels, u_indices, u_views = batch
    u_out = teach_unlabelled(to_input(u_teacher, normalization, device), u_indices, u_views)
    merged = EmbedderOutput(
        torch.cat([teacher_out.embedding, u_out.embedding]),
        {k: torch.cat([v, u_out.features[k]]) for k, v in teacher_out.features.items()},
    )
    return torch.cat([images, to_input(u_student, normalization, device)]), torch.cat([labels, u_labels.to(device)]), merged


# --------------------------------------------------------------------------- finish


def _finish(t: Training, progress: bool) -> RunResult:
    """Rank 0 scores the chosen weights (the last, or best.pt's), keeps their test embeddings and writes ``summary.yaml``.

    This is the one time the run's split is scored after training started (besides
    every ``eval.every_epochs`` when there are no held-out classes, which never choose).
    """
    cfg, world, state, run_dir, selection = t.cfg, t.world, t.state, t.cfg.run_dir, t.selection
    train_seconds = state.seconds
    if not t.checkpoint.exists():  # train.epochs=0: the starting point itself, e.g. an ImageNet teacher
        t.save()
    if not world.is_main:  # rank 0 evaluates and writes the run directory; wait for its metrics
        return RunResult(run_dir, world.broadcast(None), run_checkpoint(run_dir))
    chosen = selection.summary(state.epoch)
    projection = None  # the chosen epoch's own projection into the teacher's space, if any
    if selection.chose:
        best = selection.chosen_checkpoint()
        t.student.load_state_dict(best["model_state"])
        projection = (best.get(TEACHER_SPACE) or {}).get("projection")
        t.log.write("selected", **chosen["selected"], epoch=chosen["epoch"])
    embeddings, eval_labels = embed_loader(t.student, t.test_loader, t.device, progress)
    # A label-free run has no classes to score retrieval by: its score is the teacher's neighbours it keeps.
    metrics = {} if t.label_free else retrieval_metrics(embeddings, eval_labels, ks=cfg.eval.ks)
    if t.test_loader is t.val_loader:  # the split the teacher's reference is of (its select metric compares with it)
        metrics.update(t.teacher_scores(embeddings, eval_labels, projection))
    t.log.write("eval", epoch=chosen["epoch"], split=t.splits.eval_name, **metrics)
    save_test_embeddings(run_dir, embeddings, eval_labels, t.splits.eval.paths, t.splits.eval.class_names)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "split": t.splits.eval_name,
        **({"label_free": True} if t.label_free else {}),
        **metrics,
        **chosen,
        "train_seconds": round(train_seconds, 1),
        "train_images_per_s": round(state.seen / max(train_seconds, 1e-9), 1),
        "teacher_forward_images": t.teachers.forward_images,
        **({"teacher_bank": cfg.distill.bank} if cfg.distill and cfg.distill.bank else {}),
        "embedding_spread": None if t.spread is None else round(t.spread, 5),
        **({"collapse_warning": t.collapse} if t.collapse else {}),
        **({"transductive": True, "transductive_test_images": t.transductive} if t.transductive else {}),
        "skipped_images": len(t.skipped),
        "skipped_steps": state.skipped_steps,
        **({"processes": world.size} if world.distributed else {}),
    }
    if state.initial is not None:
        summary["initial"] = state.initial
    if selection.curve:
        summary["validation_curve"] = selection.curve
    (run_dir / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    which = (f" ({t.splits.eval_name}, epoch {chosen['epoch']} of {state.epoch} chosen on validation {selection.metric})"
             if selection.chose else "")
    print(f"[{cfg.name}] done in {train_seconds:.0f} s{which}: "
          + (_fmt(metrics) or "nothing to score (no labels and no teacher: the starting network is saved)"))
    if t.skipped or state.skipped_steps:
        print(f"[{cfg.name}] skipped {len(t.skipped)} unreadable image(s) and {state.skipped_steps} non-finite step(s)")
    return RunResult(run_dir, world.broadcast(metrics), run_checkpoint(run_dir))


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())
