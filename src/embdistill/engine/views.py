"""Training images as numbered augmented *views*.

Image ``i`` under view ``v`` always gets the same random crop and flip, whatever
process loads it. That makes the teacher's output a pure function of ``(i, v)``,
so it can be computed once and cached, and a run with the cache reproduces a run
without it whenever both see the same views.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from embdistill.data.datasets import ImageDataset


def view_seed(seed: int, index: int, view: int) -> int:
    """A 63-bit seed that differs for every (run seed, image, view)."""
    return (seed * 1_000_003 + index * 7_919 + view * 104_729 + 0x9E3779B97F4A7C15) % (2**63 - 1)


class ViewDataset(Dataset):
    """Yields ``(student_image, teacher_image, label, index, view)``.

    ``teacher_image`` is the same tensor as ``student_image`` unless ``degrade`` is
    set (cross-quality distillation): then the student gets the degraded copy, cut
    by the very same crop. With ``student_size`` smaller than the transform's
    output, the student gets that crop resized (antialiased) to ``student_size``. ``set_view`` is called before each epoch; DataLoader
    workers receive the dataset afresh at every epoch, so they see the new view.
    """

    def __init__(
        self,
        images: ImageDataset,
        transform: Callable,
        seed: int,
        degrade: Callable | None = None,
        labels: Tensor | None = None,
        student_size: int | None = None,
    ) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed
        self.degrade = degrade
        self.labels = labels  # overrides the dataset's labels (-1 marks an unlabelled image)
        self.student_size = student_size
        self.view = 0

    def set_view(self, view: int) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.images)

    def _augment(self, image, index: int) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, index, self.view))
            return self.transform(image)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int, int, int]:
        image = self.images.load_image(index)
        label = int(self.images.items.labels[index])
        teacher_image = self._augment(image, index)
        student_image = teacher_image if self.degrade is None else self._augment(self.degrade(image), index)
        if self.student_size is not None and student_image.shape[-2:] != (self.student_size, self.student_size):
            student_image = F.interpolate(student_image[None], size=(self.student_size,) * 2, mode="bilinear",
                                          antialias=True, align_corners=False)[0]
        if self.labels is not None:
            label = int(self.labels[index])
        return student_image, teacher_image, label, index, self.view
