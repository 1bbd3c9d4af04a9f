"""Where a run stands: what a checkpoint holds beyond the weights, and putting it back.

A checkpoint (``RUN_DIR/last.pt``) has, next to the weights, a ``resume`` entry:
the sampler position (epoch and batches *consumed*, which is not what the sampler
handed out: the DataLoader prefetches), the step counter, the RNG states (torch,
numpy, python), the teacher-cache mask and the length of ``metrics.jsonl`` when it
was written. The teacher cache itself is written next to it, to
``RUN_DIR/teacher_cache.pt``, whenever it has grown. Augmentation is a pure
function of (seed, image, view) (engine/batches/views.py), so nothing else is needed for a
resumed run to continue exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from embdistill.checkpoints import CheckpointError, save_checkpoint
from embdistill.engine.train.rng import rng_state, set_rng_state
from embdistill.engine.persist.rundir import TEACHER_CACHE


class TrainState:
    """Where a run stands (the counters the loop advances) and the stateful objects it trains with."""

    def __init__(self, run_dir: Path, model, optimizer, scheduler, objective, sampler, teachers=None, stream=None,
                 writes: bool = True) -> None:
        self.run_dir = run_dir
        self.writes = writes  # False on ranks other than 0: they neither write nor truncate the run's files
        self.model, self.optimizer, self.scheduler, self.objective = model, optimizer, scheduler, objective
        self.sampler = sampler
        self.teachers = {name: t for name, t in (teachers or {}).items() if t is not None}
        self.stream = stream
        self.epoch = 0  # the epoch in progress; once an epoch ends, the next one
        self.batch = 0  # batches of that epoch consumed (skipped ones included)
        self.step = 0  # optimizer steps taken
        self.seen = 0  # images trained on
        self.skipped_steps = 0  # batches skipped for a non-finite loss
        self.initial: dict[str, float] | None = None  # metrics before training (eval.initial)
        self._seconds, self._clock = 0.0, time.perf_counter()
        self._rng: dict[str, Any] | None = None  # put back once the resumed epoch's loader has started
        self._cache_saved: dict[str, int] = {}  # teacher cache entries filled at its last save

    @property
    def seconds(self) -> float:
        """Training time so far, across interruptions."""
        return self._seconds + time.perf_counter() - self._clock

    def start_clock(self) -> None:
        self._clock = time.perf_counter()

    def batches(self, loader: DataLoader) -> Iterator:
        """The rest of the current epoch's batches, counting each one as it is consumed."""
        rng, self._rng = self._rng, None
        if rng is not None and self.batch == 0:
            set_rng_state(rng)
        iterator = iter(loader)  # draws a worker seed from torch's RNG, as it did in the interrupted run
        if rng is not None and self.batch > 0:
            set_rng_state(rng)
        for batch in iterator:
            self.batch += 1
            yield batch

    def end_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0

    def checkpoint_due(self, every: int, batches_per_epoch: int) -> bool:
        """Every ``every`` steps within an epoch (its end has a checkpoint of its own)."""
        return every > 0 and self.step % every == 0 and self.batch < batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries beyond the weights; writes the teacher cache first if it grew."""
        log = self.run_dir / "metrics.jsonl"
        return {
            "epoch": self.epoch,  # completed epochs
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict(),
            "resume": {
                "sampler": {**self.sampler.state_dict(), "epoch": self.epoch, "batch_index": self.batch},
                "world_size": self.sampler.world_size,
                "step": self.step,
                "seen": self.seen,
                "skipped_steps": self.skipped_steps,
                "train_seconds": self.seconds,
                "initial": self.initial,
                "rng": rng_state(),
                "log_bytes": log.stat().st_size if log.exists() else 0,
                "teachers": self._save_teacher_caches(),
                "stream": self.stream.state_dict() if self.stream is not None else None,
            },
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Put a checkpoint back: weights, optimizer, schedule, sampler position, RNG, caches, log."""
        state = payload["resume"]
        saved_world = state.get("world_size", 1)
        if saved_world != self.sampler.world_size:
            raise CheckpointError(f"cannot resume {self.run_dir}: it was trained by {saved_world} process(es), this run has "
                                  f"{self.sampler.world_size}; the P×K batches depend on it, so resume with "
                                  f"{saved_world} (torchrun --nproc_per_node {saved_world} for more than one)")
        self.model.load_state_dict(payload["model_state"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.objective.load_state_dict(payload["objective"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.batch = state["sampler"]["epoch"], state["sampler"]["batch_index"]
        self.step, self.seen, self.skipped_steps = state["step"], state["seen"], state["skipped_steps"]
        self._seconds, self.initial, self._rng = state["train_seconds"], state["initial"], state["rng"]
        if self.stream is not None:
            self.stream.load_state_dict(state["stream"])
        self._load_teacher_caches(state["teachers"])
        if self.writes:
            _truncate_log(self.run_dir / "metrics.jsonl", state["log_bytes"])

    def _save_teacher_caches(self) -> dict[str, Any]:
        caches = {name: t.cache for name, t in self.teachers.items() if t.cache is not None}
        filled = {name: int(c.filled.sum()) for name, c in caches.items()}
        if caches and filled != self._cache_saved:
            save_checkpoint(self.run_dir / TEACHER_CACHE,
                            {name: {"filled": c.filled, "store": c.store} for name, c in caches.items()})
            self._cache_saved = filled
        return {
            "forward_passes": {name: t.forward_passes for name, t in self.teachers.items()},
            "filled": {name: c.filled.clone() for name, c in caches.items()},
        }

    def _load_teacher_caches(self, state: dict[str, Any]) -> None:
        for name, passes in state["forward_passes"].items():
            self.teachers[name].forward_passes = passes
        if not any(mask.any() for mask in state["filled"].values()):
            return
        path = self.run_dir / TEACHER_CACHE
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # missing or unreadable: the teacher recomputes what it needs
            print(f"note: cannot read {path} ({type(err).__name__}: {err}); the teacher will recompute its outputs")
            return
        for name, mask in state["filled"].items():
            cache, entry = self.teachers[name].cache, saved.get(name)
            if entry is None or entry["filled"].shape != mask.shape or bool((mask & ~entry["filled"]).any()):
                raise CheckpointError(f"{path} does not hold the teacher outputs the checkpoint expects for {name!r} "
                                      "images; delete it to let the teacher recompute them")
            cache.store, cache.filled = entry["store"], mask.clone()  # only what the checkpoint had seen


def _truncate_log(path: Path, size: int) -> None:
    """Drop the log lines written after the checkpoint: the resumed run writes them again."""
    if not path.exists() or path.stat().st_size < size:
        print(f"note: {path} is shorter than when the checkpoint was written; its lines before the resume are incomplete")
        return
    os.truncate(path, size)
