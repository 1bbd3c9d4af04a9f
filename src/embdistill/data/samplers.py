"""P×K batch sampling for metric learning (Yu et al. use P=4 classes × K=8 images), and random
batches for label-free distillation.

Triplet and other pair-based losses need positives in every batch: a random batch
of 32 images from 100+ classes rarely holds two images of the same class. Without
labels (a ``photos`` dataset) there are no classes to balance, and
:class:`RandomBatchSampler` draws plain random batches with the same resume interface.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .datasets import DatasetError

__all__ = ["PKSampler", "RandomBatchSampler"]


class _EpochPlanSampler(Sampler[list[int]]):
    """What both samplers share: an epoch is a plan of batches deterministic from ``(seed, epoch)``, replayed from
    its start on every iteration so that a resumed run skips exactly the ``batch_index`` batches handed out.
    Subclasses set the fields below and write :meth:`_epoch_batches`."""

    name = "sampler"
    num_images: int
    images_per_step: int  # every process's images in one global step
    batches_per_epoch: int | None
    seed: int
    epoch: int = 0
    batch_index: int = 0

    def __len__(self) -> int:
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return math.ceil(self.num_images / self.images_per_step)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle; restarts at batch 0 only if ``epoch`` differs."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.batch_index = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"epoch", "batch_index", "seed"} - set(state)
        if missing:
            raise ValueError(f"{self.name}.load_state_dict: missing keys {sorted(missing)}")
        self.epoch, self.batch_index, self.seed = (
            int(state["epoch"]), int(state["batch_index"]), int(state["seed"]))

    def __iter__(self) -> Iterator[list[int]]:
        # Replay the epoch's plan from its start so that resuming is exact; skipping
        # batches costs only index arithmetic.
        start = self.batch_index
        for step, batch in enumerate(self._epoch_batches()):
            if step < start:
                continue
            self.batch_index = step + 1  # set before yielding: this batch is handed out
            yield batch

    def _start(self, num_images: int, images_per_step: int, seed: int, rank: int, world_size: int,
               batches_per_epoch: int | None) -> None:
        """The fields the epoch plan and resuming read, at epoch 0, batch 0."""
        self.num_images, self.images_per_step, self.seed = num_images, images_per_step, seed
        self.rank, self.world_size, self.batches_per_epoch = rank, world_size, batches_per_epoch
        self.epoch = 0
        self.batch_index = 0

    def _epoch_batches(self) -> Iterator[list[int]]:
        raise NotImplementedError


def _check_ints(name: str, checks: Sequence[tuple[str, Any, int]], rank: int, world_size: int,
                batches_per_epoch: int | None) -> None:
    for key, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: {key} must be an int >= {low}, got {value!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"{name}: rank must be in 0..{world_size - 1}, got {rank!r}")
    if batches_per_epoch is not None and batches_per_epoch < 1:
        raise ValueError(f"{name}: batches_per_epoch must be >= 1, got {batches_per_epoch!r}")


class PKSampler(_EpochPlanSampler):
    """A batch sampler: every batch holds ``p`` distinct classes × ``k`` images each.

    Use it as ``DataLoader(dataset, batch_sampler=PKSampler(labels, p, k))``.

    * Within an epoch each class's images are visited in a shuffled order and the
      order is only restarted once used up, so images repeat as little as
      possible. Classes are drawn in proportion to their not-yet-drawn images.
    * A class with fewer than ``k`` images contributes all of them plus repeats
      drawn with replacement, so the batch may hold the same image twice.
    * A class with fewer than ``min_images`` (default 2) images cannot form a
      positive pair and is an error; pass ``min_images=1`` to accept them anyway.
    * An epoch has ``ceil(N / (world_size*p*k))`` batches per rank unless
      ``batches_per_epoch`` says otherwise, so all ranks together see about N images.
    * Distributed: every rank computes the same global step of ``world_size*p``
      distinct classes and keeps its own ``p``-class slice, so ranks never share a
      class (hence an image) within a step and all yield the same number of batches.
    * Deterministic from ``(seed, epoch)``. ``set_epoch`` changes the epoch (and
      restarts it only when the epoch really changes, so it is safe to call after
      ``load_state_dict``). ``state_dict()["batch_index"]`` counts the batches
      handed out so far in this epoch; iteration resumes after them. A DataLoader
      pre-fetches batches, so the sampler runs ahead of training: to resume exactly,
      store the number of steps the training loop finished as ``batch_index``.
    """

    name = "PKSampler"

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batches_per_epoch: int | None = None,
        min_images: int = 2,
    ) -> None:
        super().__init__()
        _check_ints(self.name, (("p", p, 2), ("k", k, 2), ("world_size", world_size, 1),
                                ("min_images", min_images, 1), ("seed", seed, 0)), rank, world_size, batches_per_epoch)

        labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        labels_np = labels_np.astype(np.int64).reshape(-1)
        self.class_values, inverse = np.unique(labels_np, return_inverse=True)
        by_class = np.argsort(inverse, kind="stable")
        self.class_indices = np.split(by_class, np.cumsum(np.bincount(inverse))[:-1])
        sizes = np.array([len(idx) for idx in self.class_indices], dtype=np.int64)
        small = [int(v) for v in self.class_values[sizes < min_images]]
        if small:
            raise DatasetError(
                f"PKSampler: classes with labels {small[:20]}{' ...' if len(small) > 20 else ''} "
                f"have fewer than min_images={min_images} images and cannot form a positive "
                "pair; remove them (ImageList.class_subset) or pass min_images=1"
            )
        if len(self.class_values) < world_size * p:
            raise DatasetError(
                f"PKSampler: {len(self.class_values)} classes, but a global step needs "
                f"world_size*p = {world_size}*{p} = {world_size * p} distinct classes"
            )
        self.p, self.k = p, k
        self._start(len(labels_np), world_size * p * k, seed, rank, world_size, batches_per_epoch)

    def _epoch_batches(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        orders = [rng.permutation(idx) for idx in self.class_indices]
        positions = [0] * len(orders)
        remaining = np.array([len(idx) for idx in self.class_indices], dtype=np.float64)
        n_pick = self.world_size * self.p
        for _ in range(len(self)):
            weights = remaining.copy()
            if np.count_nonzero(weights) < n_pick:
                weights += 1.0  # late in the epoch: let used-up classes take part again
            classes = rng.choice(len(orders), size=n_pick, replace=False, p=weights / weights.sum())
            step = [self._draw(int(c), orders, positions, rng) for c in classes]
            remaining[classes] = np.maximum(remaining[classes] - self.k, 0)
            mine = step[self.rank * self.p:(self.rank + 1) * self.p]
            yield [int(i) for chunk in mine for i in chunk]

    def _draw(self, c: int, orders: list[np.ndarray], positions: list[int],
              rng: np.random.Generator) -> np.ndarray:
        """The next ``k`` images of class ``c``, distinct whenever the class has ``k``."""
        k, order, pos = self.k, orders[c], positions[c]
        if len(order) < k:
            extra = rng.choice(order, size=k - len(order), replace=True)
            return np.concatenate([rng.permutation(order), extra])
        if pos + k <= len(order):
            positions[c] = pos + k
            return order[pos:pos + k]
        # Start a new pass; the images left from the old pass go first, and the new
        # pass puts them last so that this batch holds no image twice.
        left = order[pos:]
        fresh = rng.permutation(order)
        fresh = np.concatenate([fresh[~np.isin(fresh, left)], fresh[np.isin(fresh, left)]])
        take = k - len(left)
        orders[c], positions[c] = fresh, take
        return np.concatenate([left, fresh[:take]])


class RandomBatchSampler(_EpochPlanSampler):
    """A batch sampler of ``batch_size`` random images, for label-free distillation (no classes to balance).

    The same interface as :class:`PKSampler`, which resuming relies on: deterministic
    from ``(seed, epoch)``, ``set_epoch`` (restarts only when the epoch changes),
    ``state_dict`` / ``load_state_dict`` with ``batch_index`` the batches handed out so
    far this epoch, ``world_size``. Each epoch is a fresh permutation of the images,
    cut into global steps of ``world_size * batch_size`` (the last step filled up from
    a second permutation, so every batch is full); every process keeps its own slice
    of each step, so processes never share an image within a step. An
    epoch has ``ceil(N / (world_size * batch_size))`` steps unless ``batches_per_epoch``
    says otherwise (more steps take further permutations).
    """

    name = "RandomBatchSampler"

    def __init__(self, num_images: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batches_per_epoch: int | None = None) -> None:
        super().__init__()
        _check_ints(self.name, (("num_images", num_images, 2), ("batch_size", batch_size, 2),
                                ("world_size", world_size, 1), ("seed", seed, 0)), rank, world_size, batches_per_epoch)
        self.batch_size = batch_size
        self._start(num_images, world_size * batch_size, seed, rank, world_size, batches_per_epoch)

    def _epoch_batches(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        step_size = self.images_per_step
        order = rng.permutation(self.num_images)
        needed = len(self) * step_size
        while len(order) < needed:  # a full last step, or more steps than one pass (batches_per_epoch)
            order = np.concatenate([order, rng.permutation(self.num_images)])
        for s in range(len(self)):
            step = order[s * step_size:(s + 1) * step_size]
            yield [int(i) for i in step[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]]
