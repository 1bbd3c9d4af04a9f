"""Endless batches of unlabelled images (semi-supervised distillation), resumable at any batch."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from embdistill.data.datasets import DatasetError


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
