"""Stopping and resuming a run: what a checkpoint holds beyond the weights, and putting it back.

A checkpoint (``RUN_DIR/last.pt``) has, next to the weights, a ``resume`` entry:
the sampler position (epoch and batches *consumed*, which is not what the sampler
handed out: the DataLoader prefetches), the step counter, the RNG states (torch,
numpy, python), the teacher-cache mask and the length of ``metrics.jsonl`` when it
was written. The teacher cache itself is written next to it, to
``RUN_DIR/teacher_cache.pt``, whenever it has grown. Augmentation is a pure
function of (seed, image, view) (engine/views.py), so nothing else is needed for a
resumed run to continue exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from embdistill.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, read_yaml, to_dict
from embdistill.data.datasets import DatasetError
from embdistill.engine.checkpoint import CheckpointError, load_checkpoint, remove_partial_writes, save_checkpoint

TEACHER_CACHE = "teacher_cache.pt"

# Config keys that may differ between a run and its resumption: they change where
# things are and how fast they run, not what is computed.
RESUME_MAY_CHANGE = frozenset({
    "name", "output_dir", "device", "threads", "data.root", "data.num_workers", "data.cache_images",
    "train.log_every", "train.checkpoint_every", "train.nan_policy", "eval.batch_size", "eval.every_epochs",
})


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a step and a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


# --------------------------------------------------------------------------- the run directory


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a run directory was started with (its config.yaml), with ``overrides`` on top."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it has no config.yaml, so it is not a run directory of `embdistill train`")
    values = apply_overrides(read_yaml(path), overrides or [])
    values.update(output_dir=str(run_dir.parent), name=run_dir.name)  # the directory, wherever it is now
    return from_dict(values)


def start_fresh(cfg: ExperimentConfig) -> None:
    """A new run: write config.yaml, and drop the log and teacher cache of any earlier run in the directory."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / TEACHER_CACHE).unlink(missing_ok=True)
    remove_partial_writes(run_dir)


def resume_checkpoint(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The checkpoint to continue from, checked against ``cfg``; None when the run has none yet."""
    path = cfg.run_dir / "last.pt"
    if cfg.run_dir.is_dir():
        remove_partial_writes(cfg.run_dir)
    if not path.is_file():
        print(f"[{cfg.name}] {cfg.run_dir} has no checkpoint yet: starting from the beginning")
        return None
    payload = load_checkpoint(path)
    if "resume" not in payload:
        raise CheckpointError(f"cannot resume from {path}: it holds no resume state (written by an older embdistill)")
    differences = config_differences(payload["config"], to_dict(cfg))
    if differences:
        raise ConfigError(f"cannot resume {cfg.run_dir}: the config differs from its checkpoint's in " + "; ".join(differences))
    return payload


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every key that matters to the result (not in RESUME_MAY_CHANGE)."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k)]


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict) or not values:
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# --------------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the training state


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


# --------------------------------------------------------------------------- unlabelled batches


class BatchStream:
    """Endless shuffled batches (the last short one dropped) of a view dataset, resumable at any batch.

    Pass ``p`` is a permutation drawn from ``(seed, p)``; the stream restarts its
    DataLoader when the view changes, so loader workers always load the current view.
    With ``world_size`` processes, rank ``r`` takes the pass's batches r, r + world_size, ...
    so that no image is in two processes' batches of one step.
    """

    def __init__(self, views, batch_size: int, seed: int, num_workers: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(views) < batch_size * world_size:
            raise DatasetError(f"{len(views)} unlabelled images are fewer than one batch of {batch_size} "
                               f"(distill.semi_supervised.unlabelled_per_batch) for each of {world_size} process(es)")
        self.views, self.batch_size, self.seed, self.num_workers = views, batch_size, seed, num_workers
        self.rank, self.world_size = rank, world_size
        self.epoch = self.batch = 0  # pass number, batches consumed in it
        self._iterator: Iterator | None = None

    def set_view(self, view: int) -> None:
        if view != self.views.view:
            self.views.set_view(view)
            self._iterator = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        if self.batch == len(self.views) // (self.batch_size * self.world_size):  # the pass is used up
            self.epoch, self.batch, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._iterator = self._start()
        self.batch += 1
        return next(self._iterator)

    def _start(self) -> Iterator:
        order = torch.randperm(len(self.views), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        per_pass = len(order) // (self.batch_size * self.world_size)
        batches = order[: per_pass * self.batch_size * self.world_size].view(-1, self.batch_size)
        batches = batches[self.rank::self.world_size][self.batch:].tolist()
        loader = DataLoader(self.views, batch_sampler=batches, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(self.seed))  # leaves torch's global RNG alone
        return iter(loader)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._iterator = state["epoch"], state["batch"], None


# --------------------------------------------------------------------------- signals


class StopSignals:
    """While active, SIGINT/SIGTERM ask the loop to stop after its current step; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        try:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                  "(press Ctrl-C again to abort at once)", file=sys.stderr, flush=True)
        except RuntimeError:  # interrupted a write to stderr
            pass

    def adopt(self, signum: int | None) -> None:
        """Stop as if ``signum`` had arrived here too (another process received it)."""
        if signum is not None and self.signum is None:
            self.signum = signum

    def raise_if_requested(self, cfg: ExperimentConfig, state: TrainState) -> None:
        """After the checkpoint: stop, saying how to resume."""
        if self.signum is None:
            return
        command = "distill" if cfg.distill else "train"
        where = f"epoch {state.epoch + 1}, batch {state.batch}" if state.batch else f"end of epoch {state.epoch}"
        raise Interrupted(self.signum, (
            f"stopped by {signal.Signals(self.signum).name} after step {state.step} ({where}); "
            f"checkpoint saved to {cfg.run_dir / 'last.pt'}. "
            f"Resume with: embdistill {command} --resume {cfg.run_dir}"))
